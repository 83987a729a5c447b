"""The pieces of tools/bench_llamacpp.py that need neither llama.cpp nor msgen."""
import importlib.util
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers

TOOLS = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_llamacpp", TOOLS / "bench_llamacpp.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_byte_alphabet_is_gpt2s():
    # the synthetic tokenizer's alphabet: train_lm's table, indexed by byte value
    from msgen_tools.train_lm import bytes_to_unicode

    table = dict(enumerate(bytes_to_unicode()))
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


@pytest.fixture(scope="module")
def synthetic():
    return Tokenizer.from_str(bench.synthetic_tokenizer(50257))


def test_synthetic_tokenizer_has_gpt2s_size_and_eos(synthetic):
    assert synthetic.get_vocab_size() == 50257
    assert synthetic.token_to_id("<|endoftext|>") == 50256
    tj = json.loads(synthetic.to_str())
    assert len(tj["model"]["merges"]) == 50257 - 257


def test_synthetic_tokenizer_round_trips_any_text(synthetic):
    text = "In the beginning God created the heaven and the earth.\n\tÿ€ 😀 日本語"
    enc = synthetic.encode(text)
    assert all(0 <= i < 50256 for i in enc.ids)
    assert synthetic.decode(enc.ids) == text
    n_bytes = len(text.encode())
    assert n_bytes / 2 <= len(enc.ids) < n_bytes  # tokens of one or two bytes, and merges do happen


def test_native_openblas_only_drops_the_tuning_variables(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "1048576")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert bench.msgen_env(False)["OPENBLAS_CORETYPE"] == "Haswell"
    native = bench.msgen_env(True)
    assert "OPENBLAS_CORETYPE" not in native and "OPENBLAS_L2_SIZE" not in native
    assert native["OPENBLAS_NUM_THREADS"] == "1"


def test_bench_tokens_are_msgens():
    """Sources/MSGen/Bench.swift: ((i + offset) * 2_654_435_761) % vocab."""
    assert bench.bench_tokens(4, 50257) == [0, 2654435761 % 50257, 2 * 2654435761 % 50257, 3 * 2654435761 % 50257]
    assert bench.bench_tokens(2, 1000, offset=5) == [5 * 2654435761 % 1000, 6 * 2654435761 % 1000]
