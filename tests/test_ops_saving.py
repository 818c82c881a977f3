"""Save/load round trips of models using hsr_tf.ops: .keras files and SavedModels, both backends.

A fallback SavedModel must load in a fresh process that never imports hsr_tf; a compiled one must load
after ``import hsr_tf.ops`` (which registers the Hsr* ops) and must fail without it.
"""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from hsr_tf import ops
from hsr_tf.layers.set_abstraction import GlobalSetAbstraction, SetAbstraction

BACKENDS = [pytest.param("compiled", marks=pytest.mark.skipif(
    not ops.compiled_available(), reason=f"compiled ops not available: {ops.fallback_reason()}")), "fallback"]
N = 256


def make_model():
    x = keras.Input((N, 3))
    p1, f1 = SetAbstraction(64, 0.6, 16, [16, 16], name="sa1")(x)
    p2, f2 = SetAbstraction(16, 1.2, 16, [16, 32], grouping="knn", normalize_by_radius=True, name="sa2")(p1, f1)
    g = GlobalSetAbstraction([32, 48], name="glob")(p2, f2)
    return keras.Model(x, keras.layers.Dense(5)(g))


def _graph_op_types(fn):
    graph = fn.get_concrete_function().graph.as_graph_def()
    types = {n.op for n in graph.node}
    for f in graph.library.function:
        types |= {n.op for n in f.node_def}
    return types


def _run_python(code, env_extra=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_file_round_trip(backend, tmp_path, rng):
    pts = rng.normal(size=(2, N, 3)).astype(np.float32)
    with ops.use_backend(backend):
        model = make_model()
        ref = model(pts, training=False).numpy()
        model.save(tmp_path / "m.keras")
        loaded = keras.models.load_model(tmp_path / "m.keras")
        np.testing.assert_array_equal(loaded(pts, training=False), ref)
    assert isinstance(loaded.get_layer("sa2"), SetAbstraction)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_model_round_trip_in_fresh_process(backend, tmp_path, rng):
    pts = rng.normal(size=(2, N, 3)).astype(np.float32)
    with ops.use_backend(backend):
        model = make_model()
        ref = model(pts, training=False).numpy()

        class Exported(tf.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            @tf.function(input_signature=[tf.TensorSpec([None, N, 3], tf.float32)])
            def serve(self, x):
                return self.m(x, training=False)

        module = Exported(model)
        served = module.serve(tf.constant(pts)).numpy()
        np.testing.assert_allclose(served, ref, rtol=1e-5, atol=1e-6)  # graph vs eager: float rounding only
        ref = served
        types = _graph_op_types(module.serve)
        assert ("HsrFarthestPointSample" in types) == (backend == "compiled"), sorted(types)
        tf.saved_model.save(module, str(tmp_path / "sm"))
    np.save(tmp_path / "pts.npy", pts)
    np.save(tmp_path / "ref.npy", ref)
    load = f"""
        import sys, numpy as np, tensorflow as tf
        path = {str(tmp_path / 'sm')!r}
        if {backend == 'compiled'}:
            try:  # documented requirement: without `import hsr_tf.ops` the Hsr* ops are unknown
                tf.saved_model.load(path)
                print("loaded without hsr_tf")
            except Exception as e:
                print("failed without hsr_tf:", "HsrFarthestPointSample" in str(e))
            import hsr_tf.ops
        m = tf.saved_model.load(path)
        out = m.serve(tf.constant(np.load({str(tmp_path / 'pts.npy')!r}))).numpy()
        np.testing.assert_array_equal(out, np.load({str(tmp_path / 'ref.npy')!r}))
        print("hsr_tf imported:", any(k.startswith("hsr_tf") for k in sys.modules))
    """
    proc = _run_python(load)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if backend == "compiled":
        assert "failed without hsr_tf: True" in proc.stdout, proc.stdout
        assert "hsr_tf imported: True" in proc.stdout
    else:
        assert "hsr_tf imported: False" in proc.stdout
