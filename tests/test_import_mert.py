"""`mirkit import mert`: MERT-v1 Hugging Face downloads (tiny random weights written and run by m-a-p/MERT's
``MERTModel`` under transformers 4.38: tests/fixtures/importers/make_reference.py) convert without
transformers into model folders whose every layer equals the reference forward pass, for both encoder
layouts (95M: post-LN, group-norm extractor, ``pytorch_model.bin`` with weight_g/weight_v; 330M: pre-LN,
layer-norm extractor, ``model.safetensors``); `mirkit extract` stores all layers with the licence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_runner import invoke as run_cli
from safetensors.torch import load_file

import mirkit
from mirkit.data.features import PRESETS, FrontEnd
from mirkit.importers.mert import import_mert
from mirkit.train.checkpoint import CheckpointError

FIX = Path(__file__).parent / "fixtures" / "importers"
LAYERS = [0, 1, 2, -1]


def wave() -> np.ndarray:
    return load_file(str(FIX / "wave.safetensors"))["pcm16"].float().numpy() / 32768.0


@pytest.mark.parametrize("variant,source", [("base", "mert-tiny-base"), ("large", "mert-tiny-large/model.safetensors")])
def test_every_layer_equals_the_reference_forward(tmp_path, variant, source):
    torch.set_num_threads(1)
    config = import_mert(FIX / source, tmp_path / "model")
    assert config.feature_set == "wave24k" and config.args["pre_norm"] == (variant == "large")
    ref = load_file(str(FIX / f"mert-tiny-{variant}-outputs.safetensors"))
    enc = mirkit.load_encoder(tmp_path / "model", device="cpu").frozen.encoder
    frames = FrontEnd(PRESETS["wave24k"])(torch.from_numpy(wave())[None])     # (1, 75, 320)
    with torch.no_grad():
        out = enc.encode(frames.transpose(1, 2), layers=LAYERS)
    for layer in LAYERS:
        assert out.hidden[layer].shape[1:] == ref[f"layer.{layer}"].shape == (74, 32)
        assert (out.hidden[layer][0] - ref[f"layer.{layer}"]).abs().max() <= 1e-4, layer


def test_extract_stores_every_layer_with_licence_and_sha256(tmp_path):
    import hashlib

    from mirkit.eval.embeddings import Embeddings
    run = run_cli("import", "mert", str(FIX / "mert-tiny-base"), "--out", str(tmp_path / "model"))
    assert run.exit_code == 0, run.output
    card = (tmp_path / "model" / "README.md").read_text()
    sha = hashlib.sha256((FIX / "mert-tiny-base" / "pytorch_model.bin").read_bytes()).hexdigest()
    assert sha in card and "CC-BY-NC-4.0" in card
    t = np.arange(int(44100 * 6.5)) / 44100
    sf.write(tmp_path / "clip.wav", (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 44100)
    (tmp_path / "m.csv").write_text("path,split\nclip.wav,test\n")
    res = run_cli("extract", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "e.zarr"),
                  "--set", f"manifest={tmp_path / 'm.csv'}", "--set", f"features={tmp_path / 'none.zarr'}",
                  "--set", "device=cpu", "--params", "none")
    assert res.exit_code == 0, res.output
    enc = mirkit.load_encoder(tmp_path / "model", device="cpu")
    enc.embed_files(tmp_path / "m.csv", layers="all", frames=True, out=tmp_path / "all")
    stores = [tmp_path / "e.zarr"] + sorted((tmp_path / "all").glob("layer_*.zarr"))
    assert len(stores) == 1 + 4                     # the CLI's last layer; the API's 0, 1, 2 and last
    for store in stores:
        emb = Embeddings(str(store))
        model = emb.attrs["model"]
        assert model["licence"].startswith("CC-BY-NC-4.0") and model["source_sha256"] == sha
        assert emb.frame_rate == pytest.approx(75.0) and len(emb) == 1 and np.isfinite(emb.chunks(0)).all()
    np.testing.assert_allclose(Embeddings(str(tmp_path / "all" / "layer_last.zarr")).chunks(0),
                               Embeddings(str(tmp_path / "e.zarr")).chunks(0), atol=1e-5)


def test_refusals_are_named(tmp_path):
    src = tmp_path / "dl"
    shutil.copytree(FIX / "mert-tiny-base", src)
    sd = torch.load(src / "pytorch_model.bin", weights_only=True)
    torch.save({**sd, "final_proj.weight": torch.zeros(2, 2)}, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"unknown key\(s\).*final_proj\.weight"):
        import_mert(src, tmp_path / "o1")
    bad = dict(sd)
    bad["encoder.layers.1.feed_forward.output_dense.weight"] = torch.zeros(32, 63)
    torch.save(bad, src / "pytorch_model.bin")
    res = run_cli("import", "mert", str(src), "--out", str(tmp_path / "o2"))
    assert res.exit_code == 2 and "encoder.layers.1.feed_forward.output_dense.weight" in res.text and "(32, 63)" in res.text
    assert not (tmp_path / "o2").exists()
    torch.save(sd, src / "pytorch_model.bin")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "feature_extractor_cqt": True}))
    with pytest.raises(CheckpointError, match="feature_extractor_cqt"):
        import_mert(src, tmp_path / "o3")
    (src / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: no such file"):
        import_mert(src, tmp_path / "o4")
    res = run_cli("import", "mert", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o5"))
    assert res.exit_code == 2 and f"{tmp_path / 'nowhere'}: no such file or folder" in res.text


class FairseqTask:
    """Stands for the fairseq classes MERT's *_fairseq.pt pickles name."""


def test_a_fairseq_style_pickle_is_refused(tmp_path):
    shutil.copy(FIX / "mert-tiny-base" / "config.json", tmp_path / "config.json")
    torch.save({"model": torch.load(FIX / "mert-tiny-base" / "pytorch_model.bin", weights_only=True),
                "task": FairseqTask()}, tmp_path / "MERT_fairseq.pt")
    res = run_cli("import", "mert", str(tmp_path / "MERT_fairseq.pt"), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "refused to load" in res.text and not (tmp_path / "o").exists()
