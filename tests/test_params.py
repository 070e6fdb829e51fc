from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from mirkit.cli import app
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


def test_every_stage_reads_the_shipped_params_file():
    """params.yaml must validate against every stage's dataclass (a typo there breaks `dvc repro`)."""
    from pathlib import Path
    import importlib
    root = Path(__file__).parent.parent / "params.yaml"
    for module, cls, section in [("mirkit.mels", "MelsParams", "mels"), ("mirkit.tokens", "TokensParams", "tokens"),
                                 ("mirkit.train", "PretrainParams", "pretrain")]:
        load(getattr(importlib.import_module(module), cls), section, root)
    from mirkit.train import PretrainParams, make_recipe
    p = load(PretrainParams, "pretrain", root)
    for recipe in p.recipe_params:
        make_recipe(load(PretrainParams, "pretrain", root, {"recipe": recipe}))
