"""Pieces every trainer's loop shares: state creation and resume, metric checks, writers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
import logging
import math

from clu import metric_writers
from flax import nnx
import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np

from videogen import checkpoint, sharding


def create_or_restore_state(
    build: Callable[[], nnx.Module],
    mesh: Mesh,
    rules,
    checkpointer: checkpoint.Checkpointer,
    data_iterator,
) -> tuple[nnx.GraphDef, nnx.State, nnx.State, int]:
    """Builds the train state sharded over `mesh`, or restores the workdir's latest checkpoint.

    Nothing is materialised twice: the structure comes from `nnx.eval_shape`,
    a fresh state is created directly into its shardings by jit, and a restore
    reads straight into them.
    Returns (graphdef, state, state_shardings, step).
    """
    graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
    shardings = sharding.state_shardings(abstract_state, mesh, rules)
    sharding.log_sharding_summary(shardings, abstract_state)
    latest = checkpointer.latest_step()
    if latest is None:
        state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
        return graphdef, state, shardings, 0
    logging.info("Resuming from %s at step %d", checkpointer.directory, latest)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
    state = checkpointer.restore(latest, abstract, data_iterator)
    return graphdef, state, shardings, latest


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
    flat = {}

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
