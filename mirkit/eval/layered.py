"""Layered embeddings stores (``extract.layer: all``): every layer of an encoder from one forward pass.

The store at ``out`` holds the last layer (``-1``, what a single-layer store holds) and each other layer
``k`` is a complete embeddings store in the sub-group ``out/layer_<k>`` (same tracks, same chunk and frame
rows). Readers that know one layer (inspect, a plain ``Embeddings(out)``) see the last layer;
:func:`open_layers` returns ``{layer: Embeddings}`` in the encoder's order (block input 0, blocks
1..depth, then -1). Store layout only: this module imports nothing of the probes, so the extract stage
does not depend on them.
"""

from __future__ import annotations

import re

from mirkit.eval.embeddings import Embeddings, EmbeddingsError

LAYER_GROUP = re.compile(r"^layer_(-?\d+)$")


def layer_url(url: str, layer: int) -> str:
    """Where layer ``layer`` of a layered store at ``url`` lives (``-1`` is the store itself)."""
    return str(url) if layer == -1 else f"{str(url).rstrip('/')}/layer_{layer}"


def drop_layers(url: str) -> None:
    """Remove the layer stores of a layered store (when the store is re-extracted with one layer)."""
    import zarr
    try:
        group = zarr.open_group(store=str(url), mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return
    for name in list(group.group_keys()):
        if LAYER_GROUP.match(name):
            del group[name]


def open_layers(url: str) -> dict[int, Embeddings]:
    """``{layer: store}`` of a layered store, or ``{layer: store}`` with one entry for a plain store."""
    main = Embeddings(url)
    found = sorted(int(m.group(1)) for name in main.group.group_keys() if (m := LAYER_GROUP.match(name)))
    own = main.layer if isinstance(main.layer, int) else -1
    if not found:
        return {own: main}
    stores = {k: Embeddings(layer_url(url, k)) for k in found if k != own}
    ids = [t.get("track_id") for t in main.tracks]
    for k, s in stores.items():
        if [t.get("track_id") for t in s.tracks] != ids or s.dim != main.dim:
            raise EmbeddingsError(f"{layer_url(url, k)}: layer {k} holds other tracks or dims than {url} "
                                  f"(an interrupted `mirkit extract`? re-run it)")
    stores[own] = main
    return dict(sorted(stores.items(), key=lambda kv: (kv[0] == -1, kv[0])))
