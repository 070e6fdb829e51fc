"""`mirkit import myna`: state dicts in ghost-signal/myna's `vit.py` naming (built here from the documented
key names and shapes, no download) convert into model folders whose outputs equal mirkit's own SimpleViT
holding the same weights; unknown keys, wrong shapes and pickles that would run code are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_runner import invoke as run_cli
from hostile import Payload

import mirkit
from mirkit.importers.myna import WINDOW, import_myna
from mirkit.models.vit import SimpleViT
from mirkit.train.checkpoint import CheckpointError

DIM, DEPTH, HEADS, DIM_HEAD, MLP = 64, 2, 2, 64, 128     # inner attention width 128, as Myna's dim_head 64
PATCHES = {"base": [("to_patch_embedding", 16 * 16)], "vertical": [("to_patch_embedding", 128 * 2)],
           "hybrid": [("to_patch_embedding", 16 * 16), ("to_patch_embedding_b", 128 * 2)]}


def reference_state_dict(variant: str, seed: int = 0, head: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the reference names and shapes (vit.py: SimpleViT / Transformer / Attention /
    FeedForward; Rearrange at index 0 of the patch embedding holds no weights)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    sd: dict[str, torch.Tensor] = {}
    for prefix, patch_dim in PATCHES[variant]:
        sd[f"{prefix}.1.weight"], sd[f"{prefix}.1.bias"] = 1 + r(patch_dim), r(patch_dim)
        sd[f"{prefix}.2.weight"], sd[f"{prefix}.2.bias"] = r(DIM, patch_dim), r(DIM)
        sd[f"{prefix}.3.weight"], sd[f"{prefix}.3.bias"] = 1 + r(DIM), r(DIM)
    inner = HEADS * DIM_HEAD
    for i in range(DEPTH):
        p = f"transformer.layers.{i}"
        sd[f"{p}.0.norm.weight"], sd[f"{p}.0.norm.bias"] = 1 + r(DIM), r(DIM)
        sd[f"{p}.0.to_qkv.weight"] = r(3 * inner, DIM)
        sd[f"{p}.0.to_out.weight"] = r(DIM, inner)
        sd[f"{p}.1.net.0.weight"], sd[f"{p}.1.net.0.bias"] = 1 + r(DIM), r(DIM)
        sd[f"{p}.1.net.1.weight"], sd[f"{p}.1.net.1.bias"] = r(MLP, DIM), r(MLP)
        sd[f"{p}.1.net.3.weight"], sd[f"{p}.1.net.3.bias"] = r(DIM, MLP), r(DIM)
    sd["transformer.norm.weight"], sd["transformer.norm.bias"] = 1 + r(DIM), r(DIM)
    if head:
        sd["linear_head.weight"], sd["linear_head.bias"] = r(50, DIM), r(50)
    return sd


def own_model(variant: str, sd: dict[str, torch.Tensor]) -> SimpleViT:
    """mirkit's SimpleViT with the same weights, copied module by module (independently of the importer)."""
    patch = {"base": "square", "vertical": "vertical", "hybrid": "hybrid"}[variant]
    model = SimpleViT(DIM, DEPTH, HEADS, MLP, DIM_HEAD, patch=patch).eval()
    kinds = {"base": [("square", "to_patch_embedding")], "vertical": [("vertical", "to_patch_embedding")],
             "hybrid": [("square", "to_patch_embedding"), ("vertical", "to_patch_embedding_b")]}[variant]
    with torch.no_grad():
        for kind, prefix in kinds:
            pe = model.patch_embeds[kind]
            for module, idx in ((pe.norm_in, 1), (pe.proj, 2), (pe.norm_out, 3)):
                module.weight.copy_(sd[f"{prefix}.{idx}.weight"])
                module.bias.copy_(sd[f"{prefix}.{idx}.bias"])
        for i, block in enumerate(model.blocks):
            p = f"transformer.layers.{i}"
            block.attn.norm.weight.copy_(sd[f"{p}.0.norm.weight"])
            block.attn.norm.bias.copy_(sd[f"{p}.0.norm.bias"])
            block.attn.qkv.weight.copy_(sd[f"{p}.0.to_qkv.weight"])
            block.attn.out.weight.copy_(sd[f"{p}.0.to_out.weight"])
            for j in (0, 1, 3):
                block.ff.net[j].weight.copy_(sd[f"{p}.1.net.{j}.weight"])
                block.ff.net[j].bias.copy_(sd[f"{p}.1.net.{j}.bias"])
        model.norm.weight.copy_(sd["transformer.norm.weight"])
        model.norm.bias.copy_(sd["transformer.norm.bias"])
    return model


@pytest.mark.parametrize("variant", ["base", "vertical", "hybrid"])
def test_myna_state_dict_converts_and_embeds_like_mirkits_own_model(tmp_path, variant):
    sd = reference_state_dict(variant)
    src = tmp_path / f"myna-{variant}.pth"
    # a training dict around the state dict, saved with a DDP prefix, as training scripts often do
    torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in sd.items()}}, src)
    res = run_cli("import", "myna", str(src), "--variant", variant, "--out", str(tmp_path / "model"))
    assert res.exit_code == 0, res.output
    enc = mirkit.load_encoder(tmp_path / "model", device="cpu")
    assert enc.config.architecture == "simple-vit" and enc.config.window_frames == WINDOW[variant]
    assert enc.config.feature_set == "mel16k" and enc.config.provenance["variant"] == variant
    own = own_model(variant, sd)
    x = torch.rand(3, 128, WINDOW[variant]) * 10          # mel power crops
    with torch.no_grad():
        torch.testing.assert_close(enc.frozen.encoder.embed(x), own.embed(x), rtol=0, atol=0)
        f_conv, step_conv = enc.frozen.encoder.embed_frames(x)
        f_own, step_own = own.embed_frames(x)
    torch.testing.assert_close(f_conv, f_own, rtol=0, atol=0)
    assert step_conv == step_own
    wave = np.random.default_rng(0).standard_normal(16000 * 4).astype(np.float32) * 0.1
    chunks = enc.embed(wave, sample_rate=16000)
    assert chunks.shape == (1, DIM * (2 if variant == "hybrid" else 1)) and np.isfinite(chunks).all()
    assert "Myna" in (tmp_path / "model" / "README.md").read_text()


def test_released_sizes_are_recognised(tmp_path):
    """A 22M-shaped state dict (dim 384, 12 blocks, mlp 1536) becomes the named size myna-22m."""
    sd = {}
    enc = SimpleViT(384, 12, 6, 1536, 64, patch="square")
    names = {"patch_embeds.square.norm_in": "to_patch_embedding.1", "patch_embeds.square.proj": "to_patch_embedding.2",
             "patch_embeds.square.norm_out": "to_patch_embedding.3", "norm": "transformer.norm"}
    for k, v in enc.state_dict().items():
        mod, what = k.rsplit(".", 1)
        if mod in names:
            sd[f"{names[mod]}.{what}"] = v
        else:
            i, rest = k.split(".", 2)[1:]
            rest = rest.replace("attn.qkv", "0.to_qkv").replace("attn.out", "0.to_out").replace("attn.norm", "0.norm")
            rest = rest.replace("ff.net", "1.net")
            sd[f"transformer.layers.{i}.{rest}"] = v
    torch.save(sd, tmp_path / "m.pth")
    config = import_myna(tmp_path / "m.pth", "base", tmp_path / "out")
    assert config.preset == "myna-22m" and abs(config.n_params / 1e6 - 21.4) < 0.5


def test_unknown_keys_and_wrong_shapes_are_named(tmp_path):
    sd = reference_state_dict("base")
    sd["transformer.layers.0.0.to_q.weight"] = torch.zeros(4, 4)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unknown key\(s\).*transformer\.layers\.0\.0\.to_q\.weight"):
        import_myna(tmp_path / "extra.pth", "base", tmp_path / "o1")
    sd = reference_state_dict("base")
    sd["transformer.layers.1.1.net.3.weight"] = torch.zeros(DIM, MLP + 1)
    torch.save(sd, tmp_path / "shape.pth")
    res = run_cli("import", "myna", str(tmp_path / "shape.pth"), "--variant", "base", "--out", str(tmp_path / "o2"))
    assert res.exit_code != 0 and "transformer.layers.1.1.net.3.weight" in res.text and "(64, 129)" in res.text
    assert not (tmp_path / "o2").exists()
    # a hybrid checkpoint given as 'base' has a second patch embedding the variant does not know
    torch.save(reference_state_dict("hybrid"), tmp_path / "hybrid.pth")
    with pytest.raises(CheckpointError, match="to_patch_embedding_b"):
        import_myna(tmp_path / "hybrid.pth", "base", tmp_path / "o3")
    # (base and vertical cannot be told apart by shapes: both patches hold 16 x 16 = 128 x 2 = 256 values)
    missing = reference_state_dict("base")
    del missing["transformer.layers.1.0.to_out.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing weight\(s\).*blocks\.1\.attn\.out\.weight"):
        import_myna(tmp_path / "missing.pth", "base", tmp_path / "o5")


def test_a_pickle_that_would_run_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model_state_dict": reference_state_dict("base"), "extra": Payload(marker)}, evil)
    res = run_cli("import", "myna", str(evil), "--variant", "base", "--out", str(tmp_path / "out"))
    assert res.exit_code != 0 and "refused to load" in res.text and "weights_only" in res.text
    assert not marker.exists() and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="refused to load"):
        import_myna(evil, "base", tmp_path / "out")
    assert not marker.exists()


def test_without_out_the_model_is_installed_and_loads_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRKIT_HOME", str(tmp_path / "home"))
    torch.save(reference_state_dict("vertical"), tmp_path / "v.pth")
    res = run_cli("import", "myna", str(tmp_path / "v.pth"), "--variant", "vertical")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "home" / "models" / "myna-vertical" / "config.json").is_file()
    monkeypatch.chdir(tmp_path)
    enc = mirkit.load_encoder("myna-vertical", device="cpu")
    assert enc.config.window_frames == 98 and enc.timing["frame_rate"] == pytest.approx(15.625)
