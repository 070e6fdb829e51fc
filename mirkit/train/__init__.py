"""The one pretraining loop and what it writes.

``loop`` runs any recipe (devices, AMP, DDP, resume) and calls the callbacks it is given
(``callbacks``: at the start, at evaluation, after a step, at a checkpoint); ``checkpoint`` writes and reads model folders and atomic training checkpoints; ``live`` logs step
metrics through dvclive. Nothing here imports from :mod:`mirkit.eval`: evaluation during training
(online probes) is a callback that the ``pretrain`` command passes in.
"""
