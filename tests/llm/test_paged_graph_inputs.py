"""paged_graph.fill_inputs: the host side of a recorded paged decode step's inputs (ids, positions,
column-major block tables, padding), against a plain loop over the rows, on random tables."""
import numpy as np
import pytest

from loom.llm.paged_graph import fill_inputs


def _reference(batch, ids, positions, tables, scratch, width):
    want = np.zeros(2 * batch + width * batch, dtype=np.int64)
    want[2 * batch:] = scratch
    for b, (p, table) in enumerate(zip(positions, tables)):
        want[b] = ids[b]
        want[batch + b] = p
        for j, block in enumerate(table):
            want[2 * batch + j * batch + b] = block
    return want


@pytest.mark.parametrize("seed", range(5))
def test_inputs_match_a_loop_over_the_rows(seed):
    rng = np.random.default_rng(seed)
    batch, max_blocks, scratch = int(rng.integers(1, 40)), 12, 999
    n = int(rng.integers(0, batch + 1))
    tables = [rng.integers(0, 500, rng.integers(0, max_blocks + 1)).tolist() for _ in range(n)]
    ids, positions = rng.integers(0, 50_000, n).tolist(), rng.integers(0, 4096, n).tolist()
    host = rng.integers(-9, 9, 2 * batch + batch * max_blocks)          # stale values from an earlier step
    used = fill_inputs(host, batch, ids, positions, tables, scratch, max_blocks)
    width = max([len(t) for t in tables] + [1])
    assert used == 2 * batch + width * batch
    np.testing.assert_array_equal(host[:used], _reference(batch, ids + [0] * (batch - n), positions, tables,
                                                          scratch, width))


def test_ids_from_the_device_are_left_alone():
    host = np.full(2 * 3 + 3 * 4, 7, dtype=np.int64)
    used = fill_inputs(host, 3, None, [5, 6], [[1, 2], [3]], 99, 4)
    assert used == 6 + 2 * 3
    assert host[:3].tolist() == [7, 7, 7]                               # the argmax tokens written on the device
    assert host[3:6].tolist() == [5, 6, 0]
    assert host[6:12].tolist() == [1, 3, 99, 2, 99, 99]                 # entry 0 of each row, then entry 1


def test_bad_inputs_raise():
    host = np.zeros(2 * 2 + 2 * 3, dtype=np.int64)
    with pytest.raises(ValueError, match="4 entries"):
        fill_inputs(host, 2, [1], [0], [[1, 2, 3, 4]], 9, 3)
    with pytest.raises(ValueError, match="3 positions"):
        fill_inputs(host, 2, [1, 2, 3], [0, 0, 0], [[1], [1], [1]], 9, 3)
    with pytest.raises(ValueError, match="2 ids"):
        fill_inputs(host, 2, [1, 2], [0], [[1]], 9, 3)
