"""GAN losses: values against hand-computed numbers, unknown kinds, R1 equal to the known
gradient norm of linear and quadratic discriminators and trainable through the real
discriminator, LeCAM hinge and EMA arithmetic, and a few Adam steps of the discriminator
loss separating trivially separable real and fake clips."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from videogen.models.discriminator import StyleGANDiscriminator3d
from videogen.trainers.gan_losses import (
    discriminator_loss,
    generator_loss,
    lecam_loss,
    r1_penalty,
    update_lecam_ema,
)

# 2x8x8 clips -> 1x4x4 features of width 2.
MICRO = {"base_channels": 2, "channel_multipliers": (1,), "num_frames": 2, "resolution": 8}


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _micro_discriminator(seed: int = 0) -> StyleGANDiscriminator3d:
    return nnx.jit(
        lambda: StyleGANDiscriminator3d(**MICRO, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))
    )()


def test_generator_loss_values():
    fake = jnp.array([0.0, 2.0, -1.0])
    expected = (math.log(2.0) + _softplus(-2.0) + _softplus(1.0)) / 3
    assert expected == pytest.approx(0.711112, abs=1e-6)
    np.testing.assert_allclose(generator_loss(fake, "non_saturating"), expected, rtol=1e-6)
    np.testing.assert_allclose(generator_loss(fake, "hinge"), -1.0 / 3.0, rtol=1e-6)


def test_discriminator_loss_values():
    real = jnp.array([1.0, -1.0])
    fake = jnp.array([0.5, -2.0])
    # softplus(-real): log(1 + e^-1), log(1 + e); softplus(fake): log(1 + e^0.5), log(1 + e^-2).
    expected = (_softplus(-1.0) + _softplus(1.0)) / 2 + (_softplus(0.5) + _softplus(-2.0)) / 2
    assert expected == pytest.approx(1.363765, abs=1e-6)
    np.testing.assert_allclose(
        discriminator_loss(real, fake, "non_saturating"), expected, rtol=1e-6
    )
    # relu(1 - real) = (0, 2); relu(1 + fake) = (1.5, 0).
    np.testing.assert_allclose(discriminator_loss(real, fake, "hinge"), 1.0 + 0.75, rtol=1e-6)


def test_non_saturating_losses_are_stable_for_large_logits():
    big = jnp.array([100.0, -100.0])
    assert np.isfinite(generator_loss(big, "non_saturating"))
    # softplus(-real) = (0, 100) and softplus(fake) = (0, 100): 50 + 50, no overflow.
    np.testing.assert_allclose(discriminator_loss(big, -big, "non_saturating"), 100.0, rtol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: generator_loss(jnp.zeros(2), "wasserstein"),
        lambda: discriminator_loss(jnp.zeros(2), jnp.zeros(2), "wasserstein"),
    ],
)
def test_unknown_kind_names_the_value_and_the_allowed_ones(call):
    with pytest.raises(ValueError, match=r"'wasserstein'.*'non_saturating', 'hinge'"):
        call()


def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.standard_normal((2, 3, 3, 1)), jnp.float32)
    video = jnp.asarray(rng.standard_normal((4, 2, 3, 3, 1)), jnp.float32)

    def linear(v):
        return jnp.sum(v * w, axis=(1, 2, 3, 4)) + 0.5

    penalty, logits = r1_penalty(linear, video)
    np.testing.assert_allclose(penalty, float(jnp.sum(w**2)), rtol=1e-5)
    np.testing.assert_allclose(logits, linear(video), rtol=1e-6)


def test_r1_is_the_batch_mean_of_per_clip_gradient_norms():
    video = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 2, 2, 1)), jnp.float32)
    # D(x) = sum(x^2): gradient 2x, so the penalty is mean_b 4 ||x_b||^2 (not a batch sum).
    penalty, _ = r1_penalty(lambda v: jnp.sum(v**2, axis=(1, 2, 3, 4)), video)
    expected = np.mean(4.0 * np.sum(np.asarray(video) ** 2, axis=(1, 2, 3, 4)))
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)


def test_r1_trains_the_discriminator_parameters():
    model = _micro_discriminator()
    video = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 2, 8, 8, 3)), jnp.float32)
    grads = nnx.jit(nnx.grad(lambda m: r1_penalty(m, video)[0]))(model)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms))
    # The last layer's bias cannot change an input gradient; the kernels can.
    assert float(jnp.linalg.norm(grads["logit"]["bias"][...])) == 0.0
    assert float(jnp.linalg.norm(grads["conv_in"]["kernel"][...])) > 0.0


def test_lecam_is_zero_when_logits_do_not_overshoot_the_anchors():
    # real <= ema_fake and fake >= ema_real everywhere.
    loss = lecam_loss(jnp.array([0.1, -0.2]), jnp.array([0.0, -0.4]), -0.5, 0.5)
    assert float(loss) == 0.0


def test_lecam_value():
    # relu(real - 0.5)^2 = (0.25, 0) -> 0.125; relu(0.2 - fake)^2 = (0.25, 0) -> 0.125.
    loss = lecam_loss(jnp.array([1.0, 0.0]), jnp.array([-0.3, 0.4]), 0.2, 0.5)
    np.testing.assert_allclose(loss, 0.25, rtol=1e-6)


def test_lecam_ema_update_arithmetic():
    real, fake = jnp.array([2.0, 4.0]), jnp.array([-1.0, -3.0])
    ema_real, ema_fake = update_lecam_ema(jnp.float32(1.0), jnp.float32(0.0), real, fake)
    # Default decay 0.999: 0.999 * 1 + 0.001 * 3 and 0.999 * 0 + 0.001 * -2.
    np.testing.assert_allclose(ema_real, 1.002, rtol=1e-6)
    np.testing.assert_allclose(ema_fake, -0.002, rtol=1e-5)
    ema_real, ema_fake = update_lecam_ema(1.0, 0.0, real, fake, decay=0.5)
    np.testing.assert_allclose([ema_real, ema_fake], [2.0, -1.0], rtol=1e-6)


def test_adam_steps_separate_real_from_fake():
    model = _micro_discriminator(seed=1)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    rng = np.random.default_rng(3)

    def clips(sign: float) -> jax.Array:
        noise = 0.1 * rng.standard_normal((4, 2, 8, 8, 3))
        return jnp.asarray(sign * 0.5 + noise, jnp.float32)

    @nnx.jit
    def step(model, optimizer, real, fake):
        def loss_fn(m):
            return discriminator_loss(m(real), m(fake), "non_saturating")

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, clips(1.0), clips(-1.0))) for _ in range(15)]
    # Starts near 2 log 2 (logits ~ 0) and must fall well below it.
    assert losses[0] == pytest.approx(2 * math.log(2.0), abs=0.1)
    assert losses[-1] < 0.5 * losses[0]
    real_logits, fake_logits = nnx.jit(lambda m, r, f: (m(r), m(f)))(model, clips(1.0), clips(-1.0))
    assert float(jnp.min(real_logits)) > float(jnp.max(fake_logits))
