"""The tensor C API (tensorcheck.c) against NumPy and Loom in Python: wrap without a copy, copies
between devices, gemm with every transpose, the queued gemm, float64, reduce_sum, fill and CSR SpMM;
deterministic mode's bits equal Loom's exact products and sums in Python, and the same on CUDA as on
the CPU (where CUDA runs)."""
import math

import numpy as np
import pytest
from capi_programs import run

import loom
from loom import backend
from loom.kernels import ops

M, K, N, ROWS, COLS, N2 = 7, 300, 5, 9, 40, 6


@pytest.fixture(scope="module")
def tensorcheck(compile_c):
    from pathlib import Path
    return compile_c(Path(__file__).parent / "tensorcheck.c", "tensorcheck")


def _inputs(folder):
    """Operands with a wide range of magnitudes (so a sum's order shows in its bits) and a CSR matrix
    with empty and long rows."""
    rng = np.random.default_rng(11)
    a = (rng.standard_normal((M, K)) * 10.0 ** rng.integers(-4, 4, (M, K))).astype(np.float32)
    b = (rng.standard_normal((K, N)) * 10.0 ** rng.integers(-4, 4, (K, N))).astype(np.float32)
    dense = (rng.standard_normal((COLS, N2)) * 10.0 ** rng.integers(-3, 3, (COLS, N2))).astype(np.float32)
    lengths = rng.integers(0, COLS, ROWS)
    lengths[2] = 0
    rowptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint32)
    colidx = np.concatenate([np.sort(rng.choice(COLS, n, replace=False)) for n in lengths]).astype(np.uint32)
    values = rng.standard_normal(int(rowptr[-1])).astype(np.float32)
    files = {"A.f32": a, "B.f32": b, "At.f32": np.ascontiguousarray(a.T), "Bt.f32": np.ascontiguousarray(b.T),
             "A.f16": (a / 1e4).astype(np.float16), "B.f16": (b / 1e4).astype(np.float16),
             "rowptr.u32": rowptr, "colidx.u32": colidx, "values.f32": values, "dense.f32": dense}
    for name, arr in files.items():
        (folder / name).write_bytes(arr.tobytes())
    (folder / "dims.txt").write_text(f"{M} {K} {N} {ROWS} {COLS} {rowptr[-1]} {N2}")
    return a, b, dense, rowptr, colidx, values


def _run(exe, device, folder, fast=False):
    done = run(exe, device, folder, env={"LOOM_CAPI_TEST_FAST": "1"} if fast else {})
    facts = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    read = lambda name, dt=np.float32: np.frombuffer((folder / name).read_bytes(), dt)  # noqa: E731
    return facts, read


def _csr_reference(rowptr, colidx, values, dense):
    out = np.zeros((ROWS, N2), np.float64)
    for r in range(ROWS):
        for j in range(N2):
            out[r, j] = math.fsum(float(values[q]) * float(dense[colidx[q], j]) for q in range(rowptr[r], rowptr[r + 1]))
    return out


def test_cpu_tensors_in_deterministic_mode_have_loom_pythons_bits(tensorcheck, tmp_path):
    a, b, dense, rowptr, colidx, values = _inputs(tmp_path)
    facts, read = _run(tensorcheck, 0, tmp_path)
    assert facts["wrap_is_caller_memory"] == "1"
    assert facts["info"] == f"0 1 2 {M} {K}"
    assert int(facts["devices"]) >= 1 and facts["live"] == "0"
    with loom.deterministic(True):
        product = ops.matmul(a, b)
        for name in ("gemm", "gemm_ta", "gemm_tb", "gemm_tab", "gemm_async", "gemm_copied"):
            assert read(name + ".f32").tobytes() == product.tobytes(), name
        a64, b64 = a.astype(np.float64) / 3.0, b.astype(np.float64) / 7.0
        assert read("gemm64.f64", np.float64).tobytes() == ops.matmul(a64, b64).tobytes()
        a16, b16 = (a / 1e4).astype(np.float16), (b / 1e4).astype(np.float16)
        assert read("gemm16.f16", np.float16).tobytes() == ops.matmul(a16, b16).tobytes()
        assert read("sum0.f32").tobytes() == ops.sum(a, axis=0).tobytes()
        assert read("sum1.f32").tobytes() == ops.sum(a, axis=1).tobytes()
    np.testing.assert_allclose(product, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5,
                               atol=1e-6 * np.abs(a).max() * np.abs(b).max())
    assert (read("fill.f32") == np.float32(2.5)).all()
    spmm = read("spmm.f32").reshape(ROWS, N2)
    np.testing.assert_array_equal(spmm[2], 0)                            # the empty row
    matrix = np.zeros((ROWS, COLS), np.float32)                          # the CSR matrix, dense
    for r in range(ROWS):
        matrix[r, colidx[rowptr[r]:rowptr[r + 1]]] = values[rowptr[r]:rowptr[r + 1]]
    with loom.deterministic(True):                                       # the dense gemm's bits
        assert spmm.tobytes() == ops.matmul(matrix, dense).tobytes()


def test_cpu_tensors_in_fast_mode_are_close(tensorcheck, tmp_path):
    a, b, dense, rowptr, colidx, values = _inputs(tmp_path)
    facts, read = _run(tensorcheck, 0, tmp_path, fast=True)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    for name in ("gemm", "gemm_ta", "gemm_tb", "gemm_tab", "gemm_async"):
        assert np.all(np.abs(read(name + ".f32").reshape(M, N) - exact) <= 1e-5 * scale), name
    want = _csr_reference(rowptr, colidx, values, dense)
    np.testing.assert_allclose(read("spmm.f32").reshape(ROWS, N2), want, rtol=1e-4, atol=1e-4)


def test_cuda_tensors_have_the_cpus_bits_in_deterministic_mode(tensorcheck, tmp_path):
    if backend.available()["cuda"] != "ok":
        pytest.skip(f"CUDA is not available here: {backend.available()['cuda']}")
    _inputs(tmp_path)
    cpu_dir, cuda_dir = tmp_path / "cpu", tmp_path / "cuda"
    for d in (cpu_dir, cuda_dir):
        d.mkdir()
        for f in tmp_path.iterdir():
            if f.is_file():
                (d / f.name).write_bytes(f.read_bytes())
    facts, _ = _run(tensorcheck, 0, cpu_dir)
    facts_cuda, _ = _run(tensorcheck, 1, cuda_dir)
    assert int(facts_cuda["devices"]) == 2 and facts_cuda["live"] == "0"
    for name in ("gemm.f32", "gemm_ta.f32", "gemm_tb.f32", "gemm_tab.f32", "gemm_async.f32", "gemm_copied.f32",
                 "gemm64.f64", "gemm16.f16", "sum0.f32", "sum1.f32", "fill.f32", "spmm.f32"):
        assert (cuda_dir / name).read_bytes() == (cpu_dir / name).read_bytes(), name


def test_cuda_tensors_in_fast_mode_use_cusparse_and_are_close(tensorcheck, tmp_path):
    if backend.available()["cuda"] != "ok":
        pytest.skip(f"CUDA is not available here: {backend.available()['cuda']}")
    a, b, dense, rowptr, colidx, values = _inputs(tmp_path)
    _, read = _run(tensorcheck, 1, tmp_path, fast=True)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert np.all(np.abs(read("gemm.f32").reshape(M, N) - exact) <= 1e-5 * scale)
    np.testing.assert_allclose(read("spmm.f32").reshape(ROWS, N2), _csr_reference(rowptr, colidx, values, dense),
                               rtol=1e-4, atol=1e-4)


def test_a_stream_made_by_the_program_carries_the_work(compile_c):
    """loom_tensor_set_stream with a cudaStream_t from the CUDA runtime: gemm and the queued gemm run on
    it (deterministic mode: the same bits as on the default stream)."""
    import os
    if backend.available()["cuda"] != "ok":
        pytest.skip(f"CUDA is not available here: {backend.available()['cuda']}")
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if not os.path.isfile(os.path.join(cuda, "include", "cuda_runtime_api.h")):
        pytest.skip(f"the CUDA runtime's headers are not under {cuda} (set CUDA_HOME)")
    from pathlib import Path
    exe = compile_c(Path(__file__).parent / "streamcheck.c", "streamcheck",
                    extra=(f"-I{cuda}/include", f"-L{cuda}/lib64", f"-Wl,-rpath,{cuda}/lib64", "-lcudart"))
    facts = dict(line.split(" ", 1) for line in run(exe, 256).stdout.splitlines())
    assert facts["stream_gemm_same"] == "1" and facts["live"] == "0"
    assert facts["pending_on_its_stream"] == "1"        # the work went to the program's stream
    got, want = map(float, facts["queued_first"].split())
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


QUEUE_C = r"""
#include <stdio.h>
#include <string.h>
#include <loom.h>

#define N 64
#define PAIRS 12
static float a[N * N], b[N * N], eye[N * N], want[N * N], got[N * N];

int main(void) {
    size_t dims[2] = {N, N};
    for (int i = 0; i < N * N; ++i) {
        a[i] = (float)((i * 7919) % 97) / 13.0f - 3.0f;
        b[i] = (float)((i * 104729) % 89) / 11.0f - 4.0f;
    }
    for (int i = 0; i < N; ++i) eye[i * N + i] = 1.0f;
    LoomTensor *A = loom_tensor_wrap(a, LOOM_FLOAT32, dims, 2), *B = loom_tensor_wrap(b, LOOM_FLOAT32, dims, 2);
    LoomTensor *I = loom_tensor_wrap(eye, LOOM_FLOAT32, dims, 2), *W = loom_tensor_wrap(want, LOOM_FLOAT32, dims, 2);
    if (loom_tensor_gemm(A, B, W, 0, 0) != LOOM_OK) { puts(loom_last_error()); return 1; }
    int bad = 0;
    /* a dependent pair, queued: D = (A B) I must see C = A B */
    LoomTensor *C[PAIRS], *D[PAIRS];
    LoomOpHandle *first[PAIRS], *second[PAIRS];
    for (int p = 0; p < PAIRS; ++p) {
        C[p] = loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, dims, 2);
        D[p] = loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, dims, 2);
        first[p] = loom_enqueue_gemm(A, B, C[p]);
        second[p] = loom_enqueue_gemm(C[p], I, D[p]);
        if (!first[p] || !second[p]) { puts(loom_last_error()); return 1; }
    }
    /* sync waits for the queued ops on the tensor: D's data is the product without loom_wait_op */
    if (loom_tensor_sync(D[PAIRS - 1]) != LOOM_OK) return 1;
    bad += memcmp(loom_tensor_data(D[PAIRS - 1]), want, sizeof want) != 0;
    for (int p = 0; p < PAIRS; ++p) {
        if (loom_wait_op(second[p]) != LOOM_OK || loom_wait_op(first[p]) != LOOM_OK) return 1;
        bad += memcmp(loom_tensor_data(D[p]), want, sizeof want) != 0;
        loom_tensor_free(C[p]); loom_tensor_free(D[p]);
    }
    /* a gemm into a wrapped tensor writes the caller's memory */
    LoomTensor* G = loom_tensor_wrap(got, LOOM_FLOAT32, dims, 2);
    LoomOpHandle* op = loom_enqueue_gemm(A, B, G);
    if (!op || loom_wait_op(op) != LOOM_OK) return 1;
    printf("queued_pairs_wrong %d\nwrapped_written %d\n", bad, memcmp(got, want, sizeof want) == 0);
    LoomTensor* all[] = {A, B, I, W, G};
    for (int i = 0; i < 5; ++i) loom_tensor_free(all[i]);
    size_t live;
    loom_live_handles(&live);
    printf("live %zu\n", live);
    return 0;
}
"""


def test_queued_gemms_run_in_order_and_sync_waits_for_them(compile_c):
    """Twelve dependent pairs of queued gemms (D = (A B) I): each D is A B, as on a CUDA stream;
    loom_tensor_sync waits for the queued ops; a gemm into a wrapped tensor writes the caller's memory."""
    facts = dict(line.split(" ", 1) for line in run(compile_c(QUEUE_C, "queue")).stdout.splitlines())
    assert facts == {"queued_pairs_wrong": "0", "wrapped_written": "1", "live": "0"}
