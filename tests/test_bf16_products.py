"""Which backend runs the compiled bfloat16 block products (``mlp_train.bf16_products_backend``), and that the
ops built on them run on both: AMX tiles and, on CPUs without AMX, AVX512-BF16 dot products."""
import os
import subprocess
import sys

import pytest

from hsr_tf.ops import mlp_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not mlp_train.kernels_available(), reason="needs the compiled ops")


def _cpu_flags():
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _backend_in_subprocess(**env):
    code = "from hsr_tf.ops import mlp_train; print(repr(mlp_train.bf16_products_backend()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, **env), check=True,
                         capture_output=True, text=True).stdout
    return eval(out.strip().splitlines()[-1])  # noqa: S307 (our own repr of a str)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU flags from /proc/cpuinfo")
def test_backend_follows_the_cpu_flags():
    flags = _cpu_flags()
    dot = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"} <= flags
    backend = mlp_train.bf16_products_backend()
    if {"amx_tile", "amx_bf16"} <= flags:
        # The OS may still refuse the tile state (arch_prctl): then the dot products.
        assert backend in ("amx", "avx512_bf16")
    else:
        assert backend == ("avx512_bf16" if dot else "")
    assert mlp_train.bf16_products_available() == (backend != "")
    assert mlp_train.amx_available() == (backend == "amx")


def test_switches_turn_the_backends_off():
    assert _backend_in_subprocess(HSR_TF_OPS_AMX="0", HSR_TF_OPS_BF16_DOT="0") == ""
    assert _backend_in_subprocess(HSR_TF_OPS_MLP_ISA="avx2") == ""
    without_amx = _backend_in_subprocess(HSR_TF_OPS_AMX="0")
    assert without_amx == ("avx512_bf16" if "avx512_bf16" in _cpu_flags() else "")


@pytest.mark.skipif(not mlp_train.amx_available(), reason="this CPU runs the dot products in the other tests already")
def test_the_fused_ops_on_the_dot_products_of_an_amx_cpu():
    """On a CPU with AMX the other tests exercise the tiles; the same tests again with the tiles switched off
    cover the AVX512-BF16 dot products (which read the same packed kernels)."""
    files = ["tests/test_matmul_moments.py", "tests/test_mlp_pair.py"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=REPO,
                         env=dict(os.environ, HSR_TF_OPS_AMX="0"), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-500:]
