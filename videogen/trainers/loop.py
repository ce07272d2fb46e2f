"""The one training loop: every trainer plugs its state, step and evaluator into it.

A trainer module describes itself as a `Trainer` (how to build its train state,
its training data, its jitted step and its evaluator); this module owns the
rest of a run: the mesh, the sharded state (fresh or restored), the data
iterator and its checkpointed position, the checkpointer, the periodic log /
eval / checkpoint / preemption actions, steps/s with MFU (`videogen.mfu`), NaN
stops, the final evaluation, the evaluation report (JSON, TensorBoard, grids)
and the summary printed at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from videogen import checkpoint, sharding
from videogen import mfu as mfu_lib
from videogen.data import pipeline
from videogen.evaluation import audio_grid, video_grid

# Train steps the host may dispatch before waiting for the oldest (see train_and_evaluate).
MAX_STEPS_IN_FLIGHT = 2

Metrics = dict[str, jax.Array]
# (state, host batch, step before the update) -> (state, metrics); the batch is sharded.
StepFn = Callable[[nnx.State, dict[str, jax.Array], int], tuple[nnx.State, Metrics]]


@dataclasses.dataclass
class AudioPairs:
    """Held-out clips and their reconstructions, float32 [N, S] in [-1, 1]."""

    originals: np.ndarray
    reconstructions: np.ndarray
    sample_rate: int


@dataclasses.dataclass
class EvalOutput:
    """What one evaluation measured: scalars and, per name, a uint8 video grid [T, H, W, 3]
    or audio pairs."""

    metrics: dict[str, float]
    grids: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    audio: dict[str, AudioPairs] = dataclasses.field(default_factory=dict)


class Evaluator(Protocol):
    def __call__(self, state: nnx.State, step: int) -> EvalOutput: ...


@dataclasses.dataclass
class Trainer:
    """What a trainer supplies to the loop; the train state must have a `.model`."""

    build_state: Callable[[], nnx.Module]  # a fresh train state (traced under eval_shape)
    train_source: pipeline.VideoSource
    fields: Sequence[str]  # the example fields a training batch holds
    # (graphdef, state shardings, mesh) -> the step and the evaluator of that state.
    make_step: Callable[[nnx.GraphDef, nnx.State, Mesh], StepFn]
    make_evaluator: Callable[[nnx.GraphDef, nnx.State, Mesh], Evaluator]
    outputs: str  # what samples/ holds, for the summary (e.g. "input | reconstruction grids")
    # Replaces a fresh state before step 1 (e.g. inflation from an image run).
    init_fresh: Callable[[nnx.GraphDef, nnx.State, nnx.State], nnx.State] | None = None
    check_batch: Callable[[dict[str, np.ndarray]], None] | None = None  # host-side checks
    host_metrics: Callable[[dict[str, float]], dict[str, float]] | None = None  # after fetch


@dataclasses.dataclass
class RunResult:
    step: int
    state: nnx.State
    train_metrics: dict[str, float]  # at the last logged step of this run
    history: list[dict[str, float]]  # every logged step of this run, with its "step"
    eval_metrics: dict[str, float]  # of the last evaluation of this run, if any


class Run:
    """What training and every checkpoint mode share: mesh, training data, checkpoints."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, trainer: Trainer):
        self.config, self.workdir, self.trainer = config, workdir, trainer
        every = config.eval.every_steps
        if every is not None and every < 1:
            raise ValueError(
                f"config.eval.every_steps={every}; use a positive step count, or None to "
                "evaluate only at the end."
            )
        self.mesh = sharding.make_mesh(config.mesh.shape)
        parallel = sharding.data_parallel_size(self.mesh)
        if config.batch_size % parallel:
            raise ValueError(
                f"config.batch_size={config.batch_size} must be divisible by the mesh's "
                f"data-parallel size {parallel} (data x fsdp)."
            )
        self.train_iter = pipeline.make_iterator(
            trainer.train_source,
            global_batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            fields=trainer.fields,
            worker_count=config.data.worker_count,
        )
        self.checkpointer = checkpoint.Checkpointer(
            workdir,
            max_to_keep=config.checkpoint.keep,
            save_interval_steps=config.checkpoint.every_steps,
            async_save=config.checkpoint.async_save,
        )

    def create_or_restore_state(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State, int]:
        """The train state sharded over the mesh: fresh, or the workdir's latest checkpoint
        (which also moves the data iterator to its saved position).

        Nothing is materialised twice: the structure comes from `nnx.eval_shape`,
        a fresh state is created directly into its shardings by jit, and a restore
        reads straight into them. Returns (graphdef, state, state_shardings, step).
        """
        build = self.trainer.build_state
        graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
        shardings = sharding.state_shardings(abstract_state, self.mesh, self.config.sharding)
        sharding.log_sharding_summary(shardings, abstract_state)
        latest = self.checkpointer.latest_step()
        if latest is None:
            state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
            if self.trainer.init_fresh is not None:
                state = self.trainer.init_fresh(graphdef, state, shardings)
            return graphdef, state, shardings, 0
        logging.info("Resuming from %s at step %d", self.checkpointer.directory, latest)
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            shardings,
        )
        state = self.checkpointer.restore(latest, abstract, self.train_iter)
        return graphdef, state, shardings, latest

    def restore_latest(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State, int]:
        """The latest checkpoint's state; an error naming the directory when there is none."""
        if self.checkpointer.latest_step() is None:
            raise FileNotFoundError(
                f"No checkpoint in {self.checkpointer.directory}; train first with "
                "--mode=train and the same --workdir."
            )
        return self.create_or_restore_state()

    def close(self) -> None:
        self.checkpointer.wait_until_finished()
        self.checkpointer.close()


class Progress:
    """Steps/s and ETA measured between synchronised points, never at dispatch.

    JAX dispatches steps asynchronously, so the host runs ahead of the device
    until it fetches a step's metrics. Rates are taken only between two such
    fetches (`sync`), and time spent in evaluation is left out of them.
    """

    def __init__(
        self,
        total_steps: int,
        writer: metric_writers.MetricWriter,
        utilisation: Callable[[float], dict[str, float]] | None = None,
    ):
        self.total_steps, self.writer = total_steps, writer
        self.utilisation = utilisation  # steps/s -> MFU scalars, logged with the rate
        self.step: int | None = None  # of the last synchronised point
        self.time = 0.0
        self.excluded = 0.0  # seconds since the last point spent outside training

    def start(self, step: int) -> None:
        """Marks a synchronised point without reporting (the first step, which compiles)."""
        self.step, self.time, self.excluded = step, time.perf_counter(), 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def sync(self, step: int) -> float | None:
        """Reports the rate since the last point; call after the host fetched `step`'s metrics."""
        now = time.perf_counter()
        rate = None
        if self.step is not None and step > self.step:
            seconds = max(now - self.time - self.excluded, 1e-9)
            rate = (step - self.step) / seconds
            remaining = (self.total_steps - step) / rate
            perf = self.utilisation(rate) if self.utilisation is not None else {}
            logging.info(
                "step %d/%d (%.1f%%): %.2f steps/s%s, ETA %s",
                step,
                self.total_steps,
                100.0 * step / self.total_steps,
                rate,
                format_utilisation(perf),
                format_seconds(remaining),
            )
            self.writer.write_scalars(step, {"steps_per_sec": rate, **perf})
        if self.utilisation is not None:
            # The first cost lookup reads the compiled program's HLO text (a second or so
            # for a large program): not training time, so the next interval starts after it.
            now = time.perf_counter()
        self.step, self.time, self.excluded = step, now, 0.0
        return rate


def format_utilisation(perf: Mapping[str, float]) -> str:
    """ ", 3.21 GFLOP/step/device, MFU 12.3% of 0.05 TFLOP/s" (or "" without a cost)."""
    if "perf/gflops_per_step_per_device" not in perf:
        return ""
    text = f", {perf['perf/gflops_per_step_per_device']:.3g} GFLOP/step/device"
    if "perf/mfu" in perf:
        text += (
            f", MFU {100 * perf['perf/mfu']:.1f}% of "
            f"{perf['perf/peak_tflops_per_device']:.3g} TFLOP/s"
        )
    return text


def format_seconds(seconds: float) -> str:
    """1h02m, 3m05s, 12s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class StepProgram:
    """A jitted train step that can tell its compiled cost (for MFU in the logs).

    The first call lowers and compiles the step for its arguments and keeps the executable,
    so the cost analysis reads the very program that runs (asking the jitted function for
    it later compiles a second program: abstract arguments do not hit jit's cache).
    The loop only sees the trainer's step closure, which may hold several programs (the
    tokenizer's with and without the discriminator); each call records itself as the
    last dispatched program, so the loop reports the cost of the program that ran.
    """

    last_dispatched: StepProgram | None = None  # the host loop is single-threaded

    def __init__(self, jitted: Callable[..., tuple[nnx.State, Metrics]]):
        self.jitted = jitted
        self._compiled: jax.stages.Compiled | None = None
        self._cost: mfu_lib.ProgramCost | None = None

    def __call__(self, *args):
        if self._compiled is None:
            self._compiled = self.jitted.lower(*args).compile()
        StepProgram.last_dispatched = self
        return self._compiled(*args)

    def lower(self, *args):
        return self.jitted.lower(*args)

    def cost(self) -> mfu_lib.ProgramCost | None:
        """FLOPs per device of one step, once the program has run (None before)."""
        if self._cost is None and self._compiled is not None:
            self._cost = mfu_lib.program_cost(self._compiled)
        return self._cost


def jit_step(
    step: Callable[..., tuple[nnx.State, Metrics]],
    state_shardings: nnx.State,
    mesh: Mesh,
    *,
    preset: str,
    frozen_args: int = 0,
) -> StepProgram:
    """`step(state, *frozen, batch) -> (state, metrics)` jitted the one way every trainer's is:
    the state sharded by its shardings and donated, `frozen_args` frozen inputs (LPIPS, a
    frozen tokenizer) replicated, the batch split over the data axes, metrics replicated,
    and the models' activation constraints (`sharding.constrain`) mapped by the sharding
    preset `preset` (config.sharding)."""
    replicated = sharding.replicated(mesh)

    def constrained_step(*args):
        # Entered while jit traces the step, so the constraints land in its program.
        with sharding.activation_sharding(mesh, preset):
            return step(*args)

    return StepProgram(
        jax.jit(
            constrained_step,
            in_shardings=(
                state_shardings,
                *[replicated] * frozen_args,
                sharding.batch_sharding(mesh),
            ),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,
        )
    )


class Utilisation:
    """MFU of the last dispatched train step: its FLOPs per device over the device's peak.

    The peak is looked up (TPU, GPU) or measured (CPU) once, when the loop starts; a
    device the peak table does not know gets a warning naming it and no MFU.
    """

    def __init__(self, device: jax.Device):
        self.device = device
        self._peaks: dict[str, tuple[float, str] | None] = {}
        self.peak("fp32")  # measured now on CPU, before training competes for the cores

    def peak(self, dtype: str) -> tuple[float, str] | None:
        if dtype not in self._peaks:
            self._peaks[dtype] = mfu_lib.peak_flops_per_device(self.device, dtype)
            if self._peaks[dtype] is None:
                logging.warning(
                    "No %s peak FLOP/s for device kind %r; MFU is not logged. Add it to "
                    "videogen/mfu.py (TPU_PEAKS / GPU_PEAKS).",
                    dtype,
                    self.device.device_kind,
                )
        return self._peaks[dtype]

    def __call__(self, steps_per_second: float) -> dict[str, float]:
        """{"perf/gflops_per_step_per_device", "perf/mfu"} of the last step program, or {}."""
        program = StepProgram.last_dispatched
        cost = program.cost() if program is not None else None
        if cost is None or not math.isfinite(cost.flops_per_device):
            return {}
        out = {"perf/gflops_per_step_per_device": cost.flops_per_device / 1e9}
        peak = self.peak(cost.dtype)
        if peak is not None:
            out["perf/mfu"] = mfu_lib.mfu(cost.flops_per_device, steps_per_second, peak[0])
            out["perf/peak_tflops_per_device"] = peak[0] / 1e12
        return out


def clip_means(
    name: str, totals: Mapping[str, float], count: int, batch_size: int
) -> dict[str, float]:
    """`eval/<name>/<key>`: the per-clip mean of each metric summed over `count` held-out
    clips; an error naming the fix when the dataset gave no full batch."""
    if count == 0:
        raise ValueError(
            f"eval dataset {name!r} yielded no full batch of {batch_size}; lower "
            "config.eval.batch_size."
        )
    return {f"eval/{name}/{key}": total / count for key, total in totals.items()}


def check_finite(metrics: Mapping[str, float], step: int) -> None:
    """Stops training on a NaN/Inf metric, naming the step and the metric."""
    for name, value in metrics.items():
        if np.ndim(value) == 0 and not math.isfinite(float(value)):
            raise FloatingPointError(
                f"Training diverged: metric {name!r} is {float(value)} at step {step}. The last "
                "finite checkpoint in the workdir is kept; lower the learning rate or check the data."
            )


def scalars(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
    """Fetches metrics to host; vectors (e.g. per-bit entropy) become min/mean/max."""
    out = {}
    for name, value in jax.device_get(dict(metrics)).items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[name] = float(value)
        else:
            out[f"{name}_min"], out[f"{name}_mean"], out[f"{name}_max"] = (
                float(value.min()),
                float(value.mean()),
                float(value.max()),
            )
    return out


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard + log writer on process 0; other processes only log."""
    return metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )


def write_hparams(writer: metric_writers.MetricWriter, config: ml_collections.ConfigDict) -> None:
    flat: dict[str, Any] = {}

    def visit(prefix, node):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                visit(name + ".", value)
            elif isinstance(value, (int, float, str, bool)):
                flat[name] = value
            else:
                flat[name] = str(value)

    visit("", config)
    writer.write_hparams(flat)


def write_report(
    workdir: str,
    step: int,
    output: EvalOutput,
    writer: metric_writers.MetricWriter,
    fps: float,
    max_examples: int = 8,
) -> None:
    """An evaluation's grids (GIF + MP4 under samples/, first and last frame in TensorBoard),
    audio (WAV files and a spectrogram grid under samples/, clips in TensorBoard), its
    scalars (TensorBoard) and `eval_step<N>.json`."""
    for name, grid in output.grids.items():
        video_grid.save_grid(workdir, f"{name}_step{step:07d}", grid, fps)
        writer.write_images(step, {f"eval/{name}/grid": np.stack([grid[0], grid[-1]])})
    for name, pairs in output.audio.items():
        audio_grid.save_audio_grid(
            workdir,
            f"{name}_step{step:07d}",
            pairs.originals,
            pairs.reconstructions,
            pairs.sample_rate,
            max_examples,
        )
        writer.write_audios(
            step,
            audio_grid.audio_summaries(
                pairs.originals,
                pairs.reconstructions,
                name=f"eval/{name}",
                max_examples=max_examples,
            ),
            sample_rate=pairs.sample_rate,
        )
    writer.write_scalars(step, output.metrics)
    if jax.process_index() == 0:
        (epath.Path(workdir) / f"eval_step{step:07d}.json").write_text(
            json.dumps(output.metrics, indent=2, sort_keys=True)
        )


def print_summary(
    config: ml_collections.ConfigDict,
    workdir: str,
    step: int,
    eval_metrics: dict[str, float],
    outputs: str,
) -> None:
    """Tells the user where the outputs are and what the last evaluation measured."""
    if jax.process_index() != 0:
        return
    print(
        f"videogen: step {step}/{config.num_train_steps}. Outputs in {os.path.abspath(workdir)}: "
        f"checkpoints/, samples/ ({outputs}), eval_step*.json, "
        f"TensorBoard events (tensorboard --logdir {workdir})."
    )
    for key, value in sorted(eval_metrics.items()):
        print(f"  {key} = {value:.4f}")


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    trainer: Trainer,
    *,
    stop_at_step: int | None = None,
) -> RunResult:
    """Trains (resuming from `workdir`) until `config.num_train_steps`, then evaluates.

    `stop_at_step` ends this run early, after saving, as a preemption would.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    run = Run(config, workdir, trainer)
    graphdef, state, state_shardings, step = run.create_or_restore_state()
    step_fn = trainer.make_step(graphdef, state_shardings, run.mesh)
    evaluate = trainer.make_evaluator(graphdef, state_shardings, run.mesh)
    writer = create_writer(workdir)
    if step == 0:
        write_hparams(writer, config)
        parameter_overview.log_parameter_overview(
            nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, state).model, nnx.Param)),
            # Statistics would fetch every parameter to this host, which fails for arrays
            # sharded over other processes' devices.
            include_stats=jax.process_count() == 1,
        )
    progress = Progress(config.num_train_steps, writer, Utilisation(jax.local_devices()[0]))
    end = (
        config.num_train_steps
        if stop_at_step is None
        else min(stop_at_step, config.num_train_steps)
    )
    eval_metrics: dict[str, float] = {}
    values: dict[str, float] = {}
    history: list[dict[str, float]] = []

    def evaluate_and_report() -> dict[str, float]:
        started = time.perf_counter()
        output = evaluate(state, step)
        write_report(workdir, step, output, writer, config.eval.fps, config.eval.grid_examples)
        progress.exclude(time.perf_counter() - started)
        return output.metrics

    with checkpoint.PreemptionGuard() as guard:
        first = True
        in_flight = collections.deque()
        while step < end:
            batch = next(run.train_iter)
            if trainer.check_batch is not None:
                trainer.check_batch(batch)
            state, metrics = step_fn(state, sharding.shard_batch(dict(batch), run.mesh), step)
            step += 1
            # Bound how far the host runs ahead of the devices: with every step queued up
            # to the next log step, a SIGTERM (polled below) would wait for all of them,
            # minutes on a slow machine, before the save. Two in flight keep the devices fed.
            in_flight.append(metrics)
            if len(in_flight) > MAX_STEPS_IN_FLIGHT:
                jax.block_until_ready(in_flight.popleft())
            if first:
                # The first step compiles; the rates start once it has finished.
                jax.block_until_ready(metrics)
                progress.start(step)
                first = False
            must_save = step % config.checkpoint.every_steps == 0 or step == end
            stop = guard.should_stop(step)
            if step % config.log_every_steps == 0 or must_save or stop:
                values = scalars(metrics)
                progress.sync(step)
                if trainer.host_metrics is not None:
                    values = trainer.host_metrics(values)
                check_finite(values, step)
                values["data/skipped_files"] = float(trainer.train_source.skipped_files)
                values["data/short_files"] = float(trainer.train_source.short_files)
                writer.write_scalars(step, values)
                history.append({"step": step, **values})
            every = config.eval.every_steps
            if every is not None and step % every == 0 and step < end:
                eval_metrics = evaluate_and_report()
            run.checkpointer.save(step, state, run.train_iter, config, force=stop or step == end)
            if stop:
                logging.warning(
                    "Stopped at step %d on SIGTERM; checkpoint saved in %s.",
                    step,
                    run.checkpointer.directory,
                )
                break
    run.checkpointer.wait_until_finished()
    if step == config.num_train_steps and config.eval.at_end:
        eval_metrics = evaluate_and_report()
        logging.info("Final evaluation at step %d: %s", step, json.dumps(eval_metrics, indent=1))
    writer.flush()
    run.close()
    print_summary(config, workdir, step, eval_metrics, trainer.outputs)
    return RunResult(step, state, values, history, eval_metrics)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, trainer: Trainer
) -> dict[str, float]:
    """`--mode=eval`: the trainer's evaluation of the latest checkpoint in `workdir`."""
    run = Run(config, workdir, trainer)
    graphdef, state, state_shardings, step = run.restore_latest()
    writer = create_writer(workdir)
    output = trainer.make_evaluator(graphdef, state_shardings, run.mesh)(state, step)
    write_report(workdir, step, output, writer, config.eval.fps, config.eval.grid_examples)
    writer.flush()
    run.close()
    print_summary(config, workdir, step, output.metrics, trainer.outputs)
    return output.metrics
