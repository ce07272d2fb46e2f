"""Audio tokenizer trainer: the SoundStream-style codec of VideoPoet (thesis 8.3.1).

The codec (`models.audio_tokenizer.SoundStreamTokenizer`: causal 1-D CNN, residual
VQ with EMA codebooks, dead-code restarts and quantizer dropout) is trained on
16 kHz mono waveforms with the time-domain L1, the multi-scale mel spectral
distance and the RVQ commitment loss; with `loss.adversarial_weight` > 0 also
against a multi-scale STFT discriminator (adversarial + feature-matching
losses). `AudioEvaluator` reconstructs held-out clips and compares them with the
mu-law codec at the same bit rate. The run itself is `loop`'s.
"""

from __future__ import annotations

import functools

from flax import nnx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int
import ml_collections
import numpy as np
import optax

from videogen import optim, precision, sharding
from videogen.data import moving_digits, sources
from videogen.evaluation import audio_metrics
from videogen.models.audio_discriminator import (
    MultiScaleSTFTDiscriminator,
    feature_matching_loss,
    per_example_logits,
)
from videogen.models.audio_tokenizer import SoundStreamTokenizer
from videogen.trainers import gan_losses, loop


class TrainState(nnx.Module):
    """The codec and its optimizer; with the adversarial loss on, the discriminator and its own.

    The RVQ codebooks are not parameters: they follow their EMA inside the codec's
    forward pass (`CodebookState`), and evaluation reads them from the same model.
    """

    def __init__(
        self,
        model: SoundStreamTokenizer,
        tx: optax.GradientTransformation,
        discriminator: MultiScaleSTFTDiscriminator | None = None,
        discriminator_tx: optax.GradientTransformation | None = None,
    ):
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.discriminator = discriminator
        if discriminator is not None:
            self.discriminator_optimizer = nnx.Optimizer(
                discriminator, discriminator_tx, wrt=nnx.Param
            )


def uses_gan(config: ml_collections.ConfigDict) -> bool:
    return config.loss.adversarial_weight > 0


def create_train_state(config: ml_collections.ConfigDict) -> TrainState:
    model = SoundStreamTokenizer(
        **config.model.to_dict(),
        dtype=precision.compute_dtype(config),
        # 'rbg' initialises fast on CPU; quantizer dropout and code restarts draw from 'dropout'.
        rngs=nnx.Rngs(params=jax.random.key(config.seed, impl="rbg"), dropout=config.seed + 1),
    )
    tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    if not uses_gan(config):
        return TrainState(model, tx)
    discriminator = MultiScaleSTFTDiscriminator(
        **config.discriminator.to_dict(),
        dtype=precision.compute_dtype(config),
        rngs=nnx.Rngs(jax.random.key(config.seed + 2, impl="rbg")),
    )
    d_tx = optim.make_optimizer(config.discriminator_optimizer, config.num_train_steps)
    return TrainState(model, tx, discriminator, d_tx)


def reconstruction_terms(
    reconstruction: Float[Array, "b S"], audio: Float[Array, "b S"]
) -> dict[str, Float[Array, ""]]:
    """Batch means of the time-domain L1 and the multi-scale mel spectral distance."""
    return {
        "l1_loss": jnp.mean(audio_metrics.waveform_l1(reconstruction, audio)),
        "spectral_loss": jnp.mean(
            audio_metrics.multiscale_spectral_distance(reconstruction, audio)
        ),
    }


def train_step(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    schedule: optax.Schedule,
    state: nnx.State,
    batch: dict[str, jax.Array],
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One codec (+ discriminator) step on a global batch; pure in (state, batch).

    Only the coded samples (`model.coded_samples`: whole latent frames) enter the
    losses; the few samples after the last frame are not reconstructed.
    """
    train_state = nnx.merge(graphdef, state)
    model, loss = train_state.model, config.loss
    step = train_state.optimizer.step[...]
    audio = batch["audio"].astype(jnp.float32)
    coded = model.coded_samples(audio.shape[1])
    target = audio[:, :coded]
    discriminate = None
    if train_state.discriminator is not None:
        d_graphdef, d_params, d_rest = nnx.split(train_state.discriminator, nnx.Param, ...)

        def discriminate(params, clips):
            return nnx.merge(d_graphdef, params, d_rest)(clips)

    def codec_loss(model):
        reconstruction, aux = model(audio)
        reconstruction = reconstruction[:, :coded]
        metrics = reconstruction_terms(reconstruction, target)
        metrics["commitment_loss"] = aux["losses"]["commitment"]
        total = (
            loss.l1_weight * metrics["l1_loss"]
            + loss.spectral_weight * metrics["spectral_loss"]
            + loss.commitment_weight * metrics["commitment_loss"]
        )
        if discriminate is not None:
            fake_logits, fake_features = discriminate(d_params, reconstruction)
            _, real_features = discriminate(d_params, target)
            metrics["generator_adversarial_loss"] = gan_losses.generator_loss(
                per_example_logits(fake_logits), loss.gan_loss_type
            )
            metrics["feature_matching_loss"] = feature_matching_loss(real_features, fake_features)
            total = (
                total
                + loss.adversarial_weight * metrics["generator_adversarial_loss"]
                + loss.feature_matching_weight * metrics["feature_matching_loss"]
            )
        for name, value in aux["metrics"].items():
            metrics[f"quantizer/{name}"] = value
        metrics["loss"] = total
        return total, (metrics, reconstruction)

    # nnx.value_and_grad differentiates the Params and writes the codebook EMA, code
    # restarts and the dropout stream's counter back into `model`.
    (_, (metrics, reconstruction)), grads = nnx.value_and_grad(codec_loss, has_aux=True)(model)
    train_state.optimizer.update(model, grads)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(step)
    metrics["train_si_snr"] = jnp.mean(audio_metrics.si_snr(reconstruction, target))
    if discriminate is not None:
        fake = jax.lax.stop_gradient(reconstruction)

        def discriminator_objective(params):
            real_logits, _ = discriminate(params, target)
            fake_logits, _ = discriminate(params, fake)
            return gan_losses.discriminator_loss(
                per_example_logits(real_logits), per_example_logits(fake_logits), loss.gan_loss_type
            )

        d_loss, d_grads = jax.value_and_grad(discriminator_objective)(d_params)
        train_state.discriminator_optimizer.update(train_state.discriminator, d_grads)
        metrics["discriminator_loss"] = d_loss
    return nnx.state(train_state), metrics


def make_step(
    config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, state_shardings: nnx.State, mesh
) -> loop.StepFn:
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    jitted = loop.jit_step(
        functools.partial(train_step, graphdef, config, schedule),
        state_shardings,
        mesh,
        preset=config.sharding,
    )
    return lambda state, batch, step: jitted(state, batch)


def reconstruct(
    graphdef: nnx.GraphDef, state: nnx.State, audio: Float[Array, "b S"]
) -> dict[str, jax.Array]:
    """Deterministic (all RVQ levels, no codebook updates) reconstructions of the coded
    samples and their per-clip metrics."""
    model = nnx.merge(graphdef, state).model
    model.eval()
    coded = model.coded_samples(audio.shape[1])
    reconstruction, aux = model(audio)
    reconstruction, target = reconstruction[:, :coded], audio[:, :coded]
    return {
        "reconstruction": reconstruction,
        "si_snr": audio_metrics.si_snr(reconstruction, target),
        "spectral_distance": audio_metrics.multiscale_spectral_distance(reconstruction, target),
        "codebook_usage": aux["metrics"]["codebook_usage"],
    }


def digit_of_pitch(audio: Float[np.ndarray, "b S"], sample_rate: int) -> Int[np.ndarray, " b"]:
    """The digit whose moving-digits tone (`DIGIT_PITCHES_HZ`) is nearest to each clip's
    strongest frequency between 150 Hz and 1 kHz (the tones span 220-622 Hz; the bounce
    clicks sit at 3 kHz)."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.shape[1]), axis=1))
    freqs = np.fft.rfftfreq(audio.shape[1], 1.0 / sample_rate)
    band = (freqs >= 150.0) & (freqs <= 1000.0)
    peak = freqs[band][np.argmax(spectrum[:, band], axis=1)]
    pitches = np.asarray(moving_digits.DIGIT_PITCHES_HZ)
    return np.argmin(np.abs(np.log(peak[:, None] / pitches[None, :])), axis=1)


AUDIO_METRICS = ("si_snr", "spectral_distance", "baseline_si_snr", "baseline_spectral_distance")


class AudioEvaluator:
    """Held-out reconstructions of each of `config.eval.datasets`, against the mu-law codec at
    the same bit rate (`audio_metrics.mu_law_codec`): SI-SNR and multi-scale spectral
    distance of both, the codec's per-level code usage, and on moving digits the fraction
    of clips whose tone the reconstruction keeps (`digit_of_pitch`). One WAV + spectrogram
    grid per dataset."""

    def __init__(self, config: ml_collections.ConfigDict, graphdef, state_shardings, mesh):
        self.config, self.mesh = config, mesh
        self.sources = {
            spec: sources.make_source(
                config, spec, "eval", num_examples=config.eval.num_examples, with_audio=True
            )
            for spec in sources.spec_list(config.eval.datasets)
        }
        self._reconstruct = jax.jit(
            functools.partial(reconstruct, graphdef),
            in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        )

    def __call__(self, state: nnx.State, step: int) -> loop.EvalOutput:
        del step  # reconstructions do not depend on it; the loop writes the report
        rate = self.config.sample_rate
        results, audio = {}, {}
        for name, source in self.sources.items():
            totals = dict.fromkeys(AUDIO_METRICS, 0.0)
            usage, count, pitch_kept = 0.0, 0, 0
            with_labels = name == "moving_digits"
            fields = ("audio", "label") if with_labels else ("audio",)
            for batch in sources.eval_batches(source, self.config.eval.batch_size, fields):
                clips = np.asarray(batch["audio"], np.float32)
                out = self._reconstruct(
                    state, sharding.shard_batch({"audio": clips}, self.mesh)["audio"]
                )
                recon = np.asarray(jax.device_get(out["reconstruction"]))
                target = clips[:, : recon.shape[1]]
                baseline = audio_metrics.mu_law_codec(target, sample_rate=rate)
                totals["si_snr"] += float(np.sum(out["si_snr"]))
                totals["spectral_distance"] += float(np.sum(out["spectral_distance"]))
                totals["baseline_si_snr"] += float(
                    np.sum(audio_metrics.si_snr(jnp.asarray(baseline), jnp.asarray(target)))
                )
                totals["baseline_spectral_distance"] += float(
                    np.sum(
                        audio_metrics.multiscale_spectral_distance(
                            jnp.asarray(baseline), jnp.asarray(target)
                        )
                    )
                )
                usage = usage + np.asarray(out["codebook_usage"]) * len(clips)
                if with_labels:
                    pitch_kept += int(np.sum(digit_of_pitch(recon, rate) == batch["label"]))
                if count == 0 and jax.process_index() == 0:
                    audio[name] = loop.AudioPairs(target, recon, rate)
                count += len(clips)
            results.update(loop.clip_means(name, totals, count, self.config.eval.batch_size))
            results[f"eval/{name}/si_snr_gain_over_baseline"] = (
                results[f"eval/{name}/si_snr"] - results[f"eval/{name}/baseline_si_snr"]
            )
            for level, value in enumerate(usage / count):
                results[f"eval/{name}/codebook_usage_level{level}"] = float(value)
            if with_labels:
                results[f"eval/{name}/pitch_accuracy"] = pitch_kept / count
        return loop.EvalOutput(results, audio=audio)


def make_trainer(config: ml_collections.ConfigDict, workdir: str) -> loop.Trainer:
    """The audio codec's state, data, step and evaluator for the shared loop."""
    del workdir  # the evaluator caches nothing
    return loop.Trainer(
        build_state=lambda: create_train_state(config),
        train_source=sources.train_source(config, with_audio=True),
        fields=("audio",),
        make_step=functools.partial(make_step, config),
        make_evaluator=lambda graphdef, shardings, mesh: AudioEvaluator(
            config, graphdef, shardings, mesh
        ),
        outputs="input | reconstruction WAV files and spectrogram PNGs",
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> loop.RunResult:
    """Trains (resuming from `workdir`) until `config.num_train_steps`, then evaluates."""
    trainer = make_trainer(config, workdir)
    return loop.train_and_evaluate(config, workdir, trainer, stop_at_step=stop_at_step)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval`: the held-out reconstruction metrics of the latest checkpoint."""
    return loop.evaluate_checkpoint(config, workdir, make_trainer(config, workdir))
