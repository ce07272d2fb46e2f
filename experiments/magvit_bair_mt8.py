r"""One MAGVIT model for eight tasks on BAIR Robot Pushing (thesis 6.5.3, Table 6.5, 6.5.6).

  python -m videogen.main --config=experiments/magvit_bair_mt8.py --workdir=runs/magvit_bair_mt8
  python -m videogen.main --config=experiments/magvit_bair_mt8.py:runlocal \
      --workdir=runs/magvit_bair_mt8_local

The eight self-supervised tasks (all but CG and CFP), with the settings of
6.4.2, are drawn uniformly; each is evaluated by FVD (BAIR protocol: 25,600 x 4
samples, 16 frames at 64x64), frame prediction also against the copy-last-frame
baseline. BAIR as video files: training videos under `data.path`, the 256
evaluation videos under `eval.path`. Decoding: exponential schedule,
temperature 400. Tokens come from a MAGVIT 3D-VQ-L tokenizer trained on BAIR
(16x64x64 -> 4x16x16 tokens of 1024; with the [task, class] prefix the
transformer's sequence is 1026, as in 6.5.6).
"""

import ml_collections

from videogen import config as config_lib
from videogen.evaluation import protocols

BAIR_PATH = "/data/bair"
TASKS = ("FP", "FI", "OPC", "OPV", "OPH", "OPD", "IPC", "IPD")


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, runlocal=False)
    c = config_lib.maskgit_config()
    c.tokenizer_workdir = "runs/magvit_3dvq_bair"
    # The 3D-VQ-L at 64x64 (3.3.1): 16x64x64 clips -> 4x16x16 tokens.
    c.tokenizer_command = (
        "python -m videogen.main --config=experiments/magvit_3dvq.py:size=L,dataset=bair "
        "--workdir=runs/magvit_3dvq_bair"
    )
    c.model.num_factors = 1  # 1024 codes: one softmax
    c.tasks.names = TASKS
    c.tasks.weights = (1.0,) * len(TASKS)
    c.tasks.overrides = ml_collections.ConfigDict()  # FP and FI condition on 1 frame (6.4.2)
    c.data.num_frames = 16
    c.data.resolution = 64
    c.data.path = f"{BAIR_PATH}/train"
    c.eval.path = f"{BAIR_PATH}/eval"
    c.data.missing_hint = (
        f"BAIR is not on this machine: put its training videos in {BAIR_PATH}/train and its "
        f"evaluation videos in {BAIR_PATH}/eval (or pass --config.data.path=... and "
        "--config.eval.path=...), or run the CPU-sized twin on embedded data with "
        "--config=experiments/magvit_bair_mt8.py:runlocal"
    )
    # Table 6.10, BAIR-MT, MAGVIT-L: 1600 epochs (268,750 steps at batch 256).
    c.num_train_steps = config_lib.steps_for_epochs(1600, "bair", c.batch_size)
    c.decoding.update(schedule="exponential", choice_temperature=400.0)
    c.eval.tasks = TASKS
    c.eval.num_examples = 102_400
    c.eval.frechet = protocols.protocol_config("bair_fp")
    if args.runlocal:
        config_lib.maskgit_runlocal(c, tokenizer="3dvq")
    c.lock()
    return c
