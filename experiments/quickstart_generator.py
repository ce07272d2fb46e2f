r"""The quickstart's generation stage: MAGVIT's COMMIT transformer on the quickstart tokenizer.

  python -m videogen.main --config=experiments/quickstart_generator.py \
      --workdir=runs/quickstart_generator --config.tokenizer_workdir=runs/quickstart/tokenizer

One small bidirectional transformer learns two tasks of the COMMIT mixture on
moving digits (embedded, no download), over the frozen quickstart tokenizer's
3x8x8 tokens of 2^18 (9x32x32 clips), predicted as 2 x 2^9 sub-tokens:
  FP: frame prediction from the first frame (the causal tokenizer's first
      latent frame is that frame alone, so the condition is exact), and
  CG: class-conditional generation of the whole clip from the digit's label.
The frozen tokenizer first encodes 8192 training clips into `<workdir>/tokens`
(once; a resumed run reuses them), and training reads those token files.
Evaluation on held-out clips: FVD of FP samples next to the copy-last-frame
baseline, the digit classifier's accuracy on CG samples, and a
``condition | sample | ground truth`` grid per task. In experiments/quickstart.py
this is the stage after the tokenizer (`tokenizer_workdir = "@tokenizer"`).
Argument: `steps=N`.
"""

import ml_collections

from videogen import config as config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, steps=3000)
    c = config_lib.maskgit_config()
    c.tokenizer_workdir = "runs/quickstart/tokenizer"
    c.tokenizer_command = (
        "python -m videogen.main --config=experiments/quickstart.py --workdir=runs/quickstart"
    )
    c.data.update(name="moving_digits", path="", missing_hint="", num_frames=9, resolution=32)
    c.num_classes = 10
    c.tasks.names = ("FP", "CG")
    c.tasks.weights = (1.0, 1.0)
    # One condition frame: the causal tokenizer's latent frame 0 is frame 0 alone (5.4.2's
    # K600 set-up conditions on 5 of 17 frames; 1 of 9 leaves two latent frames to predict).
    c.tasks.overrides = ml_collections.ConfigDict({"FP": {"first_frames": 1}})
    c.model.update(size="", hidden_size=128, num_layers=4, num_heads=4, mlp_dim=512)
    # No dropout: a few thousand steps of never-repeating clips leave nothing to overfit.
    c.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
    c.batch_size = 16
    c.num_train_steps = args.steps
    # Tokenize 8192 training clips once into <workdir>/tokens and train from the files: steps
    # run 1.4x faster than encoding every batch, and 2000 steps of 16 see each clip ~4 times
    # (CG 67% from the files against 61% on the fly, FP FVD alike; BUILD_NOTES.md).
    c.tokenize.update(before_training=True, num_examples=8192, batch_size=64)
    c.optimizer.update(peak_lr=1e-3, warmup_steps=200, end_lr_fraction=0.1)
    c.decoding.update(num_steps=12, schedule="cosine", choice_temperature=4.5, guidance_scale=3.0)
    c.checkpoint.every_steps = 500
    c.log_every_steps = 50
    c.eval.update(dataset="moving_digits", path="", tasks=("FP", "CG"))
    c.eval.update(num_examples=64, batch_size=16, every_steps=None, at_end=True, grid_examples=8)
    c.eval.frechet = config_lib.clip_frechet(c, "quickstart", num_samples=64)
    c.lock()
    return c
