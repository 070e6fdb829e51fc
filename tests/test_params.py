from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from mirkit.cli import STAGE_PARAMS, app
from mirkit.params import ParamsError, load, param, parse_override, resolve


@dataclass
class Demo:
    name: str = param("a", choices=("a", "b"))
    rate: float = param(0.5, ge=0.0, lt=1.0)
    steps: int = param(3, ge=1)
    sets: list[str] = param(["x"])
    maybe: str | None = param(None)


def test_defaults_and_int_to_float():
    d = resolve(Demo, {"rate": 0})
    assert d.rate == 0.0 and isinstance(d.rate, float) and d.sets == ["x"]


@pytest.mark.parametrize("raw, words", [
    ({"name": "c"}, ["name='c'", "allowed values are a, b"]),
    ({"rate": 1.0}, ["rate=1.0", "< 1.0"]),
    ({"steps": 0}, ["steps=0", ">= 1"]),
    ({"steps": "many"}, ["steps='many'", "integer"]),
    ({"sets": "x"}, ["sets='x'", "list"]),
    ({"stepz": 3}, ["stepz", "unknown parameter", "known: "]),
])
def test_errors_name_key_value_and_what_is_allowed(raw, words):
    with pytest.raises(ParamsError) as exc:
        resolve(Demo, raw, section="demo")
    for w in words:
        assert w in str(exc.value)
    assert str(exc.value).startswith("demo.")


def test_overrides_win_and_may_set_null(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("demo:\n  steps: 5\n  maybe: hello\n")
    d = load(Demo, "demo", path, {"steps": 7, "maybe": None})
    assert d.steps == 7 and d.maybe is None


def test_override_values_are_parsed_as_yaml():
    key, value = parse_override("rate=1e-4")     # YAML 1.1 reads this as a string ...
    assert resolve(Demo, {key: value}).rate == 1e-4   # ... and a float field still accepts it
    assert parse_override("sets=[a, b]") == ("sets", ["a", "b"])
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_override("novalue")


def test_cli_rejects_bad_params_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["mels", "--params", "none",
                                      "--set", "batch_size=0", "--set", f"store={tmp_path / 's.zarr'}"])
    assert result.exit_code == 2
    assert "mels.batch_size=0" in result.output and ">= 1" in result.output
    assert not (tmp_path / "s.zarr").exists()


def test_cli_names_an_unknown_feature_set(tmp_path):
    result = CliRunner().invoke(app, ["mels", "--params", "none",
                                      "--set", "feature_sets=[mel99k]"])
    assert result.exit_code == 2 and "mel99k" in result.output and "mel16k" in result.output


@pytest.mark.parametrize("stage", sorted(STAGE_PARAMS))
def test_every_stage_reads_the_shipped_params_file(stage):
    """params.yaml must validate against every stage's dataclass (a typo there breaks `dvc repro`), including
    what a stage's command validates beyond it (each recipe of pretrain.recipe_params, the online probes)."""
    import importlib
    from pathlib import Path
    root = Path(__file__).parent.parent / "params.yaml"
    module, cls, section = STAGE_PARAMS[stage]
    p = load(getattr(importlib.import_module(module), cls), section, root)
    if stage == "pretrain":
        from mirkit.commands.pretrain import callbacks_for
        from mirkit.train.loop import make_recipe
        assert callbacks_for(p), "the shipped params configure online probes"
        for recipe in p.recipe_params:
            make_recipe(load(type(p), "pretrain", root, {"recipe": recipe}))


def test_every_stage_has_a_params_section():
    from pathlib import Path

    import yaml
    shipped = yaml.safe_load((Path(__file__).parent.parent / "params.yaml").read_text())
    assert set(STAGE_PARAMS) <= set(shipped), set(STAGE_PARAMS) - set(shipped)


@dataclass
class Nested:
    recipe_params: dict = param({"myna": {"preset": "small", "mask_ratio": 0.9}, "mt2": {"preset": "micro"}})
    steps: int = param(3, ge=1)


def test_mapping_overrides_merge_and_colon_equals_replaces():
    raw = {"recipe_params": {"myna": {"preset": "small", "mask_ratio": 0.9}, "mt2": {"preset": "micro"}}}
    p = resolve(Nested, raw, {"recipe_params": {"myna": {"mask_ratio": 0.5}}}, section="pretrain")
    assert p.recipe_params == {"myna": {"preset": "small", "mask_ratio": 0.5}, "mt2": {"preset": "micro"}}
    p = resolve(Nested, raw, dict([parse_override("recipe_params.myna.mask_ratio=0.5")]), section="pretrain")
    assert p.recipe_params["myna"] == {"preset": "small", "mask_ratio": 0.5}
    p = resolve(Nested, raw, dict([parse_override("recipe_params:={myna: {preset: big}}")]), section="pretrain")
    assert p.recipe_params == {"myna": {"preset": "big"}}


def test_section_prefixed_keys_dvc_style():
    assert resolve(Nested, {}, dict([parse_override("pretrain.steps=5")]), section="pretrain").steps == 5
    with pytest.raises(ParamsError, match="pretrain.mels: unknown parameter"):
        resolve(Nested, {}, dict([parse_override("mels.batch_size=5")]), section="pretrain")
    with pytest.raises(ParamsError, match="steps.x: steps is not a mapping"):
        resolve(Nested, {"steps": 3}, dict([parse_override("steps.x=5")]), section="pretrain")


def test_misspelt_keys_suggest_the_close_one():
    with pytest.raises(ParamsError, match=r"pretrain\.setps: unknown parameter; did you mean 'steps'\?"):
        resolve(Nested, {}, {"setps": 5}, section="pretrain")
    with pytest.raises(ParamsError, match=r"did you mean 'recipe_params'\?"):
        resolve(Nested, {"recipe_param": {}}, section="pretrain")


def test_missing_params_file_is_an_error_and_none_means_defaults(tmp_path, monkeypatch):
    with pytest.raises(ParamsError, match="paramz.yaml: no such file"):
        load(Demo, "demo", tmp_path / "paramz.yaml")
    assert load(Demo, "demo", "none").steps == 3
    monkeypatch.chdir(tmp_path)            # the default params.yaml may be absent (outside a project)
    assert load(Demo, "demo").steps == 3
    (tmp_path / "params.yaml").write_text("demo:\n  steps: 4\n")    # and is read when present
    assert load(Demo, "demo").steps == load(Demo, "demo", None).steps == 4


def test_threads_is_runtime_only_in_every_section(tmp_path, one_thread):
    import torch
    path = tmp_path / "p.yaml"
    path.write_text("demo:\n  steps: 5\n  threads: 1\n")
    torch.set_num_threads(2)
    assert load(Demo, "demo", path).steps == 5 and torch.get_num_threads() == 1
    assert load(Demo, "demo", path, {"demo.threads": 2}).steps == 5 and torch.get_num_threads() == 2
    with pytest.raises(ParamsError, match="demo.threads=0: must be >= 1"):
        load(Demo, "demo", path, {"threads": 0})


@pytest.mark.parametrize("stage", sorted(STAGE_PARAMS))
def test_stage_help_lists_every_key_with_its_help(stage):
    import dataclasses
    import importlib

    module, cls, section = STAGE_PARAMS[stage]
    result = CliRunner().invoke(app, [stage, "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and f"Keys of section `{section}`" in text
    for f in dataclasses.fields(getattr(importlib.import_module(module), cls)):
        assert f"{f.name} = " in text, f.name
        if f.metadata.get("help"):
            assert " ".join(f.metadata["help"].split())[:40] in text, f.name
    assert "threads = " in text and ("busy 2-core machine" in text or "shared machine" in text)


def test_a_nested_replace_override_replaces_the_mapping_and_later_keys_merge_into_it():
    from mirkit.params import apply_overrides
    raw = {"recipe_params": {"myna": {"mask_ratio": 0.5, "loss": "infonce"}, "mt2": {"c": 3}}}
    out = apply_overrides(raw, {"recipe_params.myna:": {"patch": "square"}, "recipe_params.myna.loss": "sogclr"})
    assert out["recipe_params"] == {"myna": {"patch": "square", "loss": "sogclr"}, "mt2": {"c": 3}}
    assert raw["recipe_params"]["myna"] == {"mask_ratio": 0.5, "loss": "infonce"}   # the input is not changed
