"""Byte-level BPE tokenizers (GPT-2 style) trained with Hugging Face `tokenizers`.

Choices the Swift tokenizer has to mirror, all visible in tokenizer.json:
- ByteLevel pre-tokenizer, GPT-2 regex, add_prefix_space=False (text is encoded
  exactly as given; a prompt "Hello" and " Hello" are different tokens),
- ByteLevel decoder, no normalizer, no post-processor,
- all 256 byte symbols in the base vocabulary, so any UTF-8 input encodes (no <unk>),
- "<|endoftext|>" is a special token with id 0 and serves as eos.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
EOS_ID = 0


def new_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, extra_special: Iterable[str] = ()) -> Tokenizer:
    """Train on an iterable of strings. Deterministic: same texts, same vocab_size
    -> byte-identical tokenizer.json (checked by the tests). `extra_special` tokens
    (e.g. "[CLS]" for the classifier) get ids 1, 2, ... after eos."""
    tok = new_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, *extra_special],  # listed first, so EOS gets id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id(EOS) == EOS_ID
    return tok


def lines_of(path: str) -> list[str]:
    """A text file as lines with their newline kept, so the trainer also sees "\\n"."""
    with open(path, encoding="utf-8") as f:
        return f.readlines()


def load(path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def load_from_str(json_text: str) -> Tokenizer:
    return Tokenizer.from_str(json_text)
