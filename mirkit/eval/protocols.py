"""Probe protocols and their settings: the one place that lists them, validated once.

A **protocol** says how a probe is fitted and chosen on validation: ``linear`` (L2-regularised
softmax / logistic / ridge solved full batch for a grid of strengths; deterministic), ``quick`` (one
JukeMIR configuration, Adam, early stopping) and ``jukemir`` (the 216-configuration grid of
p-lambda/jukemir). A new protocol is one :class:`Protocol` and one :func:`register` line.

Its **settings** (section ``probe`` of params):

- ``fusion`` (track-level tasks): ``mean`` mean-pools a track's chunk embeddings into one row and
  probes the rows (JukeMIR, ``jukemir/probe``: one averaged representation per clip; MARBLE's
  clip-level probes likewise average over the clip); ``late`` probes the chunks (each carrying its
  track's label) and averages the chunk outputs per track (Myna's ``evaluate.py``); ``both`` reports
  both. Song-level ensembling (JukeMIR's four strategies) applies on top of either.
- ``layers`` (stores holding several layers, ``extract.layer: all``): ``best`` probes every layer and
  chooses the layer on VALIDATION; ``weighted`` learns SUPERB-style softmax weights over all layers
  with the probe (Yang et al., SUPERB, Interspeech 2021); a number probes that layer alone.
- ``seeds``: stochastic protocols (``quick``, ``jukemir``) are repeated with ``seed, seed+1, ...`` and
  reported as mean ± sd over seeds; ``linear`` depends on the data alone and runs once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mirkit.params import ParamsError


@dataclass(frozen=True)
class ProbeConfig:
    """One configuration of the JukeMIR grid."""

    standardize: bool
    hidden: int            # 0 = linear probe
    batch_size: int
    lr: float
    dropout: float
    weight_decay: float

    def label(self) -> str:
        arch = f"mlp{self.hidden}" if self.hidden else "linear"
        return (f"{arch} std={'on' if self.standardize else 'off'} bs={self.batch_size} lr={self.lr:g} "
                f"p={self.dropout:g} wd={self.weight_decay:g}")


def jukemir_grid() -> list[ProbeConfig]:
    """The 216 configurations of JukeMIR's ``_PAPER_GRID``, in a fixed order (ids = positions)."""
    return [ProbeConfig(s, h, b, lr, p, wd) for s, h, b, lr, p, wd in itertools.product(
        (False, True), (0, 512), (64, 256), (1e-5, 1e-4, 1e-3), (0.25, 0.5, 0.75), (0.0, 1e-4, 1e-3))]


QUICK = ProbeConfig(standardize=True, hidden=0, batch_size=64, lr=1e-3, dropout=0.25, weight_decay=0.0)

Configs = list[tuple[int, ProbeConfig]]


@dataclass(frozen=True)
class Protocol:
    """How probes are fitted and chosen. ``grid`` lists the configurations trained with Adam and early
    stopping (ids = positions in the JukeMIR grid); ``None`` = the full-batch linear solver."""

    name: str
    help: str
    stochastic: bool                           # repeated over ``probe.seeds``
    grid: Callable[[], Configs] | None = None

    @property
    def solver(self) -> str:
        return "linear" if self.grid is None else "grid"

    def configs(self) -> Configs:
        if self.grid is None:
            raise ValueError(f"protocol {self.name}: the linear solver trains no grid configurations")
        return self.grid()

    def n_configs(self) -> int:
        return 1 if self.grid is None else len(self.grid())


PROTOCOLS: dict[str, Protocol] = {}


def register(protocol: Protocol) -> Protocol:
    PROTOCOLS[protocol.name] = protocol
    return protocol


register(Protocol("linear", "L2-regularised softmax/logistic/ridge solved full-batch, strength chosen on valid "
                            "(seconds)", stochastic=False))
register(Protocol("quick", "one JukeMIR configuration (Adam, early stopping)", stochastic=True,
                  grid=lambda: [(jukemir_grid().index(QUICK), QUICK)]))
register(Protocol("jukemir", "the 216-configuration JukeMIR grid, chosen on valid", stochastic=True,
                  grid=lambda: list(enumerate(jukemir_grid()))))

#: track-level fusion -> the anchor it follows
FUSIONS = {"mean": "mean-pool the chunk embeddings of a track, then probe (JukeMIR, MARBLE)",
           "late": "probe the chunks, average their outputs per track (Myna)"}
FUSION_CHOICES = (*FUSIONS, "both")
DEFAULT_FUSION = "mean"   # what the standard benchmarks' reference protocols (JukeMIR, MARBLE) do
LAYER_MODES = ("best", "weighted")


def get_protocol(protocol: str | Protocol, key: str = "probe.protocol") -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ParamsError(f"{key}={protocol!r}: allowed values are {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def fusions(fusion: str, key: str = "probe.fusion") -> tuple[str, ...]:
    """The fusions a setting asks for (``both`` = mean and late)."""
    if fusion == "both":
        return tuple(FUSIONS)
    if fusion not in FUSIONS:
        raise ParamsError(f"{key}={fusion!r}: allowed values are {', '.join(FUSION_CHOICES)}")
    return (fusion,)


def check_layers(layers: str | int, key: str = "probe.layers") -> str | int:
    if isinstance(layers, bool) or not (layers in LAYER_MODES or (isinstance(layers, int) and layers >= -1)):
        raise ParamsError(f"{key}={layers!r}: allowed values are {', '.join(LAYER_MODES)} or a layer number "
                          f"(-1 = last)")
    return layers


@dataclass(frozen=True)
class Setup:
    """A validated protocol and its settings."""

    protocol: Protocol
    fusions: tuple[str, ...] = (DEFAULT_FUSION,)
    layers: str | int = "best"
    seeds: int = 1

    @property
    def runs_per_task(self) -> int:
        """Seeds actually run (the deterministic linear solver runs once)."""
        return self.seeds if self.protocol.stochastic else 1


def setup(protocol: str | Protocol, fusion: str = DEFAULT_FUSION, layers: str | int = "best", seeds: int = 1,
          section: str = "probe") -> Setup:
    """Validate a protocol and its settings once; errors name the ``section.key``."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ParamsError(f"{section}.seeds={seeds!r}: give a number of seeds >= 1")
    return Setup(get_protocol(protocol, f"{section}.protocol"), fusions(fusion, f"{section}.fusion"),
                 check_layers(layers, f"{section}.layers"), seeds)


def as_setup(protocol: str | Protocol | Setup | Sequence[tuple[int, ProbeConfig]]) -> Setup:
    """A :class:`Setup` from what callers pass to ``evaluate_task``: a protocol name, a protocol, a
    setup, or an explicit list of grid configurations."""
    if isinstance(protocol, Setup):
        return protocol
    if isinstance(protocol, (str, Protocol)):
        return Setup(get_protocol(protocol))
    configs = list(protocol)
    return Setup(Protocol("custom", f"{len(configs)} grid configuration(s)", True, grid=lambda: configs))
