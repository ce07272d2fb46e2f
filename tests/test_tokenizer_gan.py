"""The tokenizer's GAN step: shared-forward gradients equal the textbook two-pass ones."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from videogen.evaluation import lpips
from videogen.trainers import gan_losses
from videogen.trainers import frozen_tokenizer
from videogen.trainers import tokenizer as trainer
from tiny_configs import load_experiment, tiny


@pytest.fixture(scope="module")
def setup():
    config = tiny(load_experiment("quickstart_tokenizer").get_config())
    state = trainer.TrainState(
        frozen_tokenizer.build_tokenizer(config),
        optax.adam(1e-3),
        trainer.build_discriminator(config),
        optax.adam(1e-3),
    )
    # Non-zero LeCAM anchors, so that both hinges of the LeCAM loss are active.
    state.lecam_real[...] = jnp.float32(0.05)
    state.lecam_fake[...] = jnp.float32(-0.05)
    perceptual = lpips.LPIPS(rngs=nnx.Rngs(3))  # random VGG: the check is about the plumbing
    shape = (2, config.data.num_frames, config.data.resolution, config.data.resolution, 3)
    video = jax.random.uniform(jax.random.key(0), shape, minval=-1.0, maxval=1.0)
    return config, state, perceptual, video


def _reference_gradients(config, state, perceptual, video):
    """Each player's objective differentiated on its own, with separate forward passes."""
    loss = config.loss
    step = state.optimizer.step[...]
    disc = state.discriminator
    kind = loss.generator_loss_type
    anchors = (state.lecam_real[...], state.lecam_fake[...])

    def generator_objective(model):
        recon, aux = model(video)
        total = loss.reconstruction_weight * jnp.mean(jnp.square(recon - video))
        for name, value in aux["losses"].items():
            total += trainer.quantizer_loss_weight(name, step, loss) * value
        # The frames LPIPS sees (2 random ones per clip in the quickstart recipe).
        frames = trainer.perceptual_frames(
            step, video.shape[1], video.shape[0], loss.perceptual_frames_per_clip
        )
        # ... of the clips it sees (1 random one of 2 here).
        clips = trainer.perceptual_clips(step, video.shape[0], loss.perceptual_clips_per_batch)
        a = jnp.stack([recon[i, frames[i]] for i in clips])
        b = jnp.stack([video[i, frames[i]] for i in clips])
        total += loss.perceptual_weight * jnp.mean(perceptual.video(a, b))
        total += loss.generator_adversarial_weight * gan_losses.generator_loss(disc(recon), kind)
        return total, recon

    g_grads, recon = nnx.grad(generator_objective, has_aux=True)(state.model)
    fake_video = jax.lax.stop_gradient(recon)

    def discriminator_objective(d):
        real, fake = d(video), d(fake_video)
        r1 = jnp.mean(
            jnp.sum(jnp.square(jax.grad(lambda x: jnp.sum(d(x)))(video)), axis=(1, 2, 3, 4))
        )
        return (
            gan_losses.discriminator_loss(real, fake, kind)
            + loss.discriminator_r1_cost * r1
            + loss.lecam_weight * gan_losses.lecam_loss(real, fake, *anchors)
        )

    d_grads = nnx.grad(discriminator_objective)(disc)
    return g_grads, d_grads


def _assert_trees_close(actual, expected):
    actual, expected = nnx.to_pure_dict(actual), nnx.to_pure_dict(expected)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        scale = float(jnp.max(jnp.abs(e))) + 1e-12
        assert float(jnp.max(jnp.abs(a - e))) <= 1e-4 * scale + 1e-7


START = 5  # loss.adversarial_start_step of these tests


@pytest.fixture(scope="module")
def gradients_at(setup):
    """`gradients_at(step)`: the trainer's gradients with and without the discriminator in the
    program, and the two-pass reference, at optimizer step `step` (before or after START).

    One compiled program serves every step (the step is state, not a constant): op-by-op
    execution of a GAN step would compile hundreds of small kernels instead.
    """
    config, state, perceptual, video = setup
    config.unlock()
    config.loss.adversarial_start_step = START
    config.loss.perceptual_clips_per_batch = 1
    assert config.loss.perceptual_frames_per_clip == 2

    @nnx.jit
    def all_three(state, perceptual, video):
        shared = trainer.compute_gradients(state, perceptual, video, config.loss)
        plain = trainer.compute_gradients(state, perceptual, video, config.loss, False)
        reference = _reference_gradients(config, state, perceptual, video)
        return (
            (shared.generator, shared.discriminator, shared.lecam_anchors, shared.metrics),
            (plain.generator, plain.metrics),
            reference,
        )

    def at(step):
        state.optimizer.step[...] = jnp.asarray(step, state.optimizer.step[...].dtype)
        return all_three(state, perceptual, video)

    return at


def test_shared_forward_gradients_equal_two_pass_gradients(gradients_at):
    (g_grads, d_grads, anchors, metrics), _, (g_ref, d_ref) = gradients_at(START)
    _assert_trees_close(g_grads, g_ref)
    _assert_trees_close(d_grads, d_ref)
    assert float(metrics["lecam_loss"]) > 0 and float(metrics["r1_penalty"]) > 0
    # The anchors move towards this batch's mean logits by (1 - decay).
    expected = 0.999 * 0.05 + 0.001 * float(metrics["logits/real"])
    assert float(anchors[0]) == pytest.approx(expected, rel=1e-5)


def test_adversarial_terms_wait_for_their_start_step(gradients_at):
    (g_grads, d_grads, anchors, metrics), (g_plain, plain_metrics), (g_ref, _) = gradients_at(
        START - 1
    )
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(d_grads))
    assert float(metrics["weights/generator_adversarial"]) == 0.0
    assert float(anchors[0]) == pytest.approx(0.05)  # anchors frozen too
    # Before the start step the generator's gradient is the one of the program without
    # the discriminator (which the trainer runs then), and differs from the GAN one.
    _assert_trees_close(g_grads, g_plain)
    assert float(plain_metrics["weights/generator_adversarial"]) == 0.0
    assert any(
        not np.allclose(a, b) for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_ref))
    )


def test_training_logs_every_recipe_loss_and_weight(tmp_path):
    config = tiny(
        load_experiment("quickstart_tokenizer").get_config(),
        **{"num_train_steps": 2, "loss.adversarial_start_step": 1},
    )
    result = trainer.train_and_evaluate(config, str(tmp_path))
    logged = result.history[-1]
    for key in (
        "reconstruction_loss",
        "perceptual_loss",
        "commitment_loss",
        "entropy_loss",
        "generator_adversarial_loss",
        "discriminator_loss",
        "r1_penalty",
        "lecam_loss",
        "weights/reconstruction",
        "weights/perceptual",
        "weights/commitment",
        "weights/entropy",
        "weights/generator_adversarial",
        "weights/discriminator_r1",
        "weights/lecam",
    ):
        assert key in logged and np.isfinite(logged[key]), key
    assert result.history[0]["weights/generator_adversarial"] == 0.0  # step 1 is before the start
    assert logged["weights/generator_adversarial"] == pytest.approx(0.1)
    assert logged["discriminator_grad_norm"] > 0
    events = list(tmp_path.glob("events.out.tfevents*")) + list(tmp_path.glob("*/events*"))
    assert events, "no TensorBoard event file"


def test_perceptual_frames_are_distinct_and_depend_on_the_step_only():
    a = np.asarray(trainer.perceptual_frames(jnp.int32(7), 9, 4, 2))
    assert a.shape == (4, 2) and all(len(set(row)) == 2 for row in a) and a.max() < 9
    np.testing.assert_array_equal(a, np.asarray(trainer.perceptual_frames(jnp.int32(7), 9, 4, 2)))
    assert not np.array_equal(a, np.asarray(trainer.perceptual_frames(jnp.int32(8), 9, 4, 2)))
    assert trainer.perceptual_frames(jnp.int32(7), 9, 4, None) is None  # the thesis: every frame


def test_perceptual_clips_are_distinct_and_depend_on_the_step_only():
    a = np.asarray(trainer.perceptual_clips(jnp.int32(7), 16, 8))
    assert a.shape == (8,) and len(set(a)) == 8 and a.max() < 16
    np.testing.assert_array_equal(a, np.asarray(trainer.perceptual_clips(jnp.int32(7), 16, 8)))
    assert not np.array_equal(a, np.asarray(trainer.perceptual_clips(jnp.int32(8), 16, 8)))
    assert trainer.perceptual_clips(jnp.int32(7), 16, None) is None  # the thesis: every clip
    with pytest.raises(ValueError, match="perceptual_clips_per_batch=0"):
        trainer.perceptual_clips(jnp.int32(7), 16, 0)
