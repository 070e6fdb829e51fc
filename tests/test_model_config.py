"""ModelConfig: config.json as one typed value, written and read back with the same JSON, validated once
on read (naming the file and the key), the depth bound checked before any layer is built."""

from __future__ import annotations

import json

import pytest
import torch

from mirkit.data.features import PRESETS as FEATURES
from mirkit.models import registry
from mirkit.models.config import KEYS, CheckpointError, ModelConfig
from mirkit.models.registry import create_encoder
from mirkit.train import checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    enc = create_encoder("myna-tiny")
    out = tmp_path_factory.mktemp("mc") / "model"
    checkpoint.save_model_folder(out, enc, checkpoint.encoder_config(
        enc, "mel16k", FEATURES["mel16k"].to_dict(), 96, step=7, preset="myna-tiny", provenance={"note": "x"}))
    return out


def test_written_json_is_what_is_read_back(folder):
    raw = json.loads((folder / "config.json").read_text())
    assert tuple(raw) == KEYS                                   # every key, in the written order
    config = checkpoint.load_config(folder)
    assert isinstance(config, ModelConfig) and config.to_dict() == raw
    assert (config.architecture, config.preset, config.step, config.window_frames) == ("simple-vit", "myna-tiny", 7, 96)
    assert config.dim == 64 and config.depth == 2 and config.n_params > 0
    assert ModelConfig.from_json(config.to_json(), "again") == config


def test_unknown_keys_survive_a_resave(folder, tmp_path):
    raw = json.loads((folder / "config.json").read_text())
    config = ModelConfig.from_dict({**raw, "future_key": {"a": 1}}, "config.json")
    assert config.extra == {"future_key": {"a": 1}}
    assert config.to_dict()["future_key"] == {"a": 1} and list(config.to_dict())[-1] == "future_key"


def test_older_form_without_sizes_still_reads(folder):
    raw = json.loads((folder / "config.json").read_text())
    old = {k: v for k, v in raw.items() if k not in ("n_params", "dim", "depth", "mirkit_version", "preset")}
    config = ModelConfig.from_dict(old, "old/config.json")
    assert config.preset is None and config.n_params == 0 and config.args == raw["args"]


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.pop("features"), "old/config.json: missing key 'features'"),
    (lambda c: c.update(window_frames="96"), "'window_frames' must be a int, got '96'"),
    (lambda c: c.update(step=True), "'step' must be a int, got True"),
    (lambda c: c.update(preset=3), "'preset' must be a str or null, got 3"),
    (lambda c: c.update(format="other/1"), "not a mirkit model config (format='other/1'"),
    (lambda c: c.update(window_frames=0), "window_frames=0: must be in 1.."),
    (lambda c: c["args"].update(bogus=1), "unknown argument(s) bogus"),
])
def test_bad_configs_name_the_key(folder, edit, message):
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)
    with pytest.raises(CheckpointError) as err:
        ModelConfig.from_dict(raw, "old/config.json")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_depth_is_bounded_before_any_layer_is_built(folder, monkeypatch):
    raw = json.loads((folder / "config.json").read_text())
    raw["args"]["depth"] = 10 ** 9
    monkeypatch.setattr(registry, "build", lambda *a, **k: pytest.fail("built an encoder before the bound check"))
    with pytest.raises(CheckpointError, match=r"args\.depth=1000000000: must be an integer in 1\.\.1024"):
        ModelConfig.from_dict(raw, "config.json")


def test_draft_is_bound_to_the_encoder_it_is_saved_with():
    enc = create_encoder("vit1d-micro", in_bins=128, max_len=64, n_cls=1)
    draft = ModelConfig(feature_set="mel16k", features=FEATURES["mel16k"].to_dict(), window_frames=64)
    assert draft.architecture == "" and draft.args == {}
    bound = draft.bound_to(enc)
    assert bound.architecture == "vit1d" and bound.args["width"] == 64 and bound.depth == 2
    assert bound.args == registry.resolve_args("vit1d", bound.args)
