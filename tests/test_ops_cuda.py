"""CUDA parts of hsr_tf.ops: the standalone kernel harness and the CUDA-enabled library build.

Both need nvcc and take about a minute of compilation, so they are marked slow. Without a GPU the harness
is only built (it reports "no CUDA device" and the run is skipped) and the GPU OpKernels are only checked
for registration.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from hsr_tf.ops import build

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")]


def test_cuda_harness_matches_cpu_reference(tmp_path):
    exe = build.build_cuda_harness(str(tmp_path / "harness"), verbose=False)
    proc = subprocess.run([exe], capture_output=True, text=True, timeout=600)
    if proc.returncode == 2:
        pytest.skip("harness built, but no CUDA device to run it on: " + proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ALL CHECKS PASSED" in proc.stdout


def test_cuda_enabled_library_registers_gpu_kernels(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HSR_TF_OPS_LIB_DIR=str(tmp_path), HSR_TF_OPS_CUDA="on")
    env.pop("HSR_TF_OPS", None)
    code = textwrap.dedent("""
        import numpy as np
        import hsr_tf.ops as ops
        from tensorflow.python.framework import kernels
        print("BACKEND", ops.backend())
        for op in ["HsrFarthestPointSample", "HsrBallQuery", "HsrKnn", "HsrGroupPoints", "HsrGroupPointsGrad"]:
            print(op, sorted(k.device_type for k in kernels.get_registered_kernels_for_op(op).kernel))
        pts = np.random.default_rng(0).normal(size=(2, 50, 3)).astype(np.float32)
        with ops.use_backend("fallback"):
            ref = ops.farthest_point_sample(pts, 10).numpy()
        print("SAME", bool((ops.farthest_point_sample(pts, 10).numpy() == ref).all()))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BACKEND compiled" in proc.stdout and "SAME True" in proc.stdout
    assert proc.stdout.count("['CPU', 'GPU']") == 5, proc.stdout
