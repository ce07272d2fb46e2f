r"""bf16 against float32 training (`config.precision`): the per-step loss gap, step time and
compiled memory of the quickstart tokenizer and the quickstart stage-2 transformer.

    .venv/bin/python benchmarks/precision_parity.py [--steps=20]

For each model both precisions start from the same initialisation and train on the same
batches, one device, with the trainer's own train step (compiled once per precision):
  - tokenizer: experiments/quickstart_tokenizer.py, its full recipe (L2, LFQ commitment and
    entropy, LPIPS on 2 frames per clip, 3D StyleGAN discriminator with R1 and LeCAM) from
    step 0 (`loss.adversarial_start_step=0`; the quickstart turns the GAN on half-way),
    batch 4 of 9x32x32 clips;
  - stage 2: experiments/quickstart_generator.py, the 4-layer COMMIT transformer of width
    128 (FP and CG tasks, batch 16) on token batches as its token files give them, encoded
    by a freshly initialised quickstart tokenizer (float32, as every frozen model computes).
Printed: each step's loss in both precisions and the gap, the largest absolute and
relative gap, the median time of a step after the first (synchronised: each step's
metrics are fetched before the next is timed), and the compiled program's peak bytes
(XLA's memory analysis: arguments + outputs not aliased + temporaries) twice: for the
program this CPU runs, and for the same step traced in its accelerator form as the memory
planner compiles it (`videogen.memory_plan`; still XLA:CPU's buffer assignment, so an
estimate of an accelerator's); and the dtype of the matmuls the program hands XLA next to
the one XLA:CPU compiles them in.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from videogen import config as config_lib  # noqa: E402
from videogen import memory_plan, mfu, optim, sharding  # noqa: E402
from videogen.data import pipeline, sources  # noqa: E402
from videogen.evaluation import lpips  # noqa: E402
from videogen.tasks import commit_tokens  # noqa: E402
from videogen.trainers import frozen_tokenizer, maskgit  # noqa: E402
from videogen.trainers import tokenizer as tokenizer_trainer  # noqa: E402

PRECISIONS = ("float32", "bfloat16")


def experiment(name: str, **overrides):
    """`experiments/<name>.py`'s config with dotted keys overridden."""
    path = os.path.join(memory_plan.ROOT, "experiments", f"{name}.py")
    return memory_plan.override(config_lib.load_experiment(path).get_config(), **overrides)


def batches(config, source, fields, count: int) -> list[dict]:
    iterator = pipeline.make_iterator(
        source, global_batch_size=config.batch_size, shuffle=True, seed=0, fields=fields
    )
    return [next(iterator) for _ in range(count)]


def peak_bytes(stats) -> int:
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )


def train(step, state, frozen, data) -> dict:
    """Runs the compiled step over `data`: losses, step seconds, compiled peak, matmul dtypes."""
    lowered = jax.jit(step).lower(state, *frozen, data[0])
    compiled = lowered.compile()
    losses, extra, seconds = [], [], []
    for batch in data:
        started = time.perf_counter()
        state, metrics = compiled(state, *frozen, batch)
        losses.append(float(metrics["loss"]))  # fetching the metrics synchronises the step
        extra.append(float(metrics.get("discriminator_loss", np.nan)))
        seconds.append(time.perf_counter() - started)
    return {
        "loss": np.array(losses),
        "discriminator_loss": np.array(extra),
        "seconds": statistics.median(seconds[1:]),
        "peak": peak_bytes(compiled.memory_analysis()),
        # What the program hands XLA, and what XLA:CPU makes of it: it runs bf16 dots and
        # convolutions as float32 ones between conversions.
        "matmuls": mfu.matmul_dtype(lowered.as_text(dialect="hlo")),
        "cpu_matmuls": mfu.matmul_dtype(compiled.as_text()),
    }


def tokenizer_run(value: str, steps: int) -> dict:
    config = experiment("quickstart_tokenizer", precision=value, loss__adversarial_start_step=0)
    graphdef, state = nnx.split(tokenizer_trainer.create_train_state(config))
    lpips_graphdef, lpips_state = nnx.split(lpips.load_lpips())
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    step = functools.partial(
        tokenizer_trainer.train_step, graphdef, lpips_graphdef, config, schedule, True
    )
    data = batches(config, sources.train_source(config), ("video",), steps)
    return train(step, state, (lpips_state,), data) | {"config": config}


def stage2_run(value: str, steps: int) -> dict:
    config = experiment("quickstart_generator", precision=value)
    tokenizer = frozen_tokenizer.build_tokenizer(experiment("quickstart_tokenizer"))
    setup = commit_tokens.make_setup(config, tokenizer)
    tokenizer_graphdef, tokenizer_state = nnx.split(tokenizer)
    encode = jax.jit(
        lambda s, video: commit_tokens.video_tokens(
            nnx.merge(tokenizer_graphdef, s), setup, frozen_tokenizer.to_float(video)
        )
    )
    data = [
        {"tokens": encode(tokenizer_state, b["video"]), "label": b["label"]}
        for b in batches(config, sources.train_source(config), ("video", "label"), steps)
    ]
    graphdef, state = nnx.split(maskgit.create_train_state(config, setup))
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    step = functools.partial(
        maskgit.train_step, graphdef, tokenizer_graphdef, setup, config, schedule
    )
    return train(step, state, (tokenizer_state,), data) | {"config": config}


def planned_peak(config) -> int:
    """The memory planner's per-device total of `config`'s step (accelerator kernel form)."""
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    return memory_plan.plan(config, mesh, split_activations=False).total


def report(name: str, runs: dict) -> None:
    f32, bf16 = runs["float32"], runs["bfloat16"]
    print(f"\n{name}")
    print("step   loss float32   loss bfloat16   abs gap    rel gap")
    for i, (a, b) in enumerate(zip(f32["loss"], bf16["loss"]), 1):
        print(f"{i:>4}   {a:12.6f}   {b:13.6f}   {abs(b - a):.2e}   {abs(b - a) / abs(a):.2e}")
    gap = np.abs(bf16["loss"] - f32["loss"])
    print(
        f"loss gap over {len(gap)} steps: max abs {gap.max():.2e}, max rel "
        f"{(gap / np.abs(f32['loss'])).max():.2e}; at the last step rel "
        f"{gap[-1] / abs(f32['loss'][-1]):.2e}"
    )
    d_gap = np.abs(bf16["discriminator_loss"] - f32["discriminator_loss"])
    if np.all(np.isfinite(d_gap)):
        print(
            f"discriminator loss gap: max abs {d_gap.max():.2e}, max rel "
            f"{(d_gap / np.abs(f32['discriminator_loss'])).max():.2e}"
        )
    for value, r in runs.items():
        print(
            f"{value:>9}: matmuls {r['matmuls']} ({r['cpu_matmuls']} as XLA:CPU compiles them), "
            f"median step {r['seconds'] * 1e3:.0f} ms, "
            f"compiled peak {r['peak'] / 2**20:.1f} MiB (this CPU), "
            f"{r['planned'] / 2**20:.1f} MiB (planner, accelerator form)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
    for name, run in (("tokenizer", tokenizer_run), ("stage 2", stage2_run)):
        runs = {}
        for value in PRECISIONS:
            started = time.perf_counter()
            runs[value] = run(value, args.steps)
            runs[value]["planned"] = planned_peak(runs[value]["config"])
            print(f"{name} {value}: {time.perf_counter() - started:.0f} s", flush=True)
        report(name, runs)


if __name__ == "__main__":
    main()
