"""The prompt attention's splits (loom/backend/cuda/int_attention_splits.py, the host side of int_attention's launch;
no GPU needed): the blocks' walks of keys as the kernel bounds them, and the splits the rule picks."""
import numpy as np
import pytest

from loom.backend.cuda import int_attention_splits as sp

SETTINGS = dict(multiprocessors=132, share=70, tiles=4, tiles_few=2)       # (int_attention's, an H200's)


def _kernel_walks(rows, n, T, first, lo, window, bq):
    """loom_int_attend's walk of each block, its arithmetic line by line (int_attention_source.py)."""
    blocks = -(-rows // bq)
    tiles = []
    for bx in range(blocks):
        r0 = (blocks - 1 - bx) * bq
        last = min(r0 + bq, rows) - 1
        one = r0 // T == last // T
        pmin, pmax = first + (r0 % T if one else 0), first + (last % T if one else T - 1)
        kfirst = max(0, pmin - window + 1 - lo) if window else 0
        kend = min(n, pmax - lo + 1)
        tiles.append((kend - kfirst + 63) // 64 if kend > kfirst else 0)
    return max(tiles), sum(tiles)


def test_the_walks_are_the_kernels():
    """Blocks of 16 and 64 rows, groups of 1-16 query heads (blocks spanning two heads), rows not a multiple of a
    block, windows, chunks after cached keys and fewer keys than positions."""
    rng = np.random.default_rng(0)
    for _ in range(3000):
        per_group = int(rng.choice([1, 2, 3, 4, 7, 16]))
        T = int(rng.choice([1, 3, 16, 17, 63, 64, 65, 129, 500, 2048]))
        first = int(rng.choice([0, 1, 64, 65, int(rng.integers(0, 5000))]))
        lo = int(rng.choice([0, int(rng.integers(0, first + 1)), int(rng.integers(0, first + 200))]))
        n = max(0, first + T - lo) if rng.random() < 0.7 else int(rng.integers(0, max(first + T - lo, 0) + 100))
        window = int(rng.choice([0, 0, 1, 16, 17, 64, 100, int(rng.integers(1, 3000))]))
        for bq in (16, 64):
            args = (per_group * T, n, T, first, lo, window, bq)
            assert sp.walks(*args) == _kernel_walks(*args), args


def test_a_causal_prompts_walks_are_a_triangle_a_head():
    for per_group, t in ((3, 2048), (7, 512), (4, 1024)):
        tiles = t // 64
        assert sp.walks(per_group * t, t, t, 0, 0, 0, 64) == (tiles, per_group * tiles * (tiles + 1) // 2)
    assert sp.walks(2048, 4096, 2048, 2048, 0, 0, 64) == (64, sum(range(33, 65)))    # (after 2,048 cached keys)


def test_the_splits_measured_fastest():
    """The counts the H200's prompt kernels ran fastest with (int_attention's SPLIT_SHARE and SPLIT_TILES notes):
    key/value heads, query heads each, tokens."""
    chosen = {(g, p, t): sp.splits(g, p * t, t, t, 0, 0, 0, 4, 64, **SETTINGS)
              for g, p, t in ((3, 3, 2048), (2, 7, 2048), (8, 4, 2048), (3, 3, 1024), (8, 4, 512), (3, 3, 512),
                              (2, 7, 1024))}
    assert chosen == {(3, 3, 2048): 4, (2, 7, 2048): 3, (8, 4, 2048): 2, (3, 3, 1024): 4, (8, 4, 512): 2,
                      (3, 3, 512): 4, (2, 7, 1024): 4}
    assert sp.splits(8, 4, 1000, 1, 999, 0, 0, 1, 64, **SETTINGS) == 8          # (one decode row a head)


def test_the_splits_stay_between_1_and_16_and_follow_the_settings():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        T = int(rng.integers(1, 5000))
        G, per_group, warps = int(rng.integers(1, 64)), int(rng.integers(1, 9)), int(rng.choice([1, 2, 4]))
        n = int(rng.integers(0, T + 3000))
        got = sp.splits(G, per_group * T, n, T, max(0, n - T), 0, int(rng.choice([0, 512])), warps,
                        int(rng.choice([64, 128])), int(rng.integers(1, 200)), int(rng.integers(1, 300)),
                        int(rng.integers(1, 9)), int(rng.integers(1, 5)))
        assert 1 <= got <= 16
    base = sp.splits(3, 3 * 2048, 2048, 2048, 0, 0, 0, 4, 64, **SETTINGS)
    for key, value, moves in (("share", 30, +1), ("share", 300, -1), ("tiles", 16, -1)):
        other = sp.splits(3, 3 * 2048, 2048, 2048, 0, 0, 0, 4, 64, **{**SETTINGS, key: value})
        assert (other - base) * moves > 0, (key, value, base, other)
    for key in ("share", "tiles", "tiles_few"):                       # (0: taken as 1, not a division by zero)
        assert 1 <= sp.splits(3, 3 * 512, 512, 512, 0, 0, 0, 4, 64, **{**SETTINGS, key: 0}) <= 16


@pytest.mark.parametrize("rows, n", [(0, 100), (64, 0)])
def test_no_rows_or_no_keys_take_one_split(rows, n):
    assert sp.splits(2, rows, n, max(rows, 1), 0, 0, 0, 4, 64, **SETTINGS) == 1


def test_numpy_integers_are_taken():
    """(The walks are cached by their arguments: a 0-d array, unhashable, is made an int first.)"""
    assert sp.splits(3, 3 * 2048, 2048, 2048, np.array(0), np.int64(0), 0, 4, 64, **SETTINGS) == 4
