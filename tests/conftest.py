"""Test-suite set-up: CPU only, 8 fake devices for the mesh tests, quiet TensorFlow."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's programs are tiny and each runs a few times, so XLA's compile time, not
# run time, is what the suite waits for: without LLVM's optimisation passes the tiny
# GAN train step compiles 2.1x faster (benchmarks/compile_time.py, BUILD_NOTES.md);
# results stay within the tests' float tolerances. XLA:CPU's newer fusion emitters
# cost more compile time than they save at these sizes: without them a test module
# compiles and runs in 25-28% less CPU time; and one LLVM module per program instead of
# splitting it for parallel codegen saves another ~14% when both cores already run a
# test each (BUILD_NOTES.md, "Test suite, fourth session").
_FLAGS = (
    "--xla_force_host_platform_device_count=8",
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_parallel_codegen_split_count=1",
)
os.environ["XLA_FLAGS"] = " ".join((os.environ.get("XLA_FLAGS", ""), *_FLAGS)).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Identical tiny programs recur across tests and test processes (xdist workers, CLI
# subprocesses): JAX's persistent compilation cache compiles each one once per run
# directory. A clean checkout starts empty, as CI does.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

from tiny_configs import load_experiment, tiny  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_workdir(tmp_path_factory):
    """A tiny MAGVIT-v2 tokenizer run of 2 steps (L2 + LFQ losses only, to stay cheap), the
    frozen tokenizer of the stage-2 tests."""
    from videogen.trainers import tokenizer as tokenizer_trainer

    workdir = str(tmp_path_factory.mktemp("tokenizer"))
    config = tiny(
        load_experiment("quickstart_tokenizer").get_config(),
        **{"loss.generator_adversarial_weight": 0.0, "loss.perceptual_weight": 0.0},
    )
    assert tokenizer_trainer.train_and_evaluate(config, workdir).step == 2
    return workdir
