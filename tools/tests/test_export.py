import json

import pytest
import torch
from safetensors import safe_open

from conftest import cst_cfg, enc_cfg, rand_model, tr_cfg
from msgen_tools.export import export_checkpoint, load_checkpoint
from msgen_tools.tokenizer import train_bpe


def names(n_layers, per_layer, top):
    return set(top) | {f"layers.{i}.{p}" for i in range(n_layers) for p in per_layer}


ATTN = [f"attn.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")]
GATTN = [f"attn.{p}_proj.{w}" for p in ("gq", "gk", "gv") for w in ("weight", "bias")]
NORMS = [f"norm{i}.{w}" for i in (1, 2) for w in ("weight", "bias")]
MLP = [f"mlp.fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")]
DEC_TOP = ["embed.weight", "norm_f.weight", "norm_f.bias"]

CASES = [
    (cst_cfg(), names(2, ATTN + NORMS + MLP, DEC_TOP + ["pos_local.weight", "pos_global.weight", "lm_head.weight"])),
    (cst_cfg(shared_local_global=False, tie_embeddings=True),
     names(2, ATTN + GATTN + NORMS + MLP, DEC_TOP + ["pos_local.weight", "pos_global.weight"])),
    (tr_cfg(), names(2, ATTN + NORMS + MLP, DEC_TOP + ["pos.weight", "lm_head.weight"])),
    (enc_cfg(), names(2, ATTN + ["norm.weight", "norm.bias"],
                      ["embed.weight"] + [f"classifier.fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")])),
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(["In the beginning God created the heaven and the earth.\n"] * 3, 280)


@pytest.mark.parametrize("cfg,expected", CASES)
def test_round_trip(tmp_path, tok, cfg, expected):
    model = rand_model(dtype=torch.float32, **cfg)
    out = export_checkpoint(model, tmp_path / "ck", tokenizer=tok)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == expected
        for k in f.keys():
            assert f.get_tensor(k).dtype == torch.float32
    assert json.loads((out / "config.json").read_text()) == model.cfg.to_dict()

    back, cfg2 = load_checkpoint(out)
    assert cfg2 == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    ids = torch.randint(0, 36, (1, 10))
    assert torch.equal(model(ids), back(ids))


@pytest.mark.parametrize("dtype,torch_dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_export(tmp_path, dtype, torch_dtype):
    model = rand_model(dtype=torch.float32, **cst_cfg())
    out = export_checkpoint(model, tmp_path / "ck", dtype=dtype)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch_dtype for k in f.keys())
    back, _ = load_checkpoint(out)
    ids = torch.randint(0, 37, (1, 12))
    assert (back(ids) - model(ids)).abs().max() < 0.5  # same model, rounded weights


def test_loader_names_what_is_wrong(tmp_path):
    model = rand_model(dtype=torch.float32, **cst_cfg())
    out = export_checkpoint(model, tmp_path / "ck")
    cfg = json.loads((out / "config.json").read_text())
    cfg["shared_local_global"] = False  # now gq/gk/gv are expected but absent
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gq_proj"):
        load_checkpoint(out)
