"""The memory planner against a real CPU train step: planned vs measured peak bytes.

    python benchmarks/memory_plan_check.py [--config=quickstart_tokenizer] [--steps=3]

On one CPU device (mesh 1,1,1) this
  1. plans the config's train step (`videogen.memory_plan.plan`: XLA's memory analysis of
     the program compiled on abstract inputs), with the kernels in their CPU form
     (`kernels="host"`), as the real step runs them,
  2. creates the real train state and a real batch as the loop does, runs the same jitted
     step once (compiling it), then resets the process's peak RSS (Linux: writing 5 to
     /proc/self/clear_refs resets VmHWM) and runs `--steps` more steps,
  3. measures the step's peak as the bytes of JAX's live arrays before the step (state,
     frozen inputs, batch: the program's arguments) plus the rise of the peak RSS over the
     RSS before the step (its temporaries and outputs), after returning freed heap pages to
     the OS (malloc_trim) so that the previous step's freed buffers do not hide the rise,
and prints both with their ratio. The planner's claim is that they agree within 20%.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from videogen import memory_plan, sharding  # noqa: E402
from videogen.trainers import tokenizer as tokenizer_trainer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tokenizer_throughput import load_config  # noqa: E402  (a sibling benchmark script)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this check needs Linux.")


def release_free_heap() -> None:
    """Returns freed heap pages to the OS (glibc malloc_trim), so that the RSS before a step
    holds only live memory: without it the previous step's freed temporaries stay resident
    and the next step reuses them without raising the peak."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def random_inputs(inputs: memory_plan.StepInputs, seed: int = 0):
    """Real frozen inputs and batch for the abstract ones, filled with random values (the
    memory does not depend on them)."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if np.issubdtype(leaf.dtype, np.integer):
            values = rng.integers(0, 256, leaf.shape).astype(leaf.dtype)
            return jax.device_put(values, leaf.sharding)
        return jax.device_put(rng.standard_normal(leaf.shape).astype(leaf.dtype), leaf.sharding)

    return jax.tree.map(fill, (inputs.frozen, inputs.batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quickstart_tokenizer")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    config = load_config(args.config)
    mesh = sharding.make_mesh((1, 1, 1))
    planned = memory_plan.plan(config, mesh, split_activations=False, kernels="host")

    if config.trainer != "tokenizer":
        raise ValueError(
            f"--config={args.config} trains a {config.trainer}; this check runs tokenizer "
            "configs (quickstart_tokenizer, magvit2_k600:runlocal)."
        )
    inputs = memory_plan.step_inputs(config, mesh)
    # The loop's fresh state: built directly into its shardings by jit.
    shardings = jax.tree.map(lambda a: a.sharding, inputs.state)
    state = jax.jit(
        lambda: nnx.split(tokenizer_trainer.create_train_state(config))[1],
        out_shardings=shardings,
    )()
    frozen, batch = random_inputs(inputs)
    state, metrics = inputs.program(state, *frozen, batch)  # compiles
    jax.block_until_ready((state, metrics))
    del metrics
    peaks = []
    for _ in range(args.steps):
        arguments = live_bytes()
        release_free_heap()
        rss_before = _status_kib("VmRSS") * 1024
        reset_peak_rss()
        state, metrics = inputs.program(state, *frozen, batch)
        jax.block_until_ready((state, metrics))
        rise = _status_kib("VmHWM") * 1024 - rss_before
        del metrics
        peaks.append((arguments, rise))
    arguments, rise = min(peaks, key=lambda p: p[0] + p[1])
    measured = arguments + rise
    transient_planned = planned.xla_temp + planned.xla_outputs - planned.xla_aliased
    print(f"config {args.config}, mesh (1, 1, 1), batch {config.batch_size}")
    print(
        f"  planned  total {planned.total / 2**20:8.1f} MiB = arguments "
        f"{planned.xla_arguments / 2**20:.1f} + temporaries and new outputs "
        f"{transient_planned / 2**20:.1f}"
    )
    print(
        f"  measured total {measured / 2**20:8.1f} MiB = live arrays {arguments / 2**20:.1f} "
        f"+ peak-RSS rise {rise / 2**20:.1f} (smallest of {args.steps} steps)"
    )
    print(f"  measured / planned = {measured / planned.total:.3f}")


if __name__ == "__main__":
    main()
