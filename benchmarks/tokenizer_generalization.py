"""Tokenizer generalisation: reconstructions against the latent-grid baseline, per real source.

    python benchmarks/tokenizer_generalization.py --workdir=runs/tok \
        [--sizes=quickstart,17x64x64] [--per_source=8] [--clip_seed=0] \
        [--output=runs/tok/generalization.json]

Loads the EMA tokenizer of a tokenizer run (as stage 2 does: frozen_tokenizer.load_tokenizer)
and reconstructs `per_source` clips of every real-content source (videogen/data/real_clips.py)
in two splits:
  eval               sources the tokenizer never trained on (held out by source);
  eval_same_sources  the training sources' held-out frames and new camera paths over the
                     training photos: good numbers here and poor ones on eval mean memorising.
Per source and per split it prints the mean PSNR and SSIM of the reconstructions and of the
latent-grid baseline (the clip averaged down to the token grid and linearly up-sampled back,
trainers/tokenizer.py), and their difference. A tokenizer worth its tokens beats the baseline.
`cast` is the reconstruction's mean signed error per colour channel (R/G/B, uint8 levels):
a tokenizer that learnt too few colours pulls unseen ones towards grey, which shows here as
a cast against the source's dominant colour. `coarse` / `fine` split the reconstruction's
error in two: `coarse` is the PSNR of its part at the token grid's resolution (the error
passed through the baseline's own down- and up-sampling: wrong colours and brightness of
whole token cells, which the baseline gets almost right), `fine` the PSNR of the rest (detail
inside the cells, all the baseline loses). A tokenizer below the baseline with a low `coarse`
loses on what the baseline keeps, not on detail.

`fresh` reconstructs `per_source` clips of photos that no split of real_clips shows and that
no recipe choice was made on (FRESH_PHOTOS, under the same random camera as real_clips'
photos): the eval sources have been looked at while tuning the quickstart (rocket's colour
was diagnosed on them), so these are the check that the choices did not fit them alone.

`solid` reconstructs clips of one colour (black, grey, white, a dark blue sky, ...): the
simplest content there is, which the baseline returns exactly. A tokenizer whose group norms
see nearly constant features here (statistics over a flat frame carry no level) can return
them with casts that no textured clip shows.

Sizes are `TxHxW` clips (square), `quickstart` (experiments/quickstart_tokenizer.py's clip
size) or `trained` (the run's own); the tokenizer is fully convolutional, so larger clips
show what a user feeding their own resolution gets. Every size uses the run's frame stride.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from videogen import checkpoint
from videogen import config as config_lib
from videogen.data import camera_motion, real_clips
from videogen.evaluation import image_metrics
from videogen.trainers import frozen_tokenizer
from videogen.trainers.tokenizer import latent_resolution_baseline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("eval", "eval_same_sources")
METRICS = ("psnr", "baseline_psnr", "ssim", "baseline_ssim", "coarse_psnr", "fine_psnr")
# Solid colours, uint8 RGB: the digits' background, greys, and colours of skies, foliage, skin.
SOLID_COLOURS = {
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
    "white": (230, 230, 230),
    "night_sky": (20, 30, 60),
    "sky": (40, 60, 110),
    "red": (180, 40, 30),
    "foliage": (60, 140, 60),
    "sand": (200, 170, 90),
}

# Photos of scikit-image's data directory (read in place, as real_clips reads its photos) that
# no real_clips split shows: a colour photograph of a motorcycle in a garage (the Middlebury
# 2014 stereo benchmark's, down-sampled; skimage.data.stereo_motorcycle) and the grey surface of
# the moon (skimage.data.moon).
FRESH_PHOTOS = {"motorcycle": "data/motorcycle_left.png", "moon": "data/moon.png"}


def fresh_clips(num_frames: int, resolution: int, stride: int, per_source: int, seed: int):
    """({name: uint8 [per_source, T, R, R, 3]}) camera paths over each of FRESH_PHOTOS, drawn
    from (seed, photo, clip) as real_clips draws its own."""
    from PIL import Image  # Deferred, as in real_clips: only photos need it.

    clips = {}
    for number, (name, relative) in enumerate(FRESH_PHOTOS.items()):
        with Image.open(real_clips.data_file("skimage", relative)) as image:
            levels = camera_motion.mip_levels(np.asarray(image.convert("RGB")))
        rows = []
        for i in range(per_source):
            rng = np.random.default_rng((seed, 0xF5, number, i))
            path = camera_motion.sample_path(rng, levels[0].shape[:2], (num_frames - 1) * stride)
            rows.append(
                camera_motion.render(
                    levels, path, num_frames=num_frames, frame_stride=stride, resolution=resolution
                )
            )
        clips[name] = np.stack(rows)
    return clips


def parse_size(size: str, run_config) -> tuple[int, int]:
    """(num_frames, resolution) of a --sizes entry."""
    if size == "trained":
        return run_config.data.num_frames, run_config.data.resolution
    if size == "quickstart":
        path = os.path.join(ROOT, "experiments", "quickstart_tokenizer.py")
        data = config_lib.load_experiment(path).get_config().data
        return data.num_frames, data.resolution
    parts = size.split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or parts[1] != parts[2]:
        raise ValueError(
            f"--sizes entry {size!r} is not a square clip size; write TxHxW with H == W "
            "(e.g. 17x64x64), 'quickstart' or 'trained'."
        )
    return int(parts[0]), int(parts[1])


def metrics(graphdef, state, video):
    """Per-clip PSNR / SSIM of the reconstruction and of the latent-grid baseline, in [0, 1]."""
    model = nnx.merge(graphdef, state)
    target = frozen_tokenizer.to_float(video)
    reconstruction, _ = model(target)
    target01 = (target + 1) / 2
    recon01 = jnp.clip((reconstruction + 1) / 2, 0.0, 1.0)
    grid = model.latent_shape(*video.shape[1:4])
    baseline01 = latent_resolution_baseline(target01, grid)
    error = recon01 - target01
    coarse = latent_resolution_baseline(error, grid)
    return {
        "psnr": image_metrics.psnr(recon01, target01, max_value=1.0),
        "baseline_psnr": image_metrics.psnr(baseline01, target01, max_value=1.0),
        "ssim": image_metrics.ssim(recon01, target01, max_value=1.0),
        "baseline_ssim": image_metrics.ssim(baseline01, target01, max_value=1.0),
        "coarse_psnr": image_metrics.psnr(coarse, jnp.zeros_like(coarse), max_value=1.0),
        "fine_psnr": image_metrics.psnr(error - coarse, jnp.zeros_like(coarse), max_value=1.0),
        "cast": jnp.mean(error, axis=(1, 2, 3)) * 255.0,  # [b, c]
    }


def compute_padded(compute, videos: np.ndarray, batch_size: int) -> dict:
    """`compute` on uint8 [n <= batch_size, T, H, W, C], padded to the compiled batch size
    by repeating the last clip; rows past n are padding, for the caller to ignore."""
    padded = np.concatenate([videos, np.repeat(videos[-1:], batch_size - len(videos), 0)])
    return jax.device_get(compute(padded))


def measure_clips(compute, clips, batch_size: int) -> dict:
    """{source: {metric: mean, "clips": n, "cast"}} and "all" (sources weighted equally) of
    `clips`, an iterable of (source name, uint8 [T, H, W, 3]), reconstructed batch by batch."""
    per_source = collections.defaultdict(lambda: collections.defaultdict(list))
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        out = compute_padded(compute, np.stack([video for _, video in batch]), batch_size)
        for j, (name, _) in enumerate(batch):
            for key in (*METRICS, "cast"):
                per_source[name][key].append(out[key][j])
        batch.clear()

    for item in clips:
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    table = {
        key: {
            "clips": len(values["psnr"]),
            **{m: float(np.mean(values[m])) for m in METRICS},
            "cast": np.mean(values["cast"], axis=0).round(2).tolist(),
        }
        for key, values in per_source.items()
    }
    table["all"] = {
        "clips": sum(row["clips"] for row in table.values()),
        **{m: float(np.mean([row[m] for row in table.values()])) for m in METRICS},
        "cast": np.mean([row["cast"] for row in table.values()], axis=0).round(2).tolist(),
    }
    return table


def solid_clips(num_frames: int, resolution: int) -> np.ndarray:
    """uint8 [len(SOLID_COLOURS), T, H, W, 3]: one clip of each solid colour."""
    colours = np.array(list(SOLID_COLOURS.values()), np.uint8)
    return np.broadcast_to(
        colours[:, None, None, None, :], (len(colours), num_frames, resolution, resolution, 3)
    ).copy()


def measure_solid(compute, num_frames: int, resolution: int, batch_size: int) -> dict:
    """{colour name: {"psnr", "cast"}} of the solid-colour clips."""
    clips = solid_clips(num_frames, resolution)
    rows = {}
    for start in range(0, len(clips), batch_size):
        chunk = clips[start : start + batch_size]
        out = compute_padded(compute, chunk, batch_size)
        for j, name in enumerate(list(SOLID_COLOURS)[start : start + len(chunk)]):
            rows[name] = {"psnr": float(out["psnr"][j]), "cast": out["cast"][j].round(2).tolist()}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a tokenizer run directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--sizes", default="quickstart,17x64x64")
    parser.add_argument("--per_source", type=int, default=8, help="clips per source and split")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--clip_seed",
        type=int,
        default=0,
        help="seed of the clips drawn (not the run's seed: runs trained with other seeds are "
        "measured on the same clips)",
    )
    parser.add_argument("--output", default="", help="also write the results as JSON here")
    args = parser.parse_args()

    step = args.step
    if step is None:
        checkpointer = checkpoint.Checkpointer(args.workdir, max_to_keep=1, save_interval_steps=1)
        try:
            step = checkpointer.latest_step()
        finally:
            checkpointer.close()
    model, run_config = frozen_tokenizer.load_tokenizer(args.workdir, step=step)
    graphdef, state = nnx.split(model)
    compute = jax.jit(functools.partial(metrics, graphdef, state))
    stride = run_config.data.frame_stride
    print(
        f"tokenizer {os.path.abspath(args.workdir)} step {step} (trained on {run_config.data.name}, "
        f"{run_config.data.num_frames}x{run_config.data.resolution}x{run_config.data.resolution}"
        f", stride {stride}); {args.per_source} clips per source"
    )
    header = f"{'size':9} {'split':17} {'source':12} {'clips':>5} {'psnr':>6} {'base':>6}"
    header += f" {'gain':>6} {'ssim':>6} {'base':>6} {'coarse':>6} {'fine':>6}  cast R/G/B"
    print(header)
    results = {}
    for size in args.sizes.split(","):
        num_frames, resolution = parse_size(size.strip(), run_config)
        name = f"{num_frames}x{resolution}x{resolution}"
        results[name] = {}
        for split in SPLITS:
            source = real_clips.RealClips(
                split,
                num_frames=num_frames,
                resolution=resolution,
                frame_stride=stride,
                num_examples=args.per_source * len(real_clips.split_sources(split)),
                seed=args.clip_seed,
            )
            examples = (source[i] for i in range(len(source)))
            results[name][split] = measure_clips(
                compute, ((e["source"], e["video"]) for e in examples), args.batch_size
            )
        fresh = fresh_clips(num_frames, resolution, stride, args.per_source, args.clip_seed)
        results[name]["fresh"] = measure_clips(
            compute,
            ((photo, video) for photo, videos in fresh.items() for video in videos),
            args.batch_size,
        )
        for split in (*SPLITS, "fresh"):
            for key, row in results[name][split].items():
                gain = row["psnr"] - row["baseline_psnr"]
                print(
                    f"{name:9} {split:17} {key:12} {row['clips']:5d} {row['psnr']:6.2f} "
                    f"{row['baseline_psnr']:6.2f} {gain:+6.2f} {row['ssim']:6.3f} "
                    f"{row['baseline_ssim']:6.3f} {row['coarse_psnr']:6.2f} {row['fine_psnr']:6.2f}  "
                    + "/".join(f"{v:+.1f}" for v in row["cast"])
                )
        solid = measure_solid(compute, num_frames, resolution, args.batch_size)
        results[name]["solid"] = solid
        print(
            f"{name:9} solid colours (psnr, cast R/G/B): "
            + ", ".join(
                f"{colour} {row['psnr']:.1f} " + "/".join(f"{v:+.0f}" for v in row["cast"])
                for colour, row in solid.items()
            )
        )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(
                {"workdir": os.path.abspath(args.workdir), "step": step, **results}, f, indent=1
            )
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
