"""Everything after pretraining: frozen embeddings, probes, benchmarks and pictures.

``extract`` runs a model folder's encoder frozen over whole tracks (windowing, layers, pooling)
into the embeddings store (``embeddings``); ``probe``, ``linear_probe`` and ``tasks`` train and
score probes on those stores; ``online_probe`` is the training callback that probes during a
run; ``benchmarks`` builds the manifests of the standard datasets; ``key_profile`` reads a key out
of a CPSD-trained token; ``inspect`` draws attention maps, embedding maps and training curves.
"""
