r"""MAGVIT 3D-VQ tokenizer (thesis 3.2, settings 3.3.1), base (B) or large (L), and a CPU twin.

  python -m videogen.main --config=experiments/magvit_3dvq.py --workdir=runs/3dvq_b \
      --config.data.path=/data/kinetics600/train --config.eval.path=/data/kinetics600/eval
  python -m videogen.main --config=experiments/magvit_3dvq.py:size=L --workdir=runs/3dvq_l
  python -m videogen.main --config=experiments/magvit_3dvq.py:size=L,dataset=bair \
      --workdir=runs/magvit_3dvq_bair
  python -m videogen.main --config=experiments/magvit_3dvq.py:runlocal --workdir=runs/3dvq_local

Non-causal 3D CNN with reflect padding, average-pool down-sampling and
nearest + conv up-sampling; VQ with 1024 codes of 256 dimensions; 16 frames ->
4x16x16 tokens: at 128x128 (`dataset=k600`, the default, or `ucf101`) with
channel multipliers (1, 2, 2, 4) and discriminator (2, 4, 4, 4, 4), at 64x64
(`dataset=bair`) with (1, 2, 4) and (2, 4, 4, 4). Trained for Table 3.1's
epochs of the dataset with the same GAN / perceptual / R1 recipe as MAGVIT-v2
(thesis 3.3.1). `runlocal` keeps the 64x64 architecture, shrunk to a CPU, on
embedded data.
"""

import ml_collections

from videogen import config as config_lib

# Where each dataset's videos are (training and held-out folders) and its clip size (3.3.1:
# "128x128 resolution. (64x64 resolution for BAIR)").
DATASETS = {
    "k600": ("/data/kinetics600", 128),
    "ucf101": ("/data/ucf101", 128),
    "bair": ("/data/bair", 64),
}
# Table 3.1: training epochs of the 3D-VQ per dataset, B and L.
EPOCHS = {
    "k600": {"B": 45, "L": 180},
    "ucf101": {"B": 500, "L": 2000},
    "bair": {"B": 400, "L": 800},
}
# 3.3.1 per resolution: VQVAE and discriminator channel multipliers. Time is pooled 4x in the
# levels nearest the pixels (3D there, 2D near the latent): 16 -> 4 frames.
ARCHITECTURES = {
    128: dict(multipliers=(1, 2, 2, 4), temporal=(True, True, False), disc=(2, 4, 4, 4, 4)),
    64: dict(multipliers=(1, 2, 4), temporal=(True, True), disc=(2, 4, 4, 4)),
}


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, runlocal=False, size="B", dataset="k600")
    if args.size not in ("B", "L"):
        raise ValueError(f"magvit_3dvq size={args.size!r}; the thesis has B and L.")
    if args.dataset not in DATASETS:
        raise ValueError(
            f"magvit_3dvq dataset={args.dataset!r}; use one of {sorted(DATASETS)} (Table 3.1)."
        )
    path, resolution = DATASETS[args.dataset]
    arch = ARCHITECTURES[resolution]
    large = args.size == "L"
    c = config_lib.tokenizer_config()
    c.model_class = "VQVideoTokenizer"
    c.model = ml_collections.ConfigDict(
        dict(
            base_channels=128 if large else 64,
            channel_multipliers=arch["multipliers"],
            num_res_blocks=2,  # not in the thesis; gives its 41M (B) / 158M (L) parameters
            temporal_downsample=arch["temporal"],
            codebook_size=1024,
            embedding_dim=256,
            num_groups=32,
            temporal_kernel_size=3,
            padding_mode="reflect",
            remat=False,
        )
    )
    c.data.name = "video_folder"
    c.data.path = f"{path}/train"
    c.eval.path = f"{path}/eval"
    c.data.num_frames = 16
    c.data.resolution = resolution
    c.data.missing_hint = (
        f"No training videos in {path}/train: pass --config.data.path=... and "
        "--config.eval.path=..., or run the CPU twin on embedded data with "
        "--config=experiments/magvit_3dvq.py:runlocal"
    )
    c.batch_size = 256 if large else 128
    epochs = EPOCHS[args.dataset][args.size]
    c.num_train_steps = config_lib.steps_for_epochs(epochs, args.dataset, c.batch_size)
    c.discriminator.base_channels = c.model.base_channels
    c.discriminator.channel_multipliers = arch["disc"]
    if args.runlocal:
        config_lib.tokenizer_runlocal(c, num_frames=16)
        # The 64x64 architecture (two levels, both pooling time): 16x32x32 -> 4x8x8 tokens.
        c.model.update(channel_multipliers=ARCHITECTURES[64]["multipliers"])
        c.model.update(temporal_downsample=ARCHITECTURES[64]["temporal"], embedding_dim=32)
    c.lock()
    return c
