"""Autoregressive decoding of the VideoPoet prefix LM with a KV cache (thesis Sec. 8.3, 8.4.5).

`sample` fills the output positions of a `LayoutBatch` (one task per call): it
prefills the prefix in one model call, then draws one token per step, all inside one
jitted `lax.scan`, so the model is traced and compiled once per (task layout, batch
shape). Each draw:

1. classifier-free guidance (optional): the batch runs beside a second, condition-
   dropped one (e.g. `videopoet_layout.drop_text`), both fed the same drawn tokens, and
   ``logits = uncond + scale * (cond - uncond)`` (scale 1: conditional, 0: unconditional);
2. the segment constraint: ids outside ``next_range`` of the position (the visual
   factor's or audio level's range, or the one closing special token) get -inf, so a
   sample is always a well-formed sequence;
3. temperature (0: argmax), top-k (0: off), then top-p (nucleus, 1: off) on the
   tempered distribution; audio segments may have their own three settings
   (``audio_temperature`` ...), since a codec's codes of a steady sound leave little
   room for sampling noise while video needs it;
4. a categorical draw with the key ``fold_in(key, position)``;
5. at a visual code of a factorized vocabulary, its factors ``1 .. f-1`` one after
   another from the same position's output and the factors drawn before
   (`PrefixLM.factor_logits`), with the same guidance and settings, keys
   ``fold_in(fold_in(key, position), j)``.

`generate_long_video` (Sec. 8.4.5) extends a clip by frame prediction conditioned on
its last latent frames; `chain_tasks` (Sec. 8.4.5, "task chaining") feeds one task's
outputs into the next task's inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from videogen.models.prefix_lm import PrefixLM
from videogen.tasks.videopoet_layout import (
    LayoutBatch,
    SequenceLayout,
    TaskInputs,
    TaskOutputs,
    drop_text,
)


def guided_logits(
    cond: Float[Array, "b v"], uncond: Float[Array, "b v"], scale: Float[Array, ""] | float
) -> Float[Array, "b v"]:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def filter_logits(
    logits: Float[Array, "b v"],
    allowed: Int[Array, "b 2"],
    *,
    temperature: Float[Array, "*b"] | float,
    top_k: Int[Array, "*b"] | int,
    top_p: Float[Array, "*b"] | float,
) -> Float[Array, "b v"]:
    """Logits restricted to ids in ``[allowed[:, 0], allowed[:, 1])``, divided by the
    temperature (unless 0), then to the ``top_k`` largest (ties kept; 0 = all), then to the
    smallest set of largest logits whose probability reaches ``top_p``; -inf elsewhere.

    Each setting is a scalar or one value per row; every argument may be traced, so one
    compiled sampler serves all settings.
    """
    b, v = logits.shape
    temperature, top_k, top_p = (jnp.reshape(x, (-1, 1)) for x in (temperature, top_k, top_p))
    ids = jnp.arange(v)
    inside = (ids >= allowed[:, :1]) & (ids < allowed[:, 1:])
    logits = jnp.where(inside, logits.astype(jnp.float32), -jnp.inf)
    logits = logits / jnp.where(temperature > 0, temperature, 1.0)
    ranked = -jnp.sort(-logits, axis=-1)
    kth = jnp.take_along_axis(ranked, jnp.broadcast_to(jnp.clip(top_k - 1, 0, v - 1), (b, 1)), -1)
    kth = jnp.where(top_k > 0, kth, -jnp.inf)
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
    ranked = jnp.where(ranked >= kth, ranked, -jnp.inf)
    probs = jax.nn.softmax(ranked, axis=-1)
    # A token stays if the tokens ranked above it hold less than top_p; the first always does.
    kept = jnp.sum((jnp.cumsum(probs, axis=-1) - probs) < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ranked, jnp.maximum(kept, 1) - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_token(
    key: Array,
    logits: Float[Array, "b v"],
    allowed: Int[Array, "b 2"],
    *,
    temperature: Float[Array, "*b"] | float,
    top_k: Int[Array, "*b"] | int,
    top_p: Float[Array, "*b"] | float,
) -> Int[Array, " b"]:
    """One id per row from `filter_logits`; the argmax in rows at temperature 0."""
    filtered = filter_logits(logits, allowed, temperature=temperature, top_k=top_k, top_p=top_p)
    drawn = jax.random.categorical(key, filtered, axis=-1)
    greedy = jnp.reshape(temperature, (-1,)) <= 0
    return jnp.where(greedy, jnp.argmax(filtered, axis=-1), drawn).astype(jnp.int32)


def draw_position(
    model: PrefixLM,
    hidden: Float[Array, "n d"],
    allowed: Int[Array, "b 2"],
    key: Array,
    *,
    temperature: Float[Array, "*b"] | float,
    top_k: Int[Array, "*b"] | int,
    top_p: Float[Array, "*b"] | float,
    guidance_scale: Float[Array, ""] | float | None = None,
) -> tuple[Int[Array, " n"], Int[Array, "n f-1"]]:
    """The ids of the next position from the output ``hidden`` of the one before: its token
    (`sample_token` within ``allowed``) and, where that token is visual factor 0 of a
    factorized vocabulary, factors ``1 .. f-1`` drawn one after another with keys
    ``fold_in(key, j)`` (``<pad>`` elsewhere).

    ``guidance_scale`` (None: off): ``hidden`` holds the conditional rows, then as many
    unconditional ones (``n = 2b``); both get the guided draws.
    """
    rows = allowed.shape[0]
    guided = guidance_scale is not None

    def guide(logits):
        return guided_logits(logits[:rows], logits[rows:], guidance_scale) if guided else logits

    def both(x):  # the drawn ids feed the conditional and the unconditional rows alike
        return jnp.concatenate([x, x]) if guided else x

    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    token = both(sample_token(key, guide(model.logits(hidden)), allowed, **settings))
    if not model.factor_ranges:
        return token, jnp.zeros((token.shape[0], 0), jnp.int32)
    # Factor ranges follow one another (`Vocabulary`), so visual factor 0's range is the
    # one that ends where factor 1's begins.
    visual = both(allowed[:, 1] == model.factor_ranges[0][0])
    drawn = [token]
    for j, (lo, hi) in enumerate(model.factor_ranges, start=1):
        logits = guide(model.factor_logits(hidden, jnp.stack(drawn, axis=-1)))
        local = jnp.broadcast_to(jnp.asarray([0, hi - lo], jnp.int32), (rows, 2))
        sub = sample_token(jax.random.fold_in(key, j), logits, local, **settings)
        drawn.append(jnp.where(visual, both(sub) + lo, model.pad_id).astype(jnp.int32))
    return token, jnp.stack(drawn[1:], axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "prefix_length", "end", "guided"))
def _decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: LayoutBatch,
    key: Array,
    temperature: Float[Array, "2"],
    top_k: Int[Array, "2"],
    top_p: Float[Array, "2"],
    audio_start: Int[Array, ""],
    guidance_scale: Float[Array, ""],
    *,
    prefix_length: int,
    end: int,
    guided: bool,
) -> tuple[Int[Array, "b l"], Int[Array, "b l f-1"]]:
    """`sample`'s compiled body; with ``guided`` the batch's second half is unconditional.

    The settings hold [other positions, audio positions] (ids from ``audio_start`` on).
    """
    model: PrefixLM = nnx.merge(graphdef, state)
    tokens, factor_tokens = batch.tokens, batch.factor_tokens
    rows = tokens.shape[0] // 2 if guided else tokens.shape[0]
    mask = model.attention_mask(tokens, batch.prefix_length, batch.text_mask, batch.text_positions)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    hidden, cache = model.prefill(
        tokens[:, :prefix_length],
        factor_tokens[:, :prefix_length],
        mask,
        cache,
        batch.text_embeddings,
        batch.text_mask,
        batch.text_positions,
    )

    def draw(tokens, factor_tokens, hidden, position):
        allowed = batch.next_range[:rows, position - 1]
        # Audio ids are the vocabulary's last, so a segment's lowest id tells its modality.
        audio = (allowed[:, 0] >= audio_start).astype(jnp.int32)
        token, factors = draw_position(
            model,
            hidden,
            allowed,
            jax.random.fold_in(key, position),
            temperature=temperature[audio],
            top_k=top_k[audio],
            top_p=top_p[audio],
            guidance_scale=guidance_scale if guided else None,
        )
        tokens = tokens.at[:, position].set(token)
        factor_tokens = factor_tokens.at[:, position].set(factors)
        return tokens, factor_tokens, (token, factors)

    def step(carry, position):
        tokens, factor_tokens, cache, previous = carry
        hidden, cache = model.decode_step(*previous, mask, cache)
        tokens, factor_tokens, drawn = draw(tokens, factor_tokens, hidden, position)
        return (tokens, factor_tokens, cache, drawn), None

    tokens, factor_tokens, first = draw(tokens, factor_tokens, hidden, prefix_length)
    (tokens, factor_tokens, _, _), _ = jax.lax.scan(
        step, (tokens, factor_tokens, cache, first), jnp.arange(prefix_length + 1, end)
    )
    return tokens[:rows], factor_tokens[:rows]


def _output_span(batch: LayoutBatch, name: str) -> tuple[int, int]:
    """``(prefix length, end)`` shared by every row, the outputs filling ``[prefix, end)``."""
    prefix = np.asarray(batch.prefix_length)
    loss = np.asarray(batch.loss_mask)
    if prefix.min() != prefix.max():
        raise ValueError(
            f"{name} mixes prefix lengths {sorted(set(prefix.tolist()))}; sample one task "
            "per call (a KV cache prefills one prefix length)."
        )
    p = int(prefix[0])
    end = p + int(loss[0].sum())
    expected = np.zeros(loss.shape[1], bool)
    expected[p:end] = True
    if end <= p or not (loss == expected).all():
        raise ValueError(
            f"{name}'s loss_mask must mark the same contiguous outputs right after the "
            "prefix in every row (one task's layout from SequenceLayout.build)."
        )
    return p, end


def _per_modality(video: float, audio: float | None, dtype) -> Array:
    """[other positions' setting, audio positions'], as `_decode` takes it."""
    return jnp.asarray([video, video if audio is None else audio], dtype)


def sample(
    model: PrefixLM,
    batch: LayoutBatch,
    key: Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    guidance_scale: float = 1.0,
    unconditional: LayoutBatch | None = None,
    audio_start: int | None = None,
    audio_temperature: float | None = None,
    audio_top_k: int | None = None,
    audio_top_p: float | None = None,
) -> LayoutBatch:
    """``batch`` with every output position (``batch.loss_mask``) sampled: its ``tokens``
    and, at visual codes, ``factor_tokens`` (numpy).

    All rows must share one task layout. ``unconditional``: the same sequences with the
    condition dropped (e.g. ``drop_text(batch)``), for classifier-free guidance at
    ``guidance_scale``; without it the scale must stay 1. ``audio_temperature``,
    ``audio_top_k``, ``audio_top_p``: the settings of positions that draw an audio id
    (None: the video's); they need ``audio_start``, the vocabulary's first audio id
    (`Vocabulary.audio_start`). All settings are traced: changing them compiles nothing.
    """
    if audio_start is None and any(
        x is not None for x in (audio_temperature, audio_top_k, audio_top_p)
    ):
        raise ValueError(
            f"audio_temperature={audio_temperature}, audio_top_k={audio_top_k}, "
            f"audio_top_p={audio_top_p} need audio_start, the first audio id, to find the "
            "audio segments: pass audio_start=layout.vocab.audio_start."
        )
    prefix_length, end = _output_span(batch, "batch")
    if unconditional is not None:
        if _output_span(unconditional, "unconditional") != (prefix_length, end) or (
            np.shape(unconditional.tokens) != np.shape(batch.tokens)
        ):
            raise ValueError(
                "unconditional must have the batch's shape and output positions (the same "
                "layout with the condition dropped, e.g. drop_text(batch))."
            )
        both = LayoutBatch(*(np.concatenate([c, u]) for c, u in zip(batch, unconditional)))
    elif guidance_scale != 1.0:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs the unconditional sequences: pass "
            "unconditional=drop_text(batch) (or another condition-dropped layout)."
        )
    else:
        both = batch
    graphdef, state = nnx.split(model)
    tokens, factor_tokens = _decode(
        graphdef,
        state,
        LayoutBatch(*(jnp.asarray(a) for a in both)),
        key,
        _per_modality(temperature, audio_temperature, jnp.float32),
        _per_modality(top_k, audio_top_k, jnp.int32),
        _per_modality(top_p, audio_top_p, jnp.float32),
        jnp.int32(model.vocab_size if audio_start is None else audio_start),
        jnp.float32(guidance_scale),
        prefix_length=prefix_length,
        end=end,
        guided=unconditional is not None,
    )
    return batch._replace(tokens=np.asarray(tokens), factor_tokens=np.asarray(factor_tokens))


def _sample_task(
    model: PrefixLM,
    layout: SequenceLayout,
    task: str,
    inputs: TaskInputs,
    key: Array,
    sampling: dict,
) -> TaskOutputs:
    """One task's outputs; guidance (``guidance_scale`` != 1) drops the text."""
    batch = layout.build(task, inputs)
    guided = sampling.get("guidance_scale", 1.0) != 1.0
    sampled = sample(
        model,
        batch,
        key,
        unconditional=drop_text(batch) if guided else None,
        audio_start=layout.vocab.audio_start,
        **sampling,
    )
    return layout.outputs(task, sampled)


def generate_long_video(
    model: PrefixLM,
    layout: SequenceLayout,
    first_clip: Int[np.ndarray, "b t h w"],
    key: Array,
    *,
    num_clips: int,
    text_embeddings: Float[np.ndarray, "b n e"] | None = None,
    text_mask: np.ndarray | None = None,
    condition_fn: Callable[[list[np.ndarray]], np.ndarray] | None = None,
    **sampling,
) -> list[Int[np.ndarray, "b t h w"]]:
    """``first_clip`` and ``num_clips`` more clips, each predicted by the ``"fp"`` task from
    ``layout.condition_frames`` latent frames of the clips so far (Sec. 8.4.5: "predicting
    1-second video segments from an initial 1-second clip").

    ``condition_fn(clips) -> [b, condition_frames, h, w]`` gives the next condition; the
    default takes the last clip's last latent frames. With MAGVIT-v2's causal tokenizer,
    latent frame 0 of a clip encodes one pixel frame alone, so the thesis' behaviour is a
    ``condition_fn`` that decodes the clips, takes the last ``1 + 4 (c - 1)`` pixel frames
    and tokenizes them again. Each returned clip is a whole clip whose first
    ``condition_frames`` latent frames are its condition: decode every clip and keep the
    frames after the condition. ``sampling``: `sample`'s keyword arguments but
    ``audio_start`` (the layout's); guidance drops the text.
    """
    c = layout.condition_frames
    if condition_fn is None:

        def condition_fn(clips):
            return clips[-1][:, -c:]

    clips = [np.asarray(first_clip)]
    for index in range(num_clips):
        inputs = TaskInputs(
            video=condition_fn(clips), text_embeddings=text_embeddings, text_mask=text_mask
        )
        outputs = _sample_task(
            model, layout, "fp", inputs, jax.random.fold_in(key, index), sampling
        )
        clips.append(outputs.video)
    return clips


@dataclasses.dataclass(frozen=True)
class ChainStage:
    """One stage of `chain_tasks`: a task and how its inputs follow from the previous
    stage's outputs (None for the first stage)."""

    task: str
    inputs: Callable[[TaskOutputs | None], TaskInputs]


def chain_tasks(
    model: PrefixLM,
    layout: SequenceLayout,
    stages: Sequence[ChainStage],
    key: Array,
    **sampling,
) -> list[TaskOutputs]:
    """Runs ``stages`` in order, each on the previous one's outputs (Sec. 8.4.5: e.g.
    image-to-video, then outpainting of the generated video); returns every stage's outputs.

    A stage that reads pixels (painting's COMMIT condition tokens) does the decoding and
    re-tokenizing in its ``inputs`` function. ``sampling``: `sample`'s keyword arguments
    but ``audio_start`` (the layout's).
    """
    outputs, results = None, []
    for index, stage in enumerate(stages):
        inputs = stage.inputs(outputs)
        stage_key = jax.random.fold_in(key, index)
        outputs = _sample_task(model, layout, stage.task, inputs, stage_key, sampling)
        results.append(outputs)
    return results
