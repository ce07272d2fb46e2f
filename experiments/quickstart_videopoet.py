r"""VideoPoet on a laptop CPU: the prefix LM on moving digits, over the quickstarts' tokenizers.

  python -m videogen.main --config=experiments/quickstart.py --workdir=runs/quickstart \
      --config.stage_order="('image_tokenizer','tokenizer')"
  python -m videogen.main --config=experiments/quickstart_audio.py --workdir=runs/quickstart_audio
  python -m videogen.main --config=experiments/quickstart_videopoet.py --workdir=runs/quickstart_videopoet

The first two commands train the frozen tokenizers (skip them if those runs exist: the
MAGVIT quickstart's `tokenizer` stage, 9x32x32 clips -> 3x8x8 codes of 2^18, and the
audio quickstart's codec, 50 frames/s x 4 levels of 1024); `tokenizer_workdir` and
`audio_tokenizer_workdir` point elsewhere. The run first writes token files of
`tokenize.num_examples` training clips (video codes, the coarsest audio level, painting
condition codes, caption index), then trains a small prefix LM on the mixture below with
captions as MiniLM embeddings, then samples every task from held-out clips and captions:
T2V digit and motion-direction accuracy, I2V / FP FVD next to copy-last-frame, AVCont /
V2A pitch -> digit accuracy, A2V digit accuracy, one grid per task (for tasks with sound
also an MP4 that plays each example with its soundtrack, and WAV files). Audio is sampled
greedily (below). Visual codes are 2 x 2^9 sub-tokens (the 2^18 softmax would dwarf this
model) at one position per code: the sequences are 259 positions, not the 451 of one
position per sub-token. Arguments: `steps=N`; `painting=true` adds in- and outpainting
(their COMMIT condition clip pads every sequence to 391 positions).
"""

import os

import ml_collections

from videogen import config as config_lib


def _videopoet():
    return config_lib.load_experiment(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "videopoet.py")
    )


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, steps=3000, painting=False)
    c = _videopoet().videopoet_config()
    c.tokenizer_workdir = "runs/quickstart/tokenizer"
    c.tokenizer_command = (
        "python -m videogen.main --config=experiments/quickstart.py --workdir=runs/quickstart"
    )
    c.audio_tokenizer_workdir = "runs/quickstart_audio"
    c.audio_tokenizer_command = (
        "python -m videogen.main --config=experiments/quickstart_audio.py "
        "--workdir=runs/quickstart_audio"
    )
    c.data.update(name="moving_digits", path="", missing_hint="", num_frames=9, resolution=32)
    # 2 heads of 64 (the usual GPT head size), not 4 of 32: XLA:CPU runs attention at head
    # size 32 at about half the rate for the same FLOPs, 1.2x on the whole step
    # (BUILD_NOTES.md, "VideoPoet quickstart, eighth session").
    c.model.update(size="", hidden_size=128, num_layers=4, num_heads=2, mlp_dim=512)
    c.model.update(visual_factors=2, remat=False)
    tasks = {"t2v": 3.0, "i2v": 1.0, "fp": 1.0, "avcont": 1.0, "a2v": 1.0, "v2a": 1.0}
    if args.painting:
        tasks.update(inpaint=0.5, outpaint=0.5)
    c.tasks.weights = ml_collections.ConfigDict(tasks)
    # No image task, so no image/video schedule; FP conditions on frames 0-4 (2 latent frames).
    c.tasks.update(two_stage=False, condition_frames=2)
    c.text.max_tokens = 24  # the longest moving-digits caption is 22 MiniLM tokens
    # The coarsest RVQ level carries the tone (the pitch names the digit); 4 levels would
    # make the audio 4x longer.
    c.audio.levels = 1
    c.tokenize.update(num_examples=4096, batch_size=64)
    c.batch_size = 16
    c.num_train_steps = args.steps
    c.optimizer.update(peak_lr=1e-3, warmup_steps=100, weight_decay=0.0)
    c.checkpoint.every_steps = 500
    c.log_every_steps = 50
    # Temperature 0.7 on visual tokens: on the 1000-step checkpoint it read the prompted digit
    # in 29.7% of T2V samples (1.0: 23.4%), the caption's direction in 65.6% (56.3%), the
    # audio's digit in 20.3% of A2V ones (12.5%), at the same FVD; guidance above 3 broke the
    # clips (BUILD_NOTES.md, "Sampling settings for T2V").
    c.sampling.update(temperature=0.7, top_k=0, top_p=0.9, guidance_scale=3.0)
    # Greedy audio: a digit's soundtrack is one pure tone whose coarsest codec codes change
    # every frame with the phase, so each frame has one right code and a sampled one drifts
    # off the tone; at temperature 1 / top-p 0.9 the pitch named the digit in 9.4% of
    # AVCont / V2A samples of the first run (the real codes decode to 100%).
    c.sampling.audio_temperature = 0.0
    eval_tasks = ("t2v", "i2v", "fp", "avcont", "a2v", "v2a")
    c.eval.update(
        dataset="moving_digits",
        tasks=eval_tasks + (("inpaint", "outpaint") if args.painting else ()),
    )
    c.eval.update(num_examples=64, batch_size=16, grid_examples=8)
    c.eval.frechet = config_lib.clip_frechet(c, "quickstart", num_samples=64)
    c.lock()
    return c
