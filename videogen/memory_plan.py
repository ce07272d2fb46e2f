"""Per-device memory of a config's real train step, from XLA's memory analysis of the
program compiled on abstract inputs (no array of the train state is ever allocated).

`step_inputs` asks the trainer for its own train state (built under `nnx.eval_shape`)
and its own jitted step (`<trainer>.jit_train_step`), and describes the frozen inputs
and the batch as `jax.ShapeDtypeStruct`s with their shardings on the mesh. `plan`
compiles that program and splits the per-device bytes into:

- parameters, optimizer state, EMA, other state (RNG counters, step): the train state's
  leaves, each at its shard's size under the config's sharding preset (`config.sharding`);
- frozen inputs (LPIPS, a frozen tokenizer, a caption table) and the batch;
- activations: the part of XLA's temporary buffers that grows with the per-device batch
  (found by compiling again at another batch size: temp = activations(b) + rest);
- temporaries: the rest of XLA's temporaries (gradients, optimizer-update scratch,
  non-donated outputs), which does not depend on the batch.

The stage-2 trainers need their frozen tokenizers only for shapes; the planner builds
them abstractly from the configs their `tokenizer_command` / `audio_tokenizer_command`
names, so no tokenizer run has to exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import shlex
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from videogen import config as config_lib
from videogen import sharding
from videogen.trainers import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# VideoPoet's clips: 17 frames at 8 frames/s carry 2.125 s of audio (thesis 8.3.1).
VIDEOPOET_FPS = 8
# Caption-table rows the VideoPoet plan assumes (`--captions`); the real table has one row
# per distinct caption of the token files and is replicated on every device.
DEFAULT_CAPTIONS = 1024

STATE_CATEGORIES = ("parameters", "optimizer", "ema", "other_state")


@dataclasses.dataclass
class StepInputs:
    """A trainer's jitted train step and abstract inputs for it."""

    program: loop.StepProgram
    state: Any  # nnx.State of ShapeDtypeStructs carrying their shardings
    frozen: tuple  # the step's frozen arguments, abstract, replicated
    batch: dict[str, jax.ShapeDtypeStruct]  # the global batch, split over the data axes

    def args(self) -> tuple:
        return (self.state, *self.frozen, self.batch)


@dataclasses.dataclass
class MemoryPlan:
    """Bytes per device of one train step."""

    trainer: str
    mesh_shape: tuple[int, int, int]
    global_batch: int
    per_device_batch: int
    parameters: int
    optimizer: int
    ema: int
    other_state: int
    frozen: int
    batch: int
    activations: int
    temporaries: int
    # XLA's own numbers for the program (CompiledMemoryStats).
    xla_arguments: int
    xla_outputs: int
    xla_aliased: int
    xla_temp: int
    parameter_count: int  # of the trained model(s), not the EMA copy

    @property
    def total(self) -> int:
        """Peak bytes of the step: arguments + outputs not aliased to them + temporaries."""
        return self.xla_arguments + self.xla_outputs - self.xla_aliased + self.xla_temp

    def categories(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "optimizer": self.optimizer,
            "ema": self.ema,
            "other_state": self.other_state,
            "frozen": self.frozen,
            "batch": self.batch,
            "activations": self.activations,
            "temporaries": self.temporaries,
        }


# ------------------------------------------------------------------ abstract inputs


def shard_bytes(leaf: jax.ShapeDtypeStruct) -> int:
    """Bytes of one device's shard of an abstract array (its sharding's shard shape)."""
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    return math.prod(shape) * leaf.dtype.itemsize


def _abstract_state(build, mesh: Mesh, preset: str) -> tuple[nnx.GraphDef, Any, Any]:
    """(graphdef, abstract state with shardings, shardings): as the loop shards a fresh state
    under the sharding preset `preset`."""
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    shardings = sharding.state_shardings(abstract, mesh, preset)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return graphdef, state, shardings


def _replicated(tree, mesh: Mesh):
    """Abstract copies of a pytree's arrays, replicated on `mesh` (the loop's frozen inputs)."""
    spec = sharding.replicated(mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=spec), tree)


def _batch(mesh: Mesh, **fields: tuple[tuple[int, ...], Any]) -> dict[str, jax.ShapeDtypeStruct]:
    spec = sharding.batch_sharding(mesh)
    return {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=spec) for k, (shape, dtype) in fields.items()
    }


def referenced_config(command: str, key: str) -> ml_collections.ConfigDict:
    """The experiment config a `tokenizer_command`-style string trains (its `--config=`)."""
    match = re.search(r"--config=(\S+)", command or "")
    if match is None:
        raise ValueError(
            f"config.{key}={command!r} names no --config=...; the planner builds the frozen "
            f"tokenizer from that config. Set --config.{key}='python -m videogen.main "
            "--config=experiments/<tokenizer>.py ...'."
        )
    spec = shlex.split(match.group(1))[0]
    path, _, arg = spec.partition(":")
    if not os.path.isabs(path):
        path = os.path.join(ROOT, path)
    config = config_lib.load_experiment(path).get_config(arg or None)
    if config.trainer == "stages":
        # A staged run (the quickstart) trains the tokenizer as its stage "tokenizer".
        if "tokenizer" not in config.stages:
            raise ValueError(
                f"config.{key} names the staged config {spec!r}, which has no 'tokenizer' "
                f"stage (stages: {list(config.stage_order)}); name the tokenizer's own config."
            )
        config = config.stages.tokenizer
    return config


def _tokenizer_inputs(config: ml_collections.ConfigDict, mesh: Mesh) -> StepInputs:
    from videogen.evaluation import lpips
    from videogen.trainers import tokenizer as trainer

    graphdef, state, shardings = _abstract_state(
        lambda: trainer.create_train_state(config), mesh, config.sharding
    )
    lpips_graphdef, lpips_state = None, None
    if config.loss.perceptual_weight > 0:
        lpips_graphdef, lpips_state = nnx.split(nnx.eval_shape(lpips.load_lpips))
    # With the GAN on, the larger program (with the discriminator) is the one to plan for.
    program = trainer.jit_train_step(
        config, graphdef, lpips_graphdef, shardings, mesh, trainer.uses_gan(config)
    )
    b, t, r = config.batch_size, config.data.num_frames, config.data.resolution
    batch = _batch(mesh, video=((b, t, r, r, 3), jnp.uint8))
    return StepInputs(program, state, (_replicated(lpips_state, mesh),), batch)


def _abstract_tokenizer(config: ml_collections.ConfigDict) -> nnx.Module:
    from videogen.trainers import frozen_tokenizer

    tokenizer_config = referenced_config(config.tokenizer_command, "tokenizer_command")
    return nnx.eval_shape(lambda: frozen_tokenizer.build_tokenizer(tokenizer_config))


def _maskgit_inputs(config: ml_collections.ConfigDict, mesh: Mesh) -> StepInputs:
    from videogen.tasks import commit_tokens
    from videogen.trainers import maskgit

    tokenizer = _abstract_tokenizer(config)
    setup = commit_tokens.make_setup(config, tokenizer)
    graphdef, state, shardings = _abstract_state(
        lambda: maskgit.create_train_state(config, setup), mesh, config.sharding
    )
    tokenizer_graphdef, tokenizer_state = nnx.split(tokenizer)
    program = maskgit.jit_train_step(config, setup, graphdef, tokenizer_graphdef, shardings, mesh)
    b = config.batch_size
    if config.data.token_dir or config.tokenize.before_training:
        # Token files: the frozen tokenizer does not run in the step.
        batch = _batch(
            mesh,
            tokens=((b, setup.num_tokens, setup.num_factors), jnp.int32),
            label=((b,), jnp.int32),
        )
    else:
        t, r = config.data.num_frames, config.data.resolution
        batch = _batch(mesh, video=((b, t, r, r, 3), jnp.uint8), label=((b,), jnp.int32))
    return StepInputs(program, state, (_replicated(tokenizer_state, mesh),), batch)


def abstract_videopoet_setup(config: ml_collections.ConfigDict):
    """The `VideoPoetSetup` of `config` with abstract tokenizers (built from the configs that
    `tokenizer_command` and `audio_tokenizer_command` name; nothing trained is read), for
    data with captions and soundtracks, as the thesis' data has. The train step reads only
    the setup's token space, so this compiles (and runs) the real step."""
    from videogen.models.audio_tokenizer import SoundStreamTokenizer
    from videogen.trainers.videopoet_data import VideoPoetSetup

    audio_config = referenced_config(config.audio_tokenizer_command, "audio_tokenizer_command")
    return VideoPoetSetup.from_modules(
        config,
        ("text", "audio"),
        tokenizer_fn=lambda: _abstract_tokenizer(config),
        audio_tokenizer_fn=lambda: nnx.eval_shape(
            lambda: SoundStreamTokenizer(**audio_config.model.to_dict(), rngs=nnx.Rngs(0))
        ),
        audio_samples_fn=lambda: config.data.num_frames * config.sample_rate // VIDEOPOET_FPS,
    )


def _videopoet_inputs(
    config: ml_collections.ConfigDict, mesh: Mesh, captions: int = DEFAULT_CAPTIONS
) -> StepInputs:
    from videogen.trainers import videopoet

    setup = abstract_videopoet_setup(config)
    graphdef, state, shardings = _abstract_state(
        lambda: videopoet.create_train_state(config, setup), mesh, config.sharding
    )
    program = videopoet.jit_train_step(config, setup, graphdef, shardings, mesh)
    n, d = config.text.max_tokens, config.text.dim
    table = (
        jax.ShapeDtypeStruct((captions, n, d), jnp.float32),
        jax.ShapeDtypeStruct((captions, n), jnp.bool_),
    )
    row = sum(math.prod(shape) for shape in setup.row_parts.values())
    b = config.batch_size
    batch = _batch(
        mesh,
        tokens=((b, row, 1), jnp.int32),
        label=((b,), jnp.int32),
        task_row=((b,), jnp.int32),
    )
    return StepInputs(program, state, _replicated(table, mesh), batch)


PLANNED_TRAINERS = {
    "tokenizer": _tokenizer_inputs,
    "maskgit": _maskgit_inputs,
    "videopoet": _videopoet_inputs,
}


def step_inputs(config: ml_collections.ConfigDict, mesh: Mesh, **options) -> StepInputs:
    """The trainer's train step and abstract inputs for `config` on `mesh`."""
    if config.trainer not in PLANNED_TRAINERS:
        raise ValueError(
            f"config.trainer={config.trainer!r}: the memory planner knows "
            f"{sorted(PLANNED_TRAINERS)}; plan a stage of a staged config by its own "
            "experiment file (e.g. experiments/quickstart_tokenizer.py)."
        )
    parallel = sharding.data_parallel_size(mesh)
    if config.batch_size % parallel:
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by the mesh's "
            f"data-parallel size {parallel} (data x fsdp of {tuple(mesh.shape.values())}); "
            f"pass --config.batch_size={parallel * max(config.batch_size // parallel, 1)}."
        )
    return PLANNED_TRAINERS[config.trainer](config, mesh, **options)


# ------------------------------------------------------------------ categories


def state_bytes(state) -> tuple[dict[str, int], int]:
    """Per-device bytes of the train state by category, and the trained parameter count.

    Parameters: `nnx.Param`s of the trained models (`model`, and `discriminator` when a
    GAN trains one); EMA: `ema_model`; optimizer: every `*optimizer` subtree (moments and
    step); other: the rest (RNG streams, LeCAM anchors, non-parameter variables).
    """
    out = dict.fromkeys(STATE_CATEGORIES, 0)
    count = 0
    for path, variable in nnx.to_flat_state(state):
        leaf = variable.get_value() if isinstance(variable, nnx.Variable) else variable
        top = str(path[0])
        if top.endswith("optimizer"):
            category = "optimizer"
        elif top == "ema_model":
            category = "ema"
        elif top in ("model", "discriminator") and isinstance(variable, nnx.Param):
            category = "parameters"
            count += math.prod(leaf.shape)
        else:
            category = "other_state"
        out[category] += shard_bytes(leaf)
    return out, count


def tree_bytes(tree) -> int:
    return sum(shard_bytes(leaf) for leaf in jax.tree.leaves(tree))


KERNELS = ("accelerator", "host")


@contextlib.contextmanager
def kernel_form(kernels: str):
    """Which form of the model's kernels to trace: "host" (as this CPU runs them) or
    "accelerator" (as a TPU/GPU runs them).

    The 3D convolutions (videogen/models/layers.py) pick a CPU form by
    `jax.default_backend()`: temporal taps of 2D convolutions, with patch matmuls in the
    backward pass, which needs several times the memory of XLA's one conv3d on an
    accelerator (the K600 tokenizer at one clip per device: 125 GiB against 27 GiB). To plan
    for an accelerator the step is traced with that call answering "tpu"; only tracing
    reads it, and the planner traces in one thread.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}; use one of {KERNELS}.")
    if kernels == "host":
        yield
        return
    real = jax.default_backend
    jax.default_backend = lambda: "tpu"
    try:
        yield
    finally:
        jax.default_backend = real


def compile_memory(inputs: StepInputs, kernels: str = "accelerator") -> Any:
    """XLA's CompiledMemoryStats of the train step compiled for `inputs` (per device)."""
    with kernel_form(kernels):
        lowered = inputs.program.lower(*inputs.args())
    return lowered.compile().memory_analysis()


def override(config: ml_collections.ConfigDict, **values: Any) -> ml_collections.ConfigDict:
    """A copy of the locked `config` with dotted keys set (`model__remat=True` sets
    model.remat), as `--config.key=value` would; a key the config lacks is an error."""
    copied = config.copy_and_resolve_references()
    with copied.unlocked():
        for key, value in values.items():
            node, *path = copied, *key.split("__")
            for name in path[:-1]:
                node = node[name]
            if path[-1] not in node:
                raise KeyError(f"config has no key {key.replace('__', '.')!r}.")
            node[path[-1]] = value
    copied.lock()
    return copied


def plan(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    split_activations: bool = True,
    kernels: str = "accelerator",
    **options,
) -> MemoryPlan:
    """The per-device memory plan of `config`'s train step on `mesh`.

    `split_activations` compiles the step a second time at half (or, with one example per
    device, twice) the per-device batch to tell activations from other temporaries; without
    it all of XLA's temporaries count as temporaries. `kernels`: see `kernel_form`.
    """
    inputs = step_inputs(config, mesh, **options)
    stats = compile_memory(inputs, kernels)
    parallel = sharding.data_parallel_size(mesh)
    per_device = config.batch_size // parallel
    activations = 0
    if split_activations:
        other = per_device // 2 if per_device >= 2 else 2 * per_device
        other_config = override(config, batch_size=other * parallel)
        other_stats = compile_memory(step_inputs(other_config, mesh, **options), kernels)
        # Temporaries = a * batch + rest: the batch-proportional part is the activations.
        slope = (stats.temp_size_in_bytes - other_stats.temp_size_in_bytes) / (per_device - other)
        activations = int(min(max(slope * per_device, 0), stats.temp_size_in_bytes))
    categories, count = state_bytes(inputs.state)
    non_aliased_outputs = stats.output_size_in_bytes - stats.alias_size_in_bytes
    return MemoryPlan(
        trainer=config.trainer,
        mesh_shape=tuple(mesh.shape.values()),
        global_batch=config.batch_size,
        per_device_batch=per_device,
        **categories,
        frozen=tree_bytes(inputs.frozen),
        batch=tree_bytes(inputs.batch),
        activations=activations,
        temporaries=stats.temp_size_in_bytes - activations + max(non_aliased_outputs, 0),
        xla_arguments=stats.argument_size_in_bytes,
        xla_outputs=stats.output_size_in_bytes,
        xla_aliased=stats.alias_size_in_bytes,
        xla_temp=stats.temp_size_in_bytes,
        parameter_count=count,
    )
