"""COMMIT decoding: Algorithm 1 of the thesis (Sec. 6.4.1), MaskGIT-style iterative decoding.

Start from the multivariate mask of Eq. 6.2 with every position masked (condition
tokens z̃ where the cell holds condition pixels, [MASK] elsewhere). At step ``t`` of
``K``: predict every masked position, score each sample by its log-probability plus
Gumbel noise scaled by ``T (1 - (t+1)/K)``, and keep the ``⌈γ((t+1)/K) N⌉`` lowest-scored
positions masked for the next step; the others are fixed. At ``t = K-1`` the schedule
reaches 0, so every position is filled. All ``K`` steps run in one `lax.scan`, so the
model is traced and compiled once.

Differences from the pseudo-code, all as in MaskGIT / MAGVIT's public decoder: the
confidence is the log-probability (for factorized tokens, the sum over factors of the
sub-token log-probabilities) rather than the probability, and fixed positions never
return to the masked set (Algorithm 1 marks them with s_i = 1, which noisy scores of
masked positions can exceed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from videogen.tasks.commit import ScheduleKind, mask_schedule, masked_count, select_lowest

# ``logits_fn(tokens, prefix)``: the masked transformer, e.g. `MaskedVideoTransformer`,
# returning per-factor logits for every position.
LogitsFn = Callable[[Int[Array, "b n f"], PyTree], Float[Array, "b n f v"]]


class DecodeSteps(NamedTuple):
    """Per-step record of a decode, for tests and visualisation (Fig. 6.3)."""

    inputs: Int[Array, "k b n f"]  # the model input z̄ at each step
    fixed: Bool[Array, "k b n"]  # positions fixed after each step (all True after the last)


def _guided_logits(
    logits_fn: LogitsFn,
    inputs: Int[Array, "b n f"],
    prefix: PyTree,
    unconditional_prefix: PyTree,
    guidance_scale: float,
) -> Float[Array, "b n f v"]:
    if not guidance_scale:
        return logits_fn(inputs, prefix).astype(jnp.float32)
    # One call on the doubled batch: the conditional and unconditional passes share weights.
    both = logits_fn(
        jnp.concatenate([inputs, inputs]),
        jax.tree.map(lambda c, u: jnp.concatenate([c, u]), prefix, unconditional_prefix),
    ).astype(jnp.float32)
    cond, uncond = jnp.split(both, 2)
    return (1.0 + guidance_scale) * cond - guidance_scale * uncond


def commit_decode(
    logits_fn: LogitsFn,
    condition_tokens: Int[Array, "b n f"],
    condition_mask: Bool[Array, "b n"],
    prefix: PyTree,
    key: Array,
    *,
    mask_token_id: int,
    num_steps: int = 12,
    schedule: ScheduleKind = "cosine",
    choice_temperature: float = 4.5,
    guidance_scale: float = 0.0,
    unconditional_prefix: PyTree = None,
    keep_condition: bool = False,
    return_steps: bool = False,
) -> Int[Array, "b n f"] | tuple[Int[Array, "b n f"], DecodeSteps]:
    """Tokens ``[b, n, f]`` decoded by Algorithm 1 from the condition tokens z̃.

    ``condition_mask`` marks condition tokens (`latent_condition_mask`); z̃ elsewhere is
    ignored. ``prefix`` (task prompt, class) goes to ``logits_fn`` unchanged. With
    ``guidance_scale = w > 0``, logits are ``(1+w) * logits(prefix) - w * logits(
    unconditional_prefix)`` (classifier-free guidance with a "no class" prefix).
    ``keep_condition=False`` is the thesis: condition positions are sampled and refined
    like the rest and fixed by confidence. ``keep_condition=True`` fixes them to z̃ from
    the start (exact for the causal tokenizer's frame prediction, whose condition tokens
    equal the ground truth); the schedule then counts the other positions only.
    """
    b, n, f = condition_tokens.shape
    if condition_mask.shape != (b, n):
        raise ValueError(
            f"condition_mask has shape {condition_mask.shape}; expected [b, n] = {(b, n)} "
            "to match condition_tokens [b, n, f]."
        )
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}; decoding needs at least one step.")
    if guidance_scale and unconditional_prefix is None:
        raise ValueError(
            f"guidance_scale={guidance_scale} needs unconditional_prefix (the prefix with the "
            "'no class' id) for the unconditional logits."
        )
    fixed = condition_mask if keep_condition else jnp.zeros((b, n), bool)
    tokens = jnp.where(fixed[..., None], condition_tokens, 0).astype(condition_tokens.dtype)
    # Positions the schedule distributes over the K steps.
    total = n - jnp.sum(fixed, axis=1)
    masked_input = jnp.where(condition_mask[..., None], condition_tokens, mask_token_id).astype(
        condition_tokens.dtype
    )

    def step(carry, t):
        tokens, fixed, key = carry
        key, sample_key, noise_key = jax.random.split(key, 3)
        # Eq. 6.2 at the current scores: fixed positions show their sample, masked ones
        # z̃ (condition cell) or [MASK].
        inputs = jnp.where(fixed[..., None], tokens, masked_input)
        logits = _guided_logits(logits_fn, inputs, prefix, unconditional_prefix, guidance_scale)
        if logits.shape[:3] != (b, n, f):
            raise ValueError(
                f"logits_fn returned shape {logits.shape}; expected [b, n, f, vocab] with "
                f"(b, n, f) = {(b, n, f)}."
            )
        sampled = jax.random.categorical(sample_key, logits).astype(tokens.dtype)
        log_probs = jax.nn.log_softmax(logits)
        confidence = jnp.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0].sum(-1)
        tokens = jnp.where(fixed[..., None], tokens, sampled)
        progress = (t + 1) / num_steps
        noise = choice_temperature * (1.0 - progress) * jax.random.gumbel(noise_key, (b, n))
        scores = jnp.where(fixed, jnp.inf, confidence + noise)
        ratio = mask_schedule(progress, schedule, total)
        still_masked = select_lowest(scores, masked_count(ratio, total))
        fixed = ~still_masked
        return (tokens, fixed, key), (DecodeSteps(inputs, fixed) if return_steps else None)

    (tokens, _, _), steps = jax.lax.scan(step, (tokens, fixed, key), jnp.arange(num_steps))
    return (tokens, steps) if return_steps else tokens
