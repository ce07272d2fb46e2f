"""MAGVIT generation (Algorithm 1 from each task's condition) and its evaluator.

`GenerationEvaluator` decodes every `eval.tasks` task from held-out conditions
and scores the samples: FVD against the real split's cached I3D statistics,
for frame prediction next to the copy-last-frame baseline, and the digit
classifier's accuracy on class-conditional samples of moving digits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jaxtyping import Array, Float, Int, UInt8

from videogen import sharding
from videogen.data import sources
from videogen.evaluation import digit_classifier, evaluator, video_grid
from videogen.models.transformer import MaskedVideoTransformer
from videogen.sampling.non_autoregressive import DecodeSteps, commit_decode
from videogen.tasks.commit_tokens import (
    CommitSetup,
    check_labels,
    condition_tokens,
    from_factors,
    prefix_tokens,
)
from videogen.trainers import frozen_tokenizer, loop


def sample_tokens(
    model: MaskedVideoTransformer,
    tokenizer: nnx.Module,
    setup: CommitSetup,
    decoding: ml_collections.ConfigDict,
    video: Float[Array, "b T H W c"],
    labels: Int[Array, " b"],
    task_ids: Int[Array, " b"],
    key: Array,
    *,
    guidance_scale: float,
    return_steps: bool = False,
) -> (
    tuple[Int[Array, "b n f"], Float[Array, "b T H W c"]]
    | tuple[Int[Array, "b n f"], Float[Array, "b T H W c"], DecodeSteps, Int[Array, "b n f"]]
):
    """Algorithm 1 from each clip's task condition: (sub-tokens, condition video).

    Only the pixels of the task's interior condition (and the label, for
    class-conditional tasks) reach the transformer. `return_steps` adds what each
    decoding step fixed (`DecodeSteps`) and the condition tokens z̃, for showing the steps.
    """
    cond = condition_tokens(tokenizer, setup, task_ids, video, with_target=False)
    prefix = prefix_tokens(setup, task_ids, labels)
    unconditional = prefix_tokens(setup, task_ids, labels, jnp.zeros_like(task_ids, bool))
    tokens = commit_decode(
        lambda z, p: model(z, p, deterministic=True),
        cond.condition,
        cond.condition_mask,
        prefix,
        key,
        mask_token_id=model.mask_token_id,
        num_steps=decoding.num_steps,
        schedule=decoding.schedule,
        choice_temperature=decoding.choice_temperature,
        guidance_scale=guidance_scale,
        unconditional_prefix=unconditional if guidance_scale else None,
        keep_condition=decoding.keep_condition,
        return_steps=return_steps,
    )
    if return_steps:
        tokens, steps = tokens
        return tokens, cond.condition_video, steps, cond.condition
    return tokens, cond.condition_video


def generate(
    graphdef: nnx.GraphDef,
    tokenizer_graphdef: nnx.GraphDef,
    setup: CommitSetup,
    decoding: ml_collections.ConfigDict,
    guidance_scale: float,
    state: nnx.State,
    tokenizer_state: nnx.State,
    video: UInt8[Array, "b T H W c"],
    labels: Int[Array, " b"],
    task_ids: Int[Array, " b"],
    key: Array,
) -> dict[str, Float[Array, "b T H W c"]]:
    """Decoded samples and the condition videos they were made from, in [-1, 1]."""
    model = nnx.merge(graphdef, state).model
    tokenizer = nnx.merge(tokenizer_graphdef, tokenizer_state)
    tokens, condition = sample_tokens(
        model,
        tokenizer,
        setup,
        decoding,
        frozen_tokenizer.to_float(video),
        labels,
        task_ids,
        key,
        guidance_scale=guidance_scale,
    )
    sample = tokenizer.detokenize(from_factors(tokens, setup))
    return {"sample": jnp.clip(sample, -1.0, 1.0), "condition": condition}


def copy_last_frame(
    video: UInt8[np.ndarray, "b T H W c"], first_frames: int
) -> UInt8[np.ndarray, "b T H W c"]:
    """Frame-prediction baseline: the ``first_frames`` condition frames, then the last repeated."""
    t = video.shape[1]
    last = video[:, first_frames - 1 : first_frames]
    return np.concatenate([video[:, :first_frames], np.repeat(last, t - first_frames, 1)], 1)


def with_given_frames(
    samples: UInt8[np.ndarray, "b T H W c"],
    video: UInt8[np.ndarray, "b T H W c"],
    first_frames: int,
) -> UInt8[np.ndarray, "b T H W c"]:
    """A continuation as its user sees it: the ``first_frames`` frames they gave (``video``'s),
    then the sampled ones. Scored next to `copy_last_frame`, the two differ only in the
    continuation; the decoded samples also carry the tokenizer's error on the given frames."""
    return np.concatenate([video[:, :first_frames], samples[:, first_frames:]], 1)


def _local(x: jax.Array, mesh) -> np.ndarray:
    """This process's rows of a batch-sharded global array."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    local = multihost_utils.global_array_to_host_local_array(
        x, mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES)
    )
    return np.asarray(local)


def _sum_over_processes(values: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


class GenerationEvaluator:
    """Decodes every `config.eval.tasks` task from held-out conditions and scores the samples.

    Per task: FVD against the real split's cached I3D statistics (when
    `eval.frechet.num_samples` > 0; the protocol's temporal windows x spatial
    crops of each real video) over the first `eval.frechet.num_frames` frames,
    and for frame prediction with replicate padding the FVD of the
    copy-last-frame baseline; class accuracy of class-conditional samples by
    the moving-digits classifier (moving_digits data only); one
    ``condition | sample | ground truth`` grid (GIF + MP4, TensorBoard frames).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        setup: CommitSetup,
        graphdef: nnx.GraphDef,
        tokenizer_graphdef: nnx.GraphDef,
        tokenizer_state: nnx.State,
        state_shardings: nnx.State,
        mesh,
        workdir: str,
    ):
        self.config, self.setup, self.mesh, self.workdir = config, setup, mesh, workdir
        self.tokenizer_state = tokenizer_state
        self.tasks = [(name, setup.task_id(name)) for name in config.eval.tasks]
        if config.eval.batch_size % sharding.data_parallel_size(mesh):
            raise ValueError(
                f"config.eval.batch_size={config.eval.batch_size} must be divisible by the mesh's "
                f"data-parallel size {sharding.data_parallel_size(mesh)}."
            )
        self.source = sources.make_source(
            config, config.eval.dataset, "eval", num_examples=config.eval.num_examples
        )
        batch = sharding.batch_sharding(mesh)
        replicated = sharding.replicated(mesh)
        # Guidance only helps where the prefix carries a class; other tasks decode unguided.
        self._generate = {
            scale: jax.jit(
                functools.partial(
                    generate, graphdef, tokenizer_graphdef, setup, config.decoding, scale
                ),
                in_shardings=(state_shardings, replicated, batch, batch, batch, replicated),
            )
            for scale in {0.0, float(config.decoding.guidance_scale)}
        }
        protocol = config.eval.frechet
        if protocol.num_samples and protocol.num_frames > config.data.num_frames:
            raise ValueError(
                f"eval.frechet.num_frames={protocol.num_frames} exceeds the generated clips' "
                f"{config.data.num_frames} frames; lower it or generate longer clips."
            )
        self.frechet = evaluator.make_frechet(
            protocol, config.eval.num_examples, workdir, mesh, multi_view_real=True
        )
        # Built now, so a real split that cannot be read as the protocol asks fails at start.
        self.real_source = (
            None if self.frechet is None else self.frechet.real_source(config, config.eval.dataset)
        )
        self._classifier = None

    def _batches(self, source) -> Iterator[dict[str, np.ndarray]]:
        return sources.eval_batches(source, self.config.eval.batch_size)

    def _real_statistics(self) -> evaluator.RealStats:
        """The real split's I3D statistics (cached under <workdir>/real_stats), with the
        protocol's views of each real video."""
        return self.frechet.real_statistics(
            self.config.eval.dataset,
            lambda: self._batches(self.real_source),
            frame_stride=self.config.data.frame_stride,
            source_resolution=self.config.data.resolution,
            num_examples=len(self.real_source),
            num_videos=sources.distinct_videos(self.real_source),
        )

    @property
    def classifier(self):
        if self._classifier is None:
            self._classifier = digit_classifier.load_or_train(
                self.workdir,
                self.config.data.resolution,
                self.config.data.num_frames,
                **(
                    {"steps": self.config.eval.classifier_steps}
                    if self.config.eval.classifier_steps is not None
                    else {}
                ),
            )
        return self._classifier

    def samples(
        self, state: nnx.State, task: str, max_batches: int | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """uint8 {condition, sample, video} and labels, batch by batch, for `task`."""
        task_id = self.setup.task_id(task)
        t = self.setup.tasks[task_id]
        scale = float(self.config.decoding.guidance_scale) if t.class_conditional else 0.0
        base = jax.random.fold_in(jax.random.key(self.config.seed), task_id)
        for index, batch in enumerate(self._batches(self.source)):
            if max_batches is not None and index >= max_batches:
                return
            check_labels(batch["label"], self.setup)
            placed = sharding.shard_batch(
                {
                    "video": batch["video"],
                    "label": batch["label"],
                    "task_ids": np.full(len(batch["label"]), task_id, np.int32),
                },
                self.mesh,
            )
            out = self._generate[scale](
                state,
                self.tokenizer_state,
                placed["video"],
                placed["label"],
                placed["task_ids"],
                jax.random.fold_in(base, index),
            )
            yield {
                "condition": video_grid.to_uint8(_local(out["condition"], self.mesh)),
                "sample": video_grid.to_uint8(_local(out["sample"], self.mesh)),
                "video": np.asarray(batch["video"]),
                "label": np.asarray(batch["label"]),
            }

    def grid(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return video_grid.make_grid(
            [batch["condition"], batch["sample"], batch["video"]],
            max_examples=self.config.eval.grid_examples,
        )

    def __call__(self, state: nnx.State, step: int) -> loop.EvalOutput:
        del step  # samples do not depend on it; the loop writes the report
        results: dict[str, float] = {}
        grids: dict[str, np.ndarray] = {}
        protocol = self.config.eval.frechet
        real_stats = self._real_statistics() if self.frechet is not None else None
        use_classifier = self.config.eval.dataset == "moving_digits"
        for name, task_id in self.tasks:
            task = self.setup.tasks[task_id]
            scores = {"correct": 0, "count": 0, "grid": None}
            score_classes = use_classifier and task.class_conditional

            def generated(name=name, scores=scores, score_classes=score_classes):
                for batch in self.samples(state, name):
                    if scores["grid"] is None and jax.process_index() == 0:
                        scores["grid"] = self.grid(batch)
                    if score_classes:
                        predicted = digit_classifier.predict(self.classifier, batch["sample"])
                        scores["correct"] += int(np.sum(predicted == batch["label"]))
                    scores["count"] += len(batch["sample"])
                    yield batch["sample"][:, : protocol.num_frames or None]

            stream = evaluator.FoldedStream(generated(), max(protocol.num_samples, 1))
            if self.frechet is not None:
                for key, value in self.frechet(real_stats, stream.fold).items():
                    results[f"eval/{name}/{key}"] = value
                if task.region == "frames" and task.padding == "replicate":
                    baseline = evaluator.FoldedStream(
                        (
                            copy_last_frame(b["video"], task.first_frames)[:, : protocol.num_frames]
                            for b in self._batches(self.source)
                        ),
                        protocol.num_samples,
                    )
                    for key, value in self.frechet(real_stats, baseline.fold).items():
                        results[f"eval/{name}/copy_last_frame_{key}"] = value
            stream.drain()
            if scores["count"] == 0:
                raise ValueError(
                    f"eval dataset {self.config.eval.dataset!r} yielded no full batch of "
                    f"{self.config.eval.batch_size}; lower config.eval.batch_size."
                )
            if score_classes:
                correct, count = _sum_over_processes(np.array([scores["correct"], scores["count"]]))
                results[f"eval/{name}/class_accuracy"] = float(correct / count)
            if scores["grid"] is not None:
                grids[name] = scores["grid"]
        return loop.EvalOutput(results, grids)
