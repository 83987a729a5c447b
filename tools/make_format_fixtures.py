"""Writes the fixtures of the .msz/checkpoint reader tests (Tests/Fixtures/format/).

The files are made by the real libraries — `safetensors` and `torch.save` — and the
values they hold are recorded in expected.json, so the Swift readers are checked against
what PyTorch wrote, not against themselves.

    .venv/bin/python tools/make_format_fixtures.py
"""
import collections
import json
import os
import pathlib

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

OUT = pathlib.Path(__file__).resolve().parent.parent / "Tests" / "Fixtures" / "format"


def tiny_state():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(3, 5, generator=g)
    return collections.OrderedDict(
        [
            ("a.f32", base.clone()),
            ("b.f16", (torch.randn(4, 6, generator=g) * 3).half()),
            ("c.bf16", (torch.randn(2, 3, 4, generator=g) * 100).bfloat16()),
            ("d.scalar", torch.tensor(1.5)),
            ("e.ids", torch.tensor([0, -3, 7, 2**40], dtype=torch.int64)),
        ]
    )


def values(t):
    return t.float().flatten().tolist() if t.is_floating_point() else t.flatten().tolist()


def expected(state):
    names = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.int64: "i64"}
    return {k: {"dtype": names[v.dtype], "shape": list(v.shape), "values": values(v)} for k, v in state.items()}


class Evil:
    """Unpickling this runs os.system: the attack a checkpoint reader must refuse."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/msgen-pwned",))


def tiny_cst_checkpoint(path: pathlib.Path):
    """A complete, valid cst-decoder checkpoint for the converter's validation tests."""
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["In the beginning God created the heaven and the earth."] * 20, trainer)
    tok.save(str(path / "tokenizer.json"))
    V, D, F, L, alpha, G = tok.get_vocab_size(), 32, 64, 4, 3, 4
    cfg = dict(architecture="cst-decoder", vocab_size=V, d_model=D, n_layers=1, n_heads=2, d_ff=F,
               slice_length=L, extension_ratio=alpha, max_slices=G, eos_token_id=0, tie_embeddings=False,
               shared_local_global=True, note="unknown keys are kept")
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    g = torch.Generator().manual_seed(1)
    E = (alpha - 1) * L // 2
    t = {"embed.weight": [V, D], "pos_local.weight": [E + L, D], "pos_global.weight": [G, D],
         "norm_f.weight": [D], "norm_f.bias": [D], "lm_head.weight": [V, D]}
    p = "layers.0."
    for n in ["norm1", "norm2"]:
        t[p + n + ".weight"] = [D]; t[p + n + ".bias"] = [D]
    for n in "qkvo":
        t[p + f"attn.{n}_proj.weight"] = [D, D]; t[p + f"attn.{n}_proj.bias"] = [D]
    t[p + "mlp.fc1.weight"] = [F, D]; t[p + "mlp.fc1.bias"] = [F]
    t[p + "mlp.fc2.weight"] = [D, F]; t[p + "mlp.fc2.bias"] = [D]
    save_file({k: torch.randn(*s, generator=g) * 0.3 for k, s in t.items()}, str(path / "model.safetensors"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    state = tiny_state()
    save_file(dict(state), str(OUT / "tiny.safetensors"))

    # A real module's state_dict (an OrderedDict with _metadata, set by BUILD), plus a
    # transposed view and an offset view that share one storage with other tensors.
    pt = collections.OrderedDict(state)
    pt._metadata = collections.OrderedDict([("", {"version": 1})])
    big = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    pt["f.transposed"] = big.t()
    pt["g.offset_view"] = big[1:3, 2:5]
    torch.save(pt, str(OUT / "tiny.pt"))
    # A training checkpoint that nests the state dict, as train scripts save it.
    torch.save({"step": 12, "model": collections.OrderedDict([("a.f32", state["a.f32"])])}, str(OUT / "nested.pt"))
    torch.save({"weights": Evil()}, str(OUT / "evil.pt"))

    exp = expected(state)
    exp["f.transposed"] = {"dtype": "f32", "shape": [6, 4], "values": values(big.t())}
    exp["g.offset_view"] = {"dtype": "f32", "shape": [2, 3], "values": values(big[1:3, 2:5])}
    (OUT / "expected.json").write_text(json.dumps(exp, indent=1))
    tiny_cst_checkpoint(OUT / "tiny-cst")


if __name__ == "__main__":
    main()
