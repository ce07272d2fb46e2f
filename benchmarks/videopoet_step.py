"""Where the VideoPoet prefix LM's train step spends its time on CPU.

    .venv/bin/python benchmarks/videopoet_step.py [--config=quickstart_videopoet[:arg]] \
        [--repeats=5] [--override key=value ...]

Builds the config's real train step (`videopoet.jit_train_step`) over the setup's token
space with abstract tokenizers (`memory_plan.abstract_videopoet_setup`: no trained
tokenizer is read; the step only reads token-file rows), a fresh train state, token-file
rows of code 0 and a random caption table, and times, each jitted on its own and the best
of --repeats after a warm-up call:
  step              the whole train step (sequences, forward, backward, Adam, metrics);
  sequences         assembling the batch's sequences from token-file rows (`training_sequences`);
  forward           the model's logits on those sequences;
  loss fwd+bwd      forward, the output-token loss and its gradients (no optimizer);
  stack fwd+bwd     the transformer stack alone (its input's and parameters' gradients);
  head fwd+bwd      the tied logits (and visual factor heads) and the loss alone;
with XLA's FLOPs of each compiled program, the achieved GFLOP/s and its share of the
float32 matmul peak measured in the same run (benchmarks/matmul_peak.py). Compare the
rows of one run: on a shared machine the absolute times move with the load.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from matmul_peak import measure_matmul_gflops  # noqa: E402
from timing import best_seconds  # noqa: E402  (sibling modules)
from tokenizer_profile import flops_of  # noqa: E402
from tokenizer_throughput import load_config  # noqa: E402

from videogen import memory_plan, sharding  # noqa: E402
from videogen.models import transformer  # noqa: E402
from videogen.models.prefix_lm import Predictions, prefix_lm_loss  # noqa: E402
from videogen.trainers import videopoet  # noqa: E402

NUM_CAPTIONS = 64


def gflops(fn, args) -> float:
    return flops_of(fn, args) / 1e9


def load(spec: str, overrides: list[str]):
    """The config of ``experiments/<name>.py[:arg]`` with ``key=value`` overrides applied
    (values read as Python literals, else strings; an unknown key is an error)."""
    values = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--override {item!r} is not key=value; e.g. model.num_heads=2.")
        try:
            values[key.replace(".", "__")] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[key.replace(".", "__")] = text
    return memory_plan.override(load_config(spec), **values)


def inputs(config, setup, seed: int = 0):
    """Token-file rows of code 0 (every part's first id is valid), the mixture's task rows
    for step 0, and a caption table of random embeddings with every slot present."""
    rng = np.random.default_rng(seed)
    row = sum(int(np.prod(shape)) for shape in setup.row_parts.values())
    b, n, d = config.batch_size, config.text.max_tokens, config.text.dim
    tasks = setup.mixture.sample(0, config.num_train_steps, b, seed=config.seed)
    batch = {
        "tokens": jnp.zeros((b, row, 1), jnp.int32),
        "label": jnp.zeros((b,), jnp.int32),
        "task_row": jnp.asarray(setup.templates.task_rows(tasks), jnp.int32),
    }
    table = (
        jnp.asarray(rng.normal(size=(NUM_CAPTIONS, n, d)), jnp.float32),
        jnp.ones((NUM_CAPTIONS, n), bool),
    )
    return batch, table


def profile(config, repeats: int) -> tuple[list[tuple[str, float, float]], int, int]:
    """The rows of the table, the sequence length and the vocabulary size."""
    setup = memory_plan.abstract_videopoet_setup(config)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    train_state = videopoet.create_train_state(config, setup)
    graphdef, state = nnx.split(train_state)
    shardings = sharding.state_shardings(state, mesh, config.sharding)
    batch, (embeddings, masks) = inputs(config, setup)
    keep = jnp.ones((config.batch_size,), bool)
    model = train_state.model
    # Gradients w.r.t. the parameters only; the RNG streams ride along unchanged.
    model_graphdef, params, model_rest = nnx.split(model, nnx.Param, ...)

    sequences = jax.jit(lambda e, m, bt, k: videopoet.training_sequences(setup, e, m, bt, k))
    seq = sequences(embeddings, masks, batch, keep)

    def logits_of(params, seq):
        m = nnx.merge(model_graphdef, params, model_rest)
        return m(
            seq["tokens"],
            seq["factor_tokens"],
            seq["prefix_length"],
            seq["text_embeddings"],
            seq["text_mask"],
            seq["text_positions"],
        )

    starts = jnp.asarray([lo for lo, _ in model.factor_ranges], jnp.int32)
    targets = (seq["tokens"], seq["factor_tokens"], seq["loss_mask"])

    def loss_of(params, seq):
        predictions = logits_of(params, seq)
        return prefix_lm_loss(predictions, *targets, factor_starts=starts, pad_id=model.pad_id)

    forward = jax.jit(logits_of)
    loss_grad = jax.jit(jax.value_and_grad(loss_of))

    stack_graphdef, stack_params, stack_rest = nnx.split(model.stack, nnx.Param, ...)
    length = seq["tokens"].shape[1]
    width = videopoet.model_sizes(config.model)["hidden_size"]
    hidden = jnp.asarray(
        np.random.default_rng(1).normal(size=(config.batch_size, length, width)), jnp.float32
    )
    mask = model.attention_mask(
        seq["tokens"], seq["prefix_length"], seq["text_mask"], seq["text_positions"]
    )
    rotary = model.rotary(length)

    def stack_loss(stack_params, x):
        out = nnx.merge(stack_graphdef, stack_params, stack_rest)(x, mask, rotary=rotary)
        return jnp.mean(out**2)

    stack_grad = jax.jit(jax.grad(stack_loss, argnums=(0, 1)))

    def head_loss(params, x):
        m = nnx.merge(model_graphdef, params, model_rest)
        factor_logits = m.all_factor_logits(x, seq["tokens"], seq["factor_tokens"])
        predictions = Predictions(m.logits(x), factor_logits)
        return prefix_lm_loss(predictions, *targets, factor_starts=starts, pad_id=m.pad_id)

    head_grad = jax.jit(jax.grad(head_loss, argnums=(0, 1)))

    rows = []
    for name, fn, args in (
        ("sequences", sequences, (embeddings, masks, batch, keep)),
        ("forward", forward, (params, seq)),
        ("loss fwd+bwd", loss_grad, (params, seq)),
        ("stack fwd+bwd", stack_grad, (stack_params, hidden)),
        ("head fwd+bwd", head_grad, (params, hidden)),
    ):
        rows.append((name, best_seconds(fn, *args, repeats=repeats), gflops(fn, args)))
    # Last: the step donates the state, whose arrays the pieces above read.
    program = videopoet.jit_train_step(config, setup, graphdef, shardings, mesh)
    placed_state = jax.device_put(state, shardings)
    step_args = (embeddings, masks, batch)
    step_flops = gflops(program, (placed_state, *step_args))

    def run_step():
        nonlocal placed_state
        placed_state, metrics = program(placed_state, *step_args)
        return metrics

    jax.block_until_ready(run_step())
    step_seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run_step())
        step_seconds = min(step_seconds, time.perf_counter() - start)

    rows.insert(0, ("step", step_seconds, step_flops))
    return rows, length, setup.vocab.size


def dense_forms(config, length: int, vocab: int, repeats: int) -> list[tuple[str, float, float]]:
    """The MLP's first matmul and the tied logits at the step's shapes, forward + backward,
    as a 3-D einsum (the form before `transformer.dense`) and as `dense` (one 2-D matmul)."""
    sizes = videopoet.model_sizes(config.model)
    rng = np.random.default_rng(2)
    b, d = config.batch_size, sizes["hidden_size"]
    x = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
    rows = []
    for name, n in (("mlp in", sizes["mlp_dim"]), ("logits", vocab)):
        kernel = jnp.asarray(rng.normal(size=(d, n)), jnp.float32)
        for form, fn in (
            ("einsum bld,dn", lambda x, k: jnp.einsum("bld,dn->bln", x, k)),
            ("dense", transformer.dense),
        ):
            grad = jax.jit(jax.grad(lambda x, k, f=fn: jnp.sum(f(x, k) ** 2), argnums=(0, 1)))
            args = (x, kernel)
            seconds = best_seconds(grad, *args, repeats=repeats)
            rows.append((f"{name} fwd+bwd, {form}", seconds, gflops(grad, args)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default="quickstart_videopoet", help="experiments/<name>.py[:arg]"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--override", action="append", default=[], help="config key=value (repeatable)"
    )
    args = parser.parse_args()
    config = load(args.config, args.override)
    peak_before = measure_matmul_gflops()["peak_gflops"]
    rows, length, vocab = profile(config, args.repeats)
    forms = dense_forms(config, length, vocab, args.repeats)
    peak_after = measure_matmul_gflops()["peak_gflops"]
    peak = max(peak_before, peak_after)
    print(
        f"{args.config}: batch {config.batch_size}, "
        f"{videopoet.model_sizes(config.model)}; float32 matmul peak "
        f"{peak_before:.0f} / {peak_after:.0f} GFLOP/s (before / after)"
    )
    print("| part | ms | share of step | GFLOP | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|")
    step_seconds = rows[0][1]
    for name, seconds, flops in rows + forms:
        rate = flops / seconds
        print(
            f"| {name} | {seconds * 1e3:.1f} | {seconds / step_seconds:.0%} | {flops:.2f} | "
            f"{rate:.1f} | {rate / peak:.2f} |"
        )


if __name__ == "__main__":
    main()
