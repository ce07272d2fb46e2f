r"""MAGVIT class-conditional generation on UCF-101 (thesis 6.5.1, Table 6.2, 6.5.6).

  python -m videogen.main --config=experiments/magvit_ucf101_cg.py --workdir=runs/magvit_ucf101_cg
  python -m videogen.main --config=experiments/magvit_ucf101_cg.py:runlocal \
      --workdir=runs/magvit_ucf101_cg_local

UCF-101 as a folder of videos with one sub-folder per class (the sorted folder
index is the label, 101 classes): training videos under `data.path`, test
videos under `eval.path`. Tokens come from a MAGVIT 3D-VQ tokenizer trained on
UCF-101 (16x128x128 -> 4x16x16 tokens of 1024, no factorization). The prefix is
[CG prompt, class]; the class is dropped for 10% of the examples so that
sampling can use classifier-free guidance. FVD follows the UCF-101 protocol
(10,000 x 4 samples, 16 frames at 128x128, real clips from the training
videos). `runlocal` generates moving digits by class on the CPU-sized 3D-VQ and
reports the digit classifier's accuracy on the samples.
"""

import ml_collections

from videogen import config as config_lib
from videogen.evaluation import protocols

UCF_PATH = "/data/ucf101"


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, runlocal=False)
    c = config_lib.maskgit_config()
    c.tokenizer_workdir = "runs/magvit_3dvq_ucf101"
    c.tokenizer_command = (
        "python -m videogen.main --config=experiments/magvit_3dvq.py:size=L,dataset=ucf101 "
        "--workdir=runs/magvit_3dvq_ucf101"
    )
    c.model.num_factors = 1  # 1024 codes: one softmax
    c.tasks.names = ("CG",)
    c.tasks.weights = (1.0,)
    c.tasks.overrides = ml_collections.ConfigDict()
    c.num_classes = 101
    c.data.num_frames = 16
    c.data.path = f"{UCF_PATH}/train"
    c.eval.path = f"{UCF_PATH}/eval"
    c.data.missing_hint = (
        f"UCF-101 is not on this machine: put its training videos in {UCF_PATH}/train/<class>/ "
        f"and its test videos in {UCF_PATH}/eval/<class>/ (or pass --config.data.path=... and "
        "--config.eval.path=...), or run the CPU-sized twin on embedded data with "
        "--config=experiments/magvit_ucf101_cg.py:runlocal"
    )
    # Table 6.10, MAGVIT-L: 2000 epochs (74,219 steps at batch 256).
    c.num_train_steps = config_lib.steps_for_epochs(2000, "ucf101", c.batch_size)
    # 6.5.6's default decoding; the guidance scale is not in the thesis.
    c.decoding.update(schedule="cosine", choice_temperature=4.5, guidance_scale=1.0)
    c.eval.tasks = ("CG",)
    c.eval.num_examples = 40_000
    c.eval.frechet = protocols.protocol_config("ucf101_cg")
    if args.runlocal:
        config_lib.maskgit_runlocal(c, tokenizer="3dvq")
        c.data.name = "moving_digits"  # class labels: the digit
        c.num_classes = 10
    c.lock()
    return c
