"""Online probes: representation quality measured inside a pretraining run (``pretrain.online_probe``).

Every ``every`` steps, at step 0 (the random-init baseline of this very run) and at the last step,
the current encoder embeds the labelled clips of ``manifest`` exactly as ``mirkit extract`` does
(a frozen copy in eval mode, ``inference_mode``, the same windows, layer and pooling; features read
from the pretraining feature store), into an in-memory embeddings store; then each task of
``tasks`` (the probe stage's syntax) is probed with the probe stage's own code and protocol, fitted
on the ``train`` split and scored on ``valid``. The ``test`` split is never read: its clips are not
embedded, so no online number can leak test labels into training choices.

The probe is called with the splits it scores (``Splits(fit="train", choose="valid", score=("valid",))``):
the logged number is the chosen probe's metric on ``valid``; nothing is selected on it.

The probes reach the training loop as a callback (:class:`OnlineProbe`, a
:class:`mirkit.train.callbacks.Callback`) that ``mirkit pretrain`` builds when
``pretrain.online_probe`` is set; :mod:`mirkit.train` itself imports nothing from :mod:`mirkit.eval`.

Cost: one embedding pass over the labelled clips plus one probe per task; the training loop counts
it in ``TrainResult.eval_seconds`` (and ``callback_seconds["online probes"]``), outside throughput.
Under DDP only rank 0 probes. The
training model, its RNG stream and its BatchNorm statistics are untouched (the encoder is copied,
the probe seeds its own generators inside a forked RNG), so a resumed run logs the same numbers.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from mirkit.params import ParamsError, param
from mirkit.train.callbacks import Callback, RunInfo

if TYPE_CHECKING:
    from mirkit.models.base import Encoder
    from mirkit.models.config import ModelConfig

_IDS = itertools.count()


@dataclass
class OnlineProbeParams:
    """Section ``pretrain.online_probe`` (empty = no online probes)."""

    manifest: str = param("data/samples/manifest.csv", help="labelled manifest; its train and valid clips are "
                                                            "probed (test never), features from pretrain.features")
    tasks: dict = param({}, help="task name -> {type, label, ...}, the probe stage's syntax")
    every: int = param(100, ge=1, help="steps between online probes (plus step 0 and the last step)")
    protocol: str = param("linear", help="probe protocol (the probe stage's; linear takes seconds)")
    layer: int = param(-1, ge=-1, help="encoder layer (-1 = last, as extract)")
    pooling: str | None = param(None, help="null = the model's default pooling (as extract)")
    seed: int = param(0, ge=0, help="probe seed (as probe.seed)")

    def check(self) -> None:
        from mirkit.eval.probe import PROTOCOLS
        from mirkit.eval.tasks import parse_tasks
        if self.protocol not in PROTOCOLS:
            raise ParamsError(f"pretrain.online_probe.protocol={self.protocol!r}: allowed values are "
                              f"{', '.join(PROTOCOLS)}")
        parse_tasks(self.tasks, key="pretrain.online_probe.tasks")


def resolve_params(raw: dict | None) -> OnlineProbeParams | None:
    """``pretrain.online_probe`` as parameters, or None when it is empty/null."""
    if not raw:
        return None
    from mirkit.params import resolve
    return resolve(OnlineProbeParams, raw, section="pretrain.online_probe")


class OnlineProbes:
    """Labelled clips (train + valid only) held in memory, probed on demand with an encoder."""

    SPLITS = ("train", "valid")

    def __init__(self, p: OnlineProbeParams, features_url: str, feature_set: str, total_steps: int,
                 device: torch.device):
        from mirkit.data import store
        from mirkit.data.manifest import read_manifest
        from mirkit.eval.embeddings import track_row
        from mirkit.eval.tasks import FrameTask, check_columns, make_task, parse_tasks
        self.p, self.total_steps, self.device = p, total_steps, device
        self.specs = parse_tasks(p.tasks, key="pretrain.online_probe.tasks")
        tracks = [t for t in read_manifest(p.manifest) if t.split in self.SPLITS]
        for split in self.SPLITS:
            if not any(t.split == split for t in tracks):
                raise ParamsError(f"pretrain.online_probe.manifest={p.manifest}: no clip of split '{split}' "
                                  "(online probes fit on train and score valid)")
        fs = store.open_set(features_url, feature_set)
        missing = [t.track_id for t in tracks if fs.index_of(t.track_id) is None]
        if missing:
            raise store.StoreError(f"{features_url}/{feature_set}: {len(missing)} clip(s) of {p.manifest} are not in "
                                   f"the store (first: {missing[0]}); run `mirkit mels` on that manifest")
        manifest_dir = Path(p.manifest).parent
        self.rows = [track_row(t, manifest_dir) for t in tracks]
        self.offsets = [float(t.offset) for t in tracks]
        check_columns(self.specs, self.rows, f"pretrain.online_probe.manifest ({p.manifest})",
                      key="pretrain.online_probe.tasks")
        self.features = [fs.read(cast(int, fs.index_of(t.track_id))) for t in tracks]   # none missing (above)
        self.frames = any(isinstance(make_task(s), FrameTask) for s in self.specs.values())

    def due(self, step: int) -> bool:
        return step == 0 or step % self.p.every == 0 or step == self.total_steps

    def embed(self, encoder: Encoder, config: ModelConfig):
        """The labelled clips (``train`` and ``valid``) embedded by a frozen copy of ``encoder`` (as
        ``mirkit extract``), in an in-memory store."""
        from mirkit.eval.embeddings import Embeddings, EmbeddingsWriter
        from mirkit.eval.encoder import FrozenEncoder
        frozen = FrozenEncoder(copy.deepcopy(encoder), config, self.device)
        layer, pooling = frozen.resolve(self.p.layer, self.p.pooling)
        dim = frozen.probe_shapes(layer, pooling)[0]
        url = f"memory://mirkit-online-probe-{next(_IDS)}"
        items = ((i, f) for i, f in enumerate(self.features))
        embedded = dict(frozen.embed_tracks(items, layer, pooling, self.frames))   # one per item
        out = [embedded[i] for i in range(len(self.rows))]
        with EmbeddingsWriter(url, dim, frames=self.frames, flush_every=1 << 30, layer=layer, pooling=pooling) as w:
            for row, offset, emb in zip(self.rows, self.offsets, out, strict=True):
                # embed_tracks(frames=True) sets frame_times
                times = cast(np.ndarray, emb.frame_times) + offset if self.frames else None
                w.append(row, emb.chunks, emb.frames, times)
        return Embeddings(url)

    def __call__(self, encoder: Encoder, config: ModelConfig) -> dict[str, float]:
        """``{probe/<task>/<metric>: valid score}`` of the encoder as it is now."""
        from mirkit.eval.probe import Splits, TrainSettings, evaluate_task
        VALID_ONLY = Splits(fit="train", choose="valid", score=("valid",))
        from mirkit.eval.tasks import make_task
        store = self.embed(encoder, config)
        settings = TrainSettings(seed=self.p.seed, device=str(self.device) if self.device.type != "mps" else "cpu")
        values = {}
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                for name, spec in self.specs.items():
                    task = make_task(spec)
                    result = evaluate_task(store, task, self.p.protocol, settings, splits=VALID_ONLY)
                    values[f"probe/{name}/{task.primary}"] = float(result.metrics[task.primary])
        finally:
            _forget(store.url)
        return values


class OnlineProbe(Callback):
    """The online probes as a training callback: loads the labelled clips at the start (rank 0 only)
    and probes the current encoder at step 0, every ``every`` steps and at the last step."""

    name = "online probes"

    def __init__(self, p: OnlineProbeParams):
        self.p = p
        self.probes: OnlineProbes | None = None

    @classmethod
    def from_params(cls, raw: dict) -> OnlineProbe:
        """The callback for section ``pretrain.online_probe`` (validated here: raises ``ParamsError``)."""
        p = resolve_params(raw)
        if p is None:
            raise ParamsError("pretrain.online_probe is empty: no online probe to run")
        return cls(p)

    def on_start(self, run: RunInfo) -> None:
        if run.rank == 0:
            self.probes = OnlineProbes(self.p, run.features, run.feature_set, run.steps, run.device)

    def evaluate(self, run: RunInfo, step: int) -> dict[str, float]:
        if self.probes is None or not self.probes.due(step):
            return {}
        return self.probes(cast("Encoder", run.model.encoder), run.config(step))


def _forget(url: str) -> None:
    """Free an in-memory store."""
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
