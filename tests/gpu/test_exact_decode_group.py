"""Deterministic decode attention with a block per key/value head (backend/cuda/decode_exact_group.py) gives the
one-block-a-query-head kernel's bits, and writes the same cache: on fresh random caches of spread magnitudes,
for groups of 2 to 8 query heads, head sizes 64 and 128, blocks of 128 to 512 threads, windows on both sides
of the rounded scheme's keys (ROUNDED_KEYS: p v in the slice scheme past it), sliding windows, qwen3's head
norms, inf and NaN in the keys and values, and p v that cancels so that its entries are settled. The
one-block kernel's bits are the CPU's (test_paged_decode_graph_exact.py, which replays recorded steps that
take the grouped kernel where it applies)."""

import numpy as np
import pytest

from .cpu_gpu import same_bits
from .test_exact_decode_split import Case

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import decode_exact  # noqa: E402  (imports cupy)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def grouped_at_any_batch(monkeypatch):
    """These cases' few sequences take the grouped kernel too (by default it waits for a third of the
    multiprocessors' worth of blocks)."""
    monkeypatch.setattr(decode_exact, "GROUP_FEWEST", 1 << 20)


def _both(monkeypatch, case, window=None, what="", held=True):
    """The grouped kernel's output and caches against the one-block kernel's, bit for bit: its probabilities
    in shared memory (held: SHARED_MAX raised for these cases' sizes) or in probability_work's workspace."""
    monkeypatch.setattr(decode_exact, "SHARED_MAX", 200 * 1024 if held else 0)
    grouped = decode_exact._grouped(case.B, case.H, case.KV, case.D, case.max_keys)
    assert grouped is not None and grouped[4] == held, "grouped kernel not taken as asked"
    work = decode_exact.probability_work(case.B, case.H, case.KV, case.D, case.max_keys)
    assert (work is None) == held
    if work is not None:
        work.fill(np.nan)                     # nothing of it is read before it is written
    out = case.run(window=window, p_work=work)
    monkeypatch.setattr(decode_exact, "GROUPED", False)
    one = case.run(window=window)
    monkeypatch.setattr(decode_exact, "GROUPED", True)
    for name, a, b in zip(("attention", "keys written", "values written"), out, one):
        same_bits(a, b, f"{what}: {name}, a block a key/value head ({'shared' if held else 'device'} memory) "
                        "vs a block a query head")
    return one[0]


@pytest.mark.parametrize("positions", [[0, 5], [16, 31], pytest.param([300, 17], marks=pytest.mark.smoke),
                                       [1023, 2047], [2048, 2049], [3000, 600]])
@pytest.mark.parametrize("held", [True, False])
def test_windows_on_both_sides_of_the_rounded_keys(monkeypatch, positions, held):
    out = _both(monkeypatch, Case(positions, H=6, KV=2, seed=positions[0]), what=str(positions), held=held)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("H, KV, D, norm", [(4, 2, 64, False), (9, 3, 64, False), (14, 2, 64, False),
                                            (32, 8, 64, False), (16, 2, 128, False), (8, 2, 128, True),
                                            (6, 3, 64, True)])
@pytest.mark.parametrize("held", [True, False])
def test_any_group_size_head_size_and_norm(monkeypatch, H, KV, D, norm, held):
    _both(monkeypatch, Case([700, 90, 1], H, KV, D, seed=H + KV, norm=norm), what=f"H {H} KV {KV} D {D}", held=held)


@pytest.mark.parametrize("held", [True, False])
@pytest.mark.parametrize("threads", [128, 256, 512])
def test_blocks_of_any_thread_count(monkeypatch, threads, held):
    for name in ("GROUP_FEW_THREADS", "GROUP_THREADS", "GROUP_MANY_THREADS"):
        monkeypatch.setattr(decode_exact, name, threads)
    _both(monkeypatch, Case([2500, 1000, 40], H=12, KV=3, seed=threads), what=f"{threads} threads", held=held)


@pytest.mark.parametrize("held", [True, False])
def test_heads_of_128_past_the_rounded_keys(monkeypatch, held):
    for name in ("GROUP_FEW_THREADS", "GROUP_THREADS", "GROUP_MANY_THREADS"):
        monkeypatch.setattr(decode_exact, name, 256)
    _both(monkeypatch, Case([2600, 2049, 300], H=8, KV=2, D=128, seed=11), what="head_dim 128", held=held)


@pytest.mark.parametrize("window", [1, 600, 2047, 3000])
def test_sliding_windows(monkeypatch, window):
    _both(monkeypatch, Case([4000, 2100, 300], H=8, KV=2, seed=window), window=window, what=f"window {window}",
          held=window != 600)


@pytest.mark.parametrize("where", ["nan key", "inf key", "inf value", "nan value", "huge scores"])
@pytest.mark.parametrize("positions", [[1000, 900], [2500, 3100]])
def test_special_values(monkeypatch, where, positions):
    case = Case(positions, H=8, KV=2, seed=len(where))
    case.spoil(where)
    out = _both(monkeypatch, case, what=where, held=positions[0] < 2048)
    assert where == "inf key" or not np.isfinite(out).all()


@pytest.mark.parametrize("held", [True, False])
@pytest.mark.parametrize("positions", [[1800, 1101], [2600, 60]])
def test_cancelling_sums_are_settled(monkeypatch, positions, held):
    """Every cached key alike (equal probabilities), the values alternating in sign along the positions with
    every seventh nudged, the new value zero: p v cancels beyond the float64 certification and is settled."""
    case = Case(positions, H=6, KV=2, seed=3)
    case.cancel()
    _both(monkeypatch, case, what="cancelling", held=held)


def test_where_the_grouped_kernel_is_taken_and_its_threads(monkeypatch):
    """Not for one query head a key/value head, more than GROUP_MAX, GROUPED off or blocks fewer than a
    GROUP_FEWEST-th of the multiprocessors; the probabilities in shared memory up to SHARED_MAX, else in
    probability_work's workspace; GROUP_FEW_THREADS below a block a multiprocessor, GROUP_THREADS up to three,
    GROUP_MANY_THREADS past (head_dim where the head is larger)."""
    assert decode_exact._grouped(64, 8, 8, 64, 1024) is None
    assert decode_exact._grouped(64, 2 * (decode_exact.GROUP_MAX + 1), 2, 64, 1024) is None
    assert decode_exact._grouped(64, 8 * 7, 8, 64, 256)[4]
    *_, shared, held = decode_exact._grouped(64, 8 * 7, 8, 64, decode_exact.CHUNK_KEYS)
    assert not held and shared <= decode_exact.SHARED_MAX
    assert decode_exact.probability_work(64, 8 * 7, 8, 64, decode_exact.CHUNK_KEYS).size == 64 * 56 * decode_exact.CHUNK_KEYS
    assert decode_exact.probability_work(64, 8 * 7, 8, 64, 256) is None
    sms = decode_exact._multiprocessors(cupy.cuda.Device().id)
    threads = [decode_exact._grouped(blocks, 6, 1, 64, 1024)[1] for blocks in (sms - 1, sms, 3 * sms - 1, 3 * sms)]
    assert threads == [decode_exact.GROUP_FEW_THREADS, decode_exact.GROUP_THREADS, decode_exact.GROUP_THREADS,
                       decode_exact.GROUP_MANY_THREADS]
    assert decode_exact._grouped(3 * sms, 6, 1, 256, 1024)[1] == 256
    monkeypatch.setattr(decode_exact, "GROUP_FEWEST", 3)
    assert decode_exact._grouped(-(-sms // 3) - 1, 6, 1, 64, 1024) is None
    assert decode_exact._grouped(-(-sms // 3), 6, 1, 64, 1024) is not None
    monkeypatch.setattr(decode_exact, "GROUPED", False)
    assert decode_exact._grouped(64, 14, 2, 64, 1024) is None


def test_a_missing_or_short_workspace_is_refused(monkeypatch):
    monkeypatch.setattr(decode_exact, "SHARED_MAX", 0)
    case = Case([300, 20], H=6, KV=2)
    with pytest.raises(ValueError, match="probability_work"):
        case.run()
    work = decode_exact.probability_work(case.B, case.H, case.KV, case.D, case.max_keys)
    for bad in (work[:-1], work.astype(np.float64)):
        with pytest.raises(ValueError, match="probability_work"):
            case.run(p_work=bad)
