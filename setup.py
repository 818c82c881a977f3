"""Package metadata for hsr_tf.

The custom PointNet++ ops are compiled against the installed TensorFlow by
``python -m hsr_tf.ops.build`` (run by ``install.sh``) and, failing that, lazily
at first import; see ``hsr_tf/ops/build.py``.

tensorflow-graphics is deliberately *not* listed here: its wheel declares
tensorflow-addons, tensorflow-datasets, OpenEXR and trimesh, which either do not
install beside TensorFlow 2.21 or pull hundreds of MB we never import.
``install.sh`` installs it with ``--no-deps``; the modules we use from it only
need what is listed below (six, absl-py, numpy, scipy).
"""
from setuptools import find_packages, setup

setup(
    name="hsr_tf",
    version="0.1.0",
    description="Single-image 3D hand shape recovery (Deng et al. depth, Ge et al. RGB) in TensorFlow 2 / Keras 3",
    python_requires=">=3.10",
    packages=find_packages(include=["hsr_tf", "hsr_tf.*", "data_prep", "data_prep.*",
                                    "experiments", "experiments.*", "benchmarks", "benchmarks.*"]),
    package_data={
        "hsr_tf": ["assets/*.npz", "assets/pretrained/*/*", "ops/src/*.cc", "ops/src/*.h", "ops/src/*.cu", "ops/src/*.cuh",
                   "render/src/*.cc"],
        "experiments": ["flags/*.flags"],
    },
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.0",
        "tensorboard>=2.16",
        "numpy>=1.24",
        "scipy>=1.10",
        "h5py>=3.8",
        "open3d>=0.18",
        "absl-py>=1.0",
        "tqdm>=4.60",
        "six>=1.16",  # imported by tensorflow-graphics (installed --no-deps)
        "matplotlib>=3.7",
        "pillow>=9.0",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6"],
        "bench": ["torch", "smplx", "fpsample"],
    },
)
