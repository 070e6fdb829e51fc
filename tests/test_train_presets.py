"""Training presets (``*-cpu15``): each names a buildable setting, and the CLI applies one under ``--set``."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from mirkit.cli import app
from mirkit.params import ParamsError, resolve
from mirkit.train.loop import PretrainParams, make_recipe
from mirkit.train.presets import TRAINING_PRESETS, expand


@pytest.mark.parametrize("name", sorted(TRAINING_PRESETS))
def test_every_training_preset_builds_its_recipe_with_its_settings(name):
    tp = TRAINING_PRESETS[name]
    assert name == f"{tp.recipe}-cpu15" and tp.measured
    ov, got = expand(name, {})
    p = resolve(PretrainParams, {"recipe": "myna", "preset": name}, ov, "pretrain")
    recipe = make_recipe(p)
    assert got is tp and recipe.name == tp.recipe and recipe.params.preset == tp.size
    assert (p.steps, p.lr, p.batch_size) == (tp.steps, tp.lr, tp.batch_size)
    for key, value in tp.recipe_params.items():
        assert getattr(recipe.params, key) == value


def test_command_line_values_win_over_the_preset_and_a_foreign_recipe_is_refused():
    name = next(iter(TRAINING_PRESETS))
    tp = TRAINING_PRESETS[name]
    ov, _ = expand(name, {"preset": name, "steps": 30, "pretrain.lr": 0.5})
    p = resolve(PretrainParams, {"steps": 600}, ov, "pretrain")
    assert (p.steps, p.lr, p.recipe, p.preset) == (30, 0.5, tp.recipe, tp.size)
    other = next(r for r in ("myna", "contrastive", "mt2", "muse-lq") if r != tp.recipe)
    with pytest.raises(ParamsError, match=f"training preset of recipe '{tp.recipe}'.*recipe={other}"):
        expand(name, {"recipe": other})
    assert expand("vit1d-micro", {"steps": 3}) == ({"steps": 3}, None)     # a model preset passes through
    with pytest.raises(ParamsError, match="mt2-cpu16: neither a model preset nor a training preset; did you mean 'mt2-cpu15'"):
        expand("mt2-cpu16", {})


@pytest.mark.parametrize("where", ["option", "params"])
def test_pretrain_trains_the_preset_named_on_the_command_line_or_in_params(tmp_path, tiny_corpus, one_thread, where):
    run = tmp_path / "run"
    params = tmp_path / "params.yaml"
    section = {"recipe": "myna", "features": tiny_corpus["features"], "tokens": tiny_corpus["tokens"],
               "out": str(run), "log": str(tmp_path / "live"), "summary": str(tmp_path / "summary.json"),
               "steps": 600, "batch_size": 4, "warmup_steps": 0, "checkpoint_every": 100, "weight_decay": 0.3,
               "recipe_params": {"mt2": {"segment_frames": 16, "ntxent_weight": 0.5}}}
    if where == "params":
        section["preset"] = "mt2-cpu15"
    params.write_text(yaml.safe_dump({"pretrain": section}))
    args = ["pretrain", "--params", str(params), "--set", "steps=2", "--set", "warmup_steps=0",
            "--set", "recipe_params.mt2.segment_frames=16"] + (["--preset", "mt2-cpu15"] if where == "option" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "training preset mt2-cpu15" in result.output
    config = json.loads((run / "step-000002" / "model" / "config.json").read_text())
    trained = config["provenance"]["train"]
    assert config["provenance"]["recipe"] == "mt2" and config["preset"] == "vit1d-micro"
    assert config["architecture"] == "vit1d-chroma"                       # the preset's key_frontend: chroma
    assert trained["lr"] == TRAINING_PRESETS["mt2-cpu15"].lr                 # the preset's lr over params.yaml's
    assert trained["weight_decay"] == 0.01 and trained["warmup_steps"] == 0  # the preset's schedule; --set wins
    mt2 = config["provenance"]["recipe_params"]
    assert mt2["segment_frames"] == 16 and mt2["key_frontend"] == "chroma"  # --set over the preset
    assert mt2["ntxent_weight"] == 1.0                                     # params.yaml's recipe keys replaced
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2                                          # --set steps=2 beat the preset's 500


def test_pretrain_refuses_a_training_preset_of_another_recipe(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--params", "none", "--recipe", "myna", "--preset", "mt2-cpu15",
                                      "--set", f"out={tmp_path / 'run'}"])
    assert result.exit_code == 2 and "pretrain.preset=mt2-cpu15" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_models_lists_every_training_preset():
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for name, tp in TRAINING_PRESETS.items():
        line = next(ln for ln in result.output.splitlines() if f" {name} " in ln)
        assert tp.size in line and f" {tp.steps} " in line
