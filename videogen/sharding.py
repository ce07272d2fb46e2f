"""Device mesh, logical-axis rules and the shardings of state and batches.

Parameters declare logical axis names (e.g. "channels_out"); the config's
rules map those names to the mesh axes ("data", "fsdp", "tensor"). The same
code runs on one CPU device, on 8 fake CPU devices and on multi-host pods:
only the mesh shape in the config changes.
"""

from __future__ import annotations

from collections.abc import Sequence
import logging
import math

from flax import nnx
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")
# Batches are split over every axis that holds a replica of the data stream.
BATCH_AXES = ("data", "fsdp")


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ("data", "fsdp", "tensor") mesh; one -1 entry takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(
            f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries for axes {MESH_AXES}."
        )
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} may contain at most one -1.")
    known = math.prod(s for s in shape if s != -1)
    wildcard = -1 in shape
    if wildcard:
        if len(devices) % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices.")
        shape[shape.index(-1)] = len(devices) // known
    if not wildcard and math.prod(shape) < len(devices):
        # An explicit smaller mesh (e.g. (1, 1, 1) for a debugging run) takes the first devices.
        logging.warning(
            "mesh %s uses %d of %d devices", tuple(shape), math.prod(shape), len(devices)
        )
        devices = devices[: math.prod(shape)]
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices but {len(devices)} are "
            "available; set config.mesh.shape so that its product is the device count (or use -1)."
        )
    # Auto axes: jit propagates shardings from in/out_shardings (GSPMD).
    return jax.make_mesh(
        tuple(shape),
        MESH_AXES,
        devices=devices,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    )


def logical_to_mesh_spec(
    logical: PartitionSpec,
    rules: Sequence[tuple[str, str | None]],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """Maps a PartitionSpec of logical names to mesh axes with `rules`.

    A mesh axis is used at most once per array; a dimension that the mesh axis
    size does not divide stays replicated (when `shape` and `mesh` are given).
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    for dim, name in enumerate(logical):
        axis = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise ValueError(
                f"logical axis {name!r} has no sharding rule; add it to config.sharding_rules."
            )
        if axis is not None and (
            axis in used
            or (shape is not None and mesh is not None and shape[dim] % mesh.shape[axis])
        ):
            axis = None
        if axis is not None:
            used.add(axis)
        out.append(axis)
    return PartitionSpec(*out)


def state_shardings(
    abstract_state: nnx.State, mesh: Mesh, rules: Sequence[tuple[str, str | None]]
) -> nnx.State:
    """NamedShardings for every array of an (abstract) NNX state."""
    logical = nnx.get_partition_spec(abstract_state)

    def to_sharding(spec, leaf):
        spec = logical_to_mesh_spec(spec, rules, getattr(leaf, "shape", None), mesh)
        return NamedSharding(mesh, spec)

    return jax.tree.map(
        to_sharding, logical, abstract_state, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axes; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places this process's slice of the global batch on the mesh.

    Every process passes its local rows; the result is one global array per key.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def log_sharding_summary(shardings: nnx.State, abstract_state: nnx.State) -> None:
    """Logs how many parameter bytes are sharded vs replicated."""
    sharded = replicated_bytes = 0
    for s, leaf in zip(jax.tree.leaves(shardings), jax.tree.leaves(abstract_state)):
        # dtype.itemsize, not np.dtype(...): PRNG-key dtypes (dropout RNG streams) are not numpy's.
        size = math.prod(leaf.shape) * leaf.dtype.itemsize
        if any(a is not None for a in s.spec):
            sharded += size
        else:
            replicated_bytes += size
    logging.info(
        "state: %.1f MB sharded, %.1f MB replicated", sharded / 2**20, replicated_bytes / 2**20
    )
