"""Adversarial losses of the tokenizer GAN: generator and discriminator losses, R1, LeCAM.

The thesis recipe (Secs. 3.3.1 and 5.4.1): non-saturating generator loss with
weight 0.1, R1 gradient penalty with cost 10, and LeCAM regularisation
(Tseng et al. 2021, thesis Secs. 3.2.1 and 5.3.1) with weight 0.001.
Logits are one per clip, ``[b]``, from `StyleGANDiscriminator3d`; all losses
are float32 scalars.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

GAN_LOSS_KINDS = ("non_saturating", "hinge")
LECAM_EMA_DECAY = 0.999


def _check_kind(kind: str) -> None:
    if kind not in GAN_LOSS_KINDS:
        raise ValueError(
            f"unknown GAN loss kind {kind!r}; expected one of {GAN_LOSS_KINDS} "
            "(the thesis uses 'non_saturating')."
        )


def generator_loss(fake_logits: Float[Array, " b"], kind: str) -> Float[Array, ""]:
    """Adversarial loss of the tokenizer (the generator) on its reconstructions' logits.

    ``non_saturating`` (the thesis' "generator loss type: non-saturating"):
    ``mean(softplus(-D(fake)))`` = ``-mean(log sigmoid(D(fake)))``, whose
    gradient stays large while the discriminator still rejects the fakes.
    ``hinge``: ``-mean(D(fake))``.
    """
    _check_kind(kind)
    fake_logits = fake_logits.astype(jnp.float32)
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    return -jnp.mean(fake_logits)


def discriminator_loss(
    real_logits: Float[Array, " b"], fake_logits: Float[Array, " b"], kind: str
) -> Float[Array, ""]:
    """Discriminator loss on real clips and (stop-gradient) reconstructions.

    ``non_saturating``: the logistic loss ``mean(softplus(-D(real))) +
    mean(softplus(D(fake)))`` (binary cross-entropy, real = 1, fake = 0).
    ``hinge``: ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``.
    """
    _check_kind(kind)
    real_logits = real_logits.astype(jnp.float32)
    fake_logits = fake_logits.astype(jnp.float32)
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def r1_penalty(
    disc_fn: Callable[[Float[Array, "b T H W c"]], Float[Array, " b"]],
    real_video: Float[Array, "b T H W c"],
) -> tuple[Float[Array, ""], Float[Array, " b"]]:
    """R1 gradient penalty ``mean_b ||d D(x_b) / d x_b||^2`` on real clips, and their logits.

    The gradient of ``sum_b D(x_b)`` with respect to the batch holds every
    clip's own input gradient because the discriminator never mixes clips (no
    batch statistics), so one backward pass suffices. No factor 1/2: the thesis'
    "r1 with cost 10" follows the MAGVIT code, where the cost multiplies
    ``||grad||^2`` directly (StyleGAN's ``gamma / 2`` form would call this gamma = 20).
    The trainer adds ``cost * penalty`` to the discriminator loss.

    The logits come from the same forward pass; reuse them for the
    discriminator and LeCAM losses instead of running the real clips twice.
    Differentiable with respect to the discriminator's parameters (closed over
    by ``disc_fn``), which is how the penalty trains it.
    """
    logits, vjp = jax.vjp(disc_fn, real_video)
    (grad,) = vjp(jnp.ones_like(logits))
    grad = grad.astype(jnp.float32).reshape(grad.shape[0], -1)
    return jnp.mean(jnp.sum(jnp.square(grad), axis=-1)), logits


def lecam_loss(
    real_logits: Float[Array, " b"],
    fake_logits: Float[Array, " b"],
    ema_real: Float[Array, ""],
    ema_fake: Float[Array, ""],
) -> Float[Array, ""]:
    """LeCAM regularisation (Tseng et al. 2021) of the discriminator.

    ``mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2)``:
    pulls real logits down towards the moving average of fake logits and fake
    logits up towards that of real ones, only where they overshoot it (the
    hinged form of the MAGVIT code), which keeps the discriminator from
    becoming over-confident. The anchors ``ema_real``/``ema_fake`` are scalar
    arrays carried in the train state (initially 0) and advanced with
    `update_lecam_ema`; they get no gradient here.
    """
    real_logits = real_logits.astype(jnp.float32)
    fake_logits = fake_logits.astype(jnp.float32)
    ema_real = jax.lax.stop_gradient(jnp.asarray(ema_real, jnp.float32))
    ema_fake = jax.lax.stop_gradient(jnp.asarray(ema_fake, jnp.float32))
    return jnp.mean(jnp.square(jax.nn.relu(real_logits - ema_fake))) + jnp.mean(
        jnp.square(jax.nn.relu(ema_real - fake_logits))
    )


def update_lecam_ema(
    ema_real: Float[Array, ""],
    ema_fake: Float[Array, ""],
    real_logits: Float[Array, " b"],
    fake_logits: Float[Array, " b"],
    decay: float = LECAM_EMA_DECAY,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """New LeCAM anchors: ``ema <- decay * ema + (1 - decay) * mean(logits)``, for real and fake.

    Pure: returns the anchors for the next train state. The batch means are
    stop-gradient, so calling this inside a differentiated step adds no gradient.
    """
    real_mean = jax.lax.stop_gradient(jnp.mean(real_logits.astype(jnp.float32)))
    fake_mean = jax.lax.stop_gradient(jnp.mean(fake_logits.astype(jnp.float32)))
    new_real = decay * jnp.asarray(ema_real, jnp.float32) + (1.0 - decay) * real_mean
    new_fake = decay * jnp.asarray(ema_fake, jnp.float32) + (1.0 - decay) * fake_mean
    return new_real, new_fake
