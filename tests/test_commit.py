"""COMMIT (thesis Sec. 6.4): the ten task regions and paddings of Sec. 6.4.2, the
pixel -> token condition mask, the multivariate mask of Eq. 6.2 with the loss split of
Eq. 6.4, and the mask schedules."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.models.tokenizer import CausalVideoTokenizer
from videogen.tasks.commit import (
    TASKS,
    commit_mask,
    condition_region,
    condition_video,
    latent_condition_mask,
    latent_region,
    make_tasks,
    mask_schedule,
    masked_count,
    sample_mask_ratio,
    sample_tasks,
)

ALL = make_tasks(list(TASKS))
NAMES = [t.name for t in ALL]


def _normal(shape, seed: int) -> jax.Array:
    # numpy test data: eager jax.random would compile a PRNG kernel for every shape.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _thesis_region(name: str, t: int, h: int, w: int) -> np.ndarray:
    """Sec. 6.4.2's interior conditions written out with slices (the spec, for comparison)."""
    r = np.zeros((t, h, w), bool)
    mid_h, mid_w = slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4)
    if name in ("FP", "CFP"):
        r[0] = True
    elif name == "FI":
        r[0] = r[-1] = True
    elif name == "OPC":
        r[:, mid_h, mid_w] = True
    elif name == "OPV":
        r[:, :, mid_w] = True
    elif name == "OPH":
        r[:, mid_h, :] = True
    elif name in ("OPD", "IPD"):
        for i in range(t):
            start = round(i * (w - w // 2) / (t - 1))
            if name == "OPD":
                r[i, :, start : start + w // 2] = True
            else:
                r[i, mid_h, start : start + w // 2] = True
        if name == "IPD":
            r = ~r
    elif name == "IPC":
        r[:] = True
        r[:, mid_h, mid_w] = False
    return r


@pytest.mark.parametrize("name", NAMES)
def test_pixel_region_is_the_thesis_region(name):
    np.testing.assert_array_equal(
        condition_region(TASKS[name], 9, 16, 16), _thesis_region(name, 9, 16, 16)
    )


def test_moving_strip_goes_left_to_right():
    region = condition_region(TASKS["OPD"], 9, 16, 32)
    starts = [int(np.argmax(region[i, 0])) for i in range(9)]
    assert starts[0] == 0 and starts[-1] == 16
    assert all(a < b for a, b in itertools.pairwise(starts))
    assert (region.sum(axis=2) == 16).all()  # a 0.5W strip in every row of every frame


# Table 6.6, bottom rows: masked pixels and masked tokens (%) per task, 16x128x128 clips
# through the MAGVIT 3D-VQ (non-causal, 4x8x8-pixel cells) -> 4x16x16 tokens.
TABLE_6_6 = {
    "FP": (94, 75),
    "FI": (87, 50),
    "OPC": (75, 75),
    "OPV": (50, 50),
    "OPH": (50, 50),
    "OPD": (50, 50),
    "IPC": (25, 25),
    "IPD": (25, 25),
    "CG": (100, 100),
    "CFP": (94, 75),
}
VQ_GRID = {"temporal_factor": 4, "spatial_factor": 8, "causal": False}


@pytest.mark.parametrize("name", list(TABLE_6_6))
def test_masked_fractions_are_table_6_6(name):
    pixels, tokens = TABLE_6_6[name]
    region = condition_region(TASKS[name], 16, 128, 128)
    cond = latent_region(TASKS[name], (16, 128, 128), (4, 16, 16), **VQ_GRID)
    # The table rounds to whole percents (FP: 93.75 -> 94, FI: 87.5 -> 87).
    assert abs(100 * (1 - region.mean()) - pixels) <= 0.5
    assert abs(100 * (1 - cond.mean()) - tokens) <= 0.5


@pytest.mark.parametrize("name", ["OPD", "IPD"])
def test_moving_box_tokens_slide_on_the_token_grid_over_condition_pixels(name):
    """The moving box's condition tokens are the box placed per latent frame on the 16x16
    grid (left edge 0, 3, 5, 8 tokens), and every such token's 4x8x8 cell holds condition
    pixels, so its z~ carries the condition."""
    cond = latent_region(TASKS[name], (16, 128, 128), (4, 16, 16), **VQ_GRID)
    box = ~cond if TASKS[name].inverted else cond
    np.testing.assert_array_equal(np.argmax(box[:, 8], axis=1), [0, 3, 5, 8])
    assert (box.sum(axis=2)[:, 4:12] == 8).all()  # half the width in every box row
    region = condition_region(TASKS[name], 16, 128, 128)
    cells = region.reshape(4, 4, 16, 8, 16, 8).any(axis=(1, 3, 5))
    assert not (cond & ~cells).any()


def test_causal_frame_prediction_conditions_the_first_two_latent_frames():
    # Sec. 5.4.2: 17x128x128 -> 5x16x16 tokens; the first 5 frames give the first 2x16x16.
    (fp5,) = make_tasks(["FP"], {"FP": {"first_frames": 5}})
    for rule in ("any", "all"):
        cond = latent_region(
            fp5,
            (17, 128, 128),
            (5, 16, 16),
            temporal_factor=4,
            spatial_factor=8,
            causal=True,
            rule=rule,
        )
        assert cond[:2].all() and not cond[2:].any(), rule
    # Frame interpolation: frame 0 is latent frame 0, frame 16 lies in latent frame 4 (13-16).
    fi = latent_region(
        TASKS["FI"], (17, 32, 32), (5, 4, 4), temporal_factor=4, spatial_factor=8, causal=True
    )
    np.testing.assert_array_equal(fi.all(axis=(1, 2)), [True, False, False, False, True])
    assert not fi[1:4].any()


def test_cell_rule_any_versus_all_on_unaligned_regions():
    grid = {"temporal_factor": 4, "spatial_factor": 4, "causal": True}
    # 2 of the 4 frames of latent frame 1 are condition frames.
    (fp2,) = make_tasks(["FP"], {"FP": {"first_frames": 2}})
    any_ = latent_region(fp2, (9, 8, 8), (3, 2, 2), **grid)
    all_ = latent_region(fp2, (9, 8, 8), (3, 2, 2), rule="all", **grid)
    np.testing.assert_array_equal(any_.all(axis=(1, 2)), [True, True, False])
    np.testing.assert_array_equal(all_.all(axis=(1, 2)), [True, False, False])
    # A 6x6 centre box of a 12x12 image covers pixels 3..8: it touches all 3x3 cells of
    # 4x4 pixels but fills only the middle one.
    any_ = latent_region(TASKS["OPC"], (1, 12, 12), (1, 3, 3), **grid)
    all_ = latent_region(TASKS["OPC"], (1, 12, 12), (1, 3, 3), rule="all", **grid)
    assert any_.all()
    np.testing.assert_array_equal(all_[0], [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_latent_grid_that_does_not_tile_the_video_is_rejected():
    with pytest.raises(ValueError, match="does not tile"):
        latent_region(
            TASKS["FP"], (17, 32, 32), (4, 4, 4), temporal_factor=4, spatial_factor=8, causal=True
        )
    with pytest.raises(ValueError, match="does not tile"):
        latent_region(
            TASKS["FP"], (16, 32, 32), (5, 4, 4), temporal_factor=4, spatial_factor=8, causal=True
        )


def test_latent_condition_mask_gathers_each_examples_task():
    ids = jnp.array([3, 0, 8, 3])
    grid = {"temporal_factor": 4, "spatial_factor": 4, "causal": True}
    mask = latent_condition_mask(ALL, ids, (9, 16, 16), (3, 4, 4), **grid)
    assert mask.shape == (4, 3, 4, 4) and mask.dtype == jnp.bool_
    for row, i in zip(np.asarray(mask), np.asarray(ids)):
        np.testing.assert_array_equal(row, latent_region(ALL[i], (9, 16, 16), (3, 4, 4), **grid))


@pytest.fixture(scope="module")
def conditioned():
    """One clip per task (9x16x16) through the jitted, mixed-task `condition_video`."""
    video = _normal((len(ALL), 9, 16, 16, 3), seed=0)
    fn = jax.jit(lambda ids, v: condition_video(ALL, ids, v))
    return fn, video, np.asarray(fn(jnp.arange(len(ALL)), video))


def test_replicate_padding_repeats_the_last_given_frame(conditioned):
    _, video, out = conditioned
    video = np.asarray(video)
    for name in ("FP", "CFP"):
        i = NAMES.index(name)
        np.testing.assert_array_equal(out[i], np.broadcast_to(video[i, :1], video[i].shape))
    (fp3,) = make_tasks(["FP"], {"FP": {"first_frames": 3}})
    out3 = np.asarray(condition_video([fp3], jnp.zeros(2, jnp.int32), video[:2]))
    np.testing.assert_array_equal(out3[:, :3], video[:2, :3])
    np.testing.assert_array_equal(out3[:, 3:], np.broadcast_to(video[:2, 2:3], out3[:, 3:].shape))


def test_interpolate_padding_blends_first_and_last_frame(conditioned):
    _, video, out = conditioned
    clip = np.asarray(video[NAMES.index("FI")], np.float64)
    alpha = (np.arange(9) / 8)[:, None, None, None]
    expected = (1 - alpha) * clip[0] + alpha * clip[8]
    np.testing.assert_allclose(out[NAMES.index("FI")], expected, atol=1e-6)
    np.testing.assert_array_equal(out[NAMES.index("FI")][[0, 8]], clip[[0, 8]].astype(np.float32))


@pytest.mark.parametrize("name", ["OPC", "OPV", "OPH"])
def test_edge_padding_is_numpy_edge_pad_of_the_condition(conditioned, name):
    _, video, out = conditioned
    region = condition_region(TASKS[name], 9, 16, 16)[0]
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.asarray(video[NAMES.index(name)])[:, y0:y1, x0:x1]
    expected = np.pad(crop, ((0, 0), (y0, 16 - y1), (x0, 16 - x1), (0, 0)), mode="edge")
    np.testing.assert_array_equal(out[NAMES.index(name)], expected)


@pytest.mark.parametrize("name", ["OPD", "IPC", "IPD", "CG"])
def test_zero_padding(conditioned, name):
    _, video, out = conditioned
    region = condition_region(TASKS[name], 9, 16, 16)[..., None]
    i = NAMES.index(name)
    np.testing.assert_array_equal(out[i], np.where(region, np.asarray(video[i]), 0.0))
    if name == "CG":
        assert not out[i].any()


def test_condition_video_depends_only_on_condition_pixels(conditioned):
    fn, video, out = conditioned
    regions = np.stack([condition_region(t, 9, 16, 16) for t in ALL])[..., None]
    ids = jnp.arange(len(ALL))
    # Outside the region: anything goes, the condition video stays bit-identical.
    other = np.where(regions, np.asarray(video), 100.0 * np.asarray(_normal(video.shape, 1)))
    np.testing.assert_array_equal(np.asarray(fn(ids, jnp.asarray(other))), out)
    # Inside the region: a change shows (except for CG, which has no region).
    inside = np.where(regions, np.asarray(video) + 1.0, np.asarray(video))
    changed = np.asarray(fn(ids, jnp.asarray(inside))) != out
    assert [bool(c.any()) for c in changed] == [t.name != "CG" for t in ALL]
    # And no gradient flows from a pixel outside the region.
    probe = _normal(video.shape, 2)
    grad = jax.grad(lambda v: jnp.sum(condition_video(ALL, ids, v) * probe))(video)
    assert not np.asarray(grad)[~np.broadcast_to(regions, grad.shape)].any()


TARGET_BASE, COND_BASE, MASK_ID = 1000, 5000, 99


def _commit_case(ratios, weights=(1.0, 1.0, 1.0), seed=0):
    """One example per task on a causal 9x16x16 -> 3x4x4 grid, f = 2 sub-tokens."""
    b = len(ALL)
    cond = latent_condition_mask(
        ALL, jnp.arange(b), (9, 16, 16), (3, 4, 4), temporal_factor=4, spatial_factor=4, causal=True
    ).reshape(b, -1)
    n = cond.shape[1]
    # Distinct values tell where each input token came from.
    target = TARGET_BASE + jnp.arange(b * n * 2, dtype=jnp.int32).reshape(b, n, 2)
    condition = target - TARGET_BASE + COND_BASE
    out = jax.jit(
        lambda r, k: commit_mask(
            target,
            condition,
            cond,
            r,
            k,
            mask_token_id=MASK_ID,
            refine_weight=weights[0],
            mask_weight=weights[1],
            recons_weight=weights[2],
        )
    )(jnp.asarray(ratios, jnp.float32), jax.random.key(seed))
    return np.asarray(cond), np.asarray(target), np.asarray(condition), out


def test_commit_mask_is_eq_6_2_for_every_task():
    ratios = np.linspace(0.05, 0.95, len(ALL))
    cond, target, condition, out = _commit_case(ratios, weights=(0.5, 2.0, 3.0))
    tokens, refine, mask, recons = (np.asarray(a) for a in out[:4])
    n = cond.shape[1]
    masked = refine | mask
    # Each position is exactly one of the three cases of Eq. 6.2.
    np.testing.assert_array_equal(refine.astype(int) + mask + recons, 1)
    np.testing.assert_array_equal(refine, masked & cond)
    np.testing.assert_array_equal(mask, masked & ~cond)
    np.testing.assert_array_equal(tokens[refine], condition[refine])
    assert (tokens[mask] == MASK_ID).all()
    np.testing.assert_array_equal(tokens[recons], target[recons])
    # s* is the ceil(gamma N)-th smallest score.
    np.testing.assert_array_equal(masked.sum(1), [math.ceil(r * n) for r in ratios])
    np.testing.assert_array_equal(np.asarray(out.weights), 0.5 * refine + 2.0 * mask + 3.0 * recons)
    # Task-specific structure: CG has no condition tokens, IPC mostly condition tokens.
    assert not refine[NAMES.index("CG")].any()
    assert cond[NAMES.index("IPC")].mean() == 0.75
    assert not mask[NAMES.index("IPC")][cond[NAMES.index("IPC")]].any()


def test_full_mask_ratio_hides_every_target_token():
    cond, target, condition, out = _commit_case(np.ones(len(ALL)))
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(tokens, np.where(cond[..., None], condition, MASK_ID))
    assert not np.isin(tokens, target).any()
    # The smallest ratio still masks one token per example.
    _, _, _, out = _commit_case(np.full(len(ALL), 1e-4))
    np.testing.assert_array_equal(np.asarray(out.recons).sum(1), cond.shape[1] - 1)


def test_masked_positions_are_uniformly_random():
    n, draws = 12, 400
    target = jnp.zeros((draws, n, 1), jnp.int32)
    out = jax.jit(
        lambda k: commit_mask(
            target,
            target,
            jnp.zeros((draws, n), bool),
            jnp.full((draws,), 0.5),
            k,
            mask_token_id=MASK_ID,
        )
    )(jax.random.key(3))
    freq = np.asarray(out.mask).mean(0)
    # Each position masked with probability 6/12; 5 sigma = 0.125 at 400 draws.
    np.testing.assert_allclose(freq, 0.5, atol=0.125)


def test_mask_schedules():
    r = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(mask_schedule(r, "cosine"), np.cos(np.pi * r / 2), atol=1e-6)
    np.testing.assert_allclose(mask_schedule(r, "uniform"), 1 - r, atol=1e-7)
    np.testing.assert_allclose(
        mask_schedule(r, "exponential", 256), 1 - 256.0 ** (-(1 - r)), atol=1e-6
    )
    for kind in ("cosine", "uniform", "exponential"):
        gamma = np.asarray(mask_schedule(np.linspace(0, 1, 50), kind, 256))
        assert (np.diff(gamma) < 0).all(), kind
        assert float(mask_schedule(1.0, kind, 256)) == 0.0, kind
    with pytest.raises(ValueError, match="num_tokens"):
        mask_schedule(0.5, "exponential")
    with pytest.raises(ValueError, match="unknown"):
        mask_schedule(0.5, "linear")


def test_masked_count_is_exact_ceiling():
    # (1 - 1/12) * 1200 = 1100 exactly; float32 computes 1100.00004.
    assert int(masked_count(mask_schedule(1 / 12, "uniform"), 1200)) == 1100
    np.testing.assert_array_equal(
        masked_count(jnp.array([0.0, 0.001, 0.5, 1.0]), 10), [0, 1, 5, 10]
    )


def test_sample_mask_ratio_follows_the_schedule():
    ratios = np.asarray(sample_mask_ratio(jax.random.key(0), 4000, "cosine", 1024))
    # gamma(r) = cos(pi r / 2) with r ~ U(0, 1): P(gamma <= x) = 1 - 2 arccos(x) / pi.
    for x in (0.25, 0.5, 0.9):
        assert (ratios <= x).mean() == pytest.approx(1 - 2 * np.arccos(x) / np.pi, abs=0.03)


def test_sample_tasks_follows_weights():
    ids = np.asarray(sample_tasks(jax.random.key(0), 4000, [0.0, 1.0, 0.0, 3.0]))
    assert set(np.unique(ids)) == {1, 3}
    assert (ids == 3).mean() == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="non-negative"):
        sample_tasks(jax.random.key(0), 4, [0.0, 0.0])


def test_make_tasks_rejects_bad_names_and_settings():
    with pytest.raises(ValueError, match="unknown COMMIT task"):
        make_tasks(["FP", "XX"])
    with pytest.raises(ValueError, match="not among the tasks"):
        make_tasks(["FP"], {"FI": {"first_frames": 2}})
    with pytest.raises(ValueError, match="does not apply"):
        make_tasks(["OPD"], {"OPD": {"padding": "edge"}})
    with pytest.raises(ValueError, match="leave nothing to generate"):
        condition_region(TASKS["FI"], 2, 8, 8)


def test_condition_tokens_of_causal_frame_prediction_equal_the_target_tokens():
    """With the causal tokenizer, the tokens `latent_region` marks as condition for FP see only
    the given frames, so they equal the real clip's tokens; the next latent frame does not.
    (A micro tokenizer, 5x8x8 -> 3x4x4, so 3 given frames make 2 condition latent frames.)"""
    tokenizer = nnx.jit(
        lambda: CausalVideoTokenizer(
            base_channels=4,
            channel_multipliers=(1, 2),
            num_res_blocks=1,
            temporal_downsample=(True,),
            num_bits=4,
            num_groups=2,
            rngs=nnx.Rngs(jax.random.key(0, impl="rbg")),
        )
    )()
    (fp3,) = make_tasks(["FP"], {"FP": {"first_frames": 3}})
    video = jnp.tanh(_normal((2, 5, 8, 8, 3), seed=4))

    @nnx.jit
    def tokens(tok, v):
        both = tok.tokenize(jnp.concatenate([v, condition_video([fp3], jnp.zeros(2, int), v)]))
        return jnp.split(both, 2)

    target, cond_tokens = (np.asarray(a) for a in tokens(tokenizer, video))
    cond = latent_region(
        fp3, (5, 8, 8), target.shape[1:], temporal_factor=2, spatial_factor=2, causal=True
    )
    assert cond[:2].all() and not cond[2:].any()
    np.testing.assert_array_equal(cond_tokens[:, :2], target[:, :2])
    assert (cond_tokens[:, 2] != target[:, 2]).any()
