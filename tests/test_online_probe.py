"""Online probes inside pretraining (mirkit.eval.online_probe): same numbers as the probe stage at step 0,
exact on resume, and the test split is never touched."""

import json
from pathlib import Path

import pytest
import torch
from train_helpers import interrupted_then_resumed, timeless

from mirkit.commands.pretrain import callbacks_for
from mirkit.eval.embeddings import EmbeddingsWriter
from mirkit.eval.probe import PROTOCOLS
from mirkit.train import checkpoint
from mirkit.train.live import read_curves
from mirkit.train.loop import PretrainParams, make_recipe, open_sources
from mirkit.train.loop import train as train_loop

PROTOCOL = "linear" if "linear" in PROTOCOLS else "quick"   # the fast one, once the probe stage has it

TASKS = {"colour": {"type": "multiclass", "label": "colour"}, "level": {"type": "regression", "label": "level"}}
SPLITS = ("train", "train", "valid", "valid", "test", "test")
COLOURS = ("red", "blue", "red", "blue", "red", "blue")


def labelled_manifest(tmp_path, corpus, extra_test_row=False):
    wavs = sorted(Path(corpus["audio"]).glob("*.wav"))
    rows = ["path,track_id,split,colour,level"] + [f"{p},{p.name},{s},{c},{0.5 * i}" for i, (p, s, c)
                                                   in enumerate(zip(wavs, SPLITS, COLOURS, strict=True))]
    if extra_test_row:   # a test clip whose features are nowhere: touching it would fail
        rows.append(f"{wavs[0]},not-in-the-store.wav,test,red,1.0")
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def params(tmp_path, corpus, manifest, **kw):
    base = dict(recipe="myna", recipe_params={"myna": {"preset": "myna-tiny", "mask_ratio": 0.5, "crop_frames": 32}},
                features=corpus["features"], manifest=None, out=str(tmp_path / "ckpt"), log=str(tmp_path / "live"),
                summary=str(tmp_path / "summary.json"), steps=4, batch_size=4, warmup_steps=1, log_every=1,
                checkpoint_every=2, lr=1e-3, online_probe={"manifest": manifest, "tasks": TASKS, "every": 2,
                                                             "protocol": PROTOCOL})
    base.update(kw)
    return PretrainParams(**base)


def train(p, **kw):
    """The loop with the callbacks `mirkit pretrain` would pass (the online probes of ``p``)."""
    return train_loop(p, callbacks=callbacks_for(p), **kw)


def test_step_zero_online_probe_equals_the_probe_stage_on_the_same_random_init(tmp_path, tiny_corpus):
    from mirkit.eval.embeddings import Embeddings
    from mirkit.eval.extract import ExtractParams
    from mirkit.eval.extract import run as extract
    from mirkit.eval.probe import TrainSettings, evaluate_task
    from mirkit.eval.tasks import make_task, parse_tasks
    manifest = labelled_manifest(tmp_path, tiny_corpus)
    p = params(tmp_path / "run", tiny_corpus, manifest, steps=2)
    result = train(p)
    online = {k: v[1][0] for k, v in read_curves(p.log).items() if k.startswith("probe/") and v[0][0] == 0}
    assert set(online) == {"probe/colour/accuracy", "probe/level/r2"}
    assert result.history[0]["step"] == 0 and result.history[0]["probe/colour/accuracy"] == online["probe/colour/accuracy"]

    # the probe stage on embeddings extracted from the same initial weights (the run's step 0)
    recipe = make_recipe(p)
    sources, _ = open_sources(p, recipe)
    recipe.prepare(sources)
    torch.manual_seed(p.seed)
    model = recipe.build_model()
    checkpoint.save(tmp_path / "init", model, checkpoint.make_config(recipe, sources.features.spec, 0, {}))
    report = extract(ExtractParams(model=str(tmp_path / "init"), manifest=manifest, features=tiny_corpus["features"],
                                   out=str(tmp_path / "init.zarr"), frames=False, device="cpu"))
    assert report.from_store == 6 and report.computed == 0
    store = Embeddings(str(tmp_path / "init.zarr"))
    for name, spec in parse_tasks(TASKS).items():
        task = make_task(spec)
        metrics = evaluate_task(store, task, PROTOCOL, TrainSettings(seed=0, device="cpu")).metrics
        # the same probe's valid score: the stage's choosing pass vs the online probe's scoring pass (float32 sums)
        assert metrics[f"valid_{task.primary}"] == pytest.approx(online[f"probe/{name}/{task.primary}"], rel=1e-6)


def test_resume_with_online_probes_is_exact_and_the_test_split_is_never_read(tmp_path, tiny_corpus, monkeypatch):
    manifest = labelled_manifest(tmp_path, tiny_corpus, extra_test_row=True)
    appended = []
    original = EmbeddingsWriter.append

    def spy(self, track, *args, **kw):
        appended.append(track)
        return original(self, track, *args, **kw)

    monkeypatch.setattr(EmbeddingsWriter, "append", spy)
    full = params(tmp_path / "full", tiny_corpus, manifest)
    train(full)
    curves = read_curves(full.log)
    assert curves["probe/colour/accuracy"][0] == [0, 2, 4] and curves["probe/level/r2"][0] == [0, 2, 4]
    latest = json.loads((Path(full.log) / "metrics.json").read_text())
    assert latest["probe"]["colour"]["accuracy"] == curves["probe/colour/accuracy"][1][-1]

    test_ids = {"good004.wav", "good005.wav", "not-in-the-store.wav"}   # the manifest's test clips
    assert appended and not {t["track_id"].split("#")[0] for t in appended} & test_ids
    assert {t["split"] for t in appended} == {"train", "valid"}   # no copy of valid under another name

    resumed = params(tmp_path / "resumed", tiny_corpus, manifest)
    interrupted_then_resumed(resumed, stop_after=2, train=train)
    again = read_curves(resumed.log)
    assert timeless(again) == timeless(curves)


def test_online_probe_parameters_fail_early(tmp_path, tiny_corpus):
    from mirkit.params import ParamsError
    manifest = labelled_manifest(tmp_path, tiny_corpus)
    with pytest.raises(ParamsError, match="online_probe.protocol"):
        callbacks_for(params(tmp_path, tiny_corpus, manifest, online_probe={"manifest": manifest, "tasks": TASKS,
                                                              "protocol": "nope"}))
    with pytest.raises(ParamsError, match="online_probe.tasks"):
        callbacks_for(params(tmp_path, tiny_corpus, manifest, online_probe={"manifest": manifest, "tasks": {}}))
    with pytest.raises(ParamsError, match="online_probe.evry"):
        callbacks_for(params(tmp_path, tiny_corpus, manifest, online_probe={"manifest": manifest, "tasks": TASKS,
                                                                    "evry": 3}))
