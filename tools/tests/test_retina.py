"""The retina decoder of DESIGN §8 (c): the batched model against the slice-by-slice loop
reference, causality, config rules, export round trip."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import rand_model
from msgen_tools.export import export_checkpoint, load_checkpoint
from msgen_tools.models import ModelConfig, build_model, count_params
from msgen_tools.reference_loops import retina_forward_loop

TOL = 1e-5


def retina_cfg(**over):
    cfg = dict(architecture="retina-decoder", vocab_size=37, d_model=16, n_layers=2, n_heads=2, d_ff=24,
               slice_length=4, extension_ratio=2, levels=2, pool_factor=2, level_window=2)
    cfg.update(over)
    return cfg


def lengths_for(cfg):
    """Inside the first slice, on slice and top-level block boundaries, one past them,
    and three to four times the reach w·L·k^(M−1)."""
    c = ModelConfig.from_dict(cfg)
    L, top, reach = c.slice_length, c.level_block(c.levels), c.reach
    return sorted({1, L - 1, L, L + 1, top, top + 1, 3 * reach + L // 2, 4 * reach})


# α = 1, 2, 3; M = 1, 2, 3; k = 2, 4; w = 1, 2, 4; shared and separate projections
CASES = [
    dict(extension_ratio=1, levels=1, pool_factor=2, level_window=2),
    dict(extension_ratio=2, levels=2, pool_factor=2, level_window=1),
    dict(extension_ratio=3, levels=3, pool_factor=2, level_window=2, slice_length=2, shared_local_global=False),
    dict(extension_ratio=2, levels=2, pool_factor=4, level_window=2, tie_embeddings=True),
    dict(extension_ratio=3, levels=3, pool_factor=4, level_window=1, slice_length=2, activation="gelu_tanh"),
    dict(extension_ratio=1, levels=2, pool_factor=2, level_window=4, slice_length=3, n_layers=1),
    dict(extension_ratio=3, levels=1, pool_factor=4, level_window=4, slice_length=2, n_heads=4),
]


@pytest.mark.parametrize("over", CASES)
def test_batched_matches_loop(over):
    cfg = retina_cfg(**over)
    model = rand_model(**cfg)
    for T in lengths_for(cfg):
        ids = torch.randint(0, 37, (2, T))
        out = model(ids)
        for b in range(2):
            ref = retina_forward_loop(model, ids[b].tolist())
            assert (out[b] - ref).abs().max().item() < TOL, (over, T)


def test_levels_matter_past_the_first_slice():
    """Every level's summaries change the logits once a slice sees one of its blocks; a
    zero level table would not (guards against a level being silently dropped)."""
    cfg = retina_cfg(levels=2, pool_factor=2, level_window=2)
    model = rand_model(**cfg)
    ids = torch.randint(0, 37, (1, 40))
    base = model(ids)[0]
    for lv in ("1", "2"):
        with torch.no_grad():
            saved = model.pos_levels[lv].weight.clone()
            model.pos_levels[lv].weight.add_(1.0)
            out = model(ids)[0]
            model.pos_levels[lv].weight.copy_(saved)
        first_seen = ModelConfig.from_dict(cfg).level_block(int(lv))  # slice t sees level l once t·L ≥ B_l
        assert (out[:first_seen] - base[:first_seen]).abs().max().item() < 1e-12, lv
        assert (out[first_seen:] - base[first_seen:]).abs().max().item() > 1e-6, lv


@pytest.mark.parametrize("over", [CASES[2], CASES[3]])
def test_causal(over):
    """Changing token j changes no logit before j, and does change the logit at j."""
    model = rand_model(**retina_cfg(**over))
    T = 40
    ids = torch.randint(0, 37, (1, T))
    base = model(ids)[0]
    for j in range(T):
        other = ids.clone()
        other[0, j] = (other[0, j] + 1) % 37
        out = model(other)[0]
        if j:
            assert (out[:j] - base[:j]).abs().max().item() < 1e-12, j
        assert (out[j] - base[j]).abs().max().item() > 1e-6, j


def test_config_rules():
    for bad, msg in [(dict(levels=0), "levels"), (dict(pool_factor=1), "pool_factor"), (dict(level_window=0), "level_window"),
                     (dict(extension_ratio=4), "extension_ratio")]:
        with pytest.raises(ValueError, match=msg):
            ModelConfig.from_dict(retina_cfg(**bad))
    cfg = retina_cfg()
    del cfg["levels"]
    with pytest.raises(ValueError, match="levels is required"):
        ModelConfig.from_dict(cfg)
    c = ModelConfig.from_dict(retina_cfg(slice_length=16, levels=3, pool_factor=4, level_window=16))
    assert c.reach == 16 * 16 * 4 ** 2 == c.context
    assert "max_slices" not in c.to_dict() and "max_positions" not in c.to_dict()


def test_tensor_names_and_shapes():
    model = rand_model(**retina_cfg(levels=3, level_window=4))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for lv in (1, 2, 3):
        assert shapes[f"pos_levels.{lv}.weight"] == (5, 16)
    assert "pos_global.weight" not in shapes and "pos_levels.0.weight" not in shapes
    assert shapes["pos_local.weight"] == (4 + 2, 16)  # E + L with α = 2


def test_export_round_trip(tmp_path):
    model = rand_model(dtype=torch.float32, **retina_cfg(shared_local_global=False, levels=3))
    out = export_checkpoint(model, tmp_path / "ckpt")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())
    back, cfg = load_checkpoint(out)
    assert cfg.to_dict() == model.cfg.to_dict()
    ids = torch.randint(0, 37, (1, 50))
    assert torch.equal(back(ids), model(ids))


def test_suggested_kjv_config_size():
    """tools/README's retina-kjv config: within ±5 % of cst-kjv's 4,232,704 parameters, reach ≥ 4,096."""
    cfg = dict(architecture="retina-decoder", vocab_size=4096, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
               slice_length=16, extension_ratio=3, levels=3, pool_factor=4, level_window=16, tie_embeddings=True)
    c = ModelConfig.from_dict(cfg)
    from msgen_tools.models import build_model
    n = count_params(build_model(c))
    assert abs(n - 4_232_704) <= 0.05 * 4_232_704, n
    assert c.reach >= 4096


def test_shipped_retina_kjv_matches_the_reference(tmp_path):
    """models/retina-kjv.msz, read back by the pure-Python .msz reader into the PyTorch
    RetinaDecoder, scores a text exactly as `msgen perplexity` does: in windows of 512
    (several, with context carried over) and in one pass with --stream, which for PyTorch
    is one window of the whole text (it fits in the reach, so the two see the same)."""
    import os
    import subprocess

    import tokenizers

    from msgen_tools import msz
    from msgen_tools.train_lm import encode_file, perplexity

    root = Path(__file__).resolve().parents[2]
    binary = next((p for p in [os.environ.get("MSGEN"), root / ".build/release/msgen", root / ".build/debug/msgen"]
                   if p and Path(p).is_file()), None)
    if binary is None:
        pytest.skip("no msgen binary built")
    shipped = root / "models" / "retina-kjv.msz"
    excerpt = (root / "Tests" / "Fixtures" / "perplexity" / "kjv-test-excerpt.txt").read_text(encoding="utf-8")
    text = tmp_path / "excerpt.txt"
    text.write_text(excerpt[:12000], encoding="utf-8")  # ~3,000 tokens: within the reach
    f = msz.MSZFile(shipped)
    model = build_model(ModelConfig.from_dict(dict(f.config, architecture=f.architecture)))
    model.load_state_dict({t.name: torch.from_numpy(f.array(t.name, widen=True).copy()) for t in f.tensors})
    model.eval()
    ids = encode_file(tokenizers.Tokenizer.from_str(f.tokenizer_json), text)
    assert 600 < len(ids) < model.cfg.slice_length * model.cfg.level_window * model.cfg.pool_factor ** 2
    for extra, context in [(["--context", "512"], 512), (["--stream"], len(ids))]:
        out = subprocess.run([str(binary), "perplexity", "--model", str(shipped), "--json", *extra, str(text)],
                             capture_output=True, text=True, check=True).stdout
        ours = json.loads(out)
        with torch.no_grad():
            ref = perplexity(model, ids, context)
        assert ours["tokens"] == ref["tokens"]
        assert abs(ours["nll"] - ref["nll"]) <= 1e-4 * ref["nll"], (extra, ours["nll"], ref["nll"])
