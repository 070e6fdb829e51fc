"""Everything after pretraining: frozen embeddings, probes, benchmarks and pictures.

``encoder`` runs a model folder's encoder frozen over whole tracks (windowing, layers, pooling),
for the ``extract`` stage, the API, ``inspect`` and online probes; ``extract`` is the stage that
writes the embeddings store (``embeddings``); ``probe``, ``linear_probe`` and ``tasks`` train and
score probes on those stores; ``online_probe`` is the training callback that probes during a
run; ``benchmarks`` builds the manifests of the standard datasets; ``key_profile`` reads a key out
of a CPSD-trained token; ``inspect`` draws attention maps, embedding maps and training curves.
"""
