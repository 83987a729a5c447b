"""Does llama.cpp, given our GGUF export, compute the same model as msgen?

    .venv/bin/python tools/check_gguf_logits.py [--model models/baseline-kjv.msz] [--text FILE] [--msgen PATH]

Needs the `bench` extra (gguf, llama-cpp-python). Two checks, each against an
independent float64 numpy forward pass of the same weights (msgen_tools.gpt2_numpy):

1. The msgen .msz (default: the bundled f32 baseline): the text's tokens (cut to the
   model's context, so one window scores them all) are scored by `msgen perplexity
   --json --per-token` and by llama.cpp (`Llama.eval` with every position's logits, KV
   cache in f32) from the f32 GGUF; per-token log-probabilities and the summed NLL are
   compared pairwise, with the reference computed with the erf GELU and the tanh GELU.
2. Tests/Fixtures/gpt2 (a Hugging Face GPT-2, tanh GELU) exported from its directory:
   llama.cpp's full logits vs the golden logits stored beside it by transformers.

llama.cpp's gpt2 graph always uses the tanh GELU, evaluated through an f16 lookup table
(ggml's GGML_GELU_FP16), so on an erf-GELU model like the bundled baseline it runs a
slightly different function; the erf/tanh references show how much of the gap that is.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from msgen_tools import gguf_export  # noqa: E402
from msgen_tools.gpt2_numpy import reference_logits, token_logprobs  # noqa: E402

DEFAULT_MSGEN = Path("/work/main/.build/release/msgen")
GGML_TYPE_F32 = 0


# ---------------------------------------------------------------------------------------
# The runtimes

def llamacpp_logits(gguf_path, ids, vocab):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=len(ids), n_batch=len(ids), n_ubatch=len(ids), n_threads=1,
                logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids), :vocab], dtype=np.float64)
    llm.close()
    return logits


def llamacpp_tokenize(gguf_path, text):
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    llm.close()
    return ids


def msgen_logprobs(msgen, model, text_path, context):
    r = subprocess.run([str(msgen), "perplexity", str(text_path), "--model", str(model), "--context", str(context),
                        "--json", "--per-token", "--threads", "1"], check=True, capture_output=True, text=True)
    j = json.loads(r.stdout)
    per = j["per_token"] if "per_token" in j else j["files"][0]["per_token"]
    return np.array([p["id"] for p in per]), np.array([p["logprob"] for p in per], dtype=np.float64)


def prefix_within(tokenizer_json, text, context):
    """The longest prefix of whole lines of `text` that tokenizes to at most `context` tokens, and its ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    lines = text.splitlines(keepends=True)
    for k in range(len(lines), 0, -1):
        ids = tok.encode("".join(lines[:k])).ids
        if len(ids) <= context:
            return "".join(lines[:k]), ids
    raise ValueError("the text's first line is already longer than the context")


def compare(name, a, b):
    diff = np.abs(a - b)
    rel_nll = abs(a.sum() - b.sum()) / abs(b.sum())
    print(f"  {name:40s} max |Δ logprob| {diff.max():.2e}  mean {diff.mean():.2e}   NLL {-a.sum():.5f} vs {-b.sum():.5f}"
          f"  (relative {rel_nll:.1e})")
    return rel_nll


def check_msz(a):
    with tempfile.TemporaryDirectory(prefix="check-gguf-") as d:
        return check_msz_in(a, Path(d))


def check_msz_in(a, work):
    m = gguf_export.from_msz(a.model)
    text, ids = prefix_within(m.tokenizer_json, a.text.read_text(), m.context)
    (work / "text.txt").write_text(text)
    gguf_path = work / "model-f32.gguf"
    gguf_export.write(m, gguf_path, "f32")
    print(f"{a.model} ({m.activation} activation): {len(ids)} tokens of {a.text.name}, {len(ids) - 1} scored")
    m_ids, m_lp = msgen_logprobs(a.msgen, a.model, work / "text.txt", len(ids))
    if list(m_ids) != ids[1:]:
        sys.exit("msgen tokenized the text differently from the tokenizers library; the comparison would be meaningless")
    l_ids = llamacpp_tokenize(gguf_path, text)
    print(f"  llama.cpp tokenizes the text {'identically' if l_ids == ids else 'DIFFERENTLY'} (GGUF vocabulary and merges)")
    l_logits = llamacpp_logits(gguf_path, ids, m.vocab_size)
    l_lp = token_logprobs(l_logits, ids)
    acts = ("gelu", "gelu_tanh", "gelu_tanh_f16")
    ref_logits = {act: reference_logits(m, ids, act) for act in acts}
    ref = {act: token_logprobs(ref_logits[act], ids) for act in acts}
    compare("msgen vs reference(erf)", m_lp, ref["gelu"])
    for act, label in zip(acts, ("erf", "tanh", "tanh, f16 table")):
        compare(f"llama.cpp vs reference({label})", l_lp, ref[act])
        rel = np.abs(l_logits - ref_logits[act]).max() / np.abs(ref_logits[act]).max()
        print(f"  {'':28s} full logits: max |Δ| / max |logit| = {rel:.2e}")
    compare("reference: tanh vs erf", ref["gelu_tanh"], ref["gelu"])
    return compare("msgen vs llama.cpp", m_lp, l_lp)


def check_hf_fixture(fixture):
    from safetensors.numpy import load_file

    m = gguf_export.from_hf_dir(fixture)
    golden = load_file(str(fixture / "golden.safetensors"))
    ids = [int(i) for i in golden["input_ids"]]
    with tempfile.TemporaryDirectory() as d:
        gguf_path = Path(d) / "gpt2-f32.gguf"
        gguf_export.write(m, gguf_path, "f32")
        logits = llamacpp_logits(gguf_path, ids, m.vocab_size)
    g = golden["logits"].astype(np.float64)
    scale = np.abs(g).max()
    print(f"{fixture} (HF GPT-2, {m.activation}): {len(ids)} tokens, logits up to {scale:.1f} in magnitude")
    print(f"  llama.cpp vs transformers: max |Δ logit| / max |logit| = {np.abs(logits - g).max() / scale:.2e}")
    for act in ("gelu_tanh", "gelu_tanh_f16"):
        ref = reference_logits(m, ids, act)
        print(f"  reference({act}) vs transformers {np.abs(ref - g).max() / scale:.2e}, vs llama.cpp {np.abs(ref - logits).max() / scale:.2e}")
    return np.abs(logits - g).max() / scale


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "baseline-kjv.msz")
    ap.add_argument("--text", type=Path, default=ROOT / "Tests" / "Fixtures" / "perplexity" / "psalm.txt")
    ap.add_argument("--msgen", type=Path, default=DEFAULT_MSGEN)
    ap.add_argument("--hf-fixture", type=Path, default=ROOT / "Tests" / "Fixtures" / "gpt2")
    a = ap.parse_args()
    check_hf_fixture(a.hf_fixture)
    rel = check_msz(a)
    print(f"msgen and llama.cpp NLL agree to {rel:.1e} relative ({'within' if rel <= 1e-3 else 'OUTSIDE'} 1e-3)")


if __name__ == "__main__":
    main()
