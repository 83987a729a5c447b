import math

import pytest
import torch

from conftest import cst_cfg, rand_model
from msgen_tools.train_lm import perplexity, perplexity_windows


@pytest.mark.parametrize("n,C,S", [(2, 4, 3), (10, 4, 3), (10, 4, 1), (25, 8, 5), (8, 16, 15), (33, 6, 2)])
def test_windows_score_every_token_once(n, C, S):
    scored = []
    for start, end, first in perplexity_windows(n, C, S):
        assert end - start <= C and start < first <= end
        assert start % S == 0
        scored += range(first, end)
    assert scored == list(range(1, n))  # token 0 is context only


def test_bad_stride():
    with pytest.raises(ValueError):
        perplexity_windows(10, 4, 4)


def brute_force_nll(model, ids, C, S):
    """Token by token: find the window that scores position p, run just that window."""
    nll = 0.0
    for start, end, first in perplexity_windows(len(ids), C, S):
        for p in range(first, end):
            logits = model(torch.tensor([ids[start:p]]))[0, -1]
            nll -= torch.log_softmax(logits, -1)[ids[p]].item()
    return nll


@pytest.mark.parametrize("C,S", [(24, 23), (10, 9), (10, 4)])
def test_perplexity_matches_brute_force(C, S):
    model = rand_model(**cst_cfg())
    ids = torch.randint(0, 37, (41,)).tolist()
    r = perplexity(model, ids, context=C, stride=S, byte_lengths=[2] * 37)
    ref = brute_force_nll(model, ids, C, S)
    assert r["tokens"] == 40
    assert abs(r["nll"] - ref) < 1e-8
    assert abs(r["ppl"] - math.exp(ref / 40)) < 1e-8
    assert abs(r["bits_per_byte"] - ref / math.log(2) / 80) < 1e-8
