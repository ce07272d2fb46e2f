"""Stage-1 trainer: the MAGVIT-v2 video tokenizer (thesis 5.3, hyperparameters 5.4.1).

The train step is a pure function (state, batch) -> (state, metrics), jitted
with explicit shardings over the config's mesh and a donated state. Losses in
this version: reconstruction (L2), LFQ commitment and the annealed LFQ entropy
penalty. Evaluation reconstructs held-out clips with the EMA parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any

from clu import parameter_overview, periodic_actions
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, UInt8
import ml_collections
import numpy as np
import optax

from videogen import checkpoint, optim, sharding
from videogen.data import mixture, pipeline
from videogen.evaluation import evaluator, image_metrics, lpips, video_grid
from videogen.models import discriminator as discriminator_models
from videogen.models import inflation
from videogen.models import tokenizer as tokenizer_models
from videogen.trainers import gan_losses, loop


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


def build_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The tokenizer class named by `config.model_class` in videogen.models.tokenizer."""
    cls = getattr(tokenizer_models, config.model_class, None)
    if cls is None:
        raise ValueError(
            f"config.model_class={config.model_class!r} is not defined in "
            "videogen/models/tokenizer.py."
        )
    # The 'rbg' PRNG compiles the initialiser several times faster than threefry on CPU.
    return cls(**config.model.to_dict(), rngs=nnx.Rngs(jax.random.key(config.seed, impl="rbg")))


def uses_gan(config: ml_collections.ConfigDict) -> bool:
    return config.loss.generator_adversarial_weight > 0


def build_discriminator(config: ml_collections.ConfigDict) -> nnx.Module:
    """The 3D StyleGAN discriminator for the training clips; trained from scratch (thesis 5.4.2)."""
    return discriminator_models.StyleGANDiscriminator3d(
        **config.discriminator.to_dict(),
        num_frames=config.data.num_frames,
        resolution=config.data.resolution,
        rngs=nnx.Rngs(jax.random.key(config.seed + 1, impl="rbg")),
    )


def create_train_state(config: ml_collections.ConfigDict) -> TrainState:
    """A fresh train state for `config`: with discriminator when the GAN loss is on."""
    tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    if not uses_gan(config):
        return TrainState(build_model(config), tx)
    d_tx = optim.make_optimizer(config.discriminator_optimizer, config.num_train_steps)
    return TrainState(build_model(config), tx, build_discriminator(config), d_tx)


def to_float(video: UInt8[Array, "b t h w c"]) -> Float[Array, "b t h w c"]:
    """uint8 [0, 255] -> float32 [-1, 1]; done on device so the host ships bytes."""
    return video.astype(jnp.float32) / 127.5 - 1.0


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
    video: Float[Array, "b t h w c"],
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
    """Frames each clip's LPIPS is taken on: all (None) if count is 0, else `count` random ones.

    Random per step and clip but a function of the step only, so a resumed run
    picks the same frames. LPIPS (VGG16 on every frame of real and
    reconstruction) costs more than the tokenizer itself on small clips; a few
    frames per clip give an unbiased estimate of the all-frames loss.
    """
    if count <= 0 or count >= num_frames:
        return None
    keys = jax.random.split(jax.random.fold_in(jax.random.key(0), step), batch)
    return jax.vmap(lambda k: jax.random.permutation(k, num_frames)[:count])(keys)


def _pixel_objective(
    perceptual: nnx.Module | None,
    video: Float[Array, "b t h w c"],
    step: jax.Array,
    loss: ml_collections.ConfigDict,
    reconstruction: Float[Array, "b t h w c"],
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
    video: Float[Array, "b t h w c"],
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
    video: UInt8[Array, "b t h w c"],
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
    video: Float[Array, "b t h w c"], latent_shape: tuple[int, int, int]
) -> Float[Array, "b t h w c"]:
    """The clip down-sampled to the latent grid (antialiased) and linearly up-sampled back.

    A tokenizer that is worth its tokens must beat this, which keeps exactly as
    many spatio-temporal positions as the latent grid (with 3 float channels).
    """
    b, _, _, _, c = video.shape
    small = jax.image.resize(video, (b, *latent_shape, c), method="linear", antialias=True)
    return jax.image.resize(small, video.shape, method="linear", antialias=False)


def _data_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(
        num_frames=config.data.num_frames,
        resolution=config.data.resolution,
        frame_stride=config.data.frame_stride,
        seed=config.seed,
    )


def make_train_source(config: ml_collections.ConfigDict):
    """The training source; `data.name` may mix sources with "+" (equal shares)."""
    names = [n.strip() for n in config.data.name.split("+")]
    try:
        sources = [
            pipeline.make_source(n, "train", path=config.data.path or None, **_data_kwargs(config))
            for n in names
        ]
    except (ValueError, FileNotFoundError) as e:
        if not config.data.missing_hint:
            raise
        raise type(e)(f"{e}\n{config.data.missing_hint}") from e
    return sources[0] if len(sources) == 1 else mixture.MixtureSource(sources)


_RECONSTRUCTION_METRICS = ("psnr", "ssim", "lpips", "baseline_psnr")


class Evaluator:
    """Held-out reconstruction metrics of the EMA model on each `config.eval.datasets`.

    PSNR, SSIM and LPIPS (VGG16) per clip, averaged; with `config.eval.frechet`
    enabled, also rFVD of the reconstructions against the real split's cached
    I3D statistics (`<workdir>/real_stats`).
    """

    def __init__(self, config: ml_collections.ConfigDict, graphdef, state_shardings, mesh, workdir):
        self.config, self.mesh, self.workdir = config, mesh, workdir
        self.datasets = [n.strip() for n in config.eval.datasets.split(",") if n.strip()]
        self.sources = {
            name: pipeline.make_source(
                name,
                "eval",
                path=config.eval.path or config.data.path or None,
                num_examples=config.eval.num_examples,
                **_data_kwargs(config),
            )
            for name in self.datasets
        }
        lpips_graphdef, self.lpips_state = nnx.split(lpips.load_lpips())
        self._reconstruct = jax.jit(
            functools.partial(reconstruct, graphdef, lpips_graphdef),
            in_shardings=(state_shardings, None, sharding.batch_sharding(mesh)),
        )
        protocol = config.eval.frechet
        self.frechet = None
        if protocol.num_samples:
            if protocol.real_temporal_windows != 1 or protocol.real_spatial_crops != 1:
                raise ValueError(
                    "eval.frechet.real_temporal_windows/real_spatial_crops > 1: the tokenizer's "
                    "rFVD compares reconstructions with the clips they reconstruct (one view per "
                    "clip); set both to 1."
                )
            if protocol.num_samples * protocol.num_repeats > config.eval.num_examples:
                raise ValueError(
                    f"eval.frechet needs num_samples x num_repeats = "
                    f"{protocol.num_samples * protocol.num_repeats} reconstructions but "
                    f"eval.num_examples={config.eval.num_examples}; raise eval.num_examples "
                    "or lower eval.frechet.num_samples."
                )
            self.frechet = evaluator.FrechetEvaluator(
                protocol, os.path.join(workdir, "real_stats"), mesh
            )

    def _batches(self, source, batch_size: int):
        return pipeline.make_iterator(
            source,
            global_batch_size=batch_size,
            shuffle=False,
            seed=0,
            num_epochs=1,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def _real_statistics(self, name: str):
        """The real split's feature statistics for rFVD (cached after the first evaluation)."""
        protocol = self.config.eval.frechet
        if protocol.real_split == "eval":
            source = self.sources[name]
        else:
            source = pipeline.make_source(
                name,
                protocol.real_split,
                path=self.config.data.path or None,
                num_examples=self.frechet.real_num_examples,
                **_data_kwargs(self.config),
            )
        return self.frechet.real_statistics(
            name,
            lambda: self._batches(source, self.config.eval.batch_size),
            frame_stride=self.config.data.frame_stride,
            source_resolution=self.config.data.resolution,
        )

    def __call__(self, state: nnx.State, step: int, writer) -> dict[str, float]:
        results = {}
        for name, source in self.sources.items():
            totals = {key: 0.0 for key in _RECONSTRUCTION_METRICS}
            progress = {"count": 0, "grid": None}

            def reconstructions():
                """uint8 reconstructions batch by batch; accumulates the per-clip metrics."""
                for batch in self._batches(source, self.config.eval.batch_size):
                    out = self._reconstruct(
                        state,
                        self.lpips_state,
                        sharding.shard_batch({"video": batch["video"]}, self.mesh)["video"],
                    )
                    for key in _RECONSTRUCTION_METRICS:
                        totals[key] += float(jnp.sum(out[key]))
                    progress["count"] += out["psnr"].shape[0]
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
            count = progress["count"]
            if count == 0:
                raise ValueError(
                    f"eval dataset {name!r} yielded no full batch of "
                    f"{self.config.eval.batch_size}; lower config.eval.batch_size."
                )
            for key, total in totals.items():
                results[f"eval/{name}/{key}"] = total / count
            results[f"eval/{name}/psnr_gain_over_baseline"] = (
                results[f"eval/{name}/psnr"] - results[f"eval/{name}/baseline_psnr"]
            )
            grid = progress["grid"]
            if grid is not None:
                video_grid.save_grid(
                    self.workdir, f"{name}_step{step:07d}", grid, self.config.eval.fps
                )
                # TensorBoard shows the first and last frame of the grid (input row above reconstruction).
                writer.write_images(step, {f"eval/{name}/grid": np.stack([grid[0], grid[-1]])})
        writer.write_scalars(step, results)
        if jax.process_index() == 0:
            (epath.Path(self.workdir) / f"eval_step{step:07d}.json").write_text(
                json.dumps(results, indent=2, sort_keys=True)
            )
        return results


class _Run:
    """What training and `--mode=eval` both set up: mesh, training data, checkpoints."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.mesh = sharding.make_mesh(config.mesh.shape)
        if config.batch_size % sharding.data_parallel_size(self.mesh):
            raise ValueError(
                f"config.batch_size={config.batch_size} must be divisible by the mesh's "
                f"data-parallel size {sharding.data_parallel_size(self.mesh)} (data x fsdp)."
            )
        self.train_source = make_train_source(config)
        self.train_iter = pipeline.make_iterator(
            self.train_source,
            global_batch_size=config.batch_size,
            shuffle=True,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            worker_count=config.data.worker_count,
        )
        self.checkpointer = checkpoint.Checkpointer(
            workdir,
            max_to_keep=config.checkpoint.keep,
            save_interval_steps=config.checkpoint.every_steps,
            async_save=config.checkpoint.async_save,
        )

    def create_or_restore_state(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State, int]:
        """The sharded train state: fresh, or the workdir's latest checkpoint (data position too)."""
        graphdef, state, shardings, step = loop.create_or_restore_state(
            lambda: create_train_state(self.config),
            self.mesh,
            self.config.sharding_rules,
            self.checkpointer,
            self.train_iter,
        )
        if step == 0 and self.config.init.image_workdir:
            state = inflate_from_image_run(self.config, graphdef, state, shardings)
        return graphdef, state, shardings, step


def load_tokenizer(
    workdir: str, *, step: int | None = None
) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """The EMA tokenizer of a tokenizer run (latest checkpoint, or `step`) and that run's config.

    For later stages (transformers) that use the tokenizer frozen; the model is
    built from the config saved with the checkpoint, so it needs no other input.
    Only the EMA model's arrays are read (not the optimizer, online model or
    discriminator).
    """
    checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=1, save_interval_steps=1)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"No tokenizer checkpoint in {checkpointer.directory}; train one first "
                f"(python -m videogen.main --config=experiments/quickstart.py --workdir={workdir}) "
                "or point the config's tokenizer_workdir at a finished tokenizer run."
            )
        config = checkpointer.restore_config(step)
        abstract_ema = nnx.eval_shape(lambda: create_train_state(config)).ema_model
        graphdef, abstract = nnx.split(abstract_ema)
        state = checkpointer.restore_state_part(step, "ema_model", abstract)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, state), config


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
    image_model, image_config = load_tokenizer(config.init.image_workdir)
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


@dataclasses.dataclass
class RunResult:
    step: int
    state: nnx.State
    train_metrics: dict[str, float]  # at the last logged step of this run
    history: list[dict[str, float]]  # every logged step of this run, with its "step"
    eval_metrics: dict[str, float]  # of the last evaluation of this run, if any


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> RunResult:
    """Trains (resuming from `workdir`) until `config.num_train_steps`, then evaluates.

    `stop_at_step` ends this run early, after saving, as a preemption would.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    run = _Run(config, workdir)
    mesh, train_source, train_iter, checkpointer = (
        run.mesh,
        run.train_source,
        run.train_iter,
        run.checkpointer,
    )
    graphdef, state, state_shardings, step = run.create_or_restore_state()
    schedule = optim.learning_rate_schedule(config.optimizer, config.num_train_steps)

    lpips_graphdef, lpips_state = (
        nnx.split(lpips.load_lpips()) if config.loss.perceptual_weight > 0 else (None, None)
    )
    # Two programs: without the discriminator before the adversarial start step
    # (cheaper), with it after; each is compiled when first used.
    jitted_steps = {
        adversarial: jax.jit(
            functools.partial(train_step, graphdef, lpips_graphdef, config, schedule, adversarial),
            in_shardings=(
                state_shardings,
                sharding.replicated(mesh),
                sharding.batch_sharding(mesh),
            ),
            out_shardings=(state_shardings, sharding.replicated(mesh)),
            donate_argnums=0,
        )
        for adversarial in (False, True)
    }

    def step_fn(state, batch, step):
        adversarial = uses_gan(config) and step >= config.loss.adversarial_start_step
        return jitted_steps[adversarial](state, lpips_state, batch)

    evaluator = Evaluator(config, graphdef, state_shardings, mesh, workdir)
    writer = loop.create_writer(workdir)
    if step == 0:
        loop.write_hparams(writer, config)
        parameter_overview.log_parameter_overview(
            nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, state).model, nnx.Param))
        )
    progress = periodic_actions.ReportProgress(
        num_train_steps=config.num_train_steps, writer=writer, every_steps=config.log_every_steps
    )
    end = (
        config.num_train_steps
        if stop_at_step is None
        else min(stop_at_step, config.num_train_steps)
    )
    eval_metrics: dict[str, float] = {}
    values: dict[str, float] = {}
    history: list[dict[str, float]] = []
    with checkpoint.PreemptionGuard() as guard:
        while step < end:
            batch = sharding.shard_batch({"video": next(train_iter)["video"]}, mesh)
            state, metrics = step_fn(state, batch, step)
            step += 1
            progress(step)
            must_save = step % config.checkpoint.every_steps == 0 or step == end
            stop = guard.should_stop(step)
            if step % config.log_every_steps == 0 or must_save or stop:
                values = loop.scalars(metrics)
                loop.check_finite(values, step)
                values["data/skipped_files"] = float(train_source.skipped_files)
                writer.write_scalars(step, values)
                history.append({"step": step, **values})
            if config.eval.every_steps and step % config.eval.every_steps == 0 and step < end:
                eval_metrics = evaluator(state, step, writer)
            checkpointer.save(step, state, train_iter, config, force=stop or step == end)
            if stop:
                logging.warning(
                    "Stopped at step %d on SIGTERM; checkpoint saved in %s.",
                    step,
                    checkpointer.directory,
                )
                break
    checkpointer.wait_until_finished()
    if step == config.num_train_steps and config.eval.at_end:
        eval_metrics = evaluator(state, step, writer)
        logging.info("Final evaluation at step %d: %s", step, json.dumps(eval_metrics, indent=1))
    writer.flush()
    checkpointer.close()
    _print_summary(config, workdir, step, eval_metrics)
    return RunResult(step, state, values, history, eval_metrics)


def _print_summary(config, workdir: str, step: int, eval_metrics: dict[str, float]) -> None:
    """Tells the user where the outputs are and what the last evaluation measured."""
    if jax.process_index() != 0:
        return
    print(
        f"videogen: step {step}/{config.num_train_steps}. Outputs in {os.path.abspath(workdir)}: "
        "checkpoints/, samples/ (input | reconstruction grids, GIF and MP4), eval_step*.json, "
        f"TensorBoard events (tensorboard --logdir {workdir})."
    )
    for key, value in sorted(eval_metrics.items()):
        print(f"  {key} = {value:.4f}")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval`: reconstruction metrics of the latest checkpoint in `workdir`."""
    run = _Run(config, workdir)
    if run.checkpointer.latest_step() is None:
        raise FileNotFoundError(
            f"No checkpoint in {run.checkpointer.directory}; train first with "
            "--mode=train and the same --workdir."
        )
    graphdef, state, state_shardings, step = run.create_or_restore_state()
    writer = loop.create_writer(workdir)
    metrics = Evaluator(config, graphdef, state_shardings, run.mesh, workdir)(state, step, writer)
    writer.flush()
    run.checkpointer.close()
    _print_summary(config, workdir, step, metrics)
    return metrics
