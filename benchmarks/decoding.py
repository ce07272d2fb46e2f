"""Decoding speed of the token generators: MAGVIT's non-autoregressive decoding (Algorithm 1,
12 steps) and VideoPoet's autoregressive decoding with and without the KV cache.

    python benchmarks/decoding.py [--configs=quickstart_generator,magvit2_k600_fp,quickstart_videopoet,videopoet]
        [--batch=1] [--repeats=2] [--uncached_seconds=300]

`--configs` picks the rows: stage-2 MAGVIT experiments give one row, VideoPoet experiments
(`trainer = "videopoet"`, e.g. `quickstart_videopoet`, `videopoet` = 1B, `videopoet:size=8B`)
two. Every model has random weights (speed does not depend on them); token grids come from
the tokenizer architecture, built abstractly (no tokenizer weights are made). Detokenizing
is not included.

MAGVIT: one jitted `commit_decode` of the frame-prediction task; every step is a full
forward pass over [task, class, visual tokens], as in the thesis.

VideoPoet: the experiment's prefix LM and vocabulary sample the 1280 output tokens of
text-to-video on magvit2_k600's token grid (5x16x16 codes, one position each; with a
factorized vocabulary such as the quickstart's each position draws its 2 sub-tokens),
after a prefix whose text slots hold random embeddings; temperature 1, no top-k / top-p,
no guidance.
- KV cache: `sampling.autoregressive.sample` (prefill, then one cached step per token, in
  one jit), every output token, timed after a warm-up call that compiles it.
- no cache: every token recomputes the stack's forward pass over the whole sequence (the
  fixed-length buffer of one jitted program; the causal mask makes the positions not yet
  drawn irrelevant), then the logits of the one position drawn from. Its time per token is
  constant, so it decodes the first tokens until about `--uncached_seconds` are spent (all
  of them if they fit); the table then extrapolates the whole output from that rate and
  says so. The same keys draw the same tokens as the cached sampler, which is checked.

Reports tokens/s, the seconds for the whole output and the achieved GFLOP/s: XLA's FLOP
count of one forward pass times the steps (MAGVIT), of the prefill plus one cached step per
token (KV cache), of one uncached step per token (no cache), each from its own compiled
program because XLA's cost analysis counts a loop body once; against the machine's float32
matmul peak, the larger of two measurements in the same run, before and after the rows
(other processes only lower it, and a long run sees the load change).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from videogen import mfu
from videogen.models.prefix_lm import PrefixLM
from videogen.sampling.autoregressive import draw_position, sample
from videogen.sampling.non_autoregressive import commit_decode
from videogen.tasks import commit_tokens
from videogen.tasks.videopoet_layout import LayoutBatch, SequenceLayout, TaskInputs
from videogen.tasks.videopoet_vocab import Vocabulary
from videogen.trainers import frozen_tokenizer, maskgit, videopoet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import measure_matmul_gflops  # noqa: E402  (a sibling benchmark script)
from timing import best_of  # noqa: E402
from tokenizer_throughput import load_config  # noqa: E402  (experiments/<name>.py[:arg])

# The tokenizer architecture each experiment is trained on (video; audio for VideoPoet).
TOKENIZER_OF = {
    "quickstart_generator": "quickstart_tokenizer",
    "magvit2_k600_fp": "magvit2_k600",
    "quickstart_videopoet": "quickstart_tokenizer",
    "videopoet": "magvit2_k600",
}
AUDIO_TOKENIZER_OF = {"quickstart_videopoet": "quickstart_audio", "videopoet": "audio_tokenizer"}
# magvit2_k600's token grid of a 17x128x128 clip: VideoPoet's 1280 visual tokens (8.3.1).
OUTPUT_GRID = (5, 16, 16)
SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0)


def flops_of(jitted, *args) -> float:
    """FLOPs of ``jitted`` compiled for ``args`` (arrays or shape structs), `mfu.program_cost`'s."""
    return mfu.program_cost(jitted.lower(*args).compile()).flops_per_device


def measure_magvit(spec: str, batch: int, repeats: int) -> list[dict]:
    config = load_config(spec)
    name, _, arg = spec.partition(":")
    tokenizer_config = load_config(f"{TOKENIZER_OF[name]}:{arg}" if arg else TOKENIZER_OF[name])
    tokenizer = nnx.eval_shape(lambda: frozen_tokenizer.build_tokenizer(tokenizer_config))
    setup = commit_tokens.make_setup(config, tokenizer)
    model = maskgit.build_model(config, setup)
    graphdef, state = nnx.split(model)
    task_id = setup.task_id("FP")
    task_ids = jnp.full((batch,), task_id, jnp.int32)
    region = commit_tokens.latent_region(setup, setup.tasks[task_id]).reshape(-1)
    condition_mask = jnp.broadcast_to(jnp.asarray(region), (batch, setup.num_tokens))
    rng = np.random.default_rng(0)
    condition = jnp.asarray(
        rng.integers(0, setup.sub_vocab_size, (batch, setup.num_tokens, setup.num_factors)),
        jnp.int32,
    )
    labels = jnp.zeros((batch,), jnp.int32)
    prefix = commit_tokens.prefix_tokens(setup, task_ids, labels)
    decoding = config.decoding

    @jax.jit
    def decode(state, condition, condition_mask, prefix, key):
        net = nnx.merge(graphdef, state)
        return commit_decode(
            lambda z, p: net(z, p, deterministic=True),
            condition,
            condition_mask,
            prefix,
            key,
            mask_token_id=net.mask_token_id,
            num_steps=decoding.num_steps,
            schedule=decoding.schedule,
            choice_temperature=decoding.choice_temperature,
            keep_condition=decoding.keep_condition,
        )

    args = (state, condition, condition_mask, prefix, jax.random.key(0))
    compiled = decode.lower(*args).compile()
    forward = jax.jit(lambda state, z, p: nnx.merge(graphdef, state)(z, p, deterministic=True))
    flops = flops_of(forward, state, condition, prefix) * decoding.num_steps
    jax.block_until_ready(compiled(*args))  # warm-up
    seconds, _ = best_of(lambda: compiled(*args), repeats=repeats, warmup=0)
    tokens = setup.num_tokens
    return [
        {
            "config": spec,
            "params": sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
            "decoding": f"non-AR, {decoding.num_steps} steps",
            "output": f"{'x'.join(map(str, setup.latent_shape))} codes x {setup.num_factors} "
            f"factors = {tokens} positions",
            "tokens": tokens,
            "timed": tokens,
            "batch": batch,
            "seconds": seconds,
            "flops": flops,
        }
    ]


def videopoet_inputs(config, spec: str, batch: int) -> tuple[Vocabulary, LayoutBatch]:
    """The experiment's vocabulary and a T2V batch of `OUTPUT_GRID`'s 1280 output tokens."""
    # The codebooks do not depend on the experiment's arguments (size, frames).
    name = spec.partition(":")[0]
    video = load_config(TOKENIZER_OF[name])
    quantizer = nnx.eval_shape(lambda: frozen_tokenizer.build_tokenizer(video)).quantizer
    factors = config.model.visual_factors
    vocab = Vocabulary(
        visual_codes=2**quantizer.num_bits,
        visual_factors=factors,
        audio_levels=config.audio.levels,
        audio_codebook_size=load_config(AUDIO_TOKENIZER_OF[name]).model.codebook_size,
    )
    layout = SequenceLayout(
        vocab,
        OUTPUT_GRID,
        ("t2v",),
        text_dim=config.text.dim,
        max_text_tokens=config.text.max_tokens,
    )
    text = np.random.default_rng(0).normal(size=(batch, config.text.max_tokens, config.text.dim))
    return vocab, layout.build("t2v", TaskInputs(text_embeddings=text.astype(np.float32)))


def sequence_mask(model: PrefixLM, batch: LayoutBatch) -> jax.Array:
    """The attention mask of the whole sequence (it does not depend on the outputs)."""
    return model.attention_mask(
        batch.tokens, batch.prefix_length, batch.text_mask, batch.text_positions
    )


def uncached_step(
    model: PrefixLM, batch: LayoutBatch, key: jax.Array, tokens: tuple, position
) -> tuple[jax.Array, jax.Array]:
    """``(tokens, factor_tokens)`` with position ``position``'s ids drawn from a full pass
    over the sequence."""
    tokens, factor_tokens = tokens
    text = (batch.text_embeddings, batch.text_mask, batch.text_positions)
    x = model.embed(tokens, factor_tokens, *text)
    hidden = model.stack(x, sequence_mask(model, batch), rotary=model.rotary(tokens.shape[1]))
    hidden = jax.lax.dynamic_slice_in_dim(hidden, position - 1, 1, axis=1)[:, 0]
    allowed = batch.next_range[:, position - 1]
    token, factors = draw_position(
        model, hidden, allowed, jax.random.fold_in(key, position), **SAMPLING
    )
    return tokens.at[:, position].set(token), factor_tokens.at[:, position].set(factors)


def measure_videopoet(spec: str, batch: int, repeats: int, uncached_seconds: float) -> list[dict]:
    config = load_config(spec)
    vocab, layout_batch = videopoet_inputs(config, spec, batch)
    model = nnx.jit(
        lambda: PrefixLM(
            vocab_size=vocab.size,
            pad_id=vocab.pad_id,
            text_dim=config.text.dim,
            factor_ranges=videopoet.factor_ranges(vocab),
            **videopoet.model_sizes(config.model),
            rngs=nnx.Rngs(jax.random.key(0, impl="rbg")),
        )
    )()
    graphdef, state = nnx.split(model)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    data = LayoutBatch(*(jnp.asarray(a) for a in layout_batch))
    p = int(layout_batch.prefix_length[0])
    visual = int(layout_batch.loss_mask[0].sum()) - 2  # the outputs but <eov_o> <eos>: codes
    length = data.tokens.shape[1]
    key = jax.random.key(0)
    factors = vocab.visual_factors
    t, h, w = OUTPUT_GRID
    output = f"{t}x{h}x{w} codes" + (f" of {factors} sub-tokens" if factors > 1 else "")
    output = f"{output} = {visual} positions, + <eov_o> <eos>"
    row = {"config": spec, "params": params, "output": output, "batch": batch}
    print(f"  {spec}: {params / 1e6:.1f}M parameters, sequence of {length} ids", flush=True)

    # KV cache: the sampler itself. Its FLOPs: the prefill, which gives the first token's
    # logits, and one cached step for each later one.
    def prefill(state, data):
        m = nnx.merge(graphdef, state)
        cache = m.init_cache(batch, length)
        text = (data.text_embeddings, data.text_mask, data.text_positions)
        prefix = (data.tokens[:, :p], data.factor_tokens[:, :p])
        return m.prefill(*prefix, sequence_mask(m, data), cache, *text)

    def cached_step(state, data, cache, token, factors):
        m = nnx.merge(graphdef, state)
        return m.decode_step(token, factors, sequence_mask(m, data), cache)

    _, cache = jax.eval_shape(prefill, state, data)
    token = jax.ShapeDtypeStruct((batch,), jnp.int32)
    factors_in = jax.ShapeDtypeStruct((batch, factors - 1), jnp.int32)
    steps = visual + 2
    cached_flops = flops_of(jax.jit(prefill), state, data) + (steps - 1) * flops_of(
        jax.jit(cached_step), state, data, cache, token, factors_in
    )
    start = time.perf_counter()
    jax.block_until_ready(sample(model, layout_batch, key, **SAMPLING))
    print(f"  KV cache: compile + first run {time.perf_counter() - start:.1f} s", flush=True)
    seconds, cached = best_of(
        lambda: sample(model, layout_batch, key, **SAMPLING), repeats=repeats, warmup=0
    )
    rows = [
        row
        | {
            "decoding": "AR, KV cache",
            "tokens": steps,
            "timed": steps,
            "seconds": seconds,
            "flops": cached_flops,
        }
    ]

    # No cache: a traced token count, so one program times any number of tokens.
    @jax.jit
    def uncached(state, data, key, count):
        m = nnx.merge(graphdef, state)
        return jax.lax.fori_loop(
            p,
            p + count,
            lambda q, toks: uncached_step(m, data, key, toks, q),
            (data.tokens, data.factor_tokens),
        )

    step_flops = flops_of(
        jax.jit(lambda s, d, k, x, q: uncached_step(nnx.merge(graphdef, s), d, k, x, q)),
        state,
        data,
        key,
        (data.tokens, data.factor_tokens),
        jnp.int32(p),
    )
    compiled = uncached.lower(state, data, key, jnp.int32(1)).compile()
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, data, key, jnp.int32(1)))
    per_token = time.perf_counter() - start
    count = int(np.clip(uncached_seconds // per_token, 1, steps))
    print(f"  no cache: {per_token:.2f} s for one token; timing {count}", flush=True)
    seconds, drawn = best_of(
        lambda: compiled(state, data, key, jnp.int32(count)), repeats=repeats, warmup=0
    )
    same = np.asarray(drawn[0])[:, p : p + count] == cached.tokens[:, p : p + count]
    print(f"  no cache drew the KV-cache sampler's tokens: {same.sum()}/{same.size}", flush=True)
    rows.append(
        row
        | {
            "decoding": "AR, no cache",
            "tokens": steps,
            "timed": count,
            "seconds": seconds,
            "flops": step_flops * count,
        }
    )
    return rows


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", default="quickstart_generator,magvit2_k600_fp,quickstart_videopoet,videopoet"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--uncached_seconds", type=float, default=300.0)
    args = parser.parse_args()
    before = measure_matmul_gflops()["peak_gflops"]
    print(f"float32 matmul peak before the rows: {before:.0f} GFLOP/s", flush=True)
    rows = []
    for spec in args.configs.split(","):
        if load_config(spec).trainer == "videopoet":
            measured = measure_videopoet(spec, args.batch, args.repeats, args.uncached_seconds)
        else:
            measured = measure_magvit(spec, args.batch, args.repeats)
        # Each config's rows as soon as they are measured (against the peak so far): a long
        # run stopped part-way keeps them.
        for r in measured:
            print("  " + table_row(r, before), flush=True)
        rows += measured
    after = measure_matmul_gflops()["peak_gflops"]
    peak = max(before, after)
    print(f"float32 matmul peak after the rows: {after:.0f} GFLOP/s; peak {peak:.0f}", flush=True)
    print(
        "| config | params | decoding | output | tokens timed | tokens/s | s per output "
        "| GFLOP/s (of peak) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(table_row(r, peak), flush=True)


def table_row(r: dict, peak: float) -> str:
    """One measured row as a Markdown table row; GFLOP/s as a fraction of ``peak``."""
    rate = r["batch"] * r["timed"] / r["seconds"]
    whole = r["seconds"] / r["batch"] * r["tokens"] / r["timed"]
    gflops = r["flops"] / r["seconds"] / 1e9
    return (
        f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['decoding']} | {r['output']} | "
        f"{r['timed']} of {r['tokens']} | {rate:.2f} | "
        f"{whole:.3g}{' (extrapolated)' if r['timed'] < r['tokens'] else ''} | "
        f"{gflops:.0f} ({gflops / peak:.2f}) |"
    )


if __name__ == "__main__":
    main()
