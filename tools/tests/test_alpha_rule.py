from msgen_tools.models import alpha_rule, layer_scales_from_alpha

SCALES = [1, 3, "N/16", "N/8", "N/4"]  # the paper's candidates for SST


def test_paper_example():
    # MS-Trans Eq. 11-12 as written, alpha = 0.5, 10 heads, 3 layers, 5 scales.
    # (The paper's text prints {5,2,2,1,0}, {4,2,2,1,1} for the first two layers,
    # which the equations do not produce; DESIGN §3 follows the equations.)
    assert alpha_rule(0.5, SCALES, 10, 3) == [[4, 3, 1, 1, 1], [3, 2, 2, 2, 1], [2, 2, 2, 2, 2]]


def test_every_layer_has_n_heads():
    for alpha in (-1.0, 0.0, 0.3, 0.5, 1.0, 2.5):
        for heads in (1, 4, 7, 10, 16):
            for layers in (1, 2, 6):
                rows = alpha_rule(alpha, SCALES, heads, layers)
                assert len(rows) == layers and all(sum(r) == heads for r in rows)


def test_alpha_zero_is_uniform_and_last_layer_uniform():
    assert alpha_rule(0.0, SCALES, 10, 2) == [[2] * 5, [2] * 5]
    assert alpha_rule(1.0, SCALES, 5, 4)[-1] == [1] * 5


def test_expanded_layer_scales():
    rows = layer_scales_from_alpha(0.5, SCALES, 10, 3)
    assert rows[0] == [1, 1, 1, 1, 3, 3, 3, "N/16", "N/8", "N/4"]
    assert all(len(r) == 10 for r in rows)
