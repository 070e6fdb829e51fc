"""`mirkit extract`: checkpoint errors, chunk/remainder rule, frame times, determinism, store
reuse vs on-the-fly features, resume after a kill, bad audio, random-init baseline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import zarr
from audio_fixtures import tone
from cli_runner import invoke as run_cli

from mirkit.data.features import PRESETS
from mirkit.eval.embeddings import Embeddings
from mirkit.eval.encoder import kept_columns, plan_windows
from mirkit.eval.extract import ExtractParams, run
from mirkit.params import ParamsError, resolve
from mirkit.recipes import get
from mirkit.train import checkpoint

SR = 16000
HOP = 512           # mel16k hop: 31.25 frames/s
WINDOW = 96         # myna crop


# ----------------------------------------------------------------------------- helpers
def make_checkpoint(out: Path, recipe: str = "myna", preset: str = "myna-tiny", seed: int = 0) -> Path:
    """A freshly initialised (untrained) checkpoint saved the way `mirkit pretrain` saves it; returns
    the model folder inside the run folder ``out``."""
    cls = get(recipe)
    r = cls(resolve(cls.Params, {"preset": preset}))
    torch.manual_seed(seed)
    model = r.build_model()
    return checkpoint.save(out, model, checkpoint.make_config(r, PRESETS[r.feature_set].to_dict(), 0, {}))


def tone_clip(seconds: float, f0: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    return tone(seconds, sr, f0, seed=seed, overtone=2.5).astype(np.float32)


def write_dataset(root: Path, specs: list[tuple[str, float, float]], offsets: dict[str, tuple[float, float]] | None = None,
                  extra_rows: list[dict] | None = None) -> Path:
    """wav files + manifest.csv (path, split, timbre, beats) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, seconds, f0) in enumerate(specs):
        sf.write(root / f"{name}.wav", tone_clip(seconds, f0, seed=i), SR)
        (root / f"{name}.beats.txt").write_text("0.5\n1.0\n")
        off, dur = (offsets or {}).get(name, ("", ""))
        rows.append({"path": f"{name}.wav", "split": ["train", "valid", "test"][i % 3], "offset": off,
                     "duration": dur, "timbre": f"t{i % 2}", "beats": f"{name}.beats.txt"})
    rows += extra_rows or []
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "split", "offset", "duration", "timbre", "beats"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def build_features(manifest: Path, store: Path, sets=("mel16k",)) -> None:
    from mirkit.data.mels import MelsParams
    from mirkit.data.mels import run as mels_run
    p = resolve(MelsParams, {"input": str(manifest), "store": str(store), "feature_sets": list(sets),
                             "num_workers": 0, "failures": str(store.parent / "failures.tsv"),
                             "summary": str(store.parent / "summary.json")})
    mels_run(p)


def params(tmp: Path, **kw) -> ExtractParams:
    base = {"model": str(tmp / "ckpt"), "manifest": str(tmp / "data" / "manifest.csv"),
            "features": str(tmp / "features.zarr"), "out": str(tmp / "emb.zarr"), "device": "cpu",
            "batch_size": 4}
    base.update({k: str(v) if isinstance(v, Path) else v for k, v in kw.items()})
    return resolve(ExtractParams, base)


def invoke(*args: str):
    return run_cli("extract", *args)


def all_rows(url: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(url, mode="r")
    attrs = dict(g.attrs)
    c = attrs["committed"]
    out = {"chunks": np.asarray(g["chunks"][: c["chunks"]]), "chunk_track": np.asarray(g["chunk_track"][: c["chunks"]])}
    if "frames" in g:
        for k in ("frames", "frame_track", "frame_time"):
            out[k] = np.asarray(g[k][: c["frames"]])
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """4 clips (one shorter than a window, one cut from a longer file with an offset), their
    mel16k features, and an untrained myna-tiny checkpoint."""
    tmp = tmp_path_factory.mktemp("extract")
    write_dataset(tmp / "data", [("a", 7.0, 220.0), ("b", 2.0, 330.0), ("c", 9.5, 440.0), ("d", 6.0, 550.0)],
                  offsets={"c": (1.5, 7.0)})
    build_features(tmp / "data" / "manifest.csv", tmp / "features.zarr")
    make_checkpoint(tmp / "ckpt")
    return tmp


# ----------------------------------------------------------------------------- chunking rule
def test_plan_windows_rule():
    short = plan_windows(50, WINDOW)
    assert short.starts == (0,) and short.n_chunks == 1
    exact = plan_windows(2 * WINDOW, WINDOW)
    assert exact.starts == (0, WINDOW) and exact.n_chunks == 2
    small_tail = plan_windows(2 * WINDOW + 20, WINDOW)            # 20 < 48: frames only
    assert small_tail.starts == (0, WINDOW, 20 + WINDOW) and small_tail.n_chunks == 2
    big_tail = plan_windows(2 * WINDOW + 60, WINDOW)              # 60 >= 48: one more chunk, end-aligned
    assert big_tail.starts == (0, WINDOW, 60 + WINDOW) and big_tail.n_chunks == 3
    assert big_tail.starts[-1] + WINDOW == 2 * WINDOW + 60
    assert plan_windows(2 * WINDOW + 20, WINDOW, min_tail=0.0).n_chunks == 3
    with pytest.raises(ValueError):
        plan_windows(0, WINDOW)


@pytest.mark.parametrize("n_frames", [50, 96, 219, 250, 400])
def test_frames_cover_the_track_once(n_frames):
    """Column starts are strictly increasing, never repeated, inside the track, and reach its end."""
    fpc = 16
    plan = plan_windows(n_frames, WINDOW)
    starts = np.concatenate([kept_columns(plan, w, WINDOW // fpc, fpc)[1] for w in range(len(plan.starts))])
    assert np.all(np.diff(starts) > fpc / 2)         # no column repeats (half of) another
    assert np.all(np.diff(starts) <= fpc)            # and none is skipped
    assert starts[0] == 0 and starts[-1] < n_frames <= starts[-1] + 2 * fpc


# ----------------------------------------------------------------------------- the stage
def test_extract_store_layout_times_and_labels(workspace):
    p = params(workspace, out=workspace / "layout.zarr")
    report = run(p)
    assert report.embedded == 4 and not report.failures and report.from_store == 4 and report.computed == 0
    emb = Embeddings(p.out)
    assert [t["track_id"] for t in emb.tracks] == ["a.wav", "b.wav", "c.wav@1.5+7", "d.wav"]
    assert emb.layer == -1 and emb.pooling == "mean"
    assert emb.model["recipe"] == "myna" and emb.model["preset"] == "myna-tiny" and emb.model["random_init"] is False
    assert emb.frame_rate == pytest.approx(SR / HOP / 16)          # square patches: 16 frames per column
    # annotation paths absolute, labels and split carried over
    t0 = emb.tracks[0]
    assert Path(t0["beats"]).is_absolute() and Path(t0["beats"]).is_file() and t0["timbre"] == "t0"
    assert [t["split"] for t in emb.tracks] == ["train", "valid", "test", "train"]
    # chunk counts follow the rule: n = 1 + samples // hop frames
    n = {k: 1 + int(s * SR) // HOP for k, s in (("a", 7.0), ("b", 2.0), ("c", 7.0), ("d", 6.0))}
    expected = [plan_windows(n[k], WINDOW).n_chunks for k in "abcd"]
    assert [len(emb.chunks(i)) for i in range(4)] == expected == [2, 1, 2, 2]
    # frame times: centre of each 16-frame column, from the start of the FILE (c has offset 1.5 s)
    _, times_a = emb.frames(0)
    assert times_a[0] == pytest.approx(7.5 / (SR / HOP), abs=1e-5)
    assert times_a[1] - times_a[0] == pytest.approx(16 / (SR / HOP), abs=1e-5)
    _, times_c = emb.frames(2)
    assert times_c[0] == pytest.approx(1.5 + 7.5 / (SR / HOP), abs=1e-4)
    assert times_c[-1] < 1.5 + 7.0
    assert np.all(np.diff(times_c) > 0)
    _, times_b = emb.frames(1)                                          # shorter than one window
    assert len(times_b) == int(np.ceil(n["b"] / 16)) and times_b[-1] < 2.0


def test_extract_is_deterministic_and_store_equals_audio(workspace):
    p1 = params(workspace, out=workspace / "det1.zarr")
    p2 = params(workspace, out=workspace / "det2.zarr")
    run(p1), run(p2)
    r1, r2 = all_rows(p1.out), all_rows(p2.out)
    for k in r1:
        np.testing.assert_array_equal(r1[k], r2[k])
    # features computed on the fly (no feature store) give the same embeddings as stored ones
    p3 = params(workspace, out=workspace / "det3.zarr", features=workspace / "nowhere.zarr")
    rep = run(p3)
    assert rep.computed == 4 and rep.from_store == 0 and "computing from audio" in rep.feature_note
    assert not (workspace / "nowhere.zarr" / "mel16k").exists()
    r3 = all_rows(p3.out)
    np.testing.assert_allclose(r3["chunks"], r1["chunks"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(r3["frames"], r1["frames"], atol=1e-4, rtol=1e-4)


def test_resume_after_a_killed_run(workspace):
    full = params(workspace, out=workspace / "full.zarr")
    run(full)
    reference = all_rows(full.out)
    # simulate a kill after the first 2 tracks were committed, with garbage rows past the commit point
    part = params(workspace, out=workspace / "part.zarr")
    run(part)
    g = zarr.open_group(part.out, mode="a")
    attrs = dict(g.attrs)
    keep_chunks = int(np.sum(reference["chunk_track"] < 2))
    keep_frames = int(np.sum(reference["frame_track"] < 2))
    g["chunks"][keep_chunks:] = 123.0                                   # uncommitted garbage
    g.attrs.update({"tracks": attrs["tracks"][:2], "committed": {"tracks": 2, "chunks": keep_chunks, "frames": keep_frames}})
    report = run(part)
    assert report.status == "resumed" and report.skipped == 2 and report.embedded == 2
    resumed = all_rows(part.out)
    for k in reference:
        np.testing.assert_array_equal(resumed[k], reference[k])
    # a third run has nothing to do
    again = run(part)
    assert again.embedded == 0 and again.skipped == 4


def test_store_of_another_setting_is_replaced(workspace):
    p = params(workspace, out=workspace / "replace.zarr")
    run(p)
    q = params(workspace, out=workspace / "replace.zarr", layer=1, frames=False)
    report = run(q)
    assert report.status == "replaced" and report.embedded == 4
    emb = Embeddings(q.out)
    assert emb.layer == 1 and not emb.has_frames


def test_random_init_baseline(workspace):
    pre = params(workspace, out=workspace / "pre.zarr")
    run(pre)
    r1 = params(workspace, out=workspace / "rand1.zarr", random_init=True, seed=3)
    r2 = params(workspace, out=workspace / "rand2.zarr", random_init=True, seed=3)
    r3 = params(workspace, out=workspace / "rand3.zarr", random_init=True, seed=4)
    run(r1), run(r2), run(r3)
    a, b, c = (all_rows(x.out)["chunks"] for x in (r1, r2, r3))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, all_rows(pre.out)["chunks"])
    assert Embeddings(r1.out).model["random_init"] is True and Embeddings(r1.out).model["seed"] == 3


def test_vit1d_pooling_choice(workspace):
    """A ViT-1D model: default pooling 'cls', 'seq-mean' on request, unsupported 'cls2' rejected."""
    make_checkpoint(workspace / "vit", "contrastive", "vit1d-micro")
    p = params(workspace, model=workspace / "vit", out=workspace / "vit.zarr", frames=False)
    report = run(p)                              # mel16k-db is not in the store: computed from audio
    assert report.embedded == 4 and report.computed == 4
    assert Embeddings(p.out).pooling == "cls"
    q = params(workspace, model=workspace / "vit", out=workspace / "vit-mean.zarr", pooling="seq-mean", frames=False)
    run(q)
    assert not np.allclose(all_rows(p.out)["chunks"], all_rows(q.out)["chunks"])
    result = invoke("--model", str(workspace / "vit"), "--out", str(workspace / "x.zarr"),
                    "--set", f"manifest={workspace / 'data' / 'manifest.csv'}", "--set", "pooling=cls2",
                    "--set", "device=cpu", "--params", "none")
    assert result.exit_code == 2
    assert "cls2" in result.text and "supports cls, seq-mean, mean" in result.text


# ----------------------------------------------------------------------------- errors
def _cli_args(workspace: Path, model: Path, out: str = "err.zarr") -> list[str]:
    return ["--model", str(model), "--out", str(workspace / out), "--set",
            f"manifest={workspace / 'data' / 'manifest.csv'}", "--set", f"features={workspace / 'features.zarr'}",
            "--set", "device=cpu", "--params", "none"]


def test_checkpoint_errors_are_clear(workspace, tmp_path):
    missing = invoke(*_cli_args(workspace, tmp_path / "nope"))
    assert missing.exit_code == 2 and "no such model folder" in missing.text

    truncated = make_checkpoint(tmp_path / "trunc")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    res = invoke(*_cli_args(workspace, truncated))
    assert res.exit_code == 2 and "unreadable or truncated weights" in res.text

    other = make_checkpoint(tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["args"]["dim"] = 192                                       # a config of another shape
    (other / "config.json").write_text(json.dumps(config))
    res = invoke(*_cli_args(workspace, other))     # refused before loading: config.json is bound to the weights
    assert res.exit_code == 2 and "edited after the weights were written (args.dim: 64 -> 192)" in res.text

    no_weights = make_checkpoint(tmp_path / "noweights")
    (no_weights / "model.safetensors").unlink()
    res = invoke(*_cli_args(workspace, no_weights))
    assert res.exit_code == 2 and "no model.safetensors" in res.text


def test_bad_audio_is_reported_and_the_rest_goes_on(workspace, tmp_path):
    data = tmp_path / "data"
    manifest = write_dataset(data, [("ok", 4.0, 300.0)], extra_rows=[
        {"path": "broken.wav", "split": "train"}, {"path": "missing.wav", "split": "test"}])
    (data / "broken.wav").write_bytes(b"RIFF....not audio at all")
    def args(manifest: Path, out: str) -> list[str]:
        return ["--model", str(workspace / "ckpt"), "--out", str(tmp_path / out), "--set", f"manifest={manifest}",
                "--set", f"features={tmp_path / 'none.zarr'}", "--set", "device=cpu", "--params", "none"]

    res = invoke(*args(manifest, "e.zarr"))
    assert res.exit_code == 0, res.output
    assert "broken.wav" in res.text and "not decodable" in res.text
    assert "missing.wav" in res.text and "file not found" in res.text
    assert [t["track_id"] for t in Embeddings(str(tmp_path / "e.zarr")).tracks] == ["ok.wav"]

    only_bad = tmp_path / "bad.csv"
    only_bad.write_text("path\ndata/broken.wav\n")
    res = invoke(*args(only_bad, "f.zarr"))
    assert res.exit_code == 1 and "no track could be embedded" in res.text


def test_layer_all_writes_a_layered_store_the_probe_reads(workspace):
    from mirkit.eval.layered import open_layers
    out = workspace / "all.zarr"
    run(params(workspace, out=out, layer="all"))
    stores = open_layers(str(out))
    assert list(stores)[-1] == -1 and list(stores)[:3] == [0, 1, 2]
    for layer in (-1, 1):   # each layer equals a one-layer extract of it
        run(params(workspace, out=workspace / f"one{layer}.zarr", layer=layer))
        for k, v in all_rows(str(workspace / f"one{layer}.zarr")).items():
            np.testing.assert_array_equal(all_rows(stores[layer].url)[k], v)
    run(params(workspace, out=out, layer=-1))   # back to one layer: no stale layer stores left
    assert list(open_layers(str(out))) == [-1]
    with pytest.raises(ParamsError, match="extract.layer='top'"):
        params(workspace, layer="top")
