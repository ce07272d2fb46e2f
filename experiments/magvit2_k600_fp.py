r"""MAGVIT transformer on MAGVIT-v2 tokens: Kinetics-600 frame prediction (thesis 5.4.2, 6.5.6).

  python -m videogen.main --config=experiments/magvit2_k600_fp.py --workdir=runs/magvit2_k600_fp \
      --config.data.path=/data/kinetics600/train --config.eval.path=/data/kinetics600/eval
  python -m videogen.main --config=experiments/magvit2_k600_fp.py:runlocal \
      --workdir=runs/magvit2_k600_fp_local

Needs a finished tokenizer run in `tokenizer_workdir` (experiments/magvit2_k600.py,
or its `runlocal` twin for the `runlocal` variant). The frozen tokenizer maps
17x128x128 clips to 5x16x16 tokens of 2^18, predicted as 2 x 2^9 sub-tokens;
the first 5 frames (the first 2 latent frames) are the condition. Sampling:
12 steps, cosine schedule, temperature 32. FVD follows the K600 protocol
(50,000 x 4 samples, first 16 frames at 64x64) against the held-out clips, next
to the copy-last-frame baseline. Training length: 360 epochs of K600 at batch
256 (5.4.2; `config.maskgit_config`). `runlocal` keeps the tasks and decoding but
shrinks clips (9x32x32), model and batch to a CPU, on embedded data.
"""

from videogen import config as config_lib

K600_PATH = "/data/kinetics600"


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, runlocal=False)
    c = config_lib.maskgit_config()
    c.data.path = f"{K600_PATH}/train"
    c.eval.path = f"{K600_PATH}/eval"
    c.data.missing_hint = (
        f"Kinetics-600 is not on this machine: put its training videos in {K600_PATH}/train and "
        f"its held-out videos in {K600_PATH}/eval (or pass --config.data.path=... and "
        "--config.eval.path=...), or run the CPU-sized twin on embedded data with "
        "--config=experiments/magvit2_k600_fp.py:runlocal"
    )
    if args.runlocal:
        config_lib.maskgit_runlocal(c)
    c.lock()
    return c
