"""Non-autoregressive decoding speed: clips/s of Algorithm 1 (12 steps) for MAGVIT configs.

    python benchmarks/decoding.py [--configs=quickstart_generator,magvit2_k600_fp] [--batch=1]

For each stage-2 experiment, builds its transformer with random weights (speed
does not depend on them) on the token grid of its tokenizer architecture (built
abstractly: no tokenizer weights are made) and times one jitted `commit_decode`
of the frame-prediction task: every step is a full forward pass over
[task, class, visual tokens], as in the thesis. Reports clips/s, seconds per
clip and the transformer's achieved GFLOP/s (XLA's FLOP count of one forward
pass times the steps) against the machine's float32 matmul peak measured in the
same run. Detokenizing is not included.
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

from videogen.sampling.non_autoregressive import commit_decode
from videogen.tasks import commit_tokens
from videogen.trainers import frozen_tokenizer, maskgit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import measure_matmul_gflops  # noqa: E402  (a sibling benchmark script)
from tokenizer_throughput import load_config  # noqa: E402  (experiments/<name>.py[:arg])

# The tokenizer architecture each stage-2 experiment is trained on.
TOKENIZER_OF = {
    "quickstart_generator": "quickstart_tokenizer",
    "magvit2_k600_fp": "magvit2_k600",
}


def measure(spec: str, batch: int, repeats: int) -> dict:
    name, _, arg = spec.partition(":")
    config = load_config(spec)
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
    # XLA's cost analysis counts a loop body once, so the decoding loop's FLOPs are
    # those of one forward pass times the number of steps.
    forward = jax.jit(lambda state, z, p: nnx.merge(graphdef, state)(z, p, deterministic=True))
    cost = forward.lower(state, condition, prefix).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) * decoding.num_steps
    jax.block_until_ready(compiled(*args))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {
        "config": spec,
        "params": params,
        "tokens": f"{'x'.join(map(str, setup.latent_shape))} x {setup.num_factors} factors",
        "steps": decoding.num_steps,
        "batch": batch,
        "seconds_per_clip": best / batch,
        "clips_per_s": batch / best,
        "gflops_per_s": flops / best / 1e9,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="quickstart_generator,magvit2_k600_fp")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    peak = measure_matmul_gflops()["peak_gflops"]
    print(f"float32 matmul peak: {peak:.0f} GFLOP/s")
    print("| config | params | tokens | steps | batch | s/clip | clips/s | GFLOP/s (of peak) |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.configs.split(","):
        r = measure(spec, args.batch, args.repeats)
        print(
            f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['tokens']} | {r['steps']} | "
            f"{r['batch']} | {r['seconds_per_clip']:.3f} | {r['clips_per_s']:.2f} | "
            f"{r['gflops_per_s']:.0f} ({r['gflops_per_s'] / peak:.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
