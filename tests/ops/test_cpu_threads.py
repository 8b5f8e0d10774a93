"""The CPU kernels' threads: on torch's OpenMP team by default, on our own pool as a fallback."""
from __future__ import annotations

import threading

import pytest
import torch

from slimkernels import _native, ops
from slimkernels.testing import int8_mm_exact, rand_int8

C = _native._C


def _check_gemm():
    a, b = rand_int8(37, 1000), rand_int8(700, 1000)  # big enough to be split over threads
    packed = ops.int8_prepack(b)
    out = torch.empty(37, 700, dtype=torch.int32)
    C.int8_mm(a.data_ptr(), 1000, packed.data_ptr(), 37, 700, 1000, out.data_ptr(), 700, "int32", 0, 0, 0, 2, "")
    assert torch.equal(out, int8_mm_exact(a, b))


def test_runs_on_torchs_openmp_team_when_torch_uses_openmp():
    if not torch._C.has_openmp:
        pytest.skip("this torch has no OpenMP parallel backend")
    assert C.thread_runtime().startswith("openmp:")
    _check_gemm()


def test_own_pool_fallback_and_bad_paths():
    attached = C.thread_runtime()
    try:
        assert C.use_openmp_runtime("") is True
        assert C.thread_runtime() == "own pool"
        _check_gemm()
        assert C.use_openmp_runtime("/nonexistent/libgomp.so.1") is False
        assert C.thread_runtime() == "own pool"  # a failed attach changes nothing
    finally:
        if attached.startswith("openmp:"):
            assert C.use_openmp_runtime(attached[len("openmp:"):])


def test_concurrent_callers():
    errors = []

    def work():
        try:
            for _ in range(5):
                _check_gemm()
        except Exception as exc:  # collected: assertion errors in threads do not fail pytest
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


FORK_SCRIPT = r"""
import os, torch
from slimkernels import _native, ops
C = _native._C
C.use_openmp_runtime("")  # our own pool (OpenMP after fork hangs in torch itself: see README)
a = torch.randint(-128, 128, (37, 1000), dtype=torch.int8)
packed = ops.int8_prepack(torch.randint(-128, 128, (700, 1000), dtype=torch.int8))
out = torch.empty(37, 700, dtype=torch.int32)
run = lambda: C.int8_mm(a.data_ptr(), 1000, packed.data_ptr(), 37, 700, 1000, out.data_ptr(), 700, "int32", 0, 0, 0, 2, "")
run()  # the parent's pool has workers now
pid = os.fork()
if pid == 0:
    run()
    os._exit(0)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_own_pool_survives_fork(tmp_path):
    """A forked child gets a fresh pool instead of waiting forever for its parent's workers."""
    import subprocess
    import sys

    # cwd outside the repo: `python -c` puts the working directory first on sys.path.
    result = subprocess.run([sys.executable, "-c", FORK_SCRIPT], timeout=120, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
