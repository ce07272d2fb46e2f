"""Stage-2 trainer: MAGVIT's masked video transformer with COMMIT (thesis 6.4, 6.5.6, 5.4.2).

A frozen tokenizer run (`config.tokenizer_workdir`) turns clips into tokens,
on the fly or once into token files (`frozen_tokenizer.tokenize_dataset`); its
EMA parameters are a replicated argument of the jitted step, not a baked-in
constant. Per example the train step samples a task of the config's mixture,
builds the task's condition tokens (`tasks.commit_tokens`), masks them with
COMMIT (Eq. 6.2) at a cosine-scheduled ratio and trains the transformer with
the weighted cross-entropy of Eq. 6.3/6.4. The prompt prefix is
``[task id, class id]``; class-conditional tasks see the "no class" id with
probability `class_drop_prob` (for classifier-free guidance), the other tasks
always. Generation and its evaluation live in `maskgit_generation`; the run
itself in `loop`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from videogen import config as config_lib
from videogen import optim, precision, sharding
from videogen.data import sources, token_files
from videogen.evaluation import video_grid
from videogen.models.transformer import MAGVIT_SIZES, MaskedVideoTransformer
from videogen.tasks import commit
from videogen.tasks.commit_tokens import (
    PREFIX_LENGTH,
    CommitSetup,
    check_labels,
    condition_tokens,
    make_setup,
    prefix_tokens,
    target_as_condition,
)
from videogen.trainers import frozen_tokenizer, loop
from videogen.trainers.transformer_state import TransformerTrainState, create_transformer_state
from videogen.trainers.maskgit_generation import GenerationEvaluator


def model_sizes(model: ml_collections.ConfigDict) -> dict[str, int]:
    """hidden_size, num_layers, num_heads, mlp_dim: a Table 6.1 variant or the explicit sizes."""
    return config_lib.transformer_sizes(model, MAGVIT_SIZES, "Table 6.1")


def build_model(config: ml_collections.ConfigDict, setup: CommitSetup) -> MaskedVideoTransformer:
    """The bidirectional transformer over ``[task, class, visual tokens]``."""
    return MaskedVideoTransformer(
        num_tokens=setup.num_tokens,
        sub_vocab_size=setup.sub_vocab_size,
        num_factors=setup.num_factors,
        prefix_vocab_size=setup.prefix_vocab_size,
        prefix_length=PREFIX_LENGTH,
        **model_sizes(config.model),
        dropout_rate=config.model.dropout_rate,
        attention_dropout_rate=config.model.attention_dropout_rate,
        position_encoding=config.model.position_encoding,
        token_grid=setup.latent_shape,
        rope_base=config.model.rope_base,
        remat=config.model.remat,
        dtype=precision.compute_dtype(config),
        # 'rbg' initialises fast on CPU; dropout keys stay threefry, whose bits do not
        # depend on how the batch is sharded.
        rngs=nnx.Rngs(
            params=jax.random.key(config.seed, impl="rbg"),
            dropout=jax.random.key(config.seed + 1),
        ),
    )


def create_train_state(
    config: ml_collections.ConfigDict, setup: CommitSetup
) -> TransformerTrainState:
    return create_transformer_state(config, build_model(config, setup), stream="masking")


def commit_loss(
    logits: Float[Array, "b n f v"],
    target: Int[Array, "b n f"],
    inputs: commit.CommitInputs,
    task_ids: Int[Array, " b"],
    setup: CommitSetup,
    label_smoothing: float,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """The weighted cross-entropy of Eq. 6.4 and its parts.

    A token's cross-entropy is the sum over its sub-tokens (its log-probability
    under the factorized model), with smoothed labels. The loss is the weighted
    mean over all positions of the batch. Metrics: each term's mean
    cross-entropy, accuracy of masked (refine + mask) tokens (a token is right
    when all its sub-tokens are), and per task its weighted loss, masked-token
    accuracy and example count; groups with no positions come out as NaN with a
    zero count (`drop_empty_groups` removes them on the host).
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    nll = -jnp.take_along_axis(log_probs, target[..., None], axis=-1)[..., 0]
    # Cross-entropy against (1 - a) one_hot + a / vocab, without building the one-hot.
    smoothed = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    token_ce = jnp.sum(smoothed, axis=-1)
    weights = inputs.weights
    loss = jnp.sum(weights * token_ce) / jnp.maximum(jnp.sum(weights), 1e-8)
    correct = jnp.all(jnp.argmax(logits, axis=-1) == target, axis=-1).astype(jnp.float32)
    masked = (inputs.refine | inputs.mask).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "masked_accuracy": jnp.sum(correct * masked) / jnp.sum(masked),
    }
    for name, where in (
        ("refine", inputs.refine),
        ("mask", inputs.mask),
        ("recons", inputs.recons),
    ):
        where = where.astype(jnp.float32)
        metrics[f"{name}/tokens"] = jnp.sum(where)
        metrics[f"{name}/loss"] = jnp.sum(where * token_ce) / jnp.sum(where)
    # [b, tasks] one-hot: per-task sums over each task's examples.
    groups = jax.nn.one_hot(task_ids, setup.num_tasks, dtype=jnp.float32)
    task_weight = groups.T @ jnp.sum(weights, axis=1)
    task_loss = groups.T @ jnp.sum(weights * token_ce, axis=1)
    task_masked = groups.T @ jnp.sum(masked, axis=1)
    task_correct = groups.T @ jnp.sum(correct * masked, axis=1)
    examples = jnp.sum(groups, axis=0)
    for k, task in enumerate(setup.tasks):
        metrics[f"tasks/{task.name}/examples"] = examples[k]
        # A task whose positions all weigh 0 (e.g. refine only, weight 0) has loss 0.
        metrics[f"tasks/{task.name}/loss"] = task_loss[k] / jnp.maximum(task_weight[k], 1e-8)
        metrics[f"tasks/{task.name}/masked_accuracy"] = task_correct[k] / task_masked[k]
    return loss, metrics


def drop_empty_groups(values: dict[str, float]) -> dict[str, float]:
    """Removes the metrics of groups (``tasks/X/``, ``refine/``, ...) absent from this batch."""
    empty = {
        key.rsplit("/", 1)[0] + "/"
        for key, value in values.items()
        if key.endswith(("/tokens", "/examples")) and value == 0
    }
    return {
        k: v
        for k, v in values.items()
        if not any(k.startswith(p) for p in empty) or k.endswith(("/tokens", "/examples"))
    }


def train_step(
    graphdef: nnx.GraphDef,
    tokenizer_graphdef: nnx.GraphDef,
    setup: CommitSetup,
    config: ml_collections.ConfigDict,
    schedule: optax.Schedule,
    state: nnx.State,
    tokenizer_state: nnx.State,
    batch: dict[str, jax.Array],
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One COMMIT step on a global batch; pure in (state, tokenizer_state, batch).

    The returned state carries the advanced dropout and masking RNG counters.
    """
    train_state = nnx.merge(graphdef, state)
    tokenizer = nnx.merge(tokenizer_graphdef, tokenizer_state)
    step = train_state.optimizer.step[...]
    b = batch["label"].shape[0]
    task_key, class_key, ratio_key, mask_key = jax.random.split(train_state.rngs.masking(), 4)

    task_ids = commit.sample_tasks(task_key, b, setup.task_weights)
    if "tokens" in batch:  # token files: the tokenizer already ran, once, in --mode=tokenize
        tokens = target_as_condition(setup, task_ids, batch["tokens"])
    else:
        tokens = condition_tokens(
            tokenizer, setup, task_ids, frozen_tokenizer.to_float(batch["video"]), with_target=True
        )
    ratio = commit.sample_mask_ratio(ratio_key, b, config.mask_schedule, setup.num_tokens)
    model = train_state.model
    inputs = commit.commit_mask(
        tokens.target,
        tokens.condition,
        tokens.condition_mask,
        ratio,
        mask_key,
        mask_token_id=model.mask_token_id,
        refine_weight=config.loss.refine_weight,
        mask_weight=config.loss.mask_weight,
        recons_weight=config.loss.recons_weight,
    )
    keep_class = jax.random.uniform(class_key, (b,)) >= config.class_drop_prob
    prefix = prefix_tokens(setup, task_ids, batch["label"], keep_class)

    def loss_fn(model):
        logits = model(inputs.tokens, prefix, deterministic=False)
        return commit_loss(
            logits, tokens.target, inputs, task_ids, setup, config.loss.label_smoothing
        )

    # nnx.value_and_grad differentiates the Params and writes the dropout streams'
    # advanced counters back into `model`.
    (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    train_state.optimizer.update(model, grads)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(step)
    metrics["mask_ratio"] = jnp.mean(ratio)
    return nnx.state(train_state), metrics


def jit_train_step(
    config: ml_collections.ConfigDict,
    setup: CommitSetup,
    graphdef: nnx.GraphDef,
    tokenizer_graphdef: nnx.GraphDef,
    state_shardings: nnx.State,
    mesh,
) -> loop.StepProgram:
    """`(state, tokenizer_state, batch) -> (state, metrics)`, jitted over `mesh`: the program
    `Stage2.make_step` runs, also compiled on abstract inputs by the memory planner."""
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    return loop.jit_step(
        functools.partial(train_step, graphdef, tokenizer_graphdef, setup, config, schedule),
        state_shardings,
        mesh,
        preset=config.sharding,
        frozen_args=1,
    )


class Stage2:
    """What training and the checkpoint modes share: the frozen tokenizer, the COMMIT set-up
    and the training data (videos, or token files when `train_token_dir` names them)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        tokenizer = frozen_tokenizer.load_frozen_tokenizer(config)
        self.setup = make_setup(config, tokenizer)
        for name in config.eval.tasks:
            self.setup.task_id(name)
        self.tokenizer_graphdef, self.tokenizer_state = nnx.split(tokenizer)
        self._replicated: tuple | None = None  # (mesh, tokenizer state placed on it)
        token_dir = frozen_tokenizer.train_token_dir(config, workdir)
        if token_dir:
            self.setup.require_condition_from_target(f"training from token files in {token_dir!r}")
            token_files.check_meta(token_dir, frozen_tokenizer.token_meta(config, self.setup))
            self.train_source = token_files.TokenSource(token_dir)
            self.fields = ("tokens", "label")
        else:
            self.train_source = sources.train_source(config)
            self.fields = ("video", "label")

    def trainer(self) -> loop.Trainer:
        return loop.Trainer(
            build_state=lambda: create_train_state(self.config, self.setup),
            train_source=self.train_source,
            fields=self.fields,
            make_step=self.make_step,
            make_evaluator=self.make_evaluator,
            outputs="condition | sample | ground truth grids per task, GIF and MP4",
            check_batch=lambda batch: check_labels(batch["label"], self.setup),
            host_metrics=drop_empty_groups,
        )

    def replicated_tokenizer(self, mesh) -> nnx.State:
        """The frozen tokenizer's arrays on every device of `mesh`; placed once, shared by the
        train step and the evaluator."""
        if self._replicated is None or self._replicated[0] is not mesh:
            self._replicated = (
                mesh,
                jax.device_put(self.tokenizer_state, sharding.replicated(mesh)),
            )
        return self._replicated[1]

    def make_step(self, graphdef: nnx.GraphDef, state_shardings: nnx.State, mesh) -> loop.StepFn:
        jitted = jit_train_step(
            self.config, self.setup, graphdef, self.tokenizer_graphdef, state_shardings, mesh
        )
        tokenizer_state = self.replicated_tokenizer(mesh)
        return lambda state, batch, step: jitted(state, tokenizer_state, batch)

    def make_evaluator(
        self, graphdef: nnx.GraphDef, state_shardings: nnx.State, mesh
    ) -> GenerationEvaluator:
        return GenerationEvaluator(
            self.config,
            self.setup,
            graphdef,
            self.tokenizer_graphdef,
            self.replicated_tokenizer(mesh),
            state_shardings,
            mesh,
            self.workdir,
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> loop.RunResult:
    """Trains (resuming from `workdir`) until `config.num_train_steps`, then evaluates.

    With `tokenize.before_training` the run first writes its token files (once).
    `stop_at_step` ends this run early, after saving, as a preemption would.
    """
    token_dir = frozen_tokenizer.train_token_dir(config, workdir)
    if config.tokenize.before_training and not token_files.exists(token_dir):
        # Once per run: a resumed run finds the files (and Stage2 checks they still fit).
        frozen_tokenizer.tokenize_dataset(config, workdir)
    trainer = Stage2(config, workdir).trainer()
    return loop.train_and_evaluate(config, workdir, trainer, stop_at_step=stop_at_step)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval`: FVD, baselines, class accuracy and grids of the latest checkpoint."""
    return loop.evaluate_checkpoint(config, workdir, Stage2(config, workdir).trainer())


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[str]]:
    """`--mode=sample`: one batch of samples per `eval.tasks` task from held-out conditions.

    Writes ``<workdir>/samples/<task>_sample_step<N>.{gif,mp4}`` (condition |
    sample | ground truth) and returns the paths per task.
    """
    stage2 = Stage2(config, workdir)
    run = loop.Run(config, workdir, stage2.trainer())
    graphdef, state, state_shardings, step = run.restore_latest()
    sampler = stage2.make_evaluator(graphdef, state_shardings, run.mesh)
    paths = {}
    for name, _ in sampler.tasks:
        batch = next(sampler.samples(state, name, max_batches=1), None)
        if batch is None:
            raise ValueError(
                f"eval dataset {config.eval.dataset!r} yielded no full batch of "
                f"{config.eval.batch_size}; lower config.eval.batch_size."
            )
        if jax.process_index() == 0:
            paths[name] = video_grid.save_grid(
                workdir, f"{name}_sample_step{step:07d}", sampler.grid(batch), config.eval.fps
            )
    run.close()
    if jax.process_index() == 0:
        print(f"videogen: samples of step {step} written:")
        for name, files in paths.items():
            print(f"  {name}: {', '.join(files)}")
    return paths


def tokenize_dataset(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`--mode=tokenize`: see `frozen_tokenizer.tokenize_dataset`."""
    return frozen_tokenizer.tokenize_dataset(config, workdir)
