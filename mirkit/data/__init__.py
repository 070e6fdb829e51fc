"""Everything before the model: audio in, features and tokens out.

Decoding and resampling (``audio``), the named spectrogram front ends (``features``), the Zarr
frame stores with their locks, shards and checks (``store``), the ``mels`` and ``tokens`` stages,
manifests (``manifest``), the random-projection quantizer (``quantizer``) and the synthetic
labelled corpus of the demo (``synth``). Nothing here knows about models, training or probes;
the data contracts are in docs/architecture.md.
"""
