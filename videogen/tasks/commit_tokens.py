"""COMMIT in the token space of a frozen tokenizer (thesis 6.4): what the MAGVIT trainer,
its sampler and the stage-2 token files share.

`CommitSetup` binds the config's task mixture to the tokenizer's latent grid and
vocabulary; the functions here turn clips into (factorized) tokens, build each
task's condition tokens and condition mask (Eq. 6.2 reads them), and the
``[task id, class id]`` prompt prefix.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from videogen.models import quantizers
from videogen.models import tokenizer as tokenizer_models
from videogen.tasks import commit

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
        latent_region(setup, task)
    return setup


def latent_region(setup: CommitSetup, task: commit.Task) -> np.ndarray:
    """bool [t, h, w]: the token cells that hold the task's interior condition."""
    return commit.latent_region(
        task,
        setup.video_shape,
        setup.latent_shape,
        temporal_factor=setup.temporal_factor,
        spatial_factor=setup.spatial_factor,
        causal=setup.causal,
    )


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
    mask = condition_mask(setup, task_ids)
    return ConditionTokens(cond_video, tokens[:b], mask, tokens[b:] if with_target else None)


def condition_mask(setup: CommitSetup, task_ids: Int[Array, " b"]) -> Bool[Array, "b n"]:
    """Per example, the flattened token cells that hold its task's condition pixels."""
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
    return ConditionTokens(None, target, condition_mask(setup, task_ids), target)


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
