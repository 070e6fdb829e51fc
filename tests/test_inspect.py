"""`mirkit inspect`: SSM shows repetition, onset emergence separates clicks from a steady tone,
pictures have the expected pixel sizes, JSON/Markdown say what was measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import tone
from cli_runner import invoke as run_cli
from matplotlib.image import imread
from test_extract import make_checkpoint

from mirkit.data.features import FrontEnd
from mirkit.eval.embeddings import EmbeddingsWriter
from mirkit.eval.encoder import features_of_wave, load_frozen
from mirkit.eval.inspect import (
    NO_ATTENTION,
    analyse,
    checkerboard_novelty,
    layer_figure_size,
    onset_strength,
    self_similarity,
)


def invoke(*args: str):
    return run_cli("inspect", *args)


def clicks(seconds: float, sr: int, period: float = 0.27, seed: int = 0) -> np.ndarray:
    """Percussive bursts (decaying noise) every ``period`` seconds over a faint noise floor."""
    rng = np.random.default_rng(seed)
    wave = 0.001 * rng.standard_normal(int(seconds * sr))
    for t in np.arange(0.1, seconds, period):
        i = int(t * sr)
        burst = rng.standard_normal(200) * np.exp(-np.arange(200) / 40)
        wave[i: i + 200] += burst[: len(wave) - i]
    return wave.astype(np.float32)


def melody(seconds_per_note: float, n_notes: int, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds_per_note * sr)
    return np.concatenate([0.3 * np.sin(2 * np.pi * f * np.arange(n) / sr)
                           for f in rng.uniform(200, 1000, n_notes)]).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    make_checkpoint(root / "vit", "contrastive", "vit1d-micro")
    make_checkpoint(root / "sum", "muse-lq", "brn-sum-tiny")
    return root


@pytest.fixture(scope="module")
def vit(models):
    frozen = load_frozen(models / "vit", "cpu")
    return frozen, FrontEnd(frozen.spec)


# ----------------------------------------------------------------------------- measurements
def test_novelty_and_onset_helpers():
    blocks = np.zeros((20, 4))
    blocks[:10, 0] = blocks[10:, 1] = 1.0                       # two homogeneous sections
    novelty = checkerboard_novelty(self_similarity(blocks), half_width=2)
    assert int(np.argmax(novelty[2:-2])) + 2 == 10              # peak at the section boundary
    feats = np.zeros((3, 40))
    feats[:, 17] = 5.0                                          # one burst at frame 17
    onset = onset_strength(feats, frames_per_col=4, n_cols=10)
    assert int(np.argmax(onset)) == 17 // 4 and onset.sum() == pytest.approx(15.0)


def test_ssm_of_a_repeated_clip_shows_the_repetition(vit):
    frozen, front = vit
    sr = frozen.spec.sample_rate
    half = melody(0.25, 8, sr)                                  # 2 s, then the same 2 s again
    analysis = analyse(frozen, features_of_wave(frozen, np.concatenate([half, half]), front))
    lag = int(round(len(half) / sr * frozen.frame_rate))        # 1 column per frame for ViT-1D
    for la in analysis.layers:
        shifted = np.diagonal(la.ssm, lag).mean()
        off_diagonal = la.ssm[~np.eye(len(la.ssm), dtype=bool)].mean()
        assert shifted > off_diagonal + 0.03, (la.layer, shifted, off_diagonal)
        near_lag = np.diagonal(la.ssm, lag - 16).mean()         # a wrong shift is not as similar
        assert shifted > near_lag


def test_onset_correlation_is_higher_for_clicks_than_for_a_tone(vit):
    frozen, front = vit
    sr = frozen.spec.sample_rate
    r = {}
    for name, wave in (("clicks", clicks(4.2, sr)), ("tone", tone(4.2, sr, 440.0, noise=0).astype(np.float32))):
        analysis = analyse(frozen, features_of_wave(frozen, wave, front))
        r[name] = [la.r_ssm_novelty for la in analysis.layers]
    assert all(v is not None for v in r["clicks"] + r["tone"])
    assert min(r["clicks"]) > max(r["tone"]) + 0.15, r


# ----------------------------------------------------------------------------- pictures
def test_inspect_model_pictures_and_json(models, tmp_path):
    sr = 16000
    sf.write(tmp_path / "clicks.wav", clicks(5.0, sr), sr)
    out = tmp_path / "report" / "vit"
    res = invoke("model", str(models / "vit"), str(tmp_path / "clicks.wav"), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "onset emergence" in res.text
    summary = json.loads((out / "onsets.json").read_text())
    assert set(summary["layers"]) == {"0", "1", "2"} and summary["columns"] == 126
    assert summary["layers"]["0"]["heads"] is None and summary["layers"]["2"]["heads"] == 2
    assert isinstance(summary["layers"]["1"]["ssm_novelty_r"], float) and summary["message"] == ""
    assert summary["model"]["recipe"] == "contrastive"
    # layer 0 (no attention): spectrogram + SSM; layers 1-2: + mean attention + 2 heads
    for layer, heads in ((0, 0), (1, 2), (2, 2)):
        img = imread(out / f"layer_{layer:02d}.png")
        w, h = layer_figure_size(heads)
        assert img.shape[:2] == (h, w)
    assert layer_figure_size(2)[0] > layer_figure_size(0)[0]
    assert imread(out / "novelty.png").shape[:2] == (540, 1000)   # 3 layer rows of 1.6 in + 0.6 in, 10 in wide


def test_summary_mixing_model_has_no_attention_but_ssms(models, tmp_path):
    sr = 24000
    manifest = tmp_path / "m.csv"
    sf.write(tmp_path / "t.wav", melody(0.3, 16, sr), sr)
    manifest.write_text("path,track_id,offset,duration\nt.wav,song,0.5,4.2\n")
    out = tmp_path / "report" / "sum"
    res = invoke("model", str(models / "sum"), "--manifest", str(manifest), "--track", "song", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "SummaryMixing" in res.text
    summary = json.loads((out / "onsets.json").read_text())
    assert summary["message"] == NO_ATTENTION
    assert all(v["heads"] is None and v["attention_received_r"] is None for v in summary["layers"].values())
    for layer in (0, 1, 2):
        assert imread(out / f"layer_{layer:02d}.png").shape[:2] == layer_figure_size(0)[::-1]


def test_model_command_errors(models, tmp_path):
    res = invoke("model", str(tmp_path / "nope"), str(tmp_path / "x.wav"))
    assert res.exit_code == 2 and "no such model folder" in res.text
    res = invoke("model", str(models / "vit"))
    assert res.exit_code == 2 and "--manifest" in res.text
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    res = invoke("model", str(models / "vit"), str(tmp_path / "bad.wav"), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "bad.wav" in res.text and "not decodable" in res.text


def test_embeddings_map(tmp_path):
    rng = np.random.default_rng(0)
    store = str(tmp_path / "emb.zarr")
    with EmbeddingsWriter(store, 8, layer=-1, pooling="mean", model={"recipe": "x"}) as w:
        for i in range(18):
            timbre = ["piano", "organ"][i % 2]
            centre = np.eye(8)[i % 2] * 5
            w.append({"track_id": f"t{i}", "split": ["train", "valid", "test"][i % 3], "timbre": timbre,
                      "tempo": 80 + 3 * i}, centre + rng.standard_normal((3, 8)))
    out = tmp_path / "maps"
    res = invoke("embeddings", store, "--label", "timbre", "--method", "pca", "--out", str(out))
    assert res.exit_code == 0, res.output
    png = out / "embeddings_emb_timbre_pca.png"
    assert imread(png).shape[:2] == (450, 1500)                  # 3 split panels of 4.5 in + 1.5 in
    info = json.loads(png.with_suffix(".json").read_text())
    assert info["splits"] == ["train", "valid", "test"] and info["classes"] == ["organ", "piano"]
    assert info["kind"] == "categorical" and info["tracks"] == 18
    res = invoke("embeddings", store, "--label", "tempo", "--method", "tsne", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert json.loads((out / "embeddings_emb_tempo_tsne.json").read_text())["kind"] == "numeric"
    res = invoke("embeddings", store, "--label", "mood", "--out", str(out))
    assert res.exit_code == 2 and "'mood' not in" in res.text and "timbre" in res.text


def test_training_curves_and_report(models, tmp_path):
    log = tmp_path / "log.tsv"
    rows = ["step\tloss\tlr\tloss_square"] + [f"{s}\t{5 / s:.4f}\t{1e-3 * s / 30:.6g}\t{4 / s:.4f}" for s in range(1, 31)]
    log.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    res = invoke("training", str(log), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert imread(out / "training.png").shape[:2] == (400, 1000)
    assert "30 steps" in res.text and "loss 5 -> 0.1667" in res.text
    # a model section with SummaryMixing, then the report
    sr = 24000
    sf.write(tmp_path / "t.wav", melody(0.3, 16, sr), sr)
    assert invoke("model", str(models / "sum"), str(tmp_path / "t.wav"), "--out", str(out / "sum")).exit_code == 0
    res = invoke("report", str(out), "--title", "run 1")
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert md.startswith("# run 1") and "![training curves](training.png)" in md
    assert "![onset emergence](sum/novelty.png)" in md and "![layer_02](sum/layer_02.png)" in md
    assert NO_ATTENTION in md and "| 1 |" in md
    for link in __import__("re").findall(r"\]\(([^)]+\.png)\)", md):
        assert (out / link).is_file()
    assert invoke("report", str(tmp_path / "missing")).exit_code == 2
