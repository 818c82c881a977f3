"""Builds the compiled PointNet++ ops library against the installed TensorFlow.

Usage: ``python -m hsr_tf.ops.build [--force] [--cuda auto|on|off] [--cuda-harness PATH]``
(``install.sh`` runs it). ``hsr_tf.ops`` also calls :func:`ensure_built` lazily at first import when the
library is missing or stale.

* Sources: ``hsr_tf/ops/src/*.cc|*.h`` (CPU kernels) and ``*.cu|*.cuh`` (CUDA launch functions, no
  TensorFlow headers).
* Flags: ``tf.sysconfig.get_compile_flags()`` / ``get_link_flags()`` (which carry ``--std=c++17`` and
  ``-D_GLIBCXX_USE_CXX11_ABI=1``) plus ``-O2 -fPIC -shared -ffp-contract=off`` (no fused multiply-add, so
  distances match the pure-TF fallback bit for bit).
* Output: ``hsr_tf/ops/_lib/hsr_ops_<key>.so`` (gitignored) or, when the package directory is not
  writable, ``$XDG_CACHE_HOME/hsr_tf/ops`` (default ``~/.cache/hsr_tf/ops``). ``HSR_TF_OPS_LIB_DIR``
  overrides both. ``<key>`` hashes the sources, the TensorFlow version and the flags, so a library built
  for other sources or another TensorFlow is never loaded (it is rebuilt instead).
* Concurrency: builds hold an exclusive ``fcntl`` lock on ``<dir>/.build.lock``; the library is written
  under a temporary name and renamed, so a second process waits and then loads the finished file.
* CUDA: ``--cuda auto`` (default; env ``HSR_TF_OPS_CUDA``) compiles the GPU kernels only when ``nvcc`` is
  on PATH, TensorFlow is a CUDA build and a GPU device node exists (``/dev/nvidia0``). Any failure of the
  CUDA part is reported and the CPU-only library is built instead; the CUDA build never breaks the CPU
  build.
* Renderer (:mod:`hsr_tf.render`): a second, independent library ``hsr_render_<key>.so`` from
  ``hsr_tf/render/src/render_ops.cc`` plus tensorflow-graphics' CPU rasteriser
  (``tensorflow_graphics/rendering/kernels/rasterize_triangles_impl.cc``, compiled from the installed
  wheel: its prebuilt ``.so`` does not load under recent TensorFlow). Same flags, lock and cache
  directory; its failure never affects the PointNet++ library (``hsr_tf.render`` falls back to pure TF).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

SRC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
_PKG_LIB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib")
CPU_SOURCES = ("pointnet_ops.cc", "mlp_train_ops.cc", "gather_rows_ops.cc", "linear_relu_ops.cc",
               "matmul_moments_ops.cc", "product_grad_ops.cc")
HEADERS = ("pointnet_cpu.h", "pointnet_cuda.cuh", "pointnet_ops_gpu.h", "mlp_train_cpu.h",
           "mlp_train_support.h", "bf16_dot_cpu.h", "amx_matmul_cpu.h", "linear_relu_cpu.h", "max_grad_gram_cpu.h")
CUDA_SOURCES = ("pointnet_cuda.cu",)
EXTRA_CXXFLAGS = ["-O2", "-fPIC", "-shared", "-ffp-contract=off", "-Wno-deprecated-declarations"]
NVCC_FLAGS = ["-O2", "-std=c++17", "--fmad=false", "-Xcompiler", "-fPIC"]
# sm_75 .. sm_90 machine code plus compute_75 PTX (JIT-compiled on newer GPUs); override with
# HSR_TF_OPS_CUDA_ARCH, e.g. "-arch=native".
NVCC_ARCH = ["-gencode=arch=compute_75,code=[sm_75,compute_75]", "-gencode=arch=compute_80,code=sm_80",
             "-gencode=arch=compute_86,code=sm_86", "-gencode=arch=compute_90,code=sm_90"]


def _nvcc_arch():
    env = os.environ.get("HSR_TF_OPS_CUDA_ARCH")
    return env.split() if env else NVCC_ARCH


class BuildError(RuntimeError):
    """The compiled ops could not be built; the message carries the compiler output."""


def _tf():
    import tensorflow as tf  # noqa: PLC0415 (heavy import kept out of module import)
    return tf


def lib_dir() -> str:
    """Directory holding the built library (package ``_lib`` if writable, else a user cache dir)."""
    env = os.environ.get("HSR_TF_OPS_LIB_DIR")
    if env:
        return env
    try:
        os.makedirs(_PKG_LIB_DIR, exist_ok=True)
        if os.access(_PKG_LIB_DIR, os.W_OK):
            return _PKG_LIB_DIR
    except OSError:
        pass
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "hsr_tf", "ops")


def _cuda_wanted(mode: str) -> bool:
    mode = (mode or os.environ.get("HSR_TF_OPS_CUDA", "auto")).lower()
    if mode in ("off", "0", "false", "no"):
        return False
    if mode in ("on", "1", "true", "yes"):
        return True
    return (shutil.which("nvcc") is not None and _tf().test.is_built_with_cuda()
            and os.path.exists("/dev/nvidia0"))


def build_key(cuda: bool) -> str:
    """Hash of the sources, TensorFlow version, flags and CUDA switch (16 hex digits)."""
    tf = _tf()
    h = hashlib.sha256()
    for name in CPU_SOURCES + HEADERS + CUDA_SOURCES:
        path = os.path.join(SRC_DIR, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    h.update(tf.__version__.encode())
    h.update(" ".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()).encode())
    h.update(" ".join(EXTRA_CXXFLAGS + NVCC_FLAGS).encode())
    h.update(b"cuda" if cuda else b"cpu")
    return h.hexdigest()[:16]


def library_path(cuda_mode: str = "") -> str:
    """Where the library for the current sources/TensorFlow lives (it may not exist yet)."""
    return os.path.join(lib_dir(), f"hsr_ops_{build_key(_cuda_wanted(cuda_mode))}.so")


@contextlib.contextmanager
def _locked(directory: str):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd, log):
    log("  $ " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}")


def _cuda_lib_dir() -> str:
    """Directory holding libcudart_static.a (CUDA_HOME / CUDA_PATH, /usr/local/cuda, or next to nvcc)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in filter(None, homes):
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
            if os.path.exists(os.path.join(home, sub, "libcudart_static.a")):
                return os.path.join(home, sub)
    raise BuildError("libcudart_static.a not found (set CUDA_HOME)")


def _compile(out_path: str, cuda: bool, log) -> None:
    tf = _tf()
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise BuildError(f"no C++ compiler: '{cxx}' is not on PATH (set CXX or install g++)")
    srcs = [os.path.join(SRC_DIR, s) for s in CPU_SOURCES]
    cflags = tf.sysconfig.get_compile_flags() + ["-I" + SRC_DIR] + EXTRA_CXXFLAGS
    lflags = tf.sysconfig.get_link_flags()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(out_path)) as tmp:
        extra_objs, extra_defs, extra_libs = [], [], []
        if cuda:
            try:
                obj = os.path.join(tmp, "pointnet_cuda.o")
                _run(["nvcc", "-c", *NVCC_FLAGS, *_nvcc_arch(), "-I" + SRC_DIR, os.path.join(SRC_DIR, "pointnet_cuda.cu"),
                      "-o", obj], log)
                extra_objs = [obj]
                extra_defs = ["-DHSR_OPS_WITH_CUDA"]
                extra_libs = ["-L" + _cuda_lib_dir(), "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
                tmp_out = os.path.join(tmp, "lib.so")
                _run([cxx, *srcs, *extra_objs, "-o", tmp_out, *cflags, *extra_defs, *lflags, *extra_libs], log)
                os.replace(tmp_out, out_path)
                return
            except BuildError as e:
                log(f"hsr_tf.ops.build: CUDA kernels not built; building CPU-only. Reason:\n{e}")
        tmp_out = os.path.join(tmp, "lib.so")
        _run([cxx, *srcs, "-o", tmp_out, *cflags, *lflags], log)
        os.replace(tmp_out, out_path)


def ensure_built(force: bool = False, cuda_mode: str = "", verbose: bool = False) -> str:
    """Returns the path of an up-to-date library, building it (under a file lock) if needed.

    Raises BuildError when the compiler is missing or fails.
    """
    log = print if verbose else (lambda *_: None)
    cuda = _cuda_wanted(cuda_mode)
    directory = lib_dir()
    path = os.path.join(directory, f"hsr_ops_{build_key(cuda)}.so")
    if os.path.exists(path) and not force:
        return path
    with _locked(directory):
        if os.path.exists(path) and not force:  # built by another process while we waited
            return path
        msg = f"hsr_tf.ops.build: compiling {path} (cuda={'on' if cuda else 'off'})"
        log(msg) if verbose else print(msg + " ...", file=sys.stderr, flush=True)  # lazy build: say why we wait
        _compile(path, cuda, log)
        for name in os.listdir(directory):  # drop libraries of older sources / TensorFlow versions
            if name.startswith("hsr_ops_") and name.endswith(".so") and name != os.path.basename(path):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))
    return path


RENDER_SRC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "render", "src")
RENDER_SOURCES = ("render_ops.cc",)
TFG_RASTERIZER = ("rasterize_triangles_impl.cc", "rasterize_triangles_impl.h")


def tfg_kernel_dir() -> str:
    """Directory of tensorflow-graphics' rasteriser sources (found without importing the package)."""
    spec = importlib.util.find_spec("tensorflow_graphics")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("tensorflow-graphics is not installed (its rasteriser source is needed)")
    d = os.path.join(list(spec.submodule_search_locations)[0], "rendering", "kernels")
    missing = [n for n in TFG_RASTERIZER if not os.path.exists(os.path.join(d, n))]
    if missing:
        raise BuildError(f"tensorflow-graphics at {d} lacks {missing} (expected in its wheel)")
    return d


def render_build_key() -> str:
    """Hash of the renderer sources, tfg's rasteriser, TensorFlow version and flags (16 hex digits)."""
    tf = _tf()
    h = hashlib.sha256()
    paths = [os.path.join(RENDER_SRC_DIR, n) for n in RENDER_SOURCES] + \
        [os.path.join(tfg_kernel_dir(), n) for n in TFG_RASTERIZER]
    for path in paths:
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read())
    h.update(tf.__version__.encode())
    h.update(" ".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags() + EXTRA_CXXFLAGS).encode())
    return h.hexdigest()[:16]


def ensure_render_built(force: bool = False, verbose: bool = False) -> str:
    """Path of an up-to-date renderer library, building it under the lock if needed. Raises BuildError."""
    log = print if verbose else (lambda *_: None)
    tf = _tf()
    cxx = os.environ.get("CXX", "g++")
    directory = lib_dir()
    path = os.path.join(directory, f"hsr_render_{render_build_key()}.so")
    if os.path.exists(path) and not force:
        return path
    with _locked(directory):
        if os.path.exists(path) and not force:
            return path
        if shutil.which(cxx) is None:
            raise BuildError(f"no C++ compiler: '{cxx}' is not on PATH (set CXX or install g++)")
        msg = f"hsr_tf.ops.build: compiling {path} (renderer)"
        log(msg) if verbose else print(msg + " ...", file=sys.stderr, flush=True)
        tfg = tfg_kernel_dir()
        srcs = [os.path.join(RENDER_SRC_DIR, n) for n in RENDER_SOURCES] + [os.path.join(tfg, TFG_RASTERIZER[0])]
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            tmp_out = os.path.join(tmp, "lib.so")
            _run([cxx, *srcs, "-o", tmp_out, *tf.sysconfig.get_compile_flags(), "-I" + tfg, *EXTRA_CXXFLAGS,
                  *tf.sysconfig.get_link_flags()], log)
            os.replace(tmp_out, path)
        for name in os.listdir(directory):
            if name.startswith("hsr_render_") and name.endswith(".so") and name != os.path.basename(path):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))
    return path


def build_cuda_harness(out_path: str, verbose: bool = True) -> str:
    """Compiles the standalone CUDA harness (no TensorFlow) with nvcc; returns its path."""
    log = print if verbose else (lambda *_: None)
    if shutil.which("nvcc") is None:
        raise BuildError("nvcc is not on PATH")
    _run(["nvcc", *NVCC_FLAGS[:3], *_nvcc_arch(), "-I" + SRC_DIR, os.path.join(SRC_DIR, "pointnet_cuda.cu"),
          os.path.join(SRC_DIR, "cuda_harness.cu"), "-o", out_path], log)
    return out_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsr_tf.ops.build", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date library exists")
    parser.add_argument("--cuda", default="", choices=["", "auto", "on", "off"],
                        help="build the CUDA kernels (default: env HSR_TF_OPS_CUDA or auto)")
    parser.add_argument("--cuda-harness", metavar="PATH", help="only build the standalone CUDA harness at PATH")
    args = parser.parse_args(argv)
    try:
        if args.cuda_harness:
            print(build_cuda_harness(args.cuda_harness))
            return 0
        path = ensure_built(force=args.force, cuda_mode=args.cuda, verbose=True)
        _tf().load_op_library(path)
    except BuildError as e:
        print(f"hsr_tf.ops.build: FAILED: {e}\nThe pure-TensorFlow fallback will be used.", file=sys.stderr)
        return 1
    print(f"hsr_tf.ops.build: OK {path}")
    try:
        rpath = ensure_render_built(force=args.force, verbose=True)
        _tf().load_op_library(rpath)
        print(f"hsr_tf.ops.build: OK {rpath}")
    except (BuildError, Exception) as e:  # noqa: BLE001 (the renderer's failure must not fail the ops build)
        print(f"hsr_tf.ops.build: renderer FAILED: {e}\nhsr_tf.render will use its pure-TensorFlow fallback.",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
