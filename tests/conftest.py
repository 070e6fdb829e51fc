import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# before torch is imported (here and in every subprocess a test starts): no more threads than idle cores,
# since torch's default of one per core is many times slower on a busy machine (docs/benchmarks.md)
if "OMP_NUM_THREADS" not in os.environ:
    from mirkit.params import auto_threads
    os.environ["OMP_NUM_THREADS"] = str(auto_threads())


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A few generated clips with the features of all four recipes and muse-lq tokens.

    Returns a dict with ``audio`` (folder), ``features`` and ``tokens`` (store paths).
    """
    from audio_fixtures import write_good

    from mirkit.data.mels import MelsParams
    from mirkit.data.mels import run as run_mels
    from mirkit.data.tokens import TokensParams
    from mirkit.data.tokens import run as run_tokens

    root = tmp_path_factory.mktemp("corpus")
    write_good(root / "audio", 6, seconds=5.0)
    features, tokens = str(root / "features.zarr"), str(root / "tokens.zarr")
    run_mels(MelsParams(input=str(root / "audio"), store=features, num_workers=0,
                        feature_sets=["mel16k", "mel16k-db", "cqt22k", "mel24k"],
                        failures=str(root / "failures.tsv"), summary=str(root / "summary.json")))
    run_tokens(TokensParams(features=features, feature_set="mel24k", out=tokens, codebook_size=64,
                            quantizer=str(root / "quantizer.safetensors"), metrics=str(root / "tokens.json")))
    return {"audio": root / "audio", "features": features, "tokens": tokens}


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded on the shared 2-core machines."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
