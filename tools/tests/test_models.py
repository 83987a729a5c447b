"""Vectorised models vs the slow loop references, causality, config rules."""

import pytest
import torch

from conftest import cst_cfg, enc_cfg, rand_model, tr_cfg
from msgen_tools.models import ModelConfig, resolve_scale
from msgen_tools.reference_loops import cst_forward_loop, mstrans_forward_loop, transformer_forward_loop

TOL = 1e-5

CST_CASES = [
    # (config overrides, sequence lengths); lengths cover < L, = L, partial last
    # slice, exactly N = G*L, and past the context (> N)
    (dict(extension_ratio=1), [1, 3, 4, 13, 24]),
    (dict(extension_ratio=2, shared_local_global=False, tie_embeddings=True), [5, 24]),
    (dict(extension_ratio=3, activation="gelu_tanh"), [7, 24, 33]),
    (dict(extension_ratio=3, slice_length=5, max_slices=4, n_heads=4, shared_local_global=False), [19, 20, 31]),
    (dict(extension_ratio=2, slice_length=6, max_slices=3, tie_embeddings=True, norm_eps=1e-6), [17, 40]),
    (dict(extension_ratio=1, slice_length=1, max_slices=10), [9]),  # L = 1: pure global attention
    (dict(extension_ratio=2, slice_length=2, max_slices=2), [7]),  # G = 2: one kept summary past N
    (dict(extension_ratio=3, slice_length=3, max_slices=1), [2, 3, 10]),  # G = 1: local attention only
]


@pytest.mark.parametrize("over,lengths", CST_CASES)
def test_cst_batched_matches_loop(over, lengths):
    model = rand_model(**cst_cfg(**over))
    for T in lengths:
        ids = torch.randint(0, 37, (2, T))
        out = model(ids)
        for b in range(2):
            ref = cst_forward_loop(model, ids[b].tolist())
            assert (out[b] - ref).abs().max().item() < TOL, (over, T)


@pytest.mark.parametrize("over", [dict(), dict(tie_embeddings=True, activation="gelu_tanh", n_heads=2)])
def test_transformer_batched_matches_loop(over):
    model = rand_model(**tr_cfg(**over))
    for T in (1, 9, 40):
        ids = torch.randint(0, 37, (2, T))
        out = model(ids)
        for b in range(2):
            assert (out[b] - transformer_forward_loop(model, ids[b].tolist())).abs().max().item() < TOL


@pytest.mark.parametrize("over", [dict(), dict(layer_scales=[[1, 1, 3, 5], [3, 3, 7, 1]], n_heads=4),
                                  dict(n_layers=3, layer_scales=[[1, "N/16"], ["N/4", 3], ["N/2", "N/2"]],
                                       n_heads=2)])
def test_mstrans_batched_matches_loop(over):
    model = rand_model(**enc_cfg(**over))
    lengths = torch.tensor([1, 2, 9, 20, 33])  # padded batch, different "N/k" windows per row
    ids = torch.randint(0, 36, (5, 33))
    out = model(ids, lengths)
    for b, n in enumerate(lengths.tolist()):
        ref = mstrans_forward_loop(model, ids[b, :n].tolist())
        assert (out[b] - ref).abs().max().item() < TOL
        # padding must not matter: the same row alone, unpadded
        assert (model(ids[b:b + 1, :n])[0] - ref).abs().max().item() < TOL


def test_float32_close_to_float64():
    m64 = rand_model(**cst_cfg())
    m32 = rand_model(dtype=torch.float32, **cst_cfg())
    ids = torch.randint(0, 37, (1, 24))
    assert (m32(ids).double() - m64(ids)).abs().max().item() < 1e-4


@pytest.mark.parametrize("cfg", [cst_cfg(extension_ratio=a, shared_local_global=s) for a in (1, 2, 3)
                                 for s in (True, False)] + [cst_cfg(max_slices=3), tr_cfg()])
def test_decoders_are_causal(cfg):
    model = rand_model(**cfg)
    T = 21
    ids = torch.randint(0, 37, (1, T))
    base = model(ids)
    for j in (0, 3, 4, 5, 10, 20):
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 1) % 37
        out = model(changed)
        assert torch.equal(out[0, :j], base[0, :j]), f"position < {j} saw token {j}"
        assert not torch.allclose(out[0, j], base[0, j]), "token j should change its own output"
    # prefixes: running a prefix gives the prefix of the outputs
    for k in (1, 4, 6, 13):
        assert (model(ids[:, :k]) - base[:, :k]).abs().max().item() < 1e-12


def test_cst_global_attention_matters():
    """Guard against a silently dead global path: zeroing P_g must change logits
    of slice >= 2 but never those of slices 0 and 1 (slice 1 sees only m_0 as its
    single key, so its softmax weight is 1 regardless of position)."""
    model = rand_model(**cst_cfg(extension_ratio=1))
    ids = torch.randint(0, 37, (1, 24))
    base = model(ids)
    with torch.no_grad():
        model.pos_global.weight.zero_()
    out = model(ids)
    assert (out[0, :8] - base[0, :8]).abs().max() < 1e-12
    assert (out[0, 8:] - base[0, 8:]).abs().max() > 1e-3


def test_resolve_scale():
    assert [resolve_scale(s, 21) for s in (1, 3, "N/1", "N/2", "N/4", "N/8", "N/16", "N/32")] == \
        [1, 3, 21, 9, 5, 1, 1, 1]
    assert resolve_scale("N/2", 2) == 1  # 1 is already odd
    assert resolve_scale("N/3", 18) == 5  # 6 -> 5


@pytest.mark.parametrize("bad", [dict(extension_ratio=2, slice_length=3), dict(extension_ratio=4),
                                 dict(d_model=15), dict(activation="relu")])
def test_bad_cst_configs_rejected(bad):
    with pytest.raises(ValueError):
        ModelConfig.from_dict(cst_cfg(**bad))


@pytest.mark.parametrize("scales", [[[2, 3, 1, 1], [1, 1, 1, 1]], [["N/0", 3, 1, 1], [1, 1, 1, 1]],
                                    [["M/2", 3, 1, 1], [1, 1, 1, 1]], [[1, 3, 1], [1, 1, 1, 1]]])
def test_bad_scales_rejected(scales):
    with pytest.raises(ValueError):
        ModelConfig.from_dict(enc_cfg(layer_scales=scales))


def test_config_defaults_and_unknown_keys():
    cfg = ModelConfig.from_dict(dict(cst_cfg(), note="kept"))
    assert (cfg.shared_local_global, cfg.tie_embeddings, cfg.norm_eps, cfg.activation) == (True, False, 1e-5, "gelu")
    assert cfg.extension == 2 and cfg.context == 24
    d = cfg.to_dict()
    assert d["note"] == "kept" and "max_positions" not in d and "layer_scales" not in d
    assert "activation" not in cfg.to_dict(minimal=True)
