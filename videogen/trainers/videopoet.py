"""VideoPoet trainer: a decoder-only prefix LM over text, video and audio tokens (thesis 8.3).

Data: the frozen video tokenizer (`config.tokenizer_workdir`) and audio tokenizer
(`config.audio_tokenizer_workdir`) encode `tokenize.num_examples` training clips once
into token files (`videopoet_data.tokenize_dataset`, before the first step or with
`--mode=tokenize`); captions enter as the frozen text encoder's embeddings, looked up
in a table of the token files' captions (`CaptionEmbeddings`, MiniLM by default).

Step: the host draws each example's task from the mixture (`TaskMixture.sample`, a
function of seed and step, with the two-stage image/video schedule of 8.3.4 when
configured), the jitted step assembles every example's sequence from its codes
(`videopoet_sequences.assemble`), drops the caption with probability
`text.drop_prob` (classifier-free guidance, 8.4.6), and trains `PrefixLM` with the
next-token loss on the output tokens only (`prefix_lm_loss`). Generation and its
evaluation live in `videopoet_generation`; the run itself in `loop`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from videogen import config as config_lib
from videogen import optim, precision, sharding
from videogen.evaluation import audio_grid, video_grid
from videogen.data import token_files
from videogen.models.prefix_lm import (
    PREFIX_LM_SIZES,
    Predictions,
    PrefixLM,
    next_token_nll,
    target_weights,
)
from videogen.trainers import loop
from videogen.trainers.transformer_state import TransformerTrainState, create_transformer_state
from videogen.trainers.maskgit import drop_empty_groups
from videogen.trainers.videopoet_data import (
    VideoPoetSetup,
    caption_table,
    token_dir,
    tokenize_dataset as write_token_files,
)
from videogen.trainers.videopoet_generation import VideoPoetEvaluator
from videogen.trainers.videopoet_sequences import assemble, example_ids


def model_sizes(model: ml_collections.ConfigDict) -> dict[str, int]:
    """hidden_size, num_layers, num_heads, mlp_dim: a `PREFIX_LM_SIZES` entry or explicit."""
    return config_lib.transformer_sizes(model, PREFIX_LM_SIZES, "PREFIX_LM_SIZES")


def factor_ranges(vocab) -> tuple[tuple[int, int], ...]:
    """``[lo, hi)`` of visual factors 1.. (`PrefixLM.factor_ranges`)."""
    return tuple(vocab.visual_factor_range(j) for j in range(1, vocab.visual_factors))


def build_model(config: ml_collections.ConfigDict, setup: VideoPoetSetup) -> PrefixLM:
    return PrefixLM(
        vocab_size=setup.vocab.size,
        pad_id=setup.vocab.pad_id,
        text_dim=setup.text_dim,
        factor_ranges=factor_ranges(setup.vocab),
        **model_sizes(config.model),
        dropout_rate=config.model.dropout_rate,
        attention_dropout_rate=config.model.attention_dropout_rate,
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
    config: ml_collections.ConfigDict, setup: VideoPoetSetup
) -> TransformerTrainState:
    return create_transformer_state(config, build_model(config, setup), stream="condition_drop")


def output_metrics(
    predictions: Predictions,
    model: PrefixLM,
    seq: dict[str, Array],
    rows: Int[Array, " b"],
    task_names: tuple[str, ...],
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """The loss (mean next-token cross entropy over every predicted id of the batch's
    outputs, visual factors included, as `prefix_lm_loss`), the next-token accuracy on
    those ids, and per task its loss and example count (absent tasks: NaN loss, count 0;
    `drop_empty_groups` removes them). ``seq``: `assemble`'s fields."""
    tokens, factor_tokens = seq["tokens"], seq["factor_tokens"]
    starts = jnp.asarray([lo for lo, _ in model.factor_ranges], jnp.int32)
    nll, factor_nll = next_token_nll(predictions, tokens, factor_tokens, starts)
    weights, factor_weights = target_weights(factor_tokens, seq["loss_mask"], model.pad_id)
    # Per example and position: summed nll, predicted ids, correct argmaxes.
    summed = nll * weights + jnp.sum(factor_nll * factor_weights, axis=-1)
    counted = weights + jnp.sum(factor_weights, axis=-1)
    correct = (jnp.argmax(predictions.logits[:, :-1], axis=-1) == tokens[:, 1:]) * weights
    if model.factor_ranges:
        factor_argmax = jnp.argmax(predictions.factor_logits[:, :-1], axis=-1) + starts
        factor_correct = (factor_argmax == factor_tokens[:, 1:]) * factor_weights
        correct = correct + jnp.sum(factor_correct, axis=-1)
    total = jnp.maximum(jnp.sum(counted), 1.0)
    loss = jnp.sum(summed) / total
    metrics = {
        "loss": loss,
        "output_accuracy": jnp.sum(correct) / total,
        "output_tokens": jnp.sum(counted),
    }
    groups = jax.nn.one_hot(rows, len(task_names), dtype=jnp.float32)  # [b, tasks]
    task_nll = groups.T @ jnp.sum(summed, axis=1)
    task_tokens = groups.T @ jnp.sum(counted, axis=1)
    examples = jnp.sum(groups, axis=0)
    for k, name in enumerate(task_names):
        metrics[f"tasks/{name}/examples"] = examples[k]
        metrics[f"tasks/{name}/loss"] = task_nll[k] / task_tokens[k]
    return loss, metrics


def training_sequences(
    setup: VideoPoetSetup,
    caption_embeddings: Float[Array, "c n d"],
    caption_masks: Bool[Array, "c n"],
    batch: dict[str, jax.Array],
    keep_text: Bool[Array, " b"],
) -> dict[str, jax.Array]:
    """Every example's sequence (`assemble`) from its token-file row and task row, its caption
    kept where `keep_text` (dropped elsewhere, for classifier-free guidance)."""
    parts = setup.split_row(batch["tokens"][..., 0])
    ids = example_ids(setup.templates, parts["video"], parts.get("audio"), parts.get("conditions"))
    text_mask = caption_masks[parts["caption"]] & keep_text[:, None]
    return assemble(
        setup.templates, batch["task_row"], ids, caption_embeddings[parts["caption"]], text_mask
    )


def train_step(
    graphdef: nnx.GraphDef,
    setup: VideoPoetSetup,
    drop_prob: float,
    schedule: optax.Schedule,
    state: nnx.State,
    caption_embeddings: Float[Array, "c n d"],
    caption_masks: Bool[Array, "c n"],
    batch: dict[str, jax.Array],
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One prefix-LM step on a global batch of token-file rows and their task rows."""
    train_state = nnx.merge(graphdef, state)
    step = train_state.optimizer.step[...]
    rows = batch["task_row"]
    keep = jax.random.uniform(train_state.rngs.condition_drop(), rows.shape) >= drop_prob
    seq = training_sequences(setup, caption_embeddings, caption_masks, batch, keep)
    model = train_state.model

    def loss_fn(model):
        predictions = model(
            seq["tokens"],
            seq["factor_tokens"],
            seq["prefix_length"],
            seq["text_embeddings"],
            seq["text_mask"],
            seq["text_positions"],
            deterministic=False,
        )
        return output_metrics(predictions, model, seq, rows, setup.layout.tasks)

    (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    train_state.optimizer.update(model, grads)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(step)
    metrics["text_kept"] = jnp.mean(keep.astype(jnp.float32))
    return nnx.state(train_state), metrics


def jit_train_step(
    config: ml_collections.ConfigDict,
    setup: VideoPoetSetup,
    graphdef: nnx.GraphDef,
    state_shardings: nnx.State,
    mesh,
) -> loop.StepProgram:
    """`(state, caption_embeddings, caption_masks, batch) -> (state, metrics)`, jitted over
    `mesh`: the program `VideoPoetRun.make_step` runs, also compiled on abstract inputs by the
    memory planner."""
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    return loop.jit_step(
        functools.partial(train_step, graphdef, setup, config.text.drop_prob, schedule),
        state_shardings,
        mesh,
        preset=config.sharding,
        frozen_args=2,
    )


class VideoPoetRun:
    """What training and the checkpoint modes share: frozen tokenizers, token space, token
    files and the caption table."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, workdir
        self.setup = VideoPoetSetup.create(config)
        directory = token_dir(config, workdir)
        if not token_files.exists(directory):
            write_token_files(config, workdir, self.setup)
        meta = token_files.check_meta(directory, self.setup.token_meta(config))
        self.train_source = token_files.TokenSource(directory)
        self.captions = meta["captions"]
        captions = self.captions if self.setup.text_dim else []
        self.table = caption_table(config, captions, directory)
        self._placed = None

    def placed_table(self, mesh) -> tuple[jax.Array, jax.Array]:
        """The caption table on every device of `mesh` (placed once)."""
        if self._placed is None or self._placed[0] is not mesh:
            replicated = sharding.replicated(mesh)
            self._placed = (mesh, tuple(jax.device_put(a, replicated) for a in self.table))
        return self._placed[1]

    def make_step(self, graphdef: nnx.GraphDef, state_shardings: nnx.State, mesh) -> loop.StepFn:
        config, setup = self.config, self.setup
        jitted = jit_train_step(config, setup, graphdef, state_shardings, mesh)
        embeddings, masks = self.placed_table(mesh)
        local = config.batch_size // jax.process_count()
        first = jax.process_index() * local

        def step_fn(state, batch, step):
            tasks = setup.mixture.sample(
                step, config.num_train_steps, config.batch_size, seed=config.seed
            )
            rows = setup.templates.task_rows(tasks)[first : first + local]
            placed = sharding.shard_batch({"task_row": rows}, mesh)
            return jitted(state, embeddings, masks, {**batch, **placed})

        return step_fn

    def make_evaluator(self, graphdef: nnx.GraphDef, state_shardings: nnx.State, mesh):
        return VideoPoetEvaluator(
            self.config, self.setup, graphdef, self.workdir, self.caption_directory, mesh
        )

    @property
    def caption_directory(self) -> str:
        return token_dir(self.config, self.workdir)

    def trainer(self) -> loop.Trainer:
        return loop.Trainer(
            build_state=lambda: create_train_state(self.config, self.setup),
            train_source=self.train_source,
            fields=("tokens", "label"),
            make_step=self.make_step,
            make_evaluator=self.make_evaluator,
            outputs="sample | ground truth grids per task (GIF, MP4), generated audio WAV files",
            host_metrics=drop_empty_groups,
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> loop.RunResult:
    """Trains (resuming from `workdir`; token files written first, once) until
    `config.num_train_steps`, then evaluates. `stop_at_step` ends early, as a preemption."""
    trainer = VideoPoetRun(config, workdir).trainer()
    return loop.train_and_evaluate(config, workdir, trainer, stop_at_step=stop_at_step)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval`: the held-out generation metrics of the latest checkpoint."""
    return loop.evaluate_checkpoint(config, workdir, VideoPoetRun(config, workdir).trainer())


def tokenize_dataset(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`--mode=tokenize`: the token files of `videopoet_data.tokenize_dataset`."""
    return write_token_files(config, workdir, VideoPoetSetup.create(config))


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[str]]:
    """`--mode=sample`: one batch of samples per `eval.tasks` task from held-out clips and
    captions, written as ``<workdir>/samples/<task>_sample_step<N>.{gif,mp4}`` (sample |
    ground truth; the input clip for V2A) with WAV files for tasks with sound."""
    run = VideoPoetRun(config, workdir)
    loop_run = loop.Run(config, workdir, run.trainer())
    graphdef, state, state_shardings, step = loop_run.restore_latest()
    sampler = run.make_evaluator(graphdef, state_shardings, loop_run.mesh)
    model = nnx.merge(graphdef, state).model
    batch = next(iter(sampler.batches()), None)
    if batch is None:
        raise ValueError(
            f"eval dataset {config.eval.dataset!r} yielded no full batch of "
            f"{config.eval.batch_size}; lower config.eval.batch_size."
        )
    inputs = sampler.inputs(batch)
    paths = {}
    for k, task in enumerate(config.eval.tasks):
        out = sampler.generate(model, task, inputs, jax.random.fold_in(jax.random.key(0), k))
        rows = [out["video"], batch["video"]] if "video" in out else [batch["video"]]
        grid = video_grid.make_grid(rows, max_examples=config.eval.grid_examples)
        paths[task] = video_grid.save_grid(
            workdir, f"{task}_sample_step{step:07d}", grid, config.eval.fps
        )
        if "audio" in out:
            real = batch["audio"][:, : out["audio"].shape[1]]
            audio_grid.save_audio_grid(
                workdir,
                f"{task}_sample_step{step:07d}",
                real,
                out["audio"],
                config.sample_rate,
                config.eval.grid_examples,
            )
    loop_run.close()
    print(f"videogen: samples of step {step} written:")
    for task, files in paths.items():
        print(f"  {task}: {', '.join(files)}")
    return paths
