"""Stage-2 train step: encoding every batch with the frozen tokenizer vs reading token files.

    python benchmarks/stage2_input.py [--config=quickstart_generator] [--repeats=20]

Builds the experiment's transformer and its tokenizer architecture with random
weights (speed does not depend on them) and times the jitted `maskgit.train_step`
on one global batch in the two input forms it accepts: {"video", "label"} (the
tokenizer's encoder runs inside the step) and {"tokens", "label"} (what
`--mode=tokenize` token files feed). The two are timed alternately and the best
of `repeats` is kept for each, so a busy machine slows both alike; the ratio is
the speed-up of training from token files. Data loading is not included.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from videogen import optim
from videogen.tasks import commit_tokens
from videogen.trainers import frozen_tokenizer, maskgit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decoding import TOKENIZER_OF  # noqa: E402  (stage-2 experiment -> its tokenizer experiment)
from tokenizer_throughput import load_config  # noqa: E402  (experiments/<name>.py[:arg])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="quickstart_generator")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    name, _, arg = args.config.partition(":")
    config = load_config(args.config)
    tokenizer_config = load_config(f"{TOKENIZER_OF[name]}:{arg}" if arg else TOKENIZER_OF[name])
    tokenizer = frozen_tokenizer.build_tokenizer(tokenizer_config)
    setup = commit_tokens.make_setup(config, tokenizer)
    tokenizer_graphdef, tokenizer_state = nnx.split(tokenizer)
    graphdef, state = nnx.split(maskgit.create_train_state(config, setup))
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    step = jax.jit(
        functools.partial(maskgit.train_step, graphdef, tokenizer_graphdef, setup, config, schedule)
    )
    b = config.batch_size
    t, h, w = setup.video_shape
    video = jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, t, h, w, 3), np.uint8))
    labels = (
        jnp.zeros((b,), jnp.int32) if not config.num_classes else jnp.arange(b) % config.num_classes
    )
    tokens = commit_tokens.video_tokens(tokenizer, setup, frozen_tokenizer.to_float(video))
    batches = {
        "videos": {"video": video, "label": labels},
        "token files": {"tokens": tokens, "label": labels},
    }
    best = {k: float("inf") for k in batches}
    for key, batch in batches.items():  # compile + warm-up
        jax.block_until_ready(step(state, tokenizer_state, batch))
    for _ in range(args.repeats):
        for key, batch in batches.items():
            start = time.perf_counter()
            jax.block_until_ready(step(state, tokenizer_state, batch))
            best[key] = min(best[key], time.perf_counter() - start)
    print(
        f"{args.config}: batch {b}, clips {t}x{h}x{w}, {setup.num_tokens} tokens x {setup.num_factors} factors"
    )
    for key, seconds in best.items():
        print(f"  from {key:<11}: {seconds * 1e3:7.1f} ms/step, {1 / seconds:5.2f} steps/s")
    print(f"  speed-up from token files: {best['videos'] / best['token files']:.2f}x")


if __name__ == "__main__":
    main()
