"""VideoPoet generation from held-out clips and captions, and what it is scored by.

`VideoPoetEvaluator` tokenizes held-out clips (video, soundtrack, caption), samples every
`eval.tasks` task with the KV-cache sampler (`sampling.autoregressive.sample`,
classifier-free guidance on the caption for tasks with text), decodes the outputs with
the frozen tokenizers and scores them:

- video outputs: the digit classifier's accuracy against the clip's digit (T2V, T2I,
  I2V, FP, A2V, painting, AVCont); for T2V also the motion direction named in the
  caption, read from the digit's centre of mass (`direction_correct`), next to the
  same measure on the real clips (its ceiling: bounces can precede the first move);
- I2V / FP: FVD of the clips next to the copy-last-frame baseline (`eval.frechet`), and of
  the clips with the real given frames in place of their decoded ones (`with_given_frames`:
  the baseline keeps real given frames, so only this FVD compares the continuations alone);
  and the ceiling the video tokenizer sets: the held-out clip's own codes decoded, with the
  real given frames (``true_codes_fvd``), what a model predicting every code right scores;
- audio outputs (AVCont, V2A): the fraction whose pitch names the clip's digit
  (`audio_tokenizer.digit_of_pitch`, on the generated samples only).

One ``sample | ground truth`` grid per task; tasks with audio outputs also write the
generated soundtracks beside the real ones (WAV + spectrograms). Tasks with sound (audio
outputs, or A2V's given audio) also get ``<task>_sound_step<N>.mp4``: the grid played once
per example with that example's soundtrack (`audio_grid.save_sound_grid`; WAV beside).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jaxtyping import Bool, Float, UInt8

from videogen.data import caption_embeddings, sources
from videogen.evaluation import audio_grid, digit_classifier, evaluator, video_grid
from videogen.sampling.autoregressive import sample
from videogen.tasks.videopoet_layout import TASK_SPECS, TaskInputs, drop_text
from videogen.trainers import loop
from videogen.trainers.audio_tokenizer import digit_of_pitch
from videogen.trainers.maskgit_generation import copy_last_frame, with_given_frames
from videogen.trainers.videopoet_data import VideoPoetSetup, text_encoder

# Tasks whose clips get an FVD; those continuing a given clip also its copy-last-frame one.
FVD_TASKS = ("t2v", "i2v", "fp")
CONTINUATIONS = ("i2v", "fp")
# |displacement| in pixels that counts as the digit having moved along an axis.
MOVE_THRESHOLD = 0.5


def caption_directions(captions: list[str]) -> np.ndarray:
    """int [b, 2]: per caption the named (dy, dx) signs (moving_digits' wording: "down"/"up",
    "to the right"/"to the left"; 0 for an axis the caption does not name)."""
    out = np.zeros((len(captions), 2), np.int32)
    for i, caption in enumerate(captions):
        motion = caption.split(",")[0]
        out[i, 0] = 1 if " down" in motion else -1 if " up" in motion else 0
        out[i, 1] = 1 if "to the right" in motion else -1 if "to the left" in motion else 0
    return out


def centre_of_mass(videos: UInt8[np.ndarray, "b T H W 3"]) -> Float[np.ndarray, "b T 2"]:
    """Intensity-weighted (y, x) of every frame in pixels (the digit is the bright part)."""
    grey = np.asarray(videos, np.float32).mean(-1)
    total = grey.sum((2, 3)) + 1e-6
    ys, xs = np.arange(grey.shape[2]), np.arange(grey.shape[3])
    return np.stack([(grey.sum(3) * ys).sum(2) / total, (grey.sum(2) * xs).sum(2) / total], axis=-1)


def direction_correct(
    videos: UInt8[np.ndarray, "b T H W 3"], captions: list[str]
) -> Bool[np.ndarray, " b"]:
    """Whether each clip's digit first moves the way its caption says: along every axis the
    caption names, its first displacement of `MOVE_THRESHOLD` pixels from frame 0 has the
    named sign. The first move, not the net one: digits bounce off walls within frames."""
    named = caption_directions(captions)
    moved = centre_of_mass(videos) - centre_of_mass(videos)[:, :1]  # [b, T, 2]
    correct = np.ones(len(named), bool)
    for axis in range(2):
        far = np.abs(moved[:, :, axis]) >= MOVE_THRESHOLD
        first = np.argmax(far, axis=1)
        sign = np.sign(np.take_along_axis(moved[:, :, axis], first[:, None], axis=1)[:, 0])
        ok = far.any(axis=1) & (sign == named[:, axis])
        correct &= (named[:, axis] == 0) | ok
    return correct


class VideoPoetEvaluator:
    """Samples `config.eval.tasks` from held-out clips and scores them (module docstring)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        setup: VideoPoetSetup,
        graphdef: nnx.GraphDef,
        workdir: str,
        caption_dir: str,
        mesh: jax.sharding.Mesh | None = None,
    ):
        self.config, self.setup, self.graphdef, self.workdir = config, setup, graphdef, workdir
        self.tasks = tuple(config.eval.tasks)
        self.source = sources.make_source(
            config, config.eval.dataset, "eval", num_examples=config.eval.num_examples
        )
        self.fields = tuple(
            k for k in ("video", "label", "caption", "audio") if k in self.source.keys
        )
        self.encode = setup.encode_fn()
        video_graph, video_state = nnx.split(setup.tokenizer)
        self._detokenize = jax.jit(
            lambda state, codes: jnp.clip(nnx.merge(video_graph, state).detokenize(codes), -1, 1)
        )
        self._video_state = video_state
        if setup.audio_tokenizer is not None:
            audio_graph, audio_state = nnx.split(setup.audio_tokenizer)
            self._audio_state = audio_state
            self._decode_audio = jax.jit(
                lambda state, codes: nnx.merge(audio_graph, state).detokenize(
                    codes, setup.audio_samples
                )
            )
        self.caption_dir = caption_dir
        self._captions = None
        self.frechet = evaluator.make_frechet(
            config.eval.frechet, config.eval.num_examples, workdir, mesh
        )
        self._classifier = None

    @property
    def classifier(self):
        if self._classifier is None:
            steps = self.config.eval.classifier_steps
            self._classifier = digit_classifier.load_or_train(
                self.workdir,
                self.config.data.resolution,
                self.config.data.num_frames,
                **({"steps": steps} if steps is not None else {}),
            )
        return self._classifier

    def captions(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Text-encoder embeddings and masks of held-out captions (the encoder loads at the
        first evaluation, not when a run starts)."""
        if self._captions is None:
            self._captions = caption_embeddings.CaptionEmbeddings(
                text_encoder(self.config), self.caption_dir
            )
        return self._captions(captions)

    def batches(self):
        """One pass over the held-out clips (video, label, caption, audio where present)."""
        return sources.eval_batches(self.source, self.config.eval.batch_size, self.fields)

    def inputs(self, batch) -> TaskInputs:
        """A held-out batch as task inputs: the frozen tokenizers' codes and caption embeddings."""
        codes = jax.device_get(self.encode(batch["video"], batch.get("audio")))
        text, mask = None, None
        if self.setup.text_dim:
            text, mask = self.captions([str(c) for c in batch["caption"]])
        conditions = codes.get("conditions")
        return TaskInputs(
            video=np.asarray(codes["video"]),
            audio=np.asarray(codes["audio"]) if "audio" in codes else None,
            text_embeddings=text,
            text_mask=mask,
            condition=None if conditions is None else np.asarray(conditions),
        )

    def generate(self, model, task: str, inputs: TaskInputs, key) -> dict[str, np.ndarray]:
        """One task's decoded outputs: ``video`` uint8 [b, T, H, W, 3] and/or ``audio``
        float32 [b, S]."""
        layout, setup, s = self.setup.layout, self.setup, self.config.sampling
        if TASK_SPECS[task].video_input == "condition":
            index = setup.templates.paint_tasks.index(task)
            inputs = inputs._replace(condition=inputs.condition[:, index])
        batch = layout.build(task, inputs)
        guided = layout.has_text(task) and s.guidance_scale != 1.0
        sampled = sample(
            model,
            batch,
            key,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            guidance_scale=s.guidance_scale if guided else 1.0,
            unconditional=drop_text(batch) if guided else None,
            audio_start=setup.vocab.audio_start,
            audio_temperature=s.audio_temperature,
            audio_top_k=s.audio_top_k,
            audio_top_p=s.audio_top_p,
        )
        outputs = layout.outputs(task, sampled)
        out = {}
        if outputs.video is not None:
            clips = self._detokenize(self._video_state, outputs.video)
            out["video"] = video_grid.to_uint8(np.asarray(clips))
        if outputs.audio is not None:
            out["audio"] = np.asarray(self._decode_audio(self._audio_state, outputs.audio))
        return out

    def soundtrack(self, task: str, out: dict[str, np.ndarray], batch) -> np.ndarray | None:
        """float32 [b, S] heard with ``task``'s grid: its generated audio, or the audio an
        audio-conditioned task was given (A2V); None for a task without sound."""
        if "audio" in out:
            return out["audio"]
        if TASK_SPECS[task].audio_input != "none":
            return np.asarray(batch["audio"], np.float32)[:, : self.setup.audio_samples]
        return None

    def __call__(self, state: nnx.State, step: int) -> loop.EvalOutput:
        """Scores and grids of every task; the grids with sound are written here (the
        loop's report writes silent grids), as ``<task>_sound_step<N>.{mp4,wav}``."""
        model = nnx.merge(self.graphdef, state).model
        config = self.config
        digits = config.eval.dataset == "moving_digits"
        totals: dict[str, dict[str, float]] = {task: {} for task in self.tasks}
        generated: dict[str, list[np.ndarray]] = {task: [] for task in FVD_TASKS}
        real_videos: list[np.ndarray] = []
        # The held-out clips' own codes decoded, for the continuations' tokenizer ceiling.
        decoded_real: list[np.ndarray] = []
        ceiling = self.frechet is not None and any(t in CONTINUATIONS for t in self.tasks)
        grids, audio, sound_grids = {}, {}, {}
        count = 0
        hop = self.setup.audio_tokenizer.hop_length if self.setup.audio_tokenizer is not None else 0

        def add(task, name, values):
            totals[task][name] = totals[task].get(name, 0.0) + float(np.sum(values))

        for index, batch in enumerate(self.batches()):
            inputs = self.inputs(batch)
            video, labels = np.asarray(batch["video"]), np.asarray(batch["label"])
            real_videos.append(video)
            if ceiling:
                codes = self._detokenize(self._video_state, inputs.video)
                decoded_real.append(video_grid.to_uint8(np.asarray(codes)))
            count += len(labels)
            captions = [str(c) for c in batch.get("caption", [""] * len(labels))]
            for k, task in enumerate(self.tasks):
                key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), k), index)
                out = self.generate(model, task, inputs, key)
                if task not in grids and jax.process_index() == 0:
                    # V2A shows the clip its soundtrack was generated for.
                    rows = [out["video"], video] if "video" in out else [video]
                    grids[task] = video_grid.make_grid(rows, max_examples=config.eval.grid_examples)
                    track = self.soundtrack(task, out, batch)
                    if track is not None:
                        sound_grids[task] = (rows, track)
                if "video" in out:
                    clips = out["video"]
                    if digits:
                        predicted = digit_classifier.predict(self.classifier, clips)
                        add(task, "digit_accuracy", predicted == labels)
                    if task == "t2v" and digits:
                        add(task, "direction_accuracy", direction_correct(clips, captions))
                        add(task, "direction_accuracy_real", direction_correct(video, captions))
                    if task in generated:
                        generated[task].append(clips)
                if "audio" in out:
                    sound = out["audio"]
                    real = np.asarray(batch["audio"], np.float32)[:, : sound.shape[1]]
                    # AVCont's first audio frames are given, not generated: score the rest.
                    given = 0
                    if TASK_SPECS[task].audio_input != "none":
                        given = self.setup.layout.avcont_audio_frames * hop
                    if digits:
                        pitch = digit_of_pitch(sound[:, given:], config.sample_rate)
                        add(task, "pitch_accuracy", pitch == labels)
                    if f"{task}_audio" not in audio and jax.process_index() == 0:
                        audio[f"{task}_audio"] = loop.AudioPairs(real, sound, config.sample_rate)
        for task, (rows, track) in sound_grids.items():
            audio_grid.save_sound_grid(
                self.workdir,
                f"{task}_sound_step{step:07d}",
                rows,
                track,
                fps=config.eval.fps,
                sample_rate=config.sample_rate,
                max_examples=config.eval.grid_examples,
            )
        results = {}
        for task, sums in totals.items():
            results.update(loop.clip_means(task, sums, count, config.eval.batch_size))
        if self.frechet is not None:
            results.update(self._frechet(generated, real_videos, decoded_real))
        return loop.EvalOutput(results, grids, audio)

    def _frechet(self, generated, real_videos, decoded_real) -> dict[str, float]:
        """FVD of `FVD_TASKS`' clips as decoded; for continuations also with the real given
        frames in place of their decoded ones (``given_frames_fvd``), of the copy-last-frame
        baseline, which keeps the real given frames too, and of the real clips' own codes
        decoded with the real given frames (``true_codes_fvd``, the tokenizer's ceiling)."""
        config, protocol = self.config, self.config.eval.frechet
        real_source = sources.make_source(
            config,
            config.eval.dataset,
            protocol.real_split,
            num_frames=protocol.num_frames,
            num_examples=self.frechet.real_num_examples,
        )
        real_stats = self.frechet.real_statistics(
            config.eval.dataset,
            lambda: sources.eval_batches(real_source, config.eval.batch_size),
            frame_stride=config.data.frame_stride,
            source_resolution=config.data.resolution,
        )
        layout = self.setup.layout
        temporal = self.setup.tokenizer.temporal_factor
        results = {}
        for task, clips in generated.items():
            if not clips:
                continue
            # Pixel frames of the condition: latent frame 0 is frame 0 alone (causal
            # tokenizer), each later latent frame `temporal` more.
            latent = 1 if task == "i2v" else layout.condition_frames
            first = 1 + (latent - 1) * temporal
            frames = protocol.num_frames
            streams = {"": [c[:, :frames] for c in clips]}
            if task in CONTINUATIONS:
                streams["given_frames_"] = [
                    with_given_frames(c, v, first)[:, :frames] for c, v in zip(clips, real_videos)
                ]
                streams["copy_last_frame_"] = [
                    copy_last_frame(v, first)[:, :frames] for v in real_videos
                ]
                streams["true_codes_"] = [
                    with_given_frames(d, v, first)[:, :frames]
                    for d, v in zip(decoded_real, real_videos)
                ]
            for prefix, batches in streams.items():
                stream = evaluator.FoldedStream(batches, protocol.num_samples)
                for key, value in self.frechet(real_stats, stream.fold).items():
                    results[f"eval/{task}/{prefix}{key}"] = value
        return results
