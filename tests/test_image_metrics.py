"""PSNR / SSIM: agreement with TensorFlow's reference implementations and basic properties."""

import functools

import jax
import numpy as np
import pytest
import tensorflow as tf

from videogen.evaluation import image_metrics

# TensorFlow is only the reference here; it must never claim an accelerator.
tf.config.set_visible_devices([], "GPU")


def _tf_psnr(a, b, max_value):
    return tf.image.psnr(tf.constant(a), tf.constant(b), max_val=max_value).numpy()


def _tf_ssim(a, b, max_value):
    return tf.image.ssim(
        tf.constant(a),
        tf.constant(b),
        max_val=max_value,
        filter_size=11,
        filter_sigma=1.5,
        k1=0.01,
        k2=0.03,
    ).numpy()


def _random_pair(seed, shape, max_value, noise):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, max_value, size=shape).astype(np.float32)
    b = np.clip(a + rng.normal(0, noise * max_value, size=shape), 0, max_value).astype(np.float32)
    return a, b


def _structured_images(max_value):
    """Gradients, a checkerboard and discs: content with real structure, [4, 48, 56, 3]."""
    h, w = 48, 56
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    gradient = np.stack([x / w, y / h, (x + y) / (w + h)], axis=-1)
    checker = np.repeat((((x // 8) + (y // 8)) % 2)[..., None], 3, axis=-1)
    disc = ((x - 20) ** 2 + (y - 24) ** 2 < 15**2).astype(np.float32)
    discs = np.stack([disc, np.roll(disc, 9, axis=1), 1 - disc], axis=-1)
    stripes = np.repeat((0.5 + 0.5 * np.sin(x / 3.0 + y / 5.0))[..., None], 3, axis=-1)
    a = np.stack([gradient, checker, discs, stripes]) * max_value
    # The distorted copies: shifted, contrast-reduced, blurred and quantised versions.
    b = np.stack(
        [
            np.roll(a[0], 2, axis=0),
            0.25 * max_value + 0.5 * a[1],
            (a[2] + np.roll(a[2], 1, axis=0) + np.roll(a[2], 1, axis=1)) / 3.0,
            np.round(a[3] / max_value * 4) / 4 * max_value,
        ]
    )
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("max_value", [1.0, 255.0])
@pytest.mark.parametrize("noise", [0.02, 0.3])
def test_random_images_match_tensorflow(max_value, noise):
    a, b = _random_pair(0, (4, 32, 40, 3), max_value, noise)
    np.testing.assert_allclose(
        image_metrics.psnr(a, b, max_value=max_value), _tf_psnr(a, b, max_value), atol=1e-3
    )
    np.testing.assert_allclose(
        image_metrics.ssim(a, b, max_value=max_value), _tf_ssim(a, b, max_value), atol=1e-4
    )


@pytest.mark.parametrize("max_value", [1.0, 255.0])
def test_structured_images_match_tensorflow(max_value):
    a, b = _structured_images(max_value)
    ours_ssim = np.asarray(image_metrics.ssim(a, b, max_value=max_value))
    np.testing.assert_allclose(ours_ssim, _tf_ssim(a, b, max_value), atol=1e-4)
    np.testing.assert_allclose(
        image_metrics.psnr(a, b, max_value=max_value), _tf_psnr(a, b, max_value), atol=1e-3
    )
    # The distortions differ in kind, so the scores must spread out, not all sit near 1.
    assert ours_ssim.max() - ours_ssim.min() > 0.1


def test_single_channel_matches_tensorflow():
    a, b = _random_pair(1, (2, 24, 24, 1), 1.0, 0.1)
    np.testing.assert_allclose(
        image_metrics.ssim(a, b, max_value=1.0), _tf_ssim(a, b, 1.0), atol=1e-4
    )


def test_identical_inputs():
    a, _ = _random_pair(2, (3, 2, 20, 20, 3), 255.0, 0.0)
    np.testing.assert_allclose(image_metrics.ssim(a, a, max_value=255.0), 1.0, atol=1e-6)
    # MSE = 0 is capped at a normalised floor of 1e-10, i.e. 100 dB, not infinity.
    np.testing.assert_allclose(image_metrics.psnr(a, a, max_value=255.0), 100.0, atol=1e-4)


def test_psnr_and_ssim_decrease_as_noise_increases():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, size=(2, 32, 32, 3)).astype(np.float32)
    base_noise = rng.normal(size=a.shape).astype(np.float32)
    sigmas = [0.005, 0.01, 0.03, 0.1, 0.3]
    psnrs = np.stack([image_metrics.psnr(a, a + s * base_noise, max_value=1.0) for s in sigmas])
    ssims = np.stack([image_metrics.ssim(a, a + s * base_noise, max_value=1.0) for s in sigmas])
    assert np.all(np.diff(psnrs, axis=0) < -1.0)
    assert np.all(np.diff(ssims, axis=0) < 0.0)
    # Unclipped Gaussian noise of std s gives MSE = s^2 on average: PSNR = -20 log10(s).
    np.testing.assert_allclose(psnrs[:, 0], -20 * np.log10(sigmas), atol=0.1)


def test_video_is_mean_of_per_frame_scores():
    rng = np.random.default_rng(4)
    b_, t, h, w = 2, 3, 16, 20
    a = rng.uniform(0, 1, size=(b_, t, h, w, 3)).astype(np.float32)
    # Very different noise per frame, so the frame mean and the pooled-MSE PSNR disagree.
    scales = np.array([0.01, 0.05, 0.2], np.float32).reshape(1, t, 1, 1, 1)
    b = a + scales * rng.normal(size=a.shape).astype(np.float32)

    video_psnr = np.asarray(image_metrics.psnr(a, b, max_value=1.0))
    video_ssim = np.asarray(image_metrics.ssim(a, b, max_value=1.0))
    frames_a, frames_b = a.reshape(-1, h, w, 3), b.reshape(-1, h, w, 3)
    np.testing.assert_allclose(
        video_psnr, _tf_psnr(frames_a, frames_b, 1.0).reshape(b_, t).mean(1), atol=1e-3
    )
    np.testing.assert_allclose(
        video_ssim, _tf_ssim(frames_a, frames_b, 1.0).reshape(b_, t).mean(1), atol=1e-4
    )

    pooled_psnr = -10 * np.log10(np.mean((a - b) ** 2, axis=(1, 2, 3, 4)))
    assert np.all(video_psnr - pooled_psnr > 3.0)


def test_jit_and_uint8_inputs():
    a, b = _random_pair(5, (2, 2, 16, 16, 3), 255.0, 0.1)
    a8, b8 = np.round(a).astype(np.uint8), np.round(b).astype(np.uint8)
    for metric in (image_metrics.psnr, image_metrics.ssim):
        jitted = jax.jit(functools.partial(metric, max_value=255.0))
        eager = metric(a8.astype(np.float32), b8.astype(np.float32), max_value=255.0)
        np.testing.assert_allclose(jitted(a8, b8), eager, rtol=1e-6)


def test_bad_inputs_raise_with_shapes():
    a = np.zeros((2, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 16, 16, 3\) and \(2, 16, 16, 1\)"):
        image_metrics.psnr(a, a[..., :1], max_value=1.0)
    with pytest.raises(ValueError, match="at least 11x11.*got 10x16"):
        image_metrics.ssim(a[:, :10], a[:, :10], max_value=1.0)
    with pytest.raises(ValueError, match=r"got shape \(16, 16, 3\)"):
        image_metrics.psnr(a[0], a[0], max_value=1.0)
