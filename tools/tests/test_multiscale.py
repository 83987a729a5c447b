"""The multi-scale decoders of DESIGN §8 (top-down, bottom-up): the batched models
against the row-by-row loop references, causality, config rules, export round trip."""

import json

import pytest
import torch
from safetensors import safe_open

from conftest import ms_cfg, rand_model
from msgen_tools.export import export_checkpoint, load_checkpoint
from msgen_tools.models import ModelConfig
from msgen_tools.reference_loops import bottom_up_forward_loop, top_down_forward_loop
from msgen_tools.tokenizer import train_bpe

TOL = 1e-5
ARCHS = {"top-down-decoder": top_down_forward_loop, "bottom-up-decoder": bottom_up_forward_loop}

# (overrides, lengths): k = 2, 3, 4 and S = 2, 3; lengths inside the first coarse block,
# exactly on block boundaries, off them, and the full context N.
CASES = [
    (dict(pool_factor=2, scales=2, layers_per_scale=[1, 2], max_positions=16), [1, 2, 3, 8, 11, 16]),
    (dict(pool_factor=2, scales=3, layers_per_scale=[1, 1, 2], max_positions=24), [3, 4, 7, 8, 13, 24]),
    (dict(pool_factor=3, scales=2, layers_per_scale=[2, 1], max_positions=18, tie_embeddings=True), [2, 3, 9, 10, 18]),
    (dict(pool_factor=3, scales=3, layers_per_scale=[1, 1, 1], max_positions=27, activation="gelu_tanh"),
     [5, 9, 17, 18, 27]),
    (dict(pool_factor=4, scales=2, layers_per_scale=[1, 1], max_positions=16, n_heads=4), [3, 4, 6, 12, 16]),
    (dict(pool_factor=4, scales=3, layers_per_scale=[1, 1, 1], max_positions=32, norm_eps=1e-6), [15, 16, 21, 32]),
    (dict(pool_factor=2, scales=1, layers_per_scale=[2], max_positions=8), [1, 8]),  # S = 1: the baseline
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("over,lengths", CASES)
def test_batched_matches_loop(arch, over, lengths):
    extra = dict(agg_layers=2) if arch == "bottom-up-decoder" and over["scales"] == 3 else {}
    model = rand_model(**ms_cfg(arch, **over, **extra))
    for T in lengths:
        ids = torch.randint(0, 37, (2, T))
        out = model(ids)
        for b in range(2):
            ref = ARCHS[arch](model, ids[b].tolist())
            assert (out[b] - ref).abs().max().item() < TOL, (arch, over, T)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("over", [dict(pool_factor=2, scales=3, max_positions=24, layers_per_scale=[1, 1, 1]),
                                  dict(pool_factor=3, scales=2, max_positions=18)])
def test_causal(arch, over):
    """Changing token j changes no logit before j, and does change the logit at j."""
    model = rand_model(**ms_cfg(arch, **over))
    T = over["max_positions"]
    ids = torch.randint(0, 37, (1, T))
    base = model(ids)[0]
    for j in range(T):
        other = ids.clone()
        other[0, j] = (other[0, j] + 1) % 37
        out = model(other)[0]
        assert (out[:j] - base[:j]).abs().max().item() < 1e-12 if j else True, (arch, j)
        assert (out[j] - base[j]).abs().max().item() > 1e-6, (arch, j)


@pytest.mark.parametrize("arch", ARCHS)
def test_coarse_scales_matter(arch):
    """A token after the first coarse block sees the coarse scale: zeroing its blocks'
    output projections changes the logits there (and, for top-down, not before)."""
    model = rand_model(**ms_cfg(arch))
    ids = torch.randint(0, 37, (1, 12))
    base = model(ids)[0]
    with torch.no_grad():
        for layer in model.scales[1].layers:
            layer.attn.o_proj.weight.mul_(0.5)
    out = model(ids)[0]
    assert (out[1:] - base[1:]).abs().max().item() > 1e-3
    if arch == "top-down-decoder":  # token 0 sees no complete block of scale 1
        assert (out[0] - base[0]).abs().max().item() < 1e-12


def test_context_is_enforced():
    model = rand_model(**ms_cfg())
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.zeros(1, 25, dtype=torch.long))


@pytest.mark.parametrize("bad,msg", [
    (dict(max_positions=22, scales=3, layers_per_scale=[1, 1, 1]), "multiple of pool_factor"),
    (dict(layers_per_scale=[1, 1, 1]), "one entry per scale"),
    (dict(pool_factor=1), "pool_factor"),
    (dict(scales=0, layers_per_scale=[]), "scales"),
    (dict(layers_per_scale=[1, 0]), "layers_per_scale"),
])
def test_bad_configs_rejected(bad, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig.from_dict(ms_cfg(**bad))


def test_bottom_up_needs_agg_layers():
    cfg = ms_cfg("bottom-up-decoder")
    del cfg["agg_layers"]
    with pytest.raises(ValueError, match="agg_layers is required"):
        ModelConfig.from_dict(cfg)


def block_names(prefix, n):
    per = ([f"attn.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")]
           + [f"norm{i}.{w}" for i in (1, 2) for w in ("weight", "bias")]
           + [f"mlp.fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")])
    return {f"{prefix}.{i}.{p}" for i in range(n) for p in per}


@pytest.mark.parametrize("arch", ARCHS)
def test_export_round_trip(tmp_path, arch):
    tok = train_bpe(["In the beginning God created the heaven and the earth.\n"] * 3, 280)
    cfg = ms_cfg(arch, scales=3, layers_per_scale=[1, 2, 1], max_positions=24, vocab_size=tok.get_vocab_size())
    model = rand_model(dtype=torch.float32, **cfg)
    out = export_checkpoint(model, tmp_path / "ck", tokenizer=tok)
    expected = {"embed.weight", "norm_f.weight", "norm_f.bias", "lm_head.weight"}
    for s, n in enumerate([1, 2, 1]):
        expected |= block_names(f"scales.{s}.layers", n) | {f"scales.{s}.pos.weight"}
    if arch == "bottom-up-decoder":
        expected |= {f"agg.{s}.{w}" for s in (1, 2) for w in ("weight", "bias")} | block_names("agg_layers", 1)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == expected
        assert list(f.get_tensor("scales.2.pos.weight").shape) == [24 // 4, 16]
    written = json.loads((out / "config.json").read_text())
    assert "n_layers" not in written and written["layers_per_scale"] == [1, 2, 1]
    back, cfg2 = load_checkpoint(out)
    assert cfg2 == model.cfg
    ids = torch.randint(0, tok.get_vocab_size(), (1, 19))
    assert torch.equal(model(ids), back(ids))
