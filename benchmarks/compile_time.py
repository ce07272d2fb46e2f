"""Compile time of the tiny tokenizer train step (the test suite's configs) under XLA flags.

    .venv/bin/python benchmarks/compile_time.py

The test suite's programs are tiny, so its time is mostly XLA compilation;
tests/conftest.py turns off LLVM's optimisation passes for that reason. This
script measures why: CPU seconds to trace and to compile the quickstart
tokenizer's train step at the tests' tiny size (tests/tiny_configs.py), with the
GAN and LPIPS on and off, once with XLA's default flags and once with the
suite's. Each flag set runs in its own subprocess (XLA reads flags once per
process) with the persistent compilation cache off.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

PROBE = r"""
import functools, sys, time
sys.path.insert(0, "tests")
import jax
import numpy as np
from flax import nnx
from tiny_configs import load_experiment, tiny
from videogen.evaluation import lpips
from videogen.trainers import tokenizer as trainer

for name, extra, adversarial in [
    ("GAN + LPIPS", {}, True),
    ("GAN", {"loss.perceptual_weight": 0.0}, True),
    ("LPIPS, no GAN", {}, False),
    ("neither", {"loss.perceptual_weight": 0.0}, False),
]:
    config = tiny(load_experiment("quickstart_tokenizer").get_config(), **extra)
    graphdef, state = nnx.split(trainer.create_train_state(config))
    schedule = trainer.optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    lpips_graphdef, lpips_state = (
        nnx.split(lpips.load_lpips()) if config.loss.perceptual_weight > 0 else (None, None)
    )
    step = jax.jit(functools.partial(
        trainer.train_step, graphdef, lpips_graphdef, config, schedule, adversarial
    ))
    batch = {"video": np.zeros((8, 5, 16, 16, 3), np.uint8)}
    start = time.process_time()
    lowered = step.lower(state, lpips_state, batch)
    traced = time.process_time()
    lowered.compile()
    done = time.process_time()
    print(f"{name}\t{traced - start:.1f}\t{done - traced:.1f}", flush=True)
"""


def main() -> None:
    rows = {}
    for label, flags in (("default", ""), ("suite", SUITE_FLAGS)):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        out = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        for line in out.stdout.strip().splitlines():
            name, trace, compile_seconds = line.split("\t")
            rows.setdefault(name, {})[label] = (float(trace), float(compile_seconds))
    print("| train step | trace (CPU s) | compile, default flags | compile, suite flags | ratio |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        default, suite = r["default"][1], r["suite"][1]
        print(
            f"| {name} | {r['default'][0]:.1f} | {default:.1f} | {suite:.1f} | {default / suite:.2f} |"
        )


if __name__ == "__main__":
    main()
