"""Backend selection and build robustness of hsr_tf.ops (each case in a fresh process)."""
import os
import subprocess
import sys
import textwrap

import pytest

from hsr_tf import ops

PROBE = """
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        import hsr_tf.ops as ops
    print("BACKEND", ops.backend())
    print("WARNINGS", len([x for x in w if "hsr_tf.ops" in str(x.message)]))
    for x in w:
        print("MSG", x.message)
    import numpy as np
    print("FPS", ops.farthest_point_sample(np.eye(3, dtype=np.float32)[None], 2).numpy().tolist())
"""


def _probe(**env):
    full = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    full.pop("HSR_TF_OPS", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE)], capture_output=True, text=True,
                          env=full, timeout=600)


def test_env_forces_fallback_without_warning():
    proc = _probe(HSR_TF_OPS="fallback")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BACKEND fallback" in proc.stdout and "WARNINGS 0" in proc.stdout
    assert "FPS [[0, 1]]" in proc.stdout


def test_build_failure_warns_once_and_falls_back(tmp_path):
    # empty library dir (forces a build) and a compiler that does not exist
    proc = _probe(HSR_TF_OPS_LIB_DIR=str(tmp_path), CXX=str(tmp_path / "no-such-compiler"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BACKEND fallback" in proc.stdout and "WARNINGS 1" in proc.stdout, proc.stdout
    assert "no C++ compiler" in proc.stdout
    assert "FPS [[0, 1]]" in proc.stdout


@pytest.mark.skipif(not ops.compiled_available(), reason=f"compiled ops not available: {ops.fallback_reason()}")
def test_installed_library_is_current_and_loaded():
    from hsr_tf.ops import build, compiled
    assert compiled.library_path() == build.library_path()
    assert os.path.exists(compiled.library_path())


@pytest.mark.slow
def test_concurrent_lazy_builds_share_one_library(tmp_path):
    """Two processes importing hsr_tf.ops with an empty library dir: one builds, the other waits."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", HSR_TF_OPS_LIB_DIR=str(tmp_path))
    env.pop("HSR_TF_OPS", None)
    code = textwrap.dedent(PROBE)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "BACKEND compiled" in out and "WARNINGS 0" in out, out
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".so")]) == 1
