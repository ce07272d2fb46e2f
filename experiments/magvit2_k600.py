r"""MAGVIT-v2 video tokenizer on Kinetics-600 (thesis 5.4.1), and its CPU-sized twin.

  python -m videogen.main --config=experiments/magvit2_k600.py --workdir=runs/k600 \
      --config.data.path=/data/kinetics600/train --config.eval.path=/data/kinetics600/eval
  python -m videogen.main --config=experiments/magvit2_k600.py:runlocal --workdir=runs/k600_local

The full config expects Kinetics-600 as video files in two folders: training
videos under `data.path`, held-out ones under `eval.path` (any nesting inside;
see videogen/data/video_folder.py). Training length: 190 epochs of K600 at batch
256 (5.4.1; `config.tokenizer_config`). `runlocal` keeps the architecture (causal 3D
CNN, 3 down-samplings, deferred temporal down-sampling, LFQ with 2^18 codes)
but shrinks widths, depth, clip size and batch to a CPU, on embedded data.
"""

from videogen import config as config_lib

K600_PATH = "/data/kinetics600"


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, runlocal=False)
    c = config_lib.tokenizer_config()
    c.data.name = "video_folder"
    c.data.path = f"{K600_PATH}/train"
    c.eval.path = f"{K600_PATH}/eval"
    c.data.missing_hint = (
        f"Kinetics-600 is not on this machine: put its training videos in {K600_PATH}/train and "
        f"its held-out videos in {K600_PATH}/eval (or pass --config.data.path=... and "
        "--config.eval.path=...), or run the same architecture shrunk to CPU size on "
        "embedded data with --config=experiments/magvit2_k600.py:runlocal"
    )
    if args.runlocal:
        config_lib.tokenizer_runlocal(c, num_frames=9)  # 1 + 4*2: two latent frames after the first
        c.loss.entropy_anneal_steps = 100
    c.lock()
    return c
