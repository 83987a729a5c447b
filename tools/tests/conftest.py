import pytest
import torch

from msgen_tools.models import ModelConfig, build_model


def rand_model(seed=0, std=0.3, dtype=torch.float64, **cfg):
    """A model with large random weights (incl. biases and norm gains), so that every
    term of the forward pass visibly matters. float64 so comparisons are exact-ish."""
    model = build_model(ModelConfig.from_dict(cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=g))
    return model.to(dtype).eval()


def cst_cfg(**over):
    cfg = dict(architecture="cst-decoder", vocab_size=37, d_model=16, n_layers=2, n_heads=2, d_ff=24,
               slice_length=4, extension_ratio=2, max_slices=6)
    cfg.update(over)
    return cfg


def tr_cfg(**over):
    cfg = dict(architecture="transformer-decoder", vocab_size=37, d_model=16, n_layers=2, n_heads=4, d_ff=24,
               max_positions=40)
    cfg.update(over)
    return cfg


def enc_cfg(**over):
    cfg = dict(architecture="ms-trans-encoder", vocab_size=37, d_model=16, n_layers=2, n_heads=4, d_ff=12,
               layer_scales=[[1, 3, "N/4", "N/2"], [5, "N/8", 3, "N/1"]], labels=["a", "b", "c"],
               max_length=64, cls_token_id=36)
    cfg.update(over)
    return cfg


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def ms_cfg(architecture="top-down-decoder", **over):
    """A tiny multi-scale decoder (§8): N = 24 is a multiple of k^(S-1) for k = 2, S = 3
    and for k = 3 or 4, S = 2 (callers override what they vary)."""
    cfg = dict(architecture=architecture, vocab_size=37, d_model=16, n_heads=2, d_ff=24, scales=2, pool_factor=2,
               layers_per_scale=[2, 1], max_positions=24)
    if architecture == "bottom-up-decoder":
        cfg["agg_layers"] = 1
    cfg.update(over)
    return cfg
