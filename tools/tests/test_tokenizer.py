import subprocess
import sys

from msgen_tools import tokenizer as tk

TEXT = [
    "In the beginning God created the heaven and the earth.\n",
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n",
    "And God said, Let there be light: and there was light. It's good, isn't it?\n",
] * 20

TRAIN_IN_SUBPROCESS = """
import sys
from msgen_tools import tokenizer as tk
text = %r
sys.stdout.write(tk.train_bpe(text, 300).to_str())
"""


def test_training_is_deterministic():
    a = tk.train_bpe(TEXT, 300).to_str()
    b = tk.train_bpe(list(TEXT), 300).to_str()
    assert a == b
    # a fresh process (new hash seeds, thread pool) must agree too
    c = subprocess.run([sys.executable, "-c", TRAIN_IN_SUBPROCESS % (TEXT,)], capture_output=True, text=True,
                       check=True).stdout
    assert a == c


def test_layout():
    tok = tk.train_bpe(TEXT, 300)
    assert tok.token_to_id("<|endoftext|>") == 0
    assert tok.get_vocab_size() == 300
    # every byte is in the base vocabulary: anything encodes, nothing is <unk>
    for s in ["🙂 日本語 \u200d\ufffd", "\t\r\n", "ɐ"]:
        assert tok.decode(tok.encode(s).ids) == s
    # no prefix space is added: "God" and " God" are different
    assert tok.encode("God").ids != tok.encode(" God").ids
    assert tok.encode("a<|endoftext|>b").ids[1] == 0
