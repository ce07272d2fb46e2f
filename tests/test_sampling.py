"""COMMIT decoding (Algorithm 1): every position filled, the schedule's count of fixed
tokens after each step, condition tokens as inputs, confidence order, classifier-free
guidance, one traced model call. The model is a deterministic function of the input
tokens, the prefix and the position: the decoder's contract is the `logits_fn` callable."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen.sampling.non_autoregressive import commit_decode

V = 32  # sub-token vocabulary; [MASK] is V, as in `MaskedVideoTransformer`
MASK = V
B, N, F = 3, 24, 2
NEG = -1e9


def favourite(n: int) -> jax.Array:
    """A position's preferred sub-tokens ``[n, F]``."""
    return (3 * jnp.arange(n)[:, None] + 5 * jnp.arange(F)) % V


def peaked_logits(tokens, prefix):
    """Every position almost surely samples its favourite tokens; ignores the input."""
    del prefix
    b, n, _ = tokens.shape
    return jnp.broadcast_to(50.0 * jax.nn.one_hot(favourite(n), V), (b, n, F, V))


def copying_logits(tokens, prefix):
    """Like `peaked_logits`, but a non-[MASK] input token is copied (one_hot(V) is zero)."""
    return peaked_logits(tokens, prefix) + 100.0 * jax.nn.one_hot(tokens, V)


def graded_logits(tokens, prefix):
    """Position i samples uniformly among N + 1 - i tokens: its confidence is exactly
    -F log(N + 1 - i) whatever it samples, so later positions are more confident."""
    del prefix
    b, n, _ = tokens.shape
    allowed = jnp.arange(V)[None, :] < (n + 1 - jnp.arange(n))[:, None]  # [n, V]
    return jnp.broadcast_to(jnp.where(allowed, 0.0, NEG)[:, None, :], (b, n, F, V))


def _condition():
    """Example 0: no condition (CG); 1: first 8 positions (FP-like); 2: scattered."""
    cond = np.zeros((B, N), bool)
    cond[1, :8] = True
    cond[2, ::3] = True
    tokens = 7 + np.arange(B * N * F).reshape(B, N, F) % 11  # never a favourite pattern
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(cond)


def _decode(logits_fn, **kwargs):
    cond_tokens, cond = _condition()
    prefix = jnp.ones((B, 1), jnp.int32)
    fn = jax.jit(
        functools.partial(commit_decode, logits_fn, mask_token_id=MASK, return_steps=True, **kwargs)
    )
    tokens, steps = fn(cond_tokens, cond, prefix, jax.random.key(0))
    return np.asarray(cond_tokens), np.asarray(cond), np.asarray(tokens), steps


def _gamma(progress: float, kind: str, n: int) -> float:
    """The schedules in float64, written independently of `mask_schedule`."""
    if kind == "cosine":
        return math.cos(math.pi * progress / 2) if progress < 1 else 0.0
    if kind == "uniform":
        return 1.0 - progress
    return 1.0 - n ** (-(1.0 - progress))


@pytest.mark.parametrize("kind", ["cosine", "uniform", "exponential"])
def test_decoding_fills_every_position_on_schedule(kind):
    k = 6
    cond_tokens, cond, tokens, steps = _decode(
        graded_logits, num_steps=k, schedule=kind, choice_temperature=4.5
    )
    inputs, fixed = np.asarray(steps.inputs), np.asarray(steps.fixed)
    assert tokens.shape == (B, N, F)
    assert ((tokens >= 0) & (tokens < V)).all()  # no [MASK] left
    # After step t, ceil(gamma((t+1)/K) N) positions stay masked; none after the last step.
    for t in range(k):
        expected = N - math.ceil(_gamma((t + 1) / k, kind, N) * N - 1e-9)
        np.testing.assert_array_equal(fixed[t].sum(1), expected, err_msg=f"step {t}")
    assert fixed[-1].all()
    # A fixed position stays fixed, with the token it was fixed with.
    assert (fixed[1:] >= fixed[:-1]).all()
    masked_input = np.where(cond[..., None], cond_tokens, MASK)
    np.testing.assert_array_equal(inputs[0], masked_input)  # Eq. 6.2 with every s_i <= s*
    for t in range(1, k):
        was_fixed = fixed[t - 1][..., None]
        np.testing.assert_array_equal(
            inputs[t], np.where(was_fixed, tokens, masked_input), err_msg=f"step {t}"
        )


def test_zero_temperature_fixes_the_most_confident_positions_first():
    k = 5
    _, _, _, steps = _decode(graded_logits, num_steps=k, choice_temperature=0.0)
    fixed = np.asarray(steps.fixed)
    for t in range(k):
        count = fixed[t, 0].sum()
        # The `count` fixed positions are the last ones: the highest confidences.
        last = np.broadcast_to(np.arange(N) >= N - count, (B, N))
        np.testing.assert_array_equal(fixed[t], last, err_msg=f"step {t}")
    # With a large temperature the Gumbel noise reorders them.
    _, _, _, noisy = _decode(graded_logits, num_steps=k, choice_temperature=1e3)
    first = np.asarray(noisy.fixed)[0]
    assert (first != (np.arange(N) >= N - first[0].sum())).any()


def test_condition_tokens_are_model_inputs_and_are_refined():
    cond_tokens, cond, tokens, _ = _decode(copying_logits)
    # A model that copies its input returns z~ at condition positions: z~ was the input.
    np.testing.assert_array_equal(tokens[cond], cond_tokens[cond])
    np.testing.assert_array_equal(tokens[~cond], np.broadcast_to(favourite(N), tokens.shape)[~cond])
    # A model that ignores its input refines them to its own prediction (Algorithm 1).
    cond_tokens, cond, tokens, _ = _decode(peaked_logits)
    np.testing.assert_array_equal(tokens, np.broadcast_to(favourite(N), tokens.shape))
    assert (tokens[cond] != cond_tokens[cond]).all()


def test_keep_condition_fixes_condition_tokens_and_schedules_the_rest():
    k = 4
    cond_tokens, cond, tokens, steps = _decode(peaked_logits, num_steps=k, keep_condition=True)
    fixed = np.asarray(steps.fixed)
    np.testing.assert_array_equal(tokens[cond], cond_tokens[cond])
    np.testing.assert_array_equal(tokens[~cond], np.broadcast_to(favourite(N), tokens.shape)[~cond])
    free = N - cond.sum(1)
    for t in range(k):
        assert (fixed[t] >= cond).all()
        expected = cond.sum(1) + free - np.ceil(_gamma((t + 1) / k, "cosine", 0) * free - 1e-9)
        np.testing.assert_array_equal(fixed[t].sum(1), expected, err_msg=f"step {t}")


def test_classifier_free_guidance():
    """Class prefix c: token 1 scores 20 (conditional); "no class" 0: token 1 scores 40.
    Guided logits of token 1: (1 + w) 20 - w 40 = 20 - 20 w, token 2 scores 0 in both."""

    def class_logits(tokens, prefix):
        b, n, f = tokens.shape
        score = jnp.where(prefix[:, 0] == 0, 40.0, 20.0)[:, None, None]
        logits = jnp.full((b, n, f, V), NEG).at[..., 2].set(0.0)
        return logits.at[..., 1].set(jnp.broadcast_to(score, (b, n, f)))

    cond_tokens, cond = _condition()
    prefix, null = jnp.ones((B, 1), jnp.int32), jnp.zeros((B, 1), jnp.int32)
    calls = []

    def counted(tokens, prefix):
        calls.append(tokens.shape)
        return class_logits(tokens, prefix)

    decode = functools.partial(commit_decode, mask_token_id=MASK, num_steps=12)
    plain = jax.jit(functools.partial(decode, class_logits))(
        cond_tokens, cond, prefix, jax.random.key(1)
    )
    guided = jax.jit(
        functools.partial(decode, counted, guidance_scale=2.0, unconditional_prefix=null)
    )(cond_tokens, cond, prefix, jax.random.key(1))
    assert (np.asarray(plain) == 1).all()
    assert (np.asarray(guided) == 2).all()  # 20 - 40 = -20 < 0
    # One traced call on the doubled batch serves all 12 steps: one compiled program.
    assert calls == [(2 * B, N, F)]
    with pytest.raises(ValueError, match="unconditional_prefix"):
        commit_decode(
            class_logits,
            cond_tokens,
            cond,
            prefix,
            jax.random.key(0),
            mask_token_id=MASK,
            guidance_scale=1.0,
        )


def test_same_key_same_tokens_and_bad_shapes_raise():
    cond_tokens, cond = _condition()
    prefix = jnp.ones((B, 1), jnp.int32)
    fn = jax.jit(functools.partial(commit_decode, graded_logits, mask_token_id=MASK))
    a, b = (np.asarray(fn(cond_tokens, cond, prefix, jax.random.key(s))) for s in (5, 5))
    c = np.asarray(fn(cond_tokens, cond, prefix, jax.random.key(6)))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    with pytest.raises(ValueError, match="condition_mask"):
        commit_decode(
            graded_logits, cond_tokens, cond[:, :5], prefix, jax.random.key(0), mask_token_id=MASK
        )
    with pytest.raises(ValueError, match="logits_fn returned"):
        commit_decode(
            lambda t, p: graded_logits(t, p)[:, :5],
            cond_tokens,
            cond,
            prefix,
            jax.random.key(0),
            mask_token_id=MASK,
        )
