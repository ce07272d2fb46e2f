"""Stage-1 trainer: the MAGVIT-v2 video tokenizer (thesis 5.3, recipe 5.4) and the 3D-VQ.

The train step is a pure function (state, batch) -> (state, metrics), jitted
with explicit shardings over the config's mesh and a donated state. Losses:
reconstruction (L2), the quantizer's losses (LFQ commitment and the annealed
entropy penalty, or VQ's), LPIPS, and the adversarial game of a 3D StyleGAN
discriminator with R1 and LeCAM (`gan_losses`). `ReconstructionEvaluator`
reconstructs held-out clips with the EMA parameters. The run itself is
`loop`'s; the tokenizer's construction and loading (also used by later
stages) is `frozen_tokenizer`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from flax import nnx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, UInt8
import ml_collections
import numpy as np
import optax

from videogen import optim, precision, sharding
from videogen.data import sources
from videogen.evaluation import evaluator, image_metrics, lpips, video_grid
from videogen.models import discriminator as discriminator_models
from videogen.models import inflation
from videogen.trainers import frozen_tokenizer, gan_losses, loop
from videogen.trainers.frozen_tokenizer import to_float


class LeCAMAnchor(nnx.Variable):
    """EMA of the discriminator's mean logit on real or fake clips (LeCAM); not trained."""


class TrainState(nnx.Module):
    """Everything a tokenizer run checkpoints.

    The tokenizer (generator), its EMA and optimizer; with the adversarial loss
    on, also the discriminator, its own optimizer and the two LeCAM anchors.
    """

    def __init__(
        self,
        model: nnx.Module,
        tx: optax.GradientTransformation,
        discriminator: nnx.Module | None = None,
        discriminator_tx: optax.GradientTransformation | None = None,
    ):
        self.model = model
        self.ema_model = nnx.clone(model)
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.discriminator = discriminator
        if discriminator is not None:
            self.discriminator_optimizer = nnx.Optimizer(
                discriminator, discriminator_tx, wrt=nnx.Param
            )
            self.lecam_real = LeCAMAnchor(jnp.zeros((), jnp.float32))
            self.lecam_fake = LeCAMAnchor(jnp.zeros((), jnp.float32))


def uses_gan(config: ml_collections.ConfigDict) -> bool:
    return config.loss.generator_adversarial_weight > 0


def first_adversarial_step(config: ml_collections.ConfigDict) -> int | None:
    """The step from which a run's train step includes the discriminator (`make_step`);
    None without the GAN."""
    return config.loss.adversarial_start_step if uses_gan(config) else None


def build_discriminator(config: ml_collections.ConfigDict) -> nnx.Module:
    """The 3D StyleGAN discriminator for the training clips; trained from scratch (thesis 5.4.2)."""
    return discriminator_models.StyleGANDiscriminator3d(
        **config.discriminator.to_dict(),
        num_frames=config.data.num_frames,
        resolution=config.data.resolution,
        dtype=precision.compute_dtype(config),
        rngs=nnx.Rngs(jax.random.key(config.seed + 1, impl="rbg")),
    )


def create_train_state(config: ml_collections.ConfigDict) -> TrainState:
    """A fresh train state for `config`: with discriminator when the GAN loss is on; both
    compute in `config.precision`."""
    tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    model = frozen_tokenizer.build_tokenizer(config, dtype=precision.compute_dtype(config))
    if not uses_gan(config):
        return TrainState(model, tx)
    d_tx = optim.make_optimizer(config.discriminator_optimizer, config.num_train_steps)
    return TrainState(model, tx, build_discriminator(config), d_tx)


def entropy_weight_at(step: jax.Array, loss: ml_collections.ConfigDict) -> jax.Array:
    """Thesis 5.4.1: starts at `factor` x weight and decays linearly to weight in `anneal_steps`."""
    progress = jnp.clip(
        jnp.asarray(step, jnp.float32) / max(loss.entropy_anneal_steps, 1), 0.0, 1.0
    )
    return loss.entropy_weight * (
        loss.entropy_anneal_factor + (1.0 - loss.entropy_anneal_factor) * progress
    )


def quantizer_loss_weight(name: str, step: jax.Array, loss: ml_collections.ConfigDict):
    """`loss.<name>_weight` for a quantizer loss term; the entropy weight is annealed."""
    if name == "entropy":
        return entropy_weight_at(step, loss)
    key = f"{name}_weight"
    if key not in loss:
        raise ValueError(
            f"the quantizer returns a loss {name!r} but the config has no loss.{key}; "
            "add it to the config's loss block."
        )
    return loss[key]


def _generator_forward(
    graphdef: nnx.GraphDef,
    rest: nnx.State,
    video: Float[Array, "b T H W c"],
    step: jax.Array,
    loss: ml_collections.ConfigDict,
    params: nnx.State,
):
    """Reconstruction and weighted quantizer loss (both differentiated), and logged metrics."""
    reconstruction, aux = nnx.merge(graphdef, params, rest)(video)
    quantizer_loss = jnp.zeros((), jnp.float32)
    metrics = dict(aux["metrics"])
    for name, value in aux["losses"].items():
        weight = quantizer_loss_weight(name, step, loss)
        quantizer_loss = quantizer_loss + weight * value
        metrics[f"{name}_loss"] = value
        metrics[f"weights/{name}"] = jnp.asarray(weight, jnp.float32)
    return (reconstruction, quantizer_loss), metrics


def perceptual_frames(
    step: jax.Array, num_frames: int, batch: int, count: int
) -> Int[Array, "b n"] | None:
    """Frames each clip's LPIPS is taken on: all (None) if count is None, else `count` random ones.

    Random per step and clip but a function of the step only, so a resumed run
    picks the same frames. LPIPS (VGG16 on every frame of real and
    reconstruction) costs more than the tokenizer itself on small clips; a few
    frames per clip give an unbiased estimate of the all-frames loss.
    """
    if count is None or count >= num_frames:
        return None
    if count < 1:
        raise ValueError(
            f"loss.perceptual_frames_per_clip={count}; use a positive frame count, or None "
            "for every frame."
        )
    keys = jax.random.split(jax.random.fold_in(jax.random.key(0), step), batch)
    return jax.vmap(lambda k: jax.random.permutation(k, num_frames)[:count])(keys)


def perceptual_clips(step: jax.Array, batch: int, count: int | None) -> Int[Array, "n"] | None:
    """Clips of the batch LPIPS is taken on: all (None) if count is None, else `count` random
    ones, a function of the step only (as `perceptual_frames`). On single frames LPIPS is
    most of the step (the quickstart's image stage: VGG16 on 16 32x32 images is 3x its
    tokenizer), and half the clips give an unbiased estimate of the whole batch's loss.
    (On a batch split over devices the chosen clips are gathered: a CPU-scale option.)"""
    if count is None or count >= batch:
        return None
    if count < 1:
        raise ValueError(
            f"loss.perceptual_clips_per_batch={count}; use a positive clip count, or None "
            "for every clip."
        )
    return jax.random.permutation(jax.random.fold_in(jax.random.key(1), step), batch)[:count]


def _pixel_objective(
    perceptual: nnx.Module | None,
    video: Float[Array, "b T H W c"],
    step: jax.Array,
    loss: ml_collections.ConfigDict,
    reconstruction: Float[Array, "b T H W c"],
):
    """Weighted L2 + per-frame LPIPS of the reconstruction (the terms that only see pixels)."""
    l2 = jnp.mean(jnp.square(reconstruction.astype(jnp.float32) - video))
    total = loss.reconstruction_weight * l2
    parts = {"reconstruction_loss": l2}
    if perceptual is not None:
        frames = perceptual_frames(
            step, video.shape[1], video.shape[0], loss.perceptual_frames_per_clip
        )
        a, b = reconstruction, video
        if frames is not None:
            index = frames[:, :, None, None, None]
            a = jnp.take_along_axis(a, index, axis=1)
            b = jnp.take_along_axis(b, index, axis=1)
        clips = perceptual_clips(step, video.shape[0], loss.perceptual_clips_per_batch)
        if clips is not None:
            a, b = a[clips], b[clips]
        lpips_value = jnp.mean(perceptual.video(a, b))
        total = total + loss.perceptual_weight * lpips_value
        parts["perceptual_loss"] = lpips_value
    return total, parts


@dataclasses.dataclass
class Gradients:
    generator: nnx.State
    discriminator: nnx.State | None  # None without the GAN
    lecam_anchors: tuple[jax.Array, jax.Array] | None  # the anchors for the next step
    metrics: dict[str, jax.Array]


def compute_gradients(
    train_state: TrainState,
    perceptual: nnx.Module | None,
    video: Float[Array, "b T H W c"],
    loss: ml_collections.ConfigDict,
    adversarial: bool = True,
) -> Gradients:
    """Gradients of the generator's and the discriminator's objectives at `train_state`.

    `adversarial=False` leaves the discriminator out of the program entirely
    (no gradient for it); the trainer compiles that cheaper step for the steps
    before `loss.adversarial_start_step`.

    Generator: reconstruction (L2) + quantizer losses + perceptual (LPIPS) +
    adversarial. Discriminator: GAN loss on real clips and the reconstructions
    (held fixed) + R1 on real clips + LeCAM. One forward pass of the
    discriminator on the reconstructions serves both players: its VJP is pulled
    back once with the generator's adversarial cotangent (to the pixels, then
    through the tokenizer) and once with the discriminator's (to its
    parameters). The real clips' one forward pass serves the discriminator
    loss, LeCAM and R1 alike. Before `loss.adversarial_start_step` both
    adversarial gradients are zero.
    """
    step = train_state.optimizer.step[...]
    g_graphdef, g_params, g_rest = nnx.split(train_state.model, nnx.Param, ...)
    (reconstruction, quantizer_loss), g_vjp, metrics = jax.vjp(
        functools.partial(_generator_forward, g_graphdef, g_rest, video, step, loss),
        g_params,
        has_aux=True,
    )
    (pixel_loss, parts), recon_cotangent = jax.value_and_grad(
        functools.partial(_pixel_objective, perceptual, video, step, loss), has_aux=True
    )(reconstruction)
    metrics.update(parts)
    metrics["weights/reconstruction"] = jnp.asarray(loss.reconstruction_weight, jnp.float32)
    if perceptual is not None:
        metrics["weights/perceptual"] = jnp.asarray(loss.perceptual_weight, jnp.float32)
    total = pixel_loss + quantizer_loss
    d_grads = anchors_next = None
    if train_state.discriminator is not None and not adversarial:
        metrics["weights/generator_adversarial"] = jnp.zeros((), jnp.float32)

    if train_state.discriminator is not None and adversarial:
        kind = loss.generator_loss_type
        active = (step >= loss.adversarial_start_step).astype(jnp.float32)
        d_graphdef, d_params, d_rest = nnx.split(train_state.discriminator, nnx.Param, ...)

        def discriminate(params, clips):
            return nnx.merge(d_graphdef, params, d_rest)(clips)

        fake_logits, d_vjp = jax.vjp(discriminate, d_params, reconstruction)
        adversarial_weight = active * loss.generator_adversarial_weight
        g_adversarial, fake_cotangent = jax.value_and_grad(
            lambda f: gan_losses.generator_loss(f, kind)
        )(fake_logits)
        _, adversarial_recon_cotangent = d_vjp(adversarial_weight * fake_cotangent)
        recon_cotangent = recon_cotangent + adversarial_recon_cotangent
        total = total + adversarial_weight * g_adversarial

        anchors = (train_state.lecam_real[...], train_state.lecam_fake[...])

        def real_side(params):
            """The discriminator objective's real-clip terms (with R1); fake logits held fixed."""
            r1, real_logits = gan_losses.r1_penalty(lambda x: discriminate(params, x), video)
            fake = jax.lax.stop_gradient(fake_logits)
            d_loss = gan_losses.discriminator_loss(real_logits, fake, kind)
            lecam = gan_losses.lecam_loss(real_logits, fake, *anchors)
            objective = d_loss + loss.discriminator_r1_cost * r1 + loss.lecam_weight * lecam
            return objective, (real_logits, d_loss, r1, lecam)

        (_, (real_logits, d_loss, r1, lecam)), d_grads_real = jax.value_and_grad(
            real_side, has_aux=True
        )(d_params)
        real_fixed = jax.lax.stop_gradient(real_logits)
        fake_d_cotangent = jax.grad(
            lambda f: (
                gan_losses.discriminator_loss(real_fixed, f, kind)
                + loss.lecam_weight * gan_losses.lecam_loss(real_fixed, f, *anchors)
            )
        )(fake_logits)
        d_grads_fake, _ = d_vjp(fake_d_cotangent)
        d_grads = jax.tree.map(lambda a, b: active * (a + b), d_grads_real, d_grads_fake)
        new_real, new_fake = gan_losses.update_lecam_ema(
            *anchors, real_logits, fake_logits, loss.lecam_ema_decay
        )
        anchors_next = (
            jnp.where(active > 0, new_real, anchors[0]),
            jnp.where(active > 0, new_fake, anchors[1]),
        )
        metrics.update(
            {
                "generator_adversarial_loss": g_adversarial,
                "discriminator_loss": d_loss,
                "r1_penalty": r1,
                "lecam_loss": lecam,
                "logits/real": jnp.mean(real_logits),
                "logits/fake": jnp.mean(fake_logits),
                "lecam/anchor_real": anchors_next[0],
                "lecam/anchor_fake": anchors_next[1],
                "discriminator_grad_norm": optax.tree.norm(d_grads),
                "weights/generator_adversarial": adversarial_weight,
                "weights/discriminator_r1": jnp.asarray(loss.discriminator_r1_cost, jnp.float32),
                "weights/lecam": jnp.asarray(loss.lecam_weight, jnp.float32),
            }
        )

    (g_grads,) = g_vjp((recon_cotangent, jnp.ones((), jnp.float32)))
    metrics["loss"] = total
    metrics["train_psnr"] = jnp.mean(
        image_metrics.psnr(jnp.clip((reconstruction + 1) / 2, 0, 1), (video + 1) / 2, max_value=1.0)
    )
    return Gradients(g_grads, d_grads, anchors_next, metrics)


def train_step(
    graphdef: nnx.GraphDef,
    lpips_graphdef: nnx.GraphDef | None,
    config: ml_collections.ConfigDict,
    schedule: optax.Schedule,
    adversarial: bool,
    state: nnx.State,
    lpips_state: nnx.State | None,
    batch: dict[str, jax.Array],
) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One generator (+ discriminator if `adversarial`) step on a global batch; pure."""
    train_state = nnx.merge(graphdef, state)
    step = train_state.optimizer.step[...]
    perceptual = None if lpips_graphdef is None else nnx.merge(lpips_graphdef, lpips_state)
    grads = compute_gradients(
        train_state, perceptual, to_float(batch["video"]), config.loss, adversarial
    )
    train_state.optimizer.update(train_state.model, grads.generator)
    if grads.discriminator is not None:
        train_state.discriminator_optimizer.update(train_state.discriminator, grads.discriminator)
        train_state.lecam_real[...], train_state.lecam_fake[...] = grads.lecam_anchors
    decay = optim.ema_decay_at(step, config.ema_decay)
    params = nnx.state(train_state.model, nnx.Param)
    ema_params = nnx.state(train_state.ema_model, nnx.Param)
    nnx.update(train_state.ema_model, optim.ema_update(ema_params, params, decay))
    metrics = grads.metrics
    metrics["grad_norm"] = optax.tree.norm(grads.generator)
    metrics["learning_rate"] = schedule(step)
    return nnx.state(train_state), metrics


def reconstruct(
    graphdef: nnx.GraphDef,
    lpips_graphdef: nnx.GraphDef,
    state: nnx.State,
    lpips_state: nnx.State,
    video: UInt8[Array, "b T H W c"],
) -> dict[str, jax.Array]:
    """EMA reconstructions and their per-example metrics (videos in [0, 1])."""
    model = nnx.merge(graphdef, state).ema_model
    target = to_float(video)
    reconstruction, _ = model(target)
    target01, recon01 = (target + 1) / 2, jnp.clip((reconstruction + 1) / 2, 0.0, 1.0)
    baseline01 = latent_resolution_baseline(target01, model.latent_shape(*video.shape[1:4]))
    return {
        "reconstruction": recon01,
        "psnr": image_metrics.psnr(recon01, target01, max_value=1.0),
        "ssim": image_metrics.ssim(recon01, target01, max_value=1.0),
        "lpips": nnx.merge(lpips_graphdef, lpips_state).video(recon01 * 2 - 1, target),
        "baseline_psnr": image_metrics.psnr(baseline01, target01, max_value=1.0),
    }


def latent_resolution_baseline(
    video: Float[Array, "b T H W c"], latent_shape: tuple[int, int, int]
) -> Float[Array, "b T H W c"]:
    """The clip down-sampled to the latent grid (antialiased) and linearly up-sampled back.

    A tokenizer that is worth its tokens must beat this, which keeps exactly as
    many spatio-temporal positions as the latent grid (with 3 float channels).
    """
    b, _, _, _, c = video.shape
    small = jax.image.resize(video, (b, *latent_shape, c), method="linear", antialias=True)
    return jax.image.resize(small, video.shape, method="linear", antialias=False)


RECONSTRUCTION_METRICS = ("psnr", "ssim", "lpips", "baseline_psnr")


def per_source_psnr(
    name: str, source_keys: list[str], psnr: list[float], baseline_psnr: list[float]
) -> dict[str, float]:
    """`eval/<name>/<source>/{psnr, baseline_psnr, psnr_gain_over_baseline}`: per-clip means
    over the clips of each source, from the per-clip PSNRs the evaluation computed anyway.

    A dataset's mean can hide a source the tokenizer fails on (a photo it never saw behind
    one it memorised); one line per source shows it.
    """
    if not len(source_keys) == len(psnr) == len(baseline_psnr):
        raise ValueError(
            f"{len(source_keys)} source keys for {len(psnr)} PSNRs and {len(baseline_psnr)} "
            "baseline PSNRs; pass one of each per clip."
        )
    grouped: dict[str, list[tuple[float, float]]] = {}
    for key, value, baseline in zip(source_keys, psnr, baseline_psnr):
        grouped.setdefault(str(key), []).append((value, baseline))
    results = {}
    for key, pairs in sorted(grouped.items()):
        value, baseline = np.mean(pairs, axis=0)
        results[f"eval/{name}/{key}/psnr"] = float(value)
        results[f"eval/{name}/{key}/baseline_psnr"] = float(baseline)
        results[f"eval/{name}/{key}/psnr_gain_over_baseline"] = float(value - baseline)
    return results


class ReconstructionEvaluator:
    """Held-out reconstruction metrics of the EMA model on each of `config.eval.datasets`.

    PSNR, SSIM and LPIPS (VGG16) per clip, averaged, next to the latent-grid
    baseline's PSNR, and the two PSNRs per source where examples name theirs
    (`source`: real_clips); with `config.eval.frechet` enabled, also rFVD of the
    reconstructions against the real split's cached I3D statistics
    (`<workdir>/real_stats`). One ``input | reconstruction`` grid per dataset.
    """

    def __init__(self, config: ml_collections.ConfigDict, graphdef, state_shardings, mesh, workdir):
        self.config, self.mesh, self.workdir = config, mesh, workdir
        self.sources = {
            spec: sources.make_source(config, spec, "eval", num_examples=config.eval.num_examples)
            for spec in sources.spec_list(config.eval.datasets)
        }
        lpips_graphdef, self.lpips_state = nnx.split(lpips.load_lpips())
        self._reconstruct = jax.jit(
            functools.partial(reconstruct, graphdef, lpips_graphdef),
            in_shardings=(state_shardings, None, sharding.batch_sharding(mesh)),
        )
        # rFVD compares each reconstruction with the clip it reconstructs.
        self.frechet = evaluator.make_frechet(
            config.eval.frechet, config.eval.num_examples, workdir, mesh
        )

    def _real_statistics(self, name: str):
        """The real split's feature statistics for rFVD (cached after the first evaluation)."""
        protocol = self.config.eval.frechet
        if protocol.real_split == "eval":
            source = self.sources[name]
        else:
            source = sources.make_source(
                self.config, name, protocol.real_split, num_examples=self.frechet.real_num_examples
            )
        return self.frechet.real_statistics(
            name,
            lambda: sources.eval_batches(source, self.config.eval.batch_size),
            frame_stride=self.config.data.frame_stride,
            source_resolution=self.config.data.resolution,
        )

    def __call__(self, state: nnx.State, step: int) -> loop.EvalOutput:
        del step  # reconstructions do not depend on it; the loop writes the report
        results, grids = {}, {}
        for name, source in self.sources.items():
            totals = {key: 0.0 for key in RECONSTRUCTION_METRICS}
            progress = {"count": 0, "grid": None}
            by_source = {"source": [], "psnr": [], "baseline_psnr": []}
            fields = ("video", "source") if "source" in source.keys else ("video",)

            def reconstructions():
                """uint8 reconstructions batch by batch; accumulates the per-clip metrics."""
                for batch in sources.eval_batches(source, self.config.eval.batch_size, fields):
                    out = self._reconstruct(
                        state,
                        self.lpips_state,
                        sharding.shard_batch({"video": batch["video"]}, self.mesh)["video"],
                    )
                    for key in RECONSTRUCTION_METRICS:
                        totals[key] += float(jnp.sum(out[key]))
                    progress["count"] += out["psnr"].shape[0]
                    if "source" in batch:
                        by_source["source"].extend(batch["source"])
                        for key in ("psnr", "baseline_psnr"):
                            by_source[key].extend(np.asarray(jax.device_get(out[key])).tolist())
                    recon = video_grid.to_uint8(
                        np.asarray(jax.device_get(out["reconstruction"])) * 2 - 1
                    )
                    if progress["grid"] is None and jax.process_index() == 0:
                        progress["grid"] = video_grid.make_grid(
                            [np.asarray(batch["video"]), recon],
                            max_examples=self.config.eval.grid_examples,
                        )
                    yield recon

            folds = evaluator.FoldedStream(
                reconstructions(), max(self.config.eval.frechet.num_samples, 1)
            )
            if self.frechet is not None:
                real_stats = self._real_statistics(name)
                # One pass over the held-out clips: repeat r takes the r-th block
                # of num_samples reconstructions (the thesis' folds of one loader).
                for key, value in self.frechet(real_stats, folds.fold).items():
                    results[f"eval/{name}/r{key}"] = value
            folds.drain()  # the clips the Frechet folds did not need still count
            results.update(
                loop.clip_means(name, totals, progress["count"], self.config.eval.batch_size)
            )
            results[f"eval/{name}/psnr_gain_over_baseline"] = (
                results[f"eval/{name}/psnr"] - results[f"eval/{name}/baseline_psnr"]
            )
            if by_source["source"]:
                results.update(
                    per_source_psnr(
                        name, by_source["source"], by_source["psnr"], by_source["baseline_psnr"]
                    )
                )
            if progress["grid"] is not None:
                grids[name] = progress["grid"]
        return loop.EvalOutput(results, grids)


def inflation_mode(config: ml_collections.ConfigDict) -> str:
    if config.init.inflation != "auto":
        return config.init.inflation
    return "last" if config.model_class == "CausalVideoTokenizer" else "central"


def inflate_from_image_run(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    state: nnx.State,
    shardings: nnx.State,
) -> nnx.State:
    """`state` with tokenizer and EMA set to the inflated EMA tokenizer of `init.image_workdir`.

    The discriminator is not inflated: it keeps its fresh initialisation (thesis 5.4.2).
    """
    image_model, image_config = frozen_tokenizer.load_tokenizer(config.init.image_workdir)
    if image_config.model_class != config.model_class:
        raise ValueError(
            f"init.image_workdir={config.init.image_workdir!r} holds a {image_config.model_class} "
            f"but this run trains a {config.model_class}; inflate from an image run of the "
            "same class."
        )
    mode = inflation_mode(config)
    train_state = nnx.merge(graphdef, state)
    inflated = inflation.inflate_params(
        nnx.to_pure_dict(nnx.state(image_model, nnx.Param)),
        nnx.to_pure_dict(nnx.state(train_state.model, nnx.Param)),
        mode,
    )
    inflated = inflation.fill_untrained_subframes(inflated, train_state.model)
    for model in (train_state.model, train_state.ema_model):
        params = nnx.state(model, nnx.Param)
        # Own buffers per model: the donated train state must not hold one array twice.
        nnx.replace_by_pure_dict(params, jax.tree.map(jnp.copy, inflated))
        nnx.update(model, params)
    logging.info(
        "Initialised the tokenizer by %s inflation of the image tokenizer in %s.",
        mode,
        config.init.image_workdir,
    )
    return jax.device_put(nnx.state(train_state), shardings)


def jit_train_step(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    lpips_graphdef: nnx.GraphDef | None,
    state_shardings: nnx.State,
    mesh,
    adversarial: bool,
) -> loop.StepProgram:
    """`(state, lpips_state, batch) -> (state, metrics)`, jitted over `mesh`: the program
    `make_step` runs, also compiled on abstract inputs by the memory planner (`videogen.plan`)."""
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)
    return loop.jit_step(
        functools.partial(train_step, graphdef, lpips_graphdef, config, schedule, adversarial),
        state_shardings,
        mesh,
        preset=config.sharding,
        frozen_args=1,
    )


def make_step(
    config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, state_shardings: nnx.State, mesh
) -> loop.StepFn:
    """The jitted train step; two programs, each compiled when first used: without the
    discriminator before `loss.adversarial_start_step` (cheaper), with it after."""
    lpips_graphdef, lpips_state = (
        nnx.split(lpips.load_lpips()) if config.loss.perceptual_weight > 0 else (None, None)
    )
    jitted_steps = {
        adversarial: jit_train_step(
            config, graphdef, lpips_graphdef, state_shardings, mesh, adversarial
        )
        for adversarial in (False, True)
    }

    start = first_adversarial_step(config)

    def step_fn(state, batch, step):
        adversarial = start is not None and step >= start
        return jitted_steps[adversarial](state, lpips_state, batch)

    return step_fn


def make_trainer(config: ml_collections.ConfigDict, workdir: str) -> loop.Trainer:
    """The tokenizer's state, data, step and evaluator for the shared loop."""
    return loop.Trainer(
        build_state=lambda: create_train_state(config),
        train_source=sources.train_source(config),
        fields=("video",),
        make_step=functools.partial(make_step, config),
        make_evaluator=lambda graphdef, shardings, mesh: ReconstructionEvaluator(
            config, graphdef, shardings, mesh, workdir
        ),
        outputs="input | reconstruction grids, GIF and MP4",
        init_fresh=(
            functools.partial(inflate_from_image_run, config) if config.init.image_workdir else None
        ),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> loop.RunResult:
    """Trains (resuming from `workdir`) until `config.num_train_steps`, then evaluates.

    `stop_at_step` ends this run early, after saving, as a preemption would.
    """
    trainer = make_trainer(config, workdir)
    return loop.train_and_evaluate(config, workdir, trainer, stop_at_step=stop_at_step)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval`: reconstruction metrics of the latest checkpoint in `workdir`."""
    return loop.evaluate_checkpoint(config, workdir, make_trainer(config, workdir))
