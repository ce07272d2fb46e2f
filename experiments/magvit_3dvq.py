r"""MAGVIT 3D-VQ tokenizer (thesis 3.2, settings 3.3.1), base (B) or large (L), and a CPU twin.

  python -m videogen.main --config=experiments/magvit_3dvq.py --workdir=runs/3dvq_b \
      --config.data.path=/data/kinetics600/train --config.eval.path=/data/kinetics600/eval
  python -m videogen.main --config=experiments/magvit_3dvq.py:size=L --workdir=runs/3dvq_l
  python -m videogen.main --config=experiments/magvit_3dvq.py:runlocal --workdir=runs/3dvq_local

Non-causal 3D CNN with reflect padding, average-pool down-sampling and
nearest + conv up-sampling; VQ with 1024 codes of 256 dimensions; 16 frames at
128x128 -> 4x16x16 tokens. Trained with the same GAN / perceptual / R1 recipe as
MAGVIT-v2 (thesis 3.3.1). `runlocal` keeps the architecture, shrunk to a CPU, on
embedded data.
"""

import ml_collections

from videogen import config as config_lib

K600_PATH = "/data/kinetics600"


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, runlocal=False, size="B")
    if args.size not in ("B", "L"):
        raise ValueError(f"magvit_3dvq size={args.size!r}; the thesis has B and L.")
    c = config_lib.tokenizer_config()
    c.model_class = "VQVideoTokenizer"
    c.model = ml_collections.ConfigDict(
        dict(
            base_channels=64 if args.size == "B" else 128,
            channel_multipliers=(1, 2, 2, 4),
            num_res_blocks=2,  # not in the thesis; gives its 41M (B) / 158M (L) parameters
            # 3D pooling near the pixels, 2D near the latent: 16 -> 4 frames, 128 -> 16 pixels.
            temporal_downsample=(True, True, False),
            codebook_size=1024,
            embedding_dim=256,
            num_groups=32,
            temporal_kernel_size=3,
            padding_mode="reflect",
            remat=False,
        )
    )
    c.data.name = "video_folder"
    c.data.path = f"{K600_PATH}/train"
    c.eval.path = f"{K600_PATH}/eval"
    c.data.num_frames = 16
    c.data.missing_hint = (
        f"No training videos in {K600_PATH}/train: pass --config.data.path=... and "
        "--config.eval.path=..., or run the CPU twin on embedded data with "
        "--config=experiments/magvit_3dvq.py:runlocal"
    )
    c.batch_size = 128 if args.size == "B" else 256
    c.discriminator.base_channels = c.model.base_channels
    if args.runlocal:
        config_lib.tokenizer_runlocal(c, num_frames=16)
        # Two levels, both pooling time too: 16x32x32 -> 4x8x8 tokens.
        c.model.channel_multipliers = (1, 2, 4)
        c.model.temporal_downsample = (True, True)
        c.model.embedding_dim = 32
    c.lock()
    return c
