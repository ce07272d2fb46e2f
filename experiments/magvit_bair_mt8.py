r"""One MAGVIT model for eight tasks on BAIR Robot Pushing (thesis 6.5.3, Table 6.5, 6.5.6).

  python -m videogen.main --config=experiments/magvit_bair_mt8.py --workdir=runs/magvit_bair_mt8
  python -m videogen.main --config=experiments/magvit_bair_mt8.py:runlocal \
      --workdir=runs/magvit_bair_mt8_local

The eight self-supervised tasks (all but CG and CFP) are drawn uniformly; each
is evaluated by FVD (BAIR protocol: 25,600 x 4 samples, first 16 frames at
64x64), frame prediction also against the copy-last-frame baseline. BAIR as
video files at 64x64: training videos under `data.path`, the 256 evaluation
videos under `eval.path`. Decoding: exponential schedule, temperature 400.
Tokens come from a MAGVIT-v2 tokenizer trained on BAIR (17x64x64 -> 5x8x8).
"""

import ml_collections

from videogen import config as config_lib
from videogen.evaluation import evaluator

BAIR_PATH = "/data/bair"
TASKS = ("FP", "FI", "OPC", "OPV", "OPH", "OPD", "IPC", "IPD")


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, runlocal=False)
    c = config_lib.maskgit_config()
    c.tokenizer_workdir = "runs/magvit2_bair"
    c.tokenizer_command = (
        "python -m videogen.main --config=experiments/magvit2_k600.py --workdir=runs/magvit2_bair "
        f"--config.data.path={BAIR_PATH}/train --config.eval.path={BAIR_PATH}/eval "
        "--config.data.resolution=64 --config.eval.frechet.resolution=64"
    )
    c.tasks.names = TASKS
    c.tasks.weights = (1.0,) * len(TASKS)
    c.tasks.overrides = ml_collections.ConfigDict()  # the thesis' settings: FP and FI on 1 frame
    c.data.path = f"{BAIR_PATH}/train"
    c.eval.path = f"{BAIR_PATH}/eval"
    c.data.resolution = 64
    c.data.missing_hint = (
        f"BAIR is not on this machine: put its training videos in {BAIR_PATH}/train and its "
        f"evaluation videos in {BAIR_PATH}/eval (or pass --config.data.path=... and "
        "--config.eval.path=...), or run the CPU-sized twin on embedded data with "
        "--config=experiments/magvit_bair_mt8.py:runlocal"
    )
    # 1600 epochs of the 43K training videos at batch 256 (Table 6.10, BAIR-MT, MAGVIT-L).
    c.num_train_steps = 268_750
    c.decoding.update(schedule="exponential", choice_temperature=400.0)
    c.eval.tasks = TASKS
    c.eval.num_examples = 102_400
    c.eval.frechet = evaluator.protocol_config("bair_fp")
    if args.runlocal:
        config_lib.maskgit_runlocal(c)
    c.lock()
    return c
