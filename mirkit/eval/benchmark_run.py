"""``mirkit benchmark run``: one standard benchmark, several models, one leaderboard.

Steps (each reuses the stage that owns it):

1. check the user's copy against the shipped JukeMIR split lists (:mod:`mirkit.eval.benchmark_check`);
   a partial copy runs on what is there and every output says so;
2. write the manifest (:mod:`mirkit.eval.benchmarks`) with each file's content hash
   (:func:`mirkit.data.audio.fingerprint`, BLAKE2b of the bytes, as the extract stage's feature reuse);
3. extract every model, every layer from one forward pass, through the extract stage's
   :func:`mirkit.eval.extract.write_stores`. Stores are cached under
   ``<cache>/<benchmark>/<model>-<key>/layer_<n>.zarr`` where ``key`` hashes the model's config and
   weights digest: a rerun, or a run with another list of models, resumes or reuses them; a store
   whose audio changed (another content hash for a track) is rebuilt;
4. probe each layer with the benchmark's standard task (:data:`STANDARD`) through the probe stage's
   layered evaluation: the layer is chosen on the VALIDATION score only, test is scored per layer
   after the choice (the per-layer curve);
5. bootstrap the chosen layer's test score (tracks, or songs for GiantSteps) and the paired difference
   of each model to the leader (:mod:`mirkit.eval.bootstrap`), and write the leaderboard
   (:mod:`mirkit.eval.leaderboard`).

The protocol defaults to ``jukemir`` (the 216-configuration grid chosen on valid, the protocol of
JukeMIR, Castellon et al. 2021, which MARBLE and Myna report); ``linear`` is the seconds-scale
alternative. Fusion is JukeMIR's and MARBLE's ``mean``: a clip's chunk embeddings are averaged before
the probe.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirkit.errors import InputError, MirkitError
from mirkit.eval.benchmark_check import SPLITS, CopyCheck, check_copy
from mirkit.eval.benchmarks import BENCHMARKS, write_manifest

#: the standard probe task of each benchmark (JukeMIR's; metric = the task type's primary metric)
STANDARD: dict[str, dict[str, dict[str, Any]]] = {
    "gtzan": {"genre": {"type": "multiclass", "label": "genre"}},                     # accuracy
    "giantsteps": {"key": {"type": "key", "label": "key", "group": "song"}},          # weighted score per song
    "mtt": {"tags": {"type": "multilabel", "label": "tags"}},                          # macro ROC-AUC
    "emomusic": {"emotion": {"type": "regression", "label": ["arousal", "valence"]}},  # mean R²
}
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ModelSpec:
    """One entry of ``--models``: ``PATH``, ``NAME=PATH``, or ``random:PATH`` (the same architecture
    freshly initialised with the seed: the baseline)."""

    name: str
    path: str
    random_init: bool = False


def parse_models(text: str | list[str]) -> list[ModelSpec]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise InputError("--models: give at least one model folder (comma-separated)")
    specs: list[ModelSpec] = []
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        random_init = path.startswith("random:")
        path = path.removeprefix("random:")
        if not path:
            raise InputError(f"--models: {item!r} names no model folder")
        name = name or (("random-" if random_init else "") + (Path(path).name or path))
        if not MODEL_NAME.match(name):
            raise InputError(f"--models: model name {name!r}: use letters, digits, '.', '_' or '-' (NAME=PATH)")
        if name in {s.name for s in specs}:
            raise InputError(f"--models: two models are named {name!r}; name them with NAME=PATH")
        specs.append(ModelSpec(name, path, random_init))
    return specs


@dataclass
class BenchmarkParams:
    name: str
    audio: str
    models: list[ModelSpec]
    out: str = ""                  # "" = results/benchmarks/<name>
    cache: str = ""                # "" = <out>/embeddings
    protocol: str = "jukemir"
    layers: str = "all"            # all | last
    n_boot: int = 1000
    seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    threads: int = 1

    def __post_init__(self) -> None:
        from mirkit.eval.probe import PROTOCOLS
        if self.name not in BENCHMARKS:
            raise InputError(f"unknown benchmark '{self.name}' (choose from {', '.join(BENCHMARKS)})")
        if self.protocol not in PROTOCOLS:
            raise InputError(f"--protocol {self.protocol}: choose from {', '.join(PROTOCOLS)}")
        if self.layers not in ("all", "last"):
            raise InputError(f"--layers {self.layers}: choose all or last")
        if self.n_boot < 1:
            raise InputError(f"--bootstrap {self.n_boot}: must be at least 1")
        self.out = self.out or f"results/benchmarks/{self.name}"
        self.cache = self.cache or str(Path(self.out) / "embeddings")


@dataclass
class LayerScore:
    layer: int
    valid: float
    test: float
    metrics: dict[str, float]


@dataclass
class ModelResult:
    spec: ModelSpec
    store_dir: str = ""
    extract: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerScore] = field(default_factory=list)
    chosen: LayerScore | None = None
    test_units: Any = None         # TestUnits of the chosen layer
    error: str = ""


@dataclass
class BenchmarkResult:
    params: BenchmarkParams
    check: CopyCheck
    task: str
    metric: str
    models: list[ModelResult]
    manifest: str


def layer_name(layer: int) -> str:
    return "last" if layer == -1 else str(layer)


def cache_key(frozen: Any, random_init: bool, seed: int) -> str:
    """What the cached embeddings depend on: the model's config, its weights (digest) or random
    seed, and the extract settings used here (default pooling, no frames, the default tail rule)."""
    from mirkit.eval.extract import MIN_TAIL
    info = {k: v for k, v in frozen.model_info.items() if k != "path"}
    blob = json.dumps({"config": frozen.config.to_dict(), "model": info, "random_init": random_init,
                       "seed": seed if random_init else None, "pooling": None, "frames": False,
                       "min_tail": MIN_TAIL}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _drop_if_audio_changed(store_dir: Path, content: dict[str, str]) -> bool:
    """Remove the cached stores of a model when a track's audio has another content hash than
    when it was embedded (extract resumes by track id and would otherwise keep the old embeddings)."""
    import zarr
    for url in sorted(store_dir.glob("layer_*.zarr")):
        try:
            tracks = dict(zarr.open_group(store=str(url), mode="r").attrs).get("tracks", [])
        except Exception:   # unreadable: extract replaces it
            continue
        if any(t.get("content") not in (None, content.get(str(t.get("track_id")))) for t in tracks):
            shutil.rmtree(store_dir)
            return True
    return False


Progress = Callable[[str, int, int, str], None]   # (phase, done, total, info)


def prepare(p: BenchmarkParams, on_progress: Progress | None = None) -> tuple[CopyCheck, Path]:
    """Check the copy and write ``<out>/manifest.csv`` (with content hashes); InputError when a split
    has nothing to run on."""
    from mirkit.data.audio import fingerprint
    audio = Path(p.audio)
    if not audio.is_dir():
        raise InputError(f"--audio {audio}: not a folder")
    check = check_copy(p.name, audio, (lambda d, t: on_progress("check", d, t, "")) if on_progress else None)
    if not check.rows:
        raise InputError(f"--audio {audio}: no usable {p.name} audio found there "
                         f"({sum(check.expected.values())} entries expected; see `mirkit benchmark check`)")
    empty = [s for s in SPLITS if not check.usable[s]]
    if empty:
        raise InputError(f"--audio {audio}: no usable {p.name} audio for split '{empty[0]}' "
                         f"(0 of {check.expected[empty[0]]}); the probe needs train, valid and test")
    hashes: dict[str, str] = {}
    for k, row in enumerate(check.rows, start=1):
        if row["path"] not in hashes:
            hashes[row["path"]] = fingerprint(row["path"]).split(":")[1]
        row["content"] = hashes[row["path"]]
        if on_progress:
            on_progress("hash", k, len(check.rows), row["track_id"])
    manifest = Path(p.out) / "manifest.csv"
    write_manifest(check.rows, manifest)
    return check, manifest


def extract_model(p: BenchmarkParams, spec: ModelSpec, tracks: list[Any], manifest: Path,
                  on_progress: Progress | None = None) -> tuple[dict[int, str], dict[str, Any], str]:
    """Every layer of one model into its cached stores; returns (layer -> store, report, store folder)."""
    from mirkit.eval.extract import ExtractParams, load_frozen, write_stores
    frozen = load_frozen(spec.path, p.device, spec.random_init, p.seed)
    layers = [-1] if p.layers == "last" else frozen.resolve_layers("all", None)[0]
    store_dir = Path(p.cache) / p.name / f"{spec.name}-{cache_key(frozen, spec.random_init, p.seed)}"
    rebuilt = _drop_if_audio_changed(store_dir, {t.track_id: str(t.labels.get("content")) for t in tracks})
    store_dir.mkdir(parents=True, exist_ok=True)
    outs = {layer: str(store_dir / f"layer_{layer_name(layer)}.zarr") for layer in layers}
    ep = ExtractParams(model=spec.path, manifest=str(manifest), features="", out=str(store_dir), frames=False,
                       batch_size=p.batch_size, device=p.device, random_init=spec.random_init, seed=p.seed)
    report = write_stores(frozen, tracks, ep, outs, manifest.parent,
                          (lambda d, t, tid: on_progress(f"extract {spec.name}", d, t, tid)) if on_progress else None)
    info = {"status": "rebuilt (audio changed)" if rebuilt else report.status, "tracks": report.n_tracks,
            "embedded": report.embedded, "reused": report.skipped, "failed": len(report.failures),
            "failures": [list(f) for f in report.failures[:20]], "dim": report.dim, "layers": len(layers),
            "model": frozen.model_info}
    if report.n_tracks and not report.succeeded:
        raise InputError(f"model {spec.name}: no track could be embedded "
                         f"({report.failures[0][0]}: {report.failures[0][1]})")
    return outs, info, str(store_dir)


def probe_layers(p: BenchmarkParams, outs: dict[int, str], task_name: str, spec: dict[str, Any],
                 on_progress: Progress | None = None, label: str = "") -> tuple[list[LayerScore], LayerScore, Any]:
    """Probe every layer's store through the probe stage's layered evaluation (``layers: best``: the
    layer is chosen on the validation score only), with JukeMIR's mean fusion (the clip's chunk
    embeddings averaged before the probe, :data:`mirkit.eval.protocols.DEFAULT_FUSION`). Returns
    the per-layer curve, the chosen layer and its test units (for intervals)."""
    from mirkit.device import pick
    from mirkit.eval.embeddings import Embeddings
    from mirkit.eval.probe import TrainSettings, evaluate_task
    from mirkit.eval.protocols import DEFAULT_FUSION
    from mirkit.eval.tasks import make_task, parse_tasks
    device = pick(p.device)
    settings = TrainSettings(seed=p.seed, device=str(device), stack=0 if device.type == "cuda" else 6)
    [task_spec] = parse_tasks({task_name: spec}).values()
    task = make_task(task_spec)
    stores = {layer: Embeddings(url) for layer, url in outs.items()}
    result = evaluate_task(stores, task, p.protocol, settings, fusion=DEFAULT_FUSION, layers="best")
    if on_progress:
        on_progress(f"probe {label}", 1, 1, f"{len(stores)} layer(s)")
    valid = float(result.metrics[f"valid_{task.primary}"])
    test = float(result.metrics[task.primary])
    layers_info = result.details.get("layers")
    if layers_info:
        chosen_layer = int(layers_info["chosen"])
        curve = [LayerScore(int(k), float(v["valid"]), float(v["test"]), {}) for k, v in layers_info["curve"].items()]
    else:
        [chosen_layer] = stores
        curve = [LayerScore(chosen_layer, valid, test, {})]
    chosen = LayerScore(chosen_layer, valid, test, {k: float(v) for k, v in result.metrics.items()})
    return curve, chosen, result.units["test"]


def run_benchmark(p: BenchmarkParams, on_progress: Progress | None = None) -> BenchmarkResult:
    """Check, manifest, extract, probe and score every model; a model that fails is reported and
    the others go on. Writes nothing but the manifest and the caches (see :mod:`mirkit.eval.leaderboard`)."""
    import torch

    from mirkit.data.manifest import read_manifest
    from mirkit.eval.tasks import make_task, parse_tasks
    if p.threads:
        torch.set_num_threads(p.threads)
    check, manifest = prepare(p, on_progress)
    tracks = read_manifest(manifest)
    [(task_name, spec)] = STANDARD[p.name].items()
    metric = make_task(next(iter(parse_tasks({task_name: spec}).values()))).primary
    results = []
    for model in p.models:
        res = ModelResult(model)
        results.append(res)
        try:
            outs, res.extract, res.store_dir = extract_model(p, model, tracks, manifest, on_progress)
            res.layers, res.chosen, res.test_units = probe_layers(p, outs, task_name, spec, on_progress, model.name)
        except (MirkitError, ValueError, OSError) as exc:
            res.error = str(exc).splitlines()[0]
    return BenchmarkResult(p, check, task_name, metric, results, str(manifest))
