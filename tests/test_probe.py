"""Embeddings store round trip and resume; batched probe grid; selection on validation only;
late fusion; determinism; song-level ensembles; frame-level probes; `mirkit probe` parameter validation and outputs."""

import json
import uuid

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mirkit.eval import probe as P
from mirkit.eval.embeddings import Embeddings, EmbeddingsWriter
from mirkit.eval.tasks import ENSEMBLES, TaskSpec, make_task

DIM = 8
SETTINGS = P.TrainSettings(max_steps=60, eval_every=10, patience=3, seed=0)


def genre_store(url, n=60, seed=0, frames=False):
    """Three separable classes; 2-4 chunks per track; 60/20/20 % train/valid/test."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, DIM)) * 2
    with EmbeddingsWriter(url, DIM, frames=frames, flush_every=7, layer=-1, pooling="mean",
                          model={"recipe": "test"}, frame_rate=10.0) as w:
        for i in range(n):
            c = i % 3
            split = ["train", "train", "train", "valid", "test", "train", "train", "valid", "train", "valid"][(i // 3) % 10]
            chunks = centres[c] + rng.normal(size=(2 + i % 3, DIM))
            kw = {}
            if frames:
                kw = {"frames": rng.normal(size=(5 + i % 2, DIM)), "frame_times": np.arange(5 + i % 2) * 0.1 + 0.05}
            w.append({"track_id": f"t{i}", "split": split, "genre": f"g{c}"}, chunks, **kw)
    return Embeddings(url)


# --------------------------------------------------------------------------- embeddings store
@pytest.mark.parametrize("kind", ["local", "memory"])
def test_store_round_trip(tmp_path, kind):
    url = str(tmp_path / "emb.zarr") if kind == "local" else f"memory://{uuid.uuid4().hex}/emb.zarr"
    rng = np.random.default_rng(1)
    data = [(rng.normal(size=(k + 1, DIM)), rng.normal(size=(3 * k + 2, DIM)), np.arange(3 * k + 2) * 0.04 + 0.02)
            for k in range(5)]
    with EmbeddingsWriter(url, DIM, frames=True, flush_every=2, layer=4, pooling="cls",
                          model={"checkpoint": "/m", "recipe": "myna", "preset": "tiny"}, frame_rate=25.0) as w:
        for k, (c, f, t) in enumerate(data):
            w.append({"track_id": f"id{k}", "split": ["train", "valid", "test"][k % 3], "genre": "x",
                      "n": np.int64(k), "empty": float("nan")}, c, f, t)
    e = Embeddings(url)
    assert [t["track_id"] for t in e.tracks] == [f"id{k}" for k in range(5)]
    assert e.tracks[3]["n"] == 3 and e.tracks[0]["empty"] is None
    assert (e.dim, e.layer, e.pooling, e.frame_rate) == (DIM, 4, "cls", 25.0)
    assert e.model["recipe"] == "myna"
    assert e.split("train") == [0, 3] and e.split("test") == [2]
    for k, (c, f, t) in enumerate(data):
        np.testing.assert_allclose(e.chunks(k), c.astype(np.float32))
        fr, times = e.frames(k)
        np.testing.assert_allclose(fr, f.astype(np.float32))
        np.testing.assert_allclose(times, t.astype(np.float32))
    rows, pos = e.chunk_rows([4, 1])
    np.testing.assert_allclose(rows, np.concatenate([data[1][0], data[4][0]]).astype(np.float32))
    assert list(pos) == [1] * 2 + [0] * 5


def test_store_resumes_after_interrupted_flush(tmp_path):
    url = str(tmp_path / "emb.zarr")
    rng = np.random.default_rng(2)
    chunks = [rng.normal(size=(2, DIM)) for _ in range(6)]
    w = EmbeddingsWriter(url, DIM, flush_every=2, layer=-1)
    for k in range(4):
        w.append({"track_id": f"t{k}", "split": "train"}, chunks[k])
    # simulate kill -9 in the middle of the next flush: rows written, commit never happens
    w.append({"track_id": "t4", "split": "train"}, chunks[4])
    w._commit = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        w.append({"track_id": "t5", "split": "train"}, chunks[5])
    assert w.group["chunks"].shape[0] == 12          # rows of t4, t5 are on disk but uncommitted
    assert len(Embeddings(url)) == 4                 # readers only see committed tracks
    w2 = EmbeddingsWriter(url, DIM, layer=-1)
    assert w2.done == {"t0", "t1", "t2", "t3"}
    assert w2.group["chunks"].shape[0] == 8          # garbage rows truncated
    for k in range(6):
        if f"t{k}" not in w2.done:
            w2.append({"track_id": f"t{k}", "split": "train"}, chunks[k] + 0)
    w2.close()
    e = Embeddings(url)
    assert [t["track_id"] for t in e.tracks] == [f"t{k}" for k in range(6)]
    for k in range(6):
        np.testing.assert_allclose(e.chunks(k), chunks[k].astype(np.float32))
    with pytest.raises(ValueError, match="layer"):
        EmbeddingsWriter(url, DIM, layer=3)


# --------------------------------------------------------------------------- probe mechanics
def test_grid_is_jukemir_paper_grid():
    grid = P.jukemir_grid()
    assert len(grid) == 216 and len(set(grid)) == 216
    assert {c.hidden for c in grid} == {0, 512} and {c.batch_size for c in grid} == {64, 256}
    assert {c.lr for c in grid} == {1e-5, 1e-4, 1e-3} and {c.dropout for c in grid} == {.25, .5, .75}
    assert {c.weight_decay for c in grid} == {0.0, 1e-4, 1e-3} and {c.standardize for c in grid} == {False, True}
    assert P.QUICK in grid


def test_late_fusion_averages_chunk_outputs():
    out = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 4.0]]])
    group = torch.tensor([0, 0, 2, 0])
    fused = P.fuse(out, group, 3)
    torch.testing.assert_close(fused[0], torch.tensor([[4 / 3, 2.0], [0.0, 0.0], [5.0, 5.0]]))


def test_batched_adam_matches_torch_adam():
    torch.manual_seed(0)
    w0 = torch.randn(2, 4, 3)
    lr, wd = torch.tensor([1e-2, 1e-3]).view(-1, 1, 1), torch.tensor([0.0, 1e-2]).view(-1, 1, 1)
    stacked = {"w": w0.clone().requires_grad_(True)}
    opt = P.BatchedAdam(stacked, lr, wd)
    refs = [w0[g].clone().requires_grad_(True) for g in range(2)]
    ref_opts = [torch.optim.Adam([refs[g]], lr=float(lr[g]), weight_decay=float(wd[g])) for g in range(2)]
    x = torch.randn(5, 4)
    for _ in range(5):
        (x @ stacked["w"]).pow(2).sum(dim=(1, 2)).sum().backward()
        opt.step()
        for g in range(2):
            ref_opts[g].zero_grad()
            (x @ refs[g]).pow(2).sum().backward()
            ref_opts[g].step()
    for g in range(2):
        torch.testing.assert_close(stacked["w"][g].detach(), refs[g].detach(), rtol=1e-5, atol=1e-6)


def _train_data(store, task):
    tr, va = store.split("train"), store.split("valid")
    task.fit(store.tracks)
    x, g = store.chunk_rows(tr)
    vx, vg = store.chunk_rows(va)
    y = torch.as_tensor(task.targets([store.tracks[i] for i in tr]))[torch.as_tensor(g)]
    vy = task.targets([store.tracks[i] for i in va])

    def val_score(outputs):
        fused = P.fuse(outputs, torch.as_tensor(vg), len(va)).numpy()
        return np.array([task.score(f, vy)["accuracy"] for f in fused])
    return P.TrainData(torch.as_tensor(x), y, torch.as_tensor(vx), val_score, task.n_outputs, task.output_grad)


def test_batched_grid_equals_sequential_single_config():
    store = genre_store(f"memory://{uuid.uuid4().hex}")
    task = make_task(TaskSpec("genre", "multiclass", ["genre"]))
    data = _train_data(store, task)
    grid = P.jukemir_grid()
    # one (batch, hidden) stack: different standardisation, lr, dropout and weight decay
    ids = [i for i, c in enumerate(grid) if c.batch_size == 64 and c.hidden == 512][::13]
    settings = P.TrainSettings(max_steps=20, eval_every=4, patience=2, seed=3)
    batched = P.train_configs([(i, grid[i]) for i in ids], data, settings)
    for r in batched:
        (alone,) = P.train_configs([(r.config_id, r.config)], data, settings)
        assert (alone.best_step, alone.steps) == (r.best_step, r.steps)
        assert alone.valid_score == pytest.approx(r.valid_score)
        for k in r.params:
            torch.testing.assert_close(alone.params[k], r.params[k], rtol=1e-4, atol=1e-5)
    assert len({r.steps for r in batched}) > 1 or len({r.best_step for r in batched}) > 1


def reference_train(cid, config, data, task, settings):
    """One configuration the plain way: autograd, torch.optim.Adam, the JukeMIR loop (evaluate at step 0
    and every ``eval_every`` steps, stop after ``patience`` evaluations without improvement), drawing
    its minibatches and dropout masks from the same generators as the stacked trainer."""
    gen = P._generator(P._probe_seed(settings.seed), torch.device("cpu"))
    params = {k: v.clone().requires_grad_(True) for k, v in P.init_params(config, DIM, data.n_out, gen,
                                                                          torch.device("cpu")).items()}
    opt = torch.optim.Adam(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)
    sampler = P._generator(settings.seed * 1_000_003 + config.batch_size, torch.device("cpu"))
    mean, inv_std = P.standardizer(data.x)
    shift, scale = (mean, inv_std) if config.standardize else (torch.zeros_like(mean), torch.ones_like(inv_std))
    keep = 1 - config.dropout
    n = len(data.x)
    rows = min(config.batch_size, n)

    def net(x, train):
        h = (x - shift) * scale
        if train:
            h = torch.where(torch.rand(h.shape, generator=gen) < keep, h / keep, 0.0)
        if config.hidden:
            h = torch.relu(h @ params["w1"] + params["b1"])
            if train:
                h = torch.where(torch.rand(h.shape, generator=gen) < keep, h / keep, 0.0)
            return h @ params["w2"] + params["b2"]
        return h @ params["w1"] + params["b1"]

    best, best_step, waited, step = -np.inf, 0, 0, 0
    while True:
        if step % settings.eval_every == 0:
            with torch.no_grad():
                score = float(data.val_score(net(data.val_x, False).unsqueeze(0))[0])
            if score > best:
                best, best_step, waited = score, step, 0
                state = {k: v.detach().clone() for k, v in params.items()}
            else:
                waited += 1
            if waited >= settings.patience or step >= settings.max_steps:
                return best, best_step, step, state
        idx = P.minibatches(sampler, n, config.batch_size, 1)[0]
        assert len(idx) == rows and len(set(idx.tolist())) == rows   # without replacement
        opt.zero_grad()
        task.loss(net(data.x[idx], True), data.y[idx]).backward()
        opt.step()
        step += 1


def test_fast_grid_equals_the_plain_jukemir_loop_and_selects_the_same_configuration():
    store = genre_store(f"memory://{uuid.uuid4().hex}")
    task = make_task(TaskSpec("genre", "multiclass", ["genre"]))
    data = _train_data(store, task)
    grid = P.jukemir_grid()
    ids = [i for i, c in enumerate(grid) if c.lr >= 1e-4][::5]   # both depths, batch sizes, std on/off
    settings = P.TrainSettings(max_steps=120, eval_every=8, patience=3, seed=4)
    fast = P.train_configs([(i, grid[i]) for i in ids], data, settings)
    plain = {}
    for r in fast:
        plain[r.config_id] = reference_train(r.config_id, r.config, data, task, settings)
        score, best_step, steps, state = plain[r.config_id]
        assert (r.best_step, r.steps) == (best_step, steps), r.config.label()
        assert r.valid_score == pytest.approx(score)
        for k, v in state.items():
            torch.testing.assert_close(r.params[k], v, rtol=1e-4, atol=1e-5)
    assert {c.hidden for c in (grid[i] for i in ids)} == {0, 512} and len({r.steps for r in fast}) > 1
    best_plain = max(plain, key=lambda i: (plain[i][0], -i))
    assert P.select(fast).config_id == best_plain


@pytest.mark.parametrize("protocol", ["linear", "quick", "jukemir"])
def test_selection_never_looks_at_test_labels(monkeypatch, protocol):
    url = f"memory://{uuid.uuid4().hex}"
    store = genre_store(url)
    settings = P.TrainSettings(max_steps=300 if protocol != "jukemir" else 80, eval_every=10, patience=4, seed=0)
    spec = TaskSpec("genre", "multiclass", ["genre"])
    calls = []
    cls = type(make_task(spec))
    real_score, real_primary = cls.score, cls.primary_scores

    def spy(self, outputs, targets):
        calls.append(len(targets))
        return real_score(self, outputs, targets)

    def spy_primary(self, outputs, targets):
        calls.append(len(targets))
        return real_primary(self, outputs, targets)

    monkeypatch.setattr(cls, "score", spy)
    monkeypatch.setattr(cls, "primary_scores", spy_primary)
    honest = P.evaluate_task(store, make_task(spec), protocol, settings)
    n_valid, n_test = honest.details["tracks"]["valid"], honest.details["tracks"]["test"]
    assert n_valid != n_test and calls[-1] == n_test and calls[:-1].count(n_test) == 0   # test scored once
    assert calls[:-1] and set(calls[:-1]) == {n_valid}
    # adversarial test labels: rotate every test label; the chosen probe must not move
    for i in store.split("test"):
        store.tracks[i]["genre"] = {"g0": "g1", "g1": "g2", "g2": "g0"}[store.tracks[i]["genre"]]
    adversarial = P.evaluate_task(store, make_task(spec), protocol, settings)
    chosen = "lambda" if protocol == "linear" else "config_id"
    assert adversarial.details[chosen] == honest.details[chosen]
    assert adversarial.metrics["valid_accuracy"] == honest.metrics["valid_accuracy"]
    assert honest.metrics["accuracy"] > 0.9 and adversarial.metrics["accuracy"] < 0.1
    if protocol == "jukemir":
        assert honest.details["n_configs"] == 216


def test_a_configuration_stopped_by_the_step_cap_is_reported():
    store = genre_store(f"memory://{uuid.uuid4().hex}")
    spec = TaskSpec("genre", "multiclass", ["genre"])
    r = P.evaluate_task(store, make_task(spec), "quick", P.TrainSettings(max_steps=20, eval_every=8, patience=100))
    assert r.details["capped"] == {"max_steps": 20, "configs": [r.details["config_id"]]}
    r = P.evaluate_task(store, make_task(spec), "quick", P.TrainSettings(max_steps=10_000, eval_every=8, patience=3))
    assert "capped" not in r.details and r.details["steps"] < 10_000


def test_quick_probe_learns_and_is_deterministic():
    store = genre_store(f"memory://{uuid.uuid4().hex}")
    spec = TaskSpec("genre", "multiclass", ["genre"])
    a = P.evaluate_task(store, make_task(spec), "quick", SETTINGS)
    b = P.evaluate_task(store, make_task(spec), "quick", SETTINGS)
    assert a.metrics == b.metrics and a.details == b.details
    assert a.metrics["accuracy"] > 0.9
    assert a.details["config"]["hidden"] == 0 and a.details["n_configs"] == 1


# --------------------------------------------------------------------------- song-level ensembles
SONG_KEYS = ("C major", "A minor", "G major")


def song_store(url, seed=0):
    """Songs cut into 3 clips of 2 chunks each; a clip's embedding is its key's centre plus noise
    large enough that single clips are often wrong. 24/15/9 songs in train/valid/test."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, DIM)) * 2
    pattern = ["train"] * 8 + ["valid"] * 5 + ["test"] * 3
    with EmbeddingsWriter(url, DIM, layer=-1, model={"recipe": "test"}) as w:
        for s in range(48):
            k, split = s % 3, pattern[s // 3]
            for c in range(3):
                clip = centres[k] + rng.normal(size=DIM) * 1.5
                w.append({"track_id": f"{s:04d}-{c}", "split": split, "key": SONG_KEYS[k], "song": f"{s:04d}"},
                         clip + rng.normal(size=(2, DIM)) * 0.3)
    return Embeddings(url)


def test_song_ensemble_reports_the_strategy_best_on_valid():
    store = song_store(f"memory://{uuid.uuid4().hex}")
    spec = TaskSpec("key", "key", ["key"], group="song")
    r = P.evaluate_task(store, make_task(spec), "quick", P.TrainSettings(max_steps=400, eval_every=10, patience=8))
    e = r.details["ensemble"]
    assert e["songs"] == {"train": 24, "valid": 15, "test": 9} and r.details["tracks"]["test"] == 27
    assert set(e["valid"]) == set(e["test"]) == set(ENSEMBLES)
    assert e["strategy"] == max(ENSEMBLES, key=lambda k: (e["valid"][k], -ENSEMBLES.index(k)))
    assert r.metrics["weighted_score"] == e["test"][e["strategy"]]
    assert r.metrics["valid_weighted_score"] == pytest.approx(e["valid"][e["strategy"]])
    assert {"accuracy", "clip_weighted_score", "clip_accuracy"} <= set(r.metrics)
    assert r.metrics["clip_accuracy"] < 1.0 and r.metrics["accuracy"] > r.metrics["clip_accuracy"]


def test_song_ensemble_strategy_never_looks_at_test_labels(monkeypatch):
    store = song_store(f"memory://{uuid.uuid4().hex}", seed=1)
    configs = [(i, c) for i, c in enumerate(P.jukemir_grid())
               if c.hidden == 0 and c.batch_size == 64 and c.lr == 1e-3][::4]
    settings = P.TrainSettings(max_steps=400, eval_every=10, patience=8, seed=0)
    spec = TaskSpec("key", "key", ["key"], group="song")
    key_type = type(make_task(spec))
    calls = []
    real = key_type.score_labels

    def spy(self, pred, targets):
        calls.append(len(targets))
        return real(self, pred, targets)

    monkeypatch.setattr(key_type, "score_labels", spy)
    honest = P.evaluate_track_task(store, make_task(spec), configs, settings)
    # test: 9 songs (one call per strategy) and 27 clips, scored only after training and the choice
    assert calls.count(9) == 4 and calls.count(27) == 1 and set(calls[-5:]) == {9, 27}
    rotate = dict(zip(SONG_KEYS, SONG_KEYS[1:] + SONG_KEYS[:1], strict=True))
    for i in store.split("test"):   # adversarial test labels (still one key per song)
        store.tracks[i]["key"] = rotate[store.tracks[i]["key"]]
    adversarial = P.evaluate_track_task(store, make_task(spec), configs, settings)
    for k in ("strategy", "valid"):
        assert adversarial.details["ensemble"][k] == honest.details["ensemble"][k]
    assert adversarial.details["config_id"] == honest.details["config_id"]
    assert adversarial.metrics["valid_weighted_score"] == honest.metrics["valid_weighted_score"]
    assert adversarial.details["ensemble"]["test"] != honest.details["ensemble"]["test"]
    assert adversarial.metrics["accuracy"] < honest.metrics["accuracy"]


# --------------------------------------------------------------------------- frame-level tasks
def frame_store(url, tmp_path, kind):
    """Frame embeddings that encode the annotation (beat frames / chord class) plus noise."""
    rng = np.random.default_rng(5)
    proto = rng.normal(size=(25, DIM)) * 2
    hop = 0.05
    with EmbeddingsWriter(url, DIM, frames=True, layer=-1, frame_rate=1 / hop) as w:
        for i in range(10):
            times = np.arange(80) * hop + hop / 2
            ann = tmp_path / f"{kind}{i}.txt"
            if kind == "beats":
                beats = np.arange(0.3 + 0.02 * i, 3.9, 0.5)
                ann.write_text("\n".join(f"{b:.3f}" for b in beats))
                on = np.zeros(len(times))
                on[[int(np.argmin(abs(times - b))) for b in beats]] = 1
                frames = np.outer(on, proto[0]) + rng.normal(size=(80, DIM)) * 0.3
            else:
                labels = ["C:maj", "A:min", "G:7", "N"][i % 2:][:3]
                ann.write_text("".join(f"{k:.1f} {k + 1.3:.1f} {lab}\n" for k, lab in zip([0, 1.3, 2.6], labels, strict=False)))
                from mirkit.eval.tasks import chord_class
                cls = np.array([chord_class(labels[min(int(t // 1.3), 2)]) for t in times])
                frames = proto[cls % 25] + rng.normal(size=(80, DIM)) * 0.3
            split = ["train"] * 6 + ["valid"] * 2 + ["test"] * 2
            w.append({"track_id": f"t{i}", "split": split[i], "ann": str(ann)}, frames.mean(0, keepdims=True),
                     frames, times)
    return Embeddings(url)


@pytest.mark.parametrize("protocol", ["linear", "quick"])
@pytest.mark.parametrize("kind,metric", [("beats", "f_measure"), ("chords", "majmin")])
def test_frame_probe_end_to_end(tmp_path, kind, metric, protocol):
    store = frame_store(f"memory://{uuid.uuid4().hex}", tmp_path, kind)
    task = make_task(TaskSpec(kind, kind, ["ann"]))
    settings = P.TrainSettings(max_steps=150, eval_every=15, patience=4, seed=0)
    r = P.evaluate_task(store, task, protocol, settings)
    assert r.metrics[metric] > 0.8
    if kind == "beats":
        assert 0.1 <= r.details["decode"]["threshold"] <= 0.9


def test_frame_task_without_frames_fails_clearly():
    store = genre_store(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(ValueError, match="no per-frame embeddings"):
        P.evaluate_task(store, make_task(TaskSpec("b", "beats", ["genre"])), "quick", SETTINGS)


# --------------------------------------------------------------------------- command
def cli_app():
    from mirkit.cli import app
    return app


def write_params(path, **probe):
    import yaml
    path.write_text(yaml.safe_dump({"probe": probe}))


def test_probe_command_validates_before_work(tmp_path):
    url = str(tmp_path / "a.zarr")
    genre_store(url)
    runner = CliRunner()
    params = tmp_path / "params.yaml"
    write_params(params, runs={"a": url}, tasks={"g": {"type": "genres", "label": "genre"}})
    res = runner.invoke(cli_app(), ["probe", "--params", str(params)])
    assert res.exit_code == 2 and "probe.tasks.g.type" in res.output
    write_params(params, runs={"a": url}, tasks={"g": {"type": "multiclass", "label": "mood"}})
    res = runner.invoke(cli_app(), ["probe", "--params", str(params)])
    assert res.exit_code == 2 and "column 'mood'" in res.output
    write_params(params, runs={"a": url}, tasks={"g": {"type": "multiclass", "label": "genre", "group": "song"}})
    res = runner.invoke(cli_app(), ["probe", "--params", str(params)])
    assert res.exit_code == 2 and "probe.tasks.g.group: column 'song'" in " ".join(res.output.split())
    write_params(params, runs={"a": str(tmp_path / "nope.zarr")}, tasks={"g": {"type": "multiclass", "label": "genre"}})
    res = runner.invoke(cli_app(), ["probe", "--params", str(params)])
    assert res.exit_code == 2 and "nope.zarr: no embeddings store here" in res.output


def test_probe_command_writes_other_tasks_then_fails_naming_the_bad_task(tmp_path):
    runs = {"pretrained": str(tmp_path / "a.zarr"), "random-init": str(tmp_path / "b.zarr")}
    genre_store(runs["pretrained"], seed=0)
    genre_store(runs["random-init"], seed=1)
    params = tmp_path / "params.yaml"
    out, plot = tmp_path / "m" / "probe.json", tmp_path / "p" / "probe.png"
    write_params(params, runs=runs, tasks={"genre": {"type": "multiclass", "label": "genre"},
                                           "beat": {"type": "beats", "label": "genre"}},
                 out=str(out), plot=str(plot), max_steps=40, eval_every=10, patience=2, device="cpu")
    res = CliRunner().invoke(cli_app(), ["probe", "--params", str(params)])
    assert res.exit_code == 1, res.output   # a failed task fails the stage, after writing the others
    assert "probe task(s) failed: pretrained/beat, random-init/beat" in " ".join(res.output.split())
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"pretrained", "random-init"}
    assert set(metrics["pretrained"]) == {"genre"} and "accuracy" in metrics["pretrained"]["genre"]
    assert "no per-frame embeddings" in " ".join(res.output.split())
    assert "pretrained/genre: started (1 configuration)" in res.output   # plain progress lines (no terminal)
    assert "pretrained/genre: done in" in res.output
    details = json.loads((out.parent / "probe.details.json").read_text())
    assert "error" in details["runs"]["pretrained"]["beat"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_song_scores_of_many_configurations_at_once_equal_one_at_a_time():
    from mirkit.eval.tasks import Songs
    rng = np.random.default_rng(3)
    tracks = [{"song": f"s{i // 3}", "key": SONG_KEYS[(i // 3) % 3]} for i in range(30)]
    songs = Songs.of(tracks, "song")
    task = make_task(TaskSpec("key", "key", ["key"], group="song"))
    task.fit(tracks)
    y = task.targets(tracks)
    outputs = rng.normal(size=(6, 30, 24))
    outputs[:, ::4] = np.round(outputs[:, ::4])   # ties in votes and maxima
    fast = task.song_primary_scores(torch.as_tensor(outputs), y, songs)
    slow = [max(m["weighted_score"] for m in task.score_songs(o, y, songs).values()) for o in outputs]
    np.testing.assert_allclose(fast, slow)


# --------------------------------------------------------------------------- fusion, layers, intervals
def test_mean_fusion_equals_sklearn_logistic_regression_on_mean_pooled_rows(tmp_path):
    """`mean` fusion = JukeMIR/MARBLE: one mean-pooled row per track, then an L2 logistic regression.
    Same objective as scikit-learn's LogisticRegression(C=1/(n*lam)) on standardised pooled rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from mirkit.eval.protocols import PROTOCOLS
    store = genre_store(str(tmp_path / "g.zarr"), n=90, seed=4)
    task = make_task(TaskSpec("genre", "multiclass", ["genre"]))
    settings = P.TrainSettings(linear_tol=1e-10)
    ts = P.track_set(store, task)
    rows = P.track_rows(store, ts, "mean", torch.device("cpu"))
    fitted = P.fit_track(ts, rows, PROTOCOLS["linear"], settings)
    ours = torch.softmax(torch.as_tensor(P.track_outputs(ts, rows, fitted, "test")).double(), -1).numpy()

    def pooled(split):
        x, group = store.chunk_rows(ts.index[split])
        return np.stack([x[group == k].mean(0) for k in range(len(ts.index[split]))])

    x_tr = pooled("train").astype(np.float64)
    scaler = StandardScaler().fit(x_tr)
    x_te = scaler.transform(pooled("test").astype(np.float64))
    lam = fitted.details["lambda"]
    sk = LogisticRegression(C=1 / (len(x_tr) * lam), tol=1e-12, max_iter=10000).fit(scaler.transform(x_tr), ts.y["train"])
    np.testing.assert_allclose(ours, sk.predict_proba(x_te), atol=1e-5)
    # and at a weak strength, where the probabilities are far from uniform
    y_tr = torch.as_tensor(ts.y["train"])
    weak = P.fit_linear_task(task, rows["train"][0], y_tr, rows["valid"][0], lambda out: np.zeros(len(out)),
                             torch.device("cpu"), lambdas=(1e-3,), tol=1e-10)
    probs = torch.softmax(weak.outputs(rows["test"][0]).double(), -1).numpy()
    sk = LogisticRegression(C=1 / (len(x_tr) * 1e-3), tol=1e-12, max_iter=10000).fit(scaler.transform(x_tr), ts.y["train"])
    assert probs.max() > 0.9
    np.testing.assert_allclose(probs, sk.predict_proba(x_te), atol=1e-5)
    # the stage's test accuracy is that probe's
    result = P.evaluate_task(store, task, "linear", settings, fusion="mean")
    assert result.metrics["accuracy"] == pytest.approx(float((ours.argmax(1) == ts.y["test"]).mean()))
    assert result.details["fusion"] == "mean"
    # late fusion trains on chunks: another probe (more rows than tracks)
    late = P.evaluate_task(store, task, "linear", settings, fusion="late")
    assert late.details["chunks"]["train"] > result.details["chunks"]["train"] == len(ts.index["train"])


def layered_store(url, n=90, seed=0, test_shift=1):
    """Three layers of the same tracks: layer 0 carries the genre on every split; layer 1 is noise on
    train/valid but, on test, encodes the (adversarial: shifted by ``test_shift``) test labels; layer -1
    is noise. Test labels are shifted from the classes the features show, so a probe that learned the
    genre is wrong on test: choosing the layer on test would pick layer 1 or -1, on valid layer 0."""
    from mirkit.eval.layered import layer_url
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, DIM)) * 3
    writers = {k: EmbeddingsWriter(layer_url(url, k), DIM, flush_every=16, layer=k, pooling="mean")
               for k in (-1, 0, 1)}
    for i in range(n):
        c = i % 3
        split = ["train", "train", "train", "valid", "test", "train", "valid", "test", "train", "valid"][(i // 3) % 10]
        label = (c + test_shift) % 3 if split == "test" else c
        k_chunks = 2 + i % 2
        feats = {0: centres[c] + rng.normal(size=(k_chunks, DIM)),
                 1: (centres[label] if split == "test" else 0) + rng.normal(size=(k_chunks, DIM)),
                 -1: rng.normal(size=(k_chunks, DIM))}
        for k, w in writers.items():
            w.append({"track_id": f"t{i}", "split": split, "genre": f"g{label}"}, feats[k])
    for w in writers.values():
        w.close()
    return url


@pytest.mark.parametrize("protocol", ["linear", "quick"])
def test_the_layer_is_chosen_on_valid_only(tmp_path, protocol):
    from mirkit.eval.layered import open_layers
    task_spec = TaskSpec("genre", "multiclass", ["genre"])
    adversarial = open_layers(layered_store(str(tmp_path / "adv.zarr"), test_shift=1))
    honest = open_layers(layered_store(str(tmp_path / "ok.zarr"), test_shift=0))
    assert list(adversarial) == [0, 1, -1]
    res = {name: P.evaluate_task(s, make_task(task_spec), protocol, SETTINGS) for name, s in
           (("adv", adversarial), ("ok", honest))}
    layers = res["adv"].details["layers"]
    curve = layers["curve"]
    assert layers["chosen"] == 0 == res["ok"].details["layers"]["chosen"]
    assert res["adv"].metrics["accuracy"] < 0.2 < 0.9 < res["ok"].metrics["accuracy"]   # test labels did change
    assert max(curve["1"]["test"], curve["-1"]["test"]) > curve["0"]["test"]   # test would have chosen otherwise
    # the validation scores that chose the layer do not depend on the test labels
    assert {k: v["valid"] for k, v in curve.items()} == \
        {k: v["valid"] for k, v in res["ok"].details["layers"]["curve"].items()}
    single = P.evaluate_task(adversarial, make_task(task_spec), protocol, SETTINGS, layers=1)
    assert "layers" not in single.details and single.metrics["accuracy"] == pytest.approx(curve["1"]["test"])


def test_weighted_sum_of_layers_puts_its_weight_on_the_informative_layer(tmp_path):
    from mirkit.eval.layered import open_layers
    stores = open_layers(layered_store(str(tmp_path / "ok.zarr"), test_shift=0))
    result = P.evaluate_task(stores, make_task(TaskSpec("genre", "multiclass", ["genre"])), "linear", SETTINGS,
                             layers="weighted")
    weights = result.details["layers"]["weights"]
    assert set(weights) == {"0", "1", "-1"} and sum(weights.values()) == pytest.approx(1.0)
    assert weights["0"] == max(weights.values()) > 0.4   # above the uniform 1/3 it starts from
    assert result.metrics["accuracy"] > 0.9


def test_probe_stage_intervals_verdict_and_seeds(tmp_path):
    from mirkit.eval.probe_stage import ProbeParams, run, write_outputs
    good = genre_store(str(tmp_path / "good.zarr"), n=150, seed=1)
    noise_url = str(tmp_path / "noise.zarr")
    rng = np.random.default_rng(9)
    with EmbeddingsWriter(noise_url, DIM, layer=-1) as w:
        for t in good.tracks:
            w.append(dict(t), rng.normal(size=(2, DIM)))
    params = ProbeParams(runs={"good": good.url, "noise": noise_url}, tasks={"genre": {"type": "multiclass", "label": "genre"}},
                         protocol="quick", seeds=2, fusion="both", baseline="noise", n_boot=200, max_steps=800,
                         eval_every=10, patience=10, device="cpu", out=str(tmp_path / "probe.json"),
                         plot=str(tmp_path / "probe.png"))
    params.check()
    report = run(params)
    assert set(report.metrics["good"]) == {"genre@mean", "genre@late"}
    m = report.metrics["good"]["genre@mean"]
    assert m["accuracy_low"] <= m["accuracy"] <= m["accuracy_high"]
    assert "accuracy_sd" in m and report.details["good"]["genre@mean"]["seeds"]["n"] == 2
    verdict = report.verdicts["genre@mean"]["good"]
    assert verdict["verdict"] == "better" and verdict["low"] > 0
    assert m["delta_vs_noise_low"] == verdict["low"]
    write_outputs(report, params)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["noise"]["genre@late"]["accuracy_high"] >= saved["noise"]["genre@late"]["accuracy"]
    assert json.loads((tmp_path / "probe.details.json").read_text())["comparisons"]["genre@late"]["good"]["verdict"]


def test_protocol_settings_are_validated_once():
    from mirkit.eval.probe_stage import ProbeParams
    from mirkit.params import ParamsError
    base = {"runs": {"a": "x.zarr"}, "tasks": {"g": {"type": "multiclass", "label": "genre"}}}
    for bad, match in (({"fusion": "max"}, "probe.fusion='max'"), ({"layers": "top"}, "probe.layers='top'"),
                       ({"baseline": "b"}, "probe.baseline='b'"), ({"protocol": "svm"}, "probe.protocol='svm'")):
        with pytest.raises(ParamsError, match=match):
            ProbeParams(**base, **bad).check()
    ProbeParams(**base, layers=3).check()


def test_probe_command_on_layered_stores_shows_intervals_the_chosen_layer_and_the_verdict(tmp_path):
    runs = {"pretrained": layered_store(str(tmp_path / "a.zarr"), test_shift=0),
            "random-init": str(tmp_path / "b.zarr")}
    rng = np.random.default_rng(2)
    with EmbeddingsWriter(runs["random-init"], DIM, layer=-1) as w:
        for t in Embeddings(runs["pretrained"]).tracks:
            w.append(dict(t), rng.normal(size=(2, DIM)))
    params = tmp_path / "params.yaml"
    out, plot = tmp_path / "probe.json", tmp_path / "probe.png"
    write_params(params, runs=runs, tasks={"genre": {"type": "multiclass", "label": "genre"}}, out=str(out),
                 plot=str(plot), baseline="random-init", n_boot=200, device="cpu")
    res = CliRunner().invoke(cli_app(), ["probe", "--params", str(params)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "± " in text and "(L0)" in text
    assert "genre: pretrained beats random-init by +" in text and "(interval clear of zero)" in text
    metrics = json.loads(out.read_text())["pretrained"]["genre"]
    assert metrics["layer"] == 0 and metrics["accuracy_low"] <= metrics["accuracy"] <= metrics["accuracy_high"]
    assert (tmp_path / "probe_layers.png").read_bytes()[:4] == b"\x89PNG"
    shown = CliRunner().invoke(cli_app(), ["probe", "--params", str(params), "--show"])
    assert shown.exit_code == 0 and "(L0)" in shown.output and "beats random-init" in " ".join(shown.output.split())
