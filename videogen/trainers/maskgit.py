"""Stage-2 trainer: MAGVIT's masked video transformer with COMMIT (thesis 6.4, 6.5.6, 5.4.2).

A frozen tokenizer run (`config.tokenizer_workdir`) turns clips into tokens on
the fly; its EMA parameters are a replicated argument of the jitted steps, not
a baked-in constant. Per example the train step samples a task of the
config's mixture, builds the task's condition video, tokenizes target and
condition video in one call, factorizes the tokens into sub-tokens, masks them
with COMMIT (Eq. 6.2) at a cosine-scheduled ratio and trains the transformer
with the weighted cross-entropy of Eq. 6.3/6.4. The prompt prefix is
``[task id, class id]``; class-conditional tasks see the "no class" id with
probability `class_drop_prob` (for classifier-free guidance), the other tasks
always. Evaluation decodes every `eval.tasks` task from held-out conditions
with Algorithm 1 and reports FVD (with the copy-last-frame baseline for frame
prediction), class accuracy of class-conditional samples on moving digits,
and writes ``condition | sample | ground truth`` grids.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import parameter_overview, periodic_actions
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jaxtyping import Array, Bool, Float, Int, UInt8

from videogen import checkpoint, optim, sharding
from videogen.data import pipeline, token_files
from videogen.evaluation import digit_classifier, evaluator, video_grid
from videogen.models import quantizers
from videogen.models import tokenizer as tokenizer_models
from videogen.models.transformer import MAGVIT_SIZES, MaskedVideoTransformer
from videogen.sampling.non_autoregressive import commit_decode
from videogen.tasks import commit
from videogen.trainers import loop
from videogen.trainers import tokenizer as tokenizer_trainer

# Prompt prefix: [task id, class id or the "no class" id].
PREFIX_LENGTH = 2


@dataclasses.dataclass(frozen=True)
class CommitSetup:
    """The token space and task prompts of a run: what the tokenizer and the config fix.

    Prefix vocabulary: task ids ``[0, num_tasks)``, class ids ``num_tasks + label``
    for labels in ``[0, num_classes)``, and the "no class" id after them.
    """

    tasks: tuple[commit.Task, ...]
    task_weights: tuple[float, ...]
    num_classes: int
    video_shape: tuple[int, int, int]  # (T, H, W) of the clips
    latent_shape: tuple[int, int, int]  # (t, h, w) of their token grid
    temporal_factor: int
    spatial_factor: int
    causal: bool  # MAGVIT-v2's causal tokenizer (latent frame 0 = video frame 0)
    codebook_size: int
    num_bits: int | None  # LFQ: an index is a bit pattern, so it can be factorized
    num_factors: int

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.latent_shape
        return t * h * w

    @property
    def sub_vocab_size(self) -> int:
        return 2 ** (self.num_bits // self.num_factors) if self.num_bits else self.codebook_size

    @property
    def no_class_id(self) -> int:
        return self.num_tasks + self.num_classes

    @property
    def prefix_vocab_size(self) -> int:
        return self.no_class_id + 1

    @property
    def class_conditional(self) -> np.ndarray:
        """bool [num_tasks]: whether each task's prefix carries the class."""
        return np.array([t.class_conditional for t in self.tasks])

    def condition_tokens_match_target(self, task: commit.Task) -> bool:
        """Whether the task's condition tokens equal the target's tokens wherever Eq. 6.2
        reads them, so training need not tokenize the condition video.

        True for tasks without an interior condition (no condition token is read) and,
        with the causal tokenizer, for frame prediction from ``1 + k * temporal_factor``
        first frames: latent frames ``0..k`` see exactly those frames, which the
        replicate-padded condition video leaves untouched.
        """
        if task.region == "none":
            return True
        return (
            self.causal
            and task.region == "frames"
            and task.last_frames == 0
            and (task.first_frames - 1) % self.temporal_factor == 0
        )

    @property
    def condition_from_target(self) -> bool:
        """Every task's condition tokens can be taken from the target's (see above)."""
        return all(self.condition_tokens_match_target(t) for t in self.tasks)

    def require_condition_from_target(self, why: str) -> None:
        """Raises, naming the tasks, unless `condition_from_target`; `why` says what needs it."""
        if not self.condition_from_target:
            tasks = [t.name for t in self.tasks if not self.condition_tokens_match_target(t)]
            raise ValueError(
                f"{why}: tasks {tasks} need their condition video tokenized in every step; "
                "token files hold the target's tokens only. Train them from videos (clear "
                "data.token_dir and tokenize.before_training)."
            )

    def task_id(self, name: str) -> int:
        names = [t.name for t in self.tasks]
        if name not in names:
            raise ValueError(
                f"task {name!r} is not among the trained tasks {names}; the transformer only "
                "knows the prompts of config.tasks.names."
            )
        return names.index(name)


def make_setup(config: ml_collections.ConfigDict, tokenizer: nnx.Module) -> CommitSetup:
    """The run's CommitSetup from its config and frozen tokenizer; checks they fit together."""
    names = tuple(config.tasks.names)
    weights = tuple(float(w) for w in config.tasks.weights)
    if len(weights) != len(names):
        raise ValueError(
            f"config.tasks.weights has {len(weights)} entries for {len(names)} tasks {names}; "
            "give one weight per task."
        )
    tasks = commit.make_tasks(names, config.tasks.overrides.to_dict())
    if any(t.class_conditional for t in tasks) and config.num_classes < 1:
        raise ValueError(
            f"tasks {[t.name for t in tasks if t.class_conditional]} are class-conditional but "
            f"config.num_classes={config.num_classes}; set it to the dataset's class count."
        )
    video_shape = (config.data.num_frames, config.data.resolution, config.data.resolution)
    quantizer = tokenizer.quantizer
    num_bits = quantizer.num_bits if isinstance(quantizer, quantizers.LFQ) else None
    num_factors = config.model.num_factors
    if num_bits is None and num_factors != 1:
        raise ValueError(
            f"config.model.num_factors={num_factors}, but the tokenizer's "
            f"{type(quantizer).__name__} indices are not bit patterns; only LFQ tokens can be "
            "factorized. Set model.num_factors=1."
        )
    if num_bits is not None and (num_factors < 1 or num_bits % num_factors):
        raise ValueError(
            f"config.model.num_factors={num_factors} must divide the tokenizer's {num_bits} "
            "LFQ bits (e.g. 2 for 2^18 -> 2 x 2^9)."
        )
    setup = CommitSetup(
        tasks=tasks,
        task_weights=weights,
        num_classes=config.num_classes,
        video_shape=video_shape,
        latent_shape=tokenizer.latent_shape(*video_shape),
        temporal_factor=tokenizer.temporal_factor,
        spatial_factor=tokenizer.spatial_factor,
        causal=isinstance(tokenizer, tokenizer_models.CausalVideoTokenizer),
        codebook_size=quantizer.codebook_size,
        num_bits=num_bits,
        num_factors=num_factors,
    )
    # Every task's token condition mask is built now, so a bad task fails before training.
    for task in tasks:
        _latent_region(setup, task)
    return setup


def _latent_region(setup: CommitSetup, task: commit.Task) -> np.ndarray:
    return commit.latent_region(
        task,
        setup.video_shape,
        setup.latent_shape,
        temporal_factor=setup.temporal_factor,
        spatial_factor=setup.spatial_factor,
        causal=setup.causal,
    )


def model_sizes(model: ml_collections.ConfigDict) -> dict[str, int]:
    """hidden_size, num_layers, num_heads, mlp_dim: a Table 6.1 variant or the explicit sizes."""
    explicit = {k: model[k] for k in ("hidden_size", "num_layers", "num_heads", "mlp_dim")}
    if model.size:
        if model.size not in MAGVIT_SIZES:
            raise ValueError(
                f"config.model.size={model.size!r}; use one of {sorted(MAGVIT_SIZES)} "
                "(Table 6.1) or '' with explicit hidden_size/num_layers/num_heads/mlp_dim."
            )
        if any(explicit.values()):
            raise ValueError(
                f"config.model.size={model.size!r} and explicit sizes {explicit} are both set; "
                "set size='' to use the explicit sizes, or zero them."
            )
        return dict(MAGVIT_SIZES[model.size])
    if not all(v > 0 for v in explicit.values()):
        raise ValueError(
            f"config.model.size='' needs positive explicit sizes, got {explicit}; or set size "
            f"to one of {sorted(MAGVIT_SIZES)}."
        )
    return explicit


def build_model(config: ml_collections.ConfigDict, setup: CommitSetup) -> MaskedVideoTransformer:
    """The bidirectional transformer over ``[task, class, visual tokens]``."""
    return MaskedVideoTransformer(
        num_tokens=setup.num_tokens,
        sub_vocab_size=setup.sub_vocab_size,
        num_factors=setup.num_factors,
        prefix_vocab_size=setup.prefix_vocab_size,
        prefix_length=PREFIX_LENGTH,
        **model_sizes(config.model),
        dropout_rate=config.model.dropout_rate,
        attention_dropout_rate=config.model.attention_dropout_rate,
        position_encoding=config.model.position_encoding,
        token_grid=setup.latent_shape,
        rope_base=config.model.rope_base,
        remat=config.model.remat,
        # 'rbg' initialises fast on CPU; dropout keys stay threefry, whose bits do not
        # depend on how the batch is sharded.
        rngs=nnx.Rngs(
            params=jax.random.key(config.seed, impl="rbg"),
            dropout=jax.random.key(config.seed + 1),
        ),
    )


class TrainState(nnx.Module):
    """Everything a stage-2 run checkpoints: transformer (with its dropout RNG), optimizer,
    and the RNG stream of the per-example task, class drop and mask sampling."""

    def __init__(self, model: MaskedVideoTransformer, tx: optax.GradientTransformation, seed: int):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.rngs = nnx.Rngs(masking=jax.random.key(seed + 2))


def create_train_state(config: ml_collections.ConfigDict, setup: CommitSetup) -> TrainState:
    tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    return TrainState(build_model(config, setup), tx, config.seed)


def to_factors(indices: Int[Array, "b t h w"], setup: CommitSetup) -> Int[Array, "b n f"]:
    """Token grid -> flattened sequence of sub-tokens (one factor for VQ tokens)."""
    flat = indices.reshape(indices.shape[0], -1)
    if setup.num_bits is None:
        return flat[..., None].astype(jnp.int32)
    return quantizers.factorize_indices(flat, setup.num_bits, setup.num_factors)


def video_tokens(
    tokenizer: nnx.Module, setup: CommitSetup, video: Float[Array, "b T H W c"]
) -> Int[Array, "b n f"]:
    """The frozen tokenizer's sub-tokens of clips in [-1, 1] (no gradient reaches it)."""
    return to_factors(jax.lax.stop_gradient(tokenizer.tokenize(video)), setup)


def from_factors(tokens: Int[Array, "b n f"], setup: CommitSetup) -> Int[Array, "b t h w"]:
    """Inverse of `to_factors`."""
    flat = (
        tokens[..., 0]
        if setup.num_bits is None
        else quantizers.unfactorize_indices(tokens, setup.num_bits)
    )
    return flat.reshape(tokens.shape[0], *setup.latent_shape)


@dataclasses.dataclass
class ConditionTokens:
    condition_video: Float[Array, "b T H W c"] | None  # Ṽ in [-1, 1] (None from token files)
    condition: Int[Array, "b n f"]  # z̃ = f_T(Ṽ) as sub-tokens
    condition_mask: Bool[Array, "b n"]  # ¬ispad: the token's cell holds condition pixels
    target: Int[Array, "b n f"] | None  # z = f_T(V), when asked for


def condition_tokens(
    tokenizer: nnx.Module,
    setup: CommitSetup,
    task_ids: Int[Array, " b"],
    video: Float[Array, "b T H W c"],
    *,
    with_target: bool,
) -> ConditionTokens:
    """The task's condition video and its tokens; with the target's tokens from the same call.

    Everything here depends on the pixels of the task's interior condition only,
    except ``target`` and, when training takes z̃ from z (`condition_from_target`),
    ``condition`` at the tokens that ``condition_mask`` hides from the transformer.
    """
    b = video.shape[0]
    cond_video = commit.condition_video(setup.tasks, task_ids, video)
    if with_target and setup.condition_from_target:
        # Half the tokenizer work: z̃ = z on every condition token of these tasks.
        target = video_tokens(tokenizer, setup, video)
        tokens = target_as_condition(setup, task_ids, target)
        return dataclasses.replace(tokens, condition_video=cond_video)
    clips = jnp.concatenate([cond_video, video]) if with_target else cond_video
    tokens = video_tokens(tokenizer, setup, clips)
    mask = _condition_mask(setup, task_ids)
    return ConditionTokens(cond_video, tokens[:b], mask, tokens[b:] if with_target else None)


def _condition_mask(setup: CommitSetup, task_ids: Int[Array, " b"]) -> Bool[Array, "b n"]:
    return commit.latent_condition_mask(
        setup.tasks,
        task_ids,
        setup.video_shape,
        setup.latent_shape,
        temporal_factor=setup.temporal_factor,
        spatial_factor=setup.spatial_factor,
        causal=setup.causal,
    ).reshape(task_ids.shape[0], -1)


def target_as_condition(
    setup: CommitSetup, task_ids: Int[Array, " b"], target: Int[Array, "b n f"]
) -> ConditionTokens:
    """Training inputs from the target's tokens alone, z̃ = z (`condition_from_target`
    tasks only): what token files provide, with no condition video."""
    setup.require_condition_from_target("training from the target's tokens alone")
    return ConditionTokens(None, target, _condition_mask(setup, task_ids), target)


def prefix_tokens(
    setup: CommitSetup,
    task_ids: Int[Array, " b"],
    labels: Int[Array, " b"],
    keep_class: Bool[Array, " b"] | None = None,
) -> Int[Array, "b 2"]:
    """``[task id, class id]`` per example; "no class" for unconditional tasks and where
    ``keep_class`` is False."""
    with_class = jnp.asarray(setup.class_conditional)[task_ids]
    if keep_class is not None:
        with_class = with_class & keep_class
    class_ids = jnp.where(with_class, setup.num_tasks + labels, setup.no_class_id)
    return jnp.stack([task_ids, class_ids], axis=1).astype(jnp.int32)


def commit_loss(
    logits: Float[Array, "b n f v"],
    target: Int[Array, "b n f"],
    inputs: commit.CommitInputs,
    task_ids: Int[Array, " b"],
    setup: CommitSetup,
    label_smoothing: float,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """The weighted cross-entropy of Eq. 6.4 and its parts.

    A token's cross-entropy is the sum over its sub-tokens (its log-probability
    under the factorized model), with smoothed labels. The loss is the weighted
    mean over all positions of the batch. Metrics: each term's mean
    cross-entropy, accuracy of masked (refine + mask) tokens (a token is right
    when all its sub-tokens are), and per task its weighted loss, masked-token
    accuracy and example count; groups with no positions come out as NaN with a
    zero count (`drop_empty_groups` removes them on the host).
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(log_probs, target[..., None], axis=-1)[..., 0]
    # Cross-entropy against (1 - a) one_hot + a / vocab, without building the one-hot.
    smoothed = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    token_ce = jnp.sum(smoothed, axis=-1)
    weights = inputs.weights
    loss = jnp.sum(weights * token_ce) / jnp.maximum(jnp.sum(weights), 1e-8)
    correct = jnp.all(jnp.argmax(logits, axis=-1) == target, axis=-1).astype(jnp.float32)
    masked = (inputs.refine | inputs.mask).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "masked_accuracy": jnp.sum(correct * masked) / jnp.sum(masked),
    }
    for name, where in (
        ("refine", inputs.refine),
        ("mask", inputs.mask),
        ("recons", inputs.recons),
    ):
        where = where.astype(jnp.float32)
        metrics[f"{name}/tokens"] = jnp.sum(where)
        metrics[f"{name}/loss"] = jnp.sum(where * token_ce) / jnp.sum(where)
    # [b, tasks] one-hot: per-task sums over each task's examples.
    groups = jax.nn.one_hot(task_ids, setup.num_tasks, dtype=jnp.float32)
    task_weight = groups.T @ jnp.sum(weights, axis=1)
    task_loss = groups.T @ jnp.sum(weights * token_ce, axis=1)
    task_masked = groups.T @ jnp.sum(masked, axis=1)
    task_correct = groups.T @ jnp.sum(correct * masked, axis=1)
    examples = jnp.sum(groups, axis=0)
    for k, task in enumerate(setup.tasks):
        metrics[f"tasks/{task.name}/examples"] = examples[k]
        # A task whose positions all weigh 0 (e.g. refine only, weight 0) has loss 0.
        metrics[f"tasks/{task.name}/loss"] = task_loss[k] / jnp.maximum(task_weight[k], 1e-8)
        metrics[f"tasks/{task.name}/masked_accuracy"] = task_correct[k] / task_masked[k]
    return loss, metrics


def drop_empty_groups(values: dict[str, float]) -> dict[str, float]:
    """Removes the metrics of groups (``tasks/X/``, ``refine/``, ...) absent from this batch."""
    empty = {
        key.rsplit("/", 1)[0] + "/"
        for key, value in values.items()
        if key.endswith(("/tokens", "/examples")) and value == 0
    }
    return {
        k: v
        for k, v in values.items()
        if not any(k.startswith(p) for p in empty) or k.endswith(("/tokens", "/examples"))
    }


def train_step(
    graphdef: nnx.GraphDef,
    tokenizer_graphdef: nnx.GraphDef,
    setup: CommitSetup,
    config: ml_collections.ConfigDict,
    schedule: optax.Schedule,
    state: nnx.State,
    tokenizer_state: nnx.State,
    batch: dict[str, jax.Array],
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One COMMIT step on a global batch; pure in (state, tokenizer_state, batch).

    The returned state carries the advanced dropout and masking RNG counters.
    """
    train_state = nnx.merge(graphdef, state)
    tokenizer = nnx.merge(tokenizer_graphdef, tokenizer_state)
    step = train_state.optimizer.step[...]
    b = batch["label"].shape[0]
    task_key, class_key, ratio_key, mask_key = jax.random.split(train_state.rngs.masking(), 4)

    task_ids = commit.sample_tasks(task_key, b, setup.task_weights)
    if "tokens" in batch:  # token files: the tokenizer already ran, once, in --mode=tokenize
        tokens = target_as_condition(setup, task_ids, batch["tokens"])
    else:
        tokens = condition_tokens(
            tokenizer, setup, task_ids, tokenizer_trainer.to_float(batch["video"]), with_target=True
        )
    ratio = commit.sample_mask_ratio(ratio_key, b, config.mask_schedule, setup.num_tokens)
    model = train_state.model
    inputs = commit.commit_mask(
        tokens.target,
        tokens.condition,
        tokens.condition_mask,
        ratio,
        mask_key,
        mask_token_id=model.mask_token_id,
        refine_weight=config.loss.refine_weight,
        mask_weight=config.loss.mask_weight,
        recons_weight=config.loss.recons_weight,
    )
    keep_class = jax.random.uniform(class_key, (b,)) >= config.class_drop_prob
    prefix = prefix_tokens(setup, task_ids, batch["label"], keep_class)

    def loss_fn(model):
        logits = model(inputs.tokens, prefix, deterministic=False)
        return commit_loss(
            logits, tokens.target, inputs, task_ids, setup, config.loss.label_smoothing
        )

    # nnx.value_and_grad differentiates the Params and writes the dropout streams'
    # advanced counters back into `model`.
    (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    train_state.optimizer.update(model, grads)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(step)
    metrics["mask_ratio"] = jnp.mean(ratio)
    return nnx.state(train_state), metrics


def sample_tokens(
    model: MaskedVideoTransformer,
    tokenizer: nnx.Module,
    setup: CommitSetup,
    decoding: ml_collections.ConfigDict,
    video: Float[Array, "b T H W c"],
    labels: Int[Array, " b"],
    task_ids: Int[Array, " b"],
    key: Array,
    *,
    guidance_scale: float,
) -> tuple[Int[Array, "b n f"], Float[Array, "b T H W c"]]:
    """Algorithm 1 from each clip's task condition: (sub-tokens, condition video).

    Only the pixels of the task's interior condition (and the label, for
    class-conditional tasks) reach the transformer.
    """
    cond = condition_tokens(tokenizer, setup, task_ids, video, with_target=False)
    prefix = prefix_tokens(setup, task_ids, labels)
    unconditional = prefix_tokens(setup, task_ids, labels, jnp.zeros_like(task_ids, bool))
    tokens = commit_decode(
        lambda z, p: model(z, p, deterministic=True),
        cond.condition,
        cond.condition_mask,
        prefix,
        key,
        mask_token_id=model.mask_token_id,
        num_steps=decoding.num_steps,
        schedule=decoding.schedule,
        choice_temperature=decoding.choice_temperature,
        guidance_scale=guidance_scale,
        unconditional_prefix=unconditional if guidance_scale else None,
        keep_condition=decoding.keep_condition,
    )
    return tokens, cond.condition_video


def generate(
    graphdef: nnx.GraphDef,
    tokenizer_graphdef: nnx.GraphDef,
    setup: CommitSetup,
    decoding: ml_collections.ConfigDict,
    guidance_scale: float,
    state: nnx.State,
    tokenizer_state: nnx.State,
    video: UInt8[Array, "b T H W c"],
    labels: Int[Array, " b"],
    task_ids: Int[Array, " b"],
    key: Array,
) -> dict[str, Float[Array, "b T H W c"]]:
    """Decoded samples and the condition videos they were made from, in [-1, 1]."""
    model = nnx.merge(graphdef, state).model
    tokenizer = nnx.merge(tokenizer_graphdef, tokenizer_state)
    tokens, condition = sample_tokens(
        model,
        tokenizer,
        setup,
        decoding,
        tokenizer_trainer.to_float(video),
        labels,
        task_ids,
        key,
        guidance_scale=guidance_scale,
    )
    sample = tokenizer.detokenize(from_factors(tokens, setup))
    return {"sample": jnp.clip(sample, -1.0, 1.0), "condition": condition}


def copy_last_frame(
    video: UInt8[np.ndarray, "b T H W c"], first_frames: int
) -> UInt8[np.ndarray, "b T H W c"]:
    """Frame-prediction baseline: the ``first_frames`` condition frames, then the last repeated."""
    t = video.shape[1]
    last = video[:, first_frames - 1 : first_frames]
    return np.concatenate([video[:, :first_frames], np.repeat(last, t - first_frames, 1)], 1)


def check_labels(labels: np.ndarray, setup: CommitSetup) -> None:
    """Class-conditional tasks need labels in [0, num_classes) (a wrong id would be clipped)."""
    if not setup.class_conditional.any():
        return
    labels = np.asarray(labels)
    bad = labels[(labels < 0) | (labels >= setup.num_classes)]
    if bad.size:
        raise ValueError(
            f"label {int(bad[0])} is outside [0, config.num_classes={setup.num_classes}) but "
            f"the class-conditional tasks {[t.name for t in setup.tasks if t.class_conditional]} "
            "use it as the class prompt; set num_classes to the dataset's class count."
        )


def _local(x: jax.Array, mesh) -> np.ndarray:
    """This process's rows of a batch-sharded global array."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    local = multihost_utils.global_array_to_host_local_array(
        x, mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES)
    )
    return np.asarray(local)


def _sum_over_processes(values: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


class Evaluator:
    """Decodes every `config.eval.tasks` task from held-out conditions and scores the samples.

    Per task: FVD against the real split's cached I3D statistics (when
    `eval.frechet.num_samples` > 0) over the first `eval.frechet.num_frames`
    frames, and for frame prediction with replicate padding the FVD of the
    copy-last-frame baseline; class accuracy of class-conditional samples by
    the moving-digits classifier (moving_digits data only); one
    ``condition | sample | ground truth`` grid (GIF + MP4, TensorBoard frames).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        setup: CommitSetup,
        graphdef: nnx.GraphDef,
        tokenizer_graphdef: nnx.GraphDef,
        tokenizer_state: nnx.State,
        state_shardings: nnx.State,
        mesh,
        workdir: str,
    ):
        self.config, self.setup, self.mesh, self.workdir = config, setup, mesh, workdir
        self.tokenizer_state = tokenizer_state
        self.tasks = [(name, setup.task_id(name)) for name in config.eval.tasks]
        if config.eval.batch_size % sharding.data_parallel_size(mesh):
            raise ValueError(
                f"config.eval.batch_size={config.eval.batch_size} must be divisible by the mesh's "
                f"data-parallel size {sharding.data_parallel_size(mesh)}."
            )
        self.source = self._source("eval", config.data.num_frames, config.eval.num_examples)
        batch = sharding.batch_sharding(mesh)
        replicated = sharding.replicated(mesh)
        # Guidance only helps where the prefix carries a class; other tasks decode unguided.
        self._generate = {
            scale: jax.jit(
                functools.partial(
                    generate, graphdef, tokenizer_graphdef, setup, config.decoding, scale
                ),
                in_shardings=(state_shardings, replicated, batch, batch, batch, replicated),
            )
            for scale in {0.0, float(config.decoding.guidance_scale)}
        }
        protocol = config.eval.frechet
        self.frechet = None
        if protocol.num_samples:
            if protocol.real_temporal_windows != 1 or protocol.real_spatial_crops != 1:
                raise ValueError(
                    "eval.frechet.real_temporal_windows/real_spatial_crops > 1 need several views "
                    "of each real video, which the sources do not yield; set both to 1."
                )
            if protocol.num_frames > config.data.num_frames:
                raise ValueError(
                    f"eval.frechet.num_frames={protocol.num_frames} exceeds the generated clips' "
                    f"{config.data.num_frames} frames; lower it or generate longer clips."
                )
            needed = protocol.num_samples * protocol.num_repeats
            if needed > config.eval.num_examples:
                raise ValueError(
                    f"eval.frechet needs num_samples x num_repeats = {needed} samples per task "
                    f"but eval.num_examples={config.eval.num_examples}; raise eval.num_examples "
                    "or lower eval.frechet.num_samples."
                )
            self.frechet = evaluator.FrechetEvaluator(
                protocol, os.path.join(workdir, "real_stats"), mesh
            )
        self._classifier = None

    def _source(self, split: str, num_frames: int, num_examples: int | None):
        config = self.config
        kwargs = dict(tokenizer_trainer._data_kwargs(config), num_frames=num_frames)
        path = config.data.path if split == "train" else config.eval.path or config.data.path
        return pipeline.make_source(
            config.eval.dataset, split, path=path or None, num_examples=num_examples, **kwargs
        )

    def _batches(self, source) -> Iterator[dict[str, np.ndarray]]:
        return pipeline.make_iterator(
            source,
            global_batch_size=self.config.eval.batch_size,
            shuffle=False,
            seed=0,
            num_epochs=1,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def _real_statistics(self):
        """The real split's I3D statistics (cached under <workdir>/real_stats)."""
        protocol = self.config.eval.frechet
        source = self._source(
            protocol.real_split, protocol.num_frames, self.frechet.real_num_examples
        )
        return self.frechet.real_statistics(
            self.config.eval.dataset,
            lambda: self._batches(source),
            frame_stride=self.config.data.frame_stride,
            source_resolution=self.config.data.resolution,
        )

    @property
    def classifier(self):
        if self._classifier is None:
            self._classifier = digit_classifier.load_or_train(
                self.workdir,
                self.config.data.resolution,
                self.config.data.num_frames,
                **(
                    {"steps": self.config.eval.classifier_steps}
                    if self.config.eval.classifier_steps
                    else {}
                ),
            )
        return self._classifier

    def samples(
        self, state: nnx.State, task: str, max_batches: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """uint8 {condition, sample, video} and labels, batch by batch, for `task`."""
        task_id = self.setup.task_id(task)
        t = self.setup.tasks[task_id]
        scale = float(self.config.decoding.guidance_scale) if t.class_conditional else 0.0
        base = jax.random.fold_in(jax.random.key(self.config.seed), task_id)
        for index, batch in enumerate(self._batches(self.source)):
            if max_batches is not None and index >= max_batches:
                return
            check_labels(batch["label"], self.setup)
            placed = sharding.shard_batch(
                {
                    "video": batch["video"],
                    "label": batch["label"],
                    "task_ids": np.full(len(batch["label"]), task_id, np.int32),
                },
                self.mesh,
            )
            out = self._generate[scale](
                state,
                self.tokenizer_state,
                placed["video"],
                placed["label"],
                placed["task_ids"],
                jax.random.fold_in(base, index),
            )
            yield {
                "condition": video_grid.to_uint8(_local(out["condition"], self.mesh)),
                "sample": video_grid.to_uint8(_local(out["sample"], self.mesh)),
                "video": np.asarray(batch["video"]),
                "label": np.asarray(batch["label"]),
            }

    def grid(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return video_grid.make_grid(
            [batch["condition"], batch["sample"], batch["video"]],
            max_examples=self.config.eval.grid_examples,
        )

    def __call__(self, state: nnx.State, step: int, writer) -> dict[str, float]:
        results: dict[str, float] = {}
        protocol = self.config.eval.frechet
        real_stats = self._real_statistics() if self.frechet is not None else None
        use_classifier = self.config.eval.dataset == "moving_digits"
        for name, task_id in self.tasks:
            task = self.setup.tasks[task_id]
            scores = {"correct": 0, "count": 0, "grid": None}
            score_classes = use_classifier and task.class_conditional

            def generated(name=name, scores=scores, score_classes=score_classes):
                for batch in self.samples(state, name):
                    if scores["grid"] is None and jax.process_index() == 0:
                        scores["grid"] = self.grid(batch)
                    if score_classes:
                        predicted = digit_classifier.predict(self.classifier, batch["sample"])
                        scores["correct"] += int(np.sum(predicted == batch["label"]))
                    scores["count"] += len(batch["sample"])
                    yield batch["sample"][:, : protocol.num_frames or None]

            stream = evaluator.FoldedStream(generated(), max(protocol.num_samples, 1))
            if self.frechet is not None:
                for key, value in self.frechet(real_stats, stream.fold).items():
                    results[f"eval/{name}/{key}"] = value
                if task.region == "frames" and task.padding == "replicate":
                    baseline = evaluator.FoldedStream(
                        (
                            copy_last_frame(b["video"], task.first_frames)[:, : protocol.num_frames]
                            for b in self._batches(self.source)
                        ),
                        protocol.num_samples,
                    )
                    for key, value in self.frechet(real_stats, baseline.fold).items():
                        results[f"eval/{name}/copy_last_frame_{key}"] = value
            stream.drain()
            if scores["count"] == 0:
                raise ValueError(
                    f"eval dataset {self.config.eval.dataset!r} yielded no full batch of "
                    f"{self.config.eval.batch_size}; lower config.eval.batch_size."
                )
            if score_classes:
                correct, count = _sum_over_processes(np.array([scores["correct"], scores["count"]]))
                results[f"eval/{name}/class_accuracy"] = float(correct / count)
            if scores["grid"] is not None:
                video_grid.save_grid(
                    self.workdir, f"{name}_step{step:07d}", scores["grid"], self.config.eval.fps
                )
                # TensorBoard shows the grid's first and last frame.
                grid = scores["grid"]
                writer.write_images(step, {f"eval/{name}/grid": np.stack([grid[0], grid[-1]])})
        writer.write_scalars(step, results)
        if jax.process_index() == 0:
            (epath.Path(self.workdir) / f"eval_step{step:07d}.json").write_text(
                json.dumps(results, indent=2, sort_keys=True)
            )
        return results


def load_frozen_tokenizer(config: ml_collections.ConfigDict) -> nnx.Module:
    """The EMA tokenizer of `config.tokenizer_workdir`; the error names the command to train it."""
    try:
        tokenizer, _ = tokenizer_trainer.load_tokenizer(config.tokenizer_workdir)
    except FileNotFoundError:
        directory = os.path.join(os.path.abspath(config.tokenizer_workdir), "checkpoints")
        command = config.tokenizer_command or (
            f"python -m videogen.main --config=<tokenizer config> "
            f"--workdir={config.tokenizer_workdir}"
        )
        raise FileNotFoundError(
            f"No tokenizer checkpoint in {directory} (config.tokenizer_workdir="
            f"{config.tokenizer_workdir!r}). Train the tokenizer first: {command} -- or point "
            "--config.tokenizer_workdir at a finished tokenizer run."
        ) from None
    return tokenizer


def token_meta(config: ml_collections.ConfigDict, setup: CommitSetup) -> dict:
    """What token files must agree on with the run that reads them (`token_files.check_meta`)."""
    checkpointer = checkpoint.Checkpointer(
        config.tokenizer_workdir, max_to_keep=1, save_interval_steps=1
    )
    try:
        tokenizer_step = checkpointer.latest_step()
    finally:
        checkpointer.close()
    return {
        "tokenizer_workdir": os.path.abspath(config.tokenizer_workdir),
        "tokenizer_step": tokenizer_step,
        "latent_shape": list(setup.latent_shape),
        "num_bits": setup.num_bits,
        "num_factors": setup.num_factors,
        "sub_vocab_size": setup.sub_vocab_size,
        "data": config.data.name,
        "data_version": pipeline.content_version(config.data.name),
        "video_shape": list(setup.video_shape),
        "frame_stride": config.data.frame_stride,
    }


def default_token_dir(workdir: str) -> str:
    return os.path.join(workdir, "tokens")


def train_token_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The token files training reads, or "" to tokenize every batch on the fly.

    `data.token_dir` if set; else `<workdir>/tokens` when `tokenize.before_training`
    (the run writes them there itself before its first step).
    """
    if config.data.token_dir:
        return config.data.token_dir
    return default_token_dir(workdir) if config.tokenize.before_training else ""


def tokenize_dataset(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`--mode=tokenize`: the frozen tokenizer's sub-tokens of `config.tokenize.num_examples`
    training clips (a shuffled draw, as training would read them) with their labels, written
    to `config.data.token_dir` (default `<workdir>/tokens`). Returns the directory.

    Training with `data.token_dir` set then reads these instead of encoding every batch;
    it suits tasks whose condition tokens are the target's (`condition_from_target`).
    """
    if jax.process_count() > 1:
        raise ValueError(
            "--mode=tokenize runs in one process; run it on one host and share the directory."
        )
    tokenizer = load_frozen_tokenizer(config)
    setup = make_setup(config, tokenizer)
    if config.tokenize.before_training:
        # The training run that follows would refuse these files; refuse before encoding.
        setup.require_condition_from_target("tokenize.before_training=True")
    directory = config.data.token_dir or default_token_dir(workdir)
    source = tokenizer_trainer.make_train_source(config)
    count, batch_size = config.tokenize.num_examples, config.tokenize.batch_size
    if not 0 < count <= len(source):
        raise ValueError(
            f"config.tokenize.num_examples={count}, but the training data {config.data.name!r} "
            f"has {len(source)} clips; choose 1..{len(source)}."
        )
    graphdef, state = nnx.split(tokenizer)

    @jax.jit
    def encode(state, video):
        model = nnx.merge(graphdef, state)
        return video_tokens(model, setup, tokenizer_trainer.to_float(video))

    iterator = pipeline.make_iterator(
        source, global_batch_size=batch_size, shuffle=True, seed=config.seed, num_epochs=None
    )
    tokens, labels, done = [], [], 0
    started = time.perf_counter()
    log_every = max(count // 10, 1)  # about ten progress lines, whatever the count
    while done < count:
        batch = next(iterator)
        tokens.append(np.asarray(encode(state, batch["video"])))
        labels.append(np.asarray(batch["label"]))
        before, done = done, done + len(batch["label"])
        if done // log_every > before // log_every or done >= count:
            logging.info("Tokenized %d/%d clips.", min(done, count), count)
    seconds = time.perf_counter() - started
    token_files.write(
        directory,
        np.concatenate(tokens)[:count],
        np.concatenate(labels)[:count],
        token_meta(config, setup),
    )
    # With tokenize.before_training the run trains from them itself; no hint needed.
    hint = (
        ""
        if config.tokenize.before_training
        else f"; train from them with --config.data.token_dir={directory}"
    )
    print(
        f"videogen: tokenized {count} clips of {config.data.name} into {directory} in "
        f"{seconds:.0f} s ({count / seconds:.1f} clips/s){hint}"
    )
    return directory


class _Run:
    """What training, `--mode=eval` and `--mode=sample` share: frozen tokenizer, mesh, data,
    checkpoints."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        tokenizer = load_frozen_tokenizer(config)
        self.setup = make_setup(config, tokenizer)
        for name in config.eval.tasks:
            self.setup.task_id(name)
        self.mesh = sharding.make_mesh(config.mesh.shape)
        if config.batch_size % sharding.data_parallel_size(self.mesh):
            raise ValueError(
                f"config.batch_size={config.batch_size} must be divisible by the mesh's "
                f"data-parallel size {sharding.data_parallel_size(self.mesh)} (data x fsdp)."
            )
        self.tokenizer_graphdef, tokenizer_state = nnx.split(tokenizer)
        self.tokenizer_state = jax.device_put(tokenizer_state, sharding.replicated(self.mesh))
        token_dir = train_token_dir(config, workdir)
        if token_dir:
            self.setup.require_condition_from_target(f"training from token files in {token_dir!r}")
            token_files.check_meta(token_dir, token_meta(config, self.setup))
            self.train_source = token_files.TokenSource(token_dir)
            fields = ("tokens", "label")
        else:
            self.train_source = tokenizer_trainer.make_train_source(config)
            fields = ("video", "label")
        self.train_iter = pipeline.make_iterator(
            self.train_source,
            global_batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            fields=fields,
            worker_count=config.data.worker_count,
        )
        self.checkpointer = checkpoint.Checkpointer(
            workdir,
            max_to_keep=config.checkpoint.keep,
            save_interval_steps=config.checkpoint.every_steps,
            async_save=config.checkpoint.async_save,
        )

    def create_or_restore_state(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State, int]:
        return loop.create_or_restore_state(
            lambda: create_train_state(self.config, self.setup),
            self.mesh,
            self.config.sharding_rules,
            self.checkpointer,
            self.train_iter,
        )

    def restore_latest(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State, int]:
        """The latest checkpoint's state; an error when the workdir has none."""
        if self.checkpointer.latest_step() is None:
            raise FileNotFoundError(
                f"No checkpoint in {self.checkpointer.directory}; train first with "
                "--mode=train and the same --workdir."
            )
        return self.create_or_restore_state()

    def evaluator(self, graphdef, state_shardings) -> Evaluator:
        return Evaluator(
            self.config,
            self.setup,
            graphdef,
            self.tokenizer_graphdef,
            self.tokenizer_state,
            state_shardings,
            self.mesh,
            self.workdir,
        )


@dataclasses.dataclass
class RunResult:
    step: int
    state: nnx.State
    train_metrics: dict[str, float]  # at the last logged step of this run
    history: list[dict[str, float]]  # every logged step of this run, with its "step"
    eval_metrics: dict[str, float]  # of the last evaluation of this run, if any


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> RunResult:
    """Trains (resuming from `workdir`) until `config.num_train_steps`, then evaluates.

    `stop_at_step` ends this run early, after saving, as a preemption would.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    token_dir = train_token_dir(config, workdir)
    if config.tokenize.before_training and not token_files.exists(token_dir):
        # Once per run: a resumed run finds the files (and _Run checks they still fit).
        tokenize_dataset(config, workdir)
    run = _Run(config, workdir)
    mesh, setup = run.mesh, run.setup
    graphdef, state, state_shardings, step = run.create_or_restore_state()
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    jitted_step = jax.jit(
        functools.partial(train_step, graphdef, run.tokenizer_graphdef, setup, config, schedule),
        in_shardings=(state_shardings, sharding.replicated(mesh), sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    evaluator_ = run.evaluator(graphdef, state_shardings)
    writer = loop.create_writer(workdir)
    if step == 0:
        loop.write_hparams(writer, config)
        parameter_overview.log_parameter_overview(
            nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, state).model, nnx.Param))
        )
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.num_train_steps, writer=writer, every_steps=config.log_every_steps
    )
    end = (
        config.num_train_steps
        if stop_at_step is None
        else min(stop_at_step, config.num_train_steps)
    )
    eval_metrics: dict[str, float] = {}
    values: dict[str, float] = {}
    history: list[dict[str, float]] = []
    with checkpoint.PreemptionGuard() as guard:
        while step < end:
            batch = next(run.train_iter)
            check_labels(batch["label"], setup)
            batch = sharding.shard_batch(dict(batch), mesh)
            state, metrics = jitted_step(state, run.tokenizer_state, batch)
            step += 1
            progress(step)
            must_save = step % config.checkpoint.every_steps == 0 or step == end
            stop = guard.should_stop(step)
            if step % config.log_every_steps == 0 or must_save or stop:
                values = drop_empty_groups(loop.scalars(metrics))
                loop.check_finite(values, step)
                values["data/skipped_files"] = float(run.train_source.skipped_files)
                writer.write_scalars(step, values)
                history.append({"step": step, **values})
            if config.eval.every_steps and step % config.eval.every_steps == 0 and step < end:
                eval_metrics = evaluator_(state, step, writer)
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
        eval_metrics = evaluator_(state, step, writer)
        logging.info("Final evaluation at step %d: %s", step, json.dumps(eval_metrics, indent=1))
    writer.flush()
    run.checkpointer.close()
    _print_summary(config, workdir, step, eval_metrics)
    return RunResult(step, state, values, history, eval_metrics)


def _print_summary(config, workdir: str, step: int, eval_metrics: dict[str, float]) -> None:
    if jax.process_index() != 0:
        return
    print(
        f"videogen: step {step}/{config.num_train_steps}. Outputs in {os.path.abspath(workdir)}: "
        "checkpoints/, samples/ (condition | sample | ground truth grids per task, GIF and MP4), "
        f"eval_step*.json, TensorBoard events (tensorboard --logdir {workdir})."
    )
    for key, value in sorted(eval_metrics.items()):
        print(f"  {key} = {value:.4f}")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval`: FVD, baselines, class accuracy and grids of the latest checkpoint."""
    run = _Run(config, workdir)
    graphdef, state, state_shardings, step = run.restore_latest()
    writer = loop.create_writer(workdir)
    metrics = run.evaluator(graphdef, state_shardings)(state, step, writer)
    writer.flush()
    run.checkpointer.close()
    _print_summary(config, workdir, step, metrics)
    return metrics


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[str]]:
    """`--mode=sample`: one batch of samples per `eval.tasks` task from held-out conditions.

    Writes ``<workdir>/samples/<task>_sample_step<N>.{gif,mp4}`` (condition |
    sample | ground truth) and returns the paths per task.
    """
    run = _Run(config, workdir)
    graphdef, state, state_shardings, step = run.restore_latest()
    sampler = run.evaluator(graphdef, state_shardings)
    paths = {}
    for name, _ in sampler.tasks:
        batch = next(sampler.samples(state, name, max_batches=1), None)
        if batch is None:
            raise ValueError(
                f"eval dataset {config.eval.dataset!r} yielded no full batch of "
                f"{config.eval.batch_size}; lower config.eval.batch_size."
            )
        if jax.process_index() == 0:
            paths[name] = video_grid.save_grid(
                workdir, f"{name}_sample_step{step:07d}", sampler.grid(batch), config.eval.fps
            )
    run.checkpointer.close()
    if jax.process_index() == 0:
        print(f"videogen: samples of step {step} written:")
        for name, files in paths.items():
            print(f"  {name}: {', '.join(files)}")
    return paths
