"""The caption-embedding cache: encoder outputs per caption, encoded once, keyed by the
encoder's weights (a tiny T5 checkpoint from tests/data keeps it fast)."""

import pathlib

import numpy as np
import pytest

from videogen.data.caption_embeddings import CaptionEmbeddings, encoder_fingerprint
from videogen.models.text_encoders import t5_text_encoder

DATA = pathlib.Path(__file__).parent / "data"
CAPTIONS = ["a 7 moves down", "a 3 moves up and to the left", "a 1 moves right", "a 0 rests"]


@pytest.fixture(scope="module")
def encoder():
    return t5_text_encoder(DATA / "tiny_t5_gated_gelu", max_length=16)


def test_cache_returns_the_encoder_output_and_encodes_each_caption_once(encoder, tmp_path):
    cache = CaptionEmbeddings(encoder, tmp_path, batch_size=3)
    batch = [CAPTIONS[1], CAPTIONS[0], CAPTIONS[1], CAPTIONS[3]]
    embeddings, masks = cache(batch)
    assert embeddings.shape == (4, 16, 16) and masks.shape == (4, 16)
    assert cache.encoded_captions == 3  # the repeated caption is encoded once
    direct = encoder(batch)
    # Float32 tolerance: the cache encodes in batches of 3, `direct` in one of 4, and the
    # dense layers' matmul over batch x length rows blocks differently (~4e-6 relative).
    np.testing.assert_allclose(embeddings, direct.token_embeddings, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(masks, direct.mask)
    cache(CAPTIONS)
    assert cache.encoded_captions == 4  # only the one caption not seen before

    # A new process (a resumed run) reads the file and runs the encoder on nothing.
    again = CaptionEmbeddings(encoder, tmp_path, batch_size=3)
    got, got_masks = again(batch)
    assert again.encoded_captions == 0
    np.testing.assert_array_equal(got, embeddings)
    np.testing.assert_array_equal(got_masks, masks)
    assert [p.name for p in tmp_path.iterdir()] == [again.path.name]


def test_other_weights_get_another_file(encoder, tmp_path):
    cache = CaptionEmbeddings(encoder, tmp_path)
    other = t5_text_encoder(DATA / "tiny_t5_gated_gelu", max_length=16)
    assert encoder_fingerprint(other) == cache.fingerprint  # same checkpoint, same key
    leaf = other.state["token_embedding"]
    leaf[...] = leaf[...] * 1.001
    assert encoder_fingerprint(other) != cache.fingerprint
    shorter = t5_text_encoder(DATA / "tiny_t5_gated_gelu", max_length=8)
    assert encoder_fingerprint(shorter) != cache.fingerprint
    cache(CAPTIONS[:1])
    # A file whose stored key disagrees with its name is refused, not silently used.
    CaptionEmbeddings(shorter, tmp_path)(CAPTIONS[:1])
    (tmp_path / f"text_embeddings_{encoder_fingerprint(shorter)[:16]}.npz").replace(cache.path)
    with pytest.raises(ValueError, match="delete the file to rebuild it"):
        CaptionEmbeddings(encoder, tmp_path)
