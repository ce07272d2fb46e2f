"""Optimizers, learning-rate schedules and the parameter EMA, built from config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `peak_lr`, then cosine decay to `end_lr_fraction * peak_lr`."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.peak_lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=config.peak_lr * config.end_lr_fraction,
    )


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
    """Adam(W) with optional global-norm clipping; `config` is the `optimizer` block."""
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if config.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
        )
    )
    return optax.chain(*parts)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay with the usual warm-up, min(decay, (1 + step) / (10 + step)).

    Early in training a fixed 0.999 would average mostly the random
    initialisation; the warm-up makes the EMA track the weights until enough
    steps have passed, and equals `decay` for long runs.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, decay: jax.Array):
    return jax.tree.map(
        lambda e, p: e * decay + (1.0 - decay) * p.astype(e.dtype), ema_params, params
    )
