"""Device mesh, sharding presets and the shardings of state, batches and activations.

Parameters declare logical axis names (e.g. "channels_out"); a preset (`PRESETS`,
chosen by `config.sharding`) maps those names to the mesh axes ("data", "fsdp",
"tensor"). Model code may also pin an activation to logical axes (`constrain`),
which only acts while a train step traces under `activation_sharding`. The same
code runs on one CPU device, on 8 fake CPU devices and on multi-host pods: only
the mesh shape and the preset in the config change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import contextlib
import contextvars
import logging
import math

from flax import nnx
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")
# Batches are split over every axis that holds a replica of the data stream.
BATCH_AXES = ("data", "fsdp")

# A logical axis name -> the mesh axis (or axes) that split it; None: replicated.
Rules = Mapping[str, str | tuple[str, ...] | None]

# Every logical axis name a parameter carries: conv kernels (layers.CONV3D_KERNEL_AXES,
# audio_tokenizer.CONV1D_KERNEL_AXES, discriminator.DENSE_KERNEL_AXES), norms
# ("channels"), codebooks (quantizers.CODEBOOK_AXES), transformers (transformer.*_AXES,
# prefix_lm, text_encoders).
PARAMETER_AXES = (
    "conv_t",
    "conv_h",
    "conv_w",
    "channels_in",
    "channels_out",
    "channels",
    "codebook",
    "embed",
    "heads",
    "head_dim",
    "mlp",
    "vocab",
    "prefix_vocab",
    "positions",
    "factors",
)
# The names `constrain` takes for activations. They are not the parameters' names: under
# FSDP a parameter's "embed" or "channels_out" is split over fsdp, but the activations of
# that feature must not be (fsdp already splits their batch).
ACTIVATION_AXES = ("activation_batch", "activation_channels", "activation_heads", "activation_mlp")


def _preset(**sharded: str | tuple[str, ...]) -> dict[str, str | tuple[str, ...] | None]:
    """A rule for every logical axis name: the given mesh axes, None (replicated) elsewhere."""
    unknown = set(sharded) - set(PARAMETER_AXES) - set(ACTIVATION_AXES)
    assert not unknown, unknown
    return {name: sharded.get(name) for name in (*PARAMETER_AXES, *ACTIVATION_AXES)}


# The ways to split a model over the mesh; `config.sharding` names one. Batches (and with
# them every activation's batch dimension) are split over data x fsdp in all of them; they
# differ in what else is split. A dimension that its mesh axis does not divide stays
# replicated (`logical_to_mesh_spec`), so every preset runs on every mesh.
PRESETS: dict[str, Rules] = {
    # Every device holds every parameter (and its optimizer state and EMA).
    "data_parallel": _preset(activation_batch=BATCH_AXES),
    # ZeRO-3: each parameter, with its optimizer state and EMA, split over fsdp along one
    # large axis (conv output channels, codebook entries, transformer width) and
    # all-gathered where it is used; activations split only by batch.
    "fsdp": _preset(
        channels_out="fsdp", codebook="fsdp", embed="fsdp", activation_batch=BATCH_AXES
    ),
    # FSDP along another axis than tensor parallelism's, plus tensor parallelism (Megatron):
    # conv output channels, attention heads, MLP hidden units and the vocabulary over
    # tensor, so each tensor device computes its share of those features. Conv kernels
    # take fsdp on their input channels, transformer weights on their width.
    "fsdp_tensor": _preset(
        channels_in="fsdp",
        channels_out="tensor",
        codebook="fsdp",
        embed="fsdp",
        heads="tensor",
        mlp="tensor",
        vocab="tensor",
        activation_batch=BATCH_AXES,
        activation_channels="tensor",
        activation_heads="tensor",
        activation_mlp="tensor",
    ),
}


def preset_rules(preset: str) -> Rules:
    """The rule table of the preset named `preset` (`config.sharding`)."""
    if preset not in PRESETS:
        raise ValueError(
            f"config.sharding={preset!r} is not a sharding preset; use one of "
            f"{sorted(PRESETS)} (videogen/sharding.py PRESETS)."
        )
    return PRESETS[preset]


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
    rules: Rules,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """Maps a PartitionSpec of logical names to mesh axes with `rules`.

    A mesh axis is used at most once per array; a dimension that the mesh axes' size
    does not divide stays replicated (when `shape` and `mesh` are given).
    """
    used: set[str] = set()
    out = []
    for dim, name in enumerate(logical):
        if name is not None and name not in rules:
            raise ValueError(
                f"logical axis {name!r} has no sharding rule; add it to PARAMETER_AXES or "
                "ACTIVATION_AXES in videogen/sharding.py (and to a preset if it is split)."
            )
        axis = rules[name] if name is not None else None
        axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
        if any(a in used for a in axes) or (
            shape is not None
            and mesh is not None
            and shape[dim] % math.prod(mesh.shape[a] for a in axes)
        ):
            axis, axes = None, ()
        used.update(axes)
        out.append(axis)
    return PartitionSpec(*out)


def state_shardings(abstract_state: nnx.State, mesh: Mesh, preset: str) -> nnx.State:
    """NamedShardings for every array of an (abstract) NNX state under the named preset."""
    rules = preset_rules(preset)
    logical = nnx.get_partition_spec(abstract_state)

    def to_sharding(spec, leaf):
        spec = logical_to_mesh_spec(spec, rules, getattr(leaf, "shape", None), mesh)
        return NamedSharding(mesh, spec)

    return jax.tree.map(
        to_sharding, logical, abstract_state, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


# (mesh, rules) while a train step traces under `activation_sharding`; None otherwise.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "videogen_activation_sharding", default=None
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, preset: str) -> Iterator[None]:
    """Makes `constrain` pin activations to `preset`'s mesh axes on `mesh`.

    Entered inside the jitted function (`loop.jit_step`), so it holds exactly while the
    step traces; a constraint is part of the traced program and needs nothing at run time.
    """
    token = _ACTIVE.set((mesh, preset_rules(preset)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def partitioned() -> bool:
    """Whether the step being traced runs on more than one device (`activation_sharding`).

    Custom calls (`videogen.kernels`) cannot be split by XLA's SPMD partitioner, so model
    code takes XLA's own ops while this holds.
    """
    active = _ACTIVE.get()
    return active is not None and active[0].size > 1


def constrain(x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
    """`x` with its sharding pinned to the logical axes `logical` (one name or None per
    dimension, names from ACTIVATION_AXES) under the active `activation_sharding`.

    Outside one (eager calls, unit tests, samplers) `x` is returned as it is. Inside,
    parameter shardings alone leave XLA free to gather a tensor-parallel weight and
    compute the whole feature dimension on every device; pinning the activations'
    features to the tensor axis keeps each device on its share.
    """
    if len(logical) != x.ndim:
        raise ValueError(
            f"logical axes {logical} name {len(logical)} dimensions but the array has shape "
            f"{x.shape}; give one name (or None) per dimension."
        )
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_mesh_spec(PartitionSpec(*logical), rules, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


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
