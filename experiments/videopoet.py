r"""VideoPoet (thesis ch. 8): a decoder-only prefix LM over text embeddings, video and audio tokens.

  python -m videogen.main --config=experiments/videopoet.py:size=1B,frames=17 \
      --workdir=runs/videopoet_1b --config.data.path=/data/videos
  python -m videogen.main --config=experiments/videopoet.py:runlocal --workdir=runs/videopoet_local

Arguments: `size` = 1B | 8B (`PREFIX_LM_SIZES`: standard GPT shapes of those parameter
counts, the thesis gives none), `frames` = 17 | 41 (8 fps; 5 or 11 latent frames of
16x16 = 1280 or 2816 visual tokens), `res` = 128x128 | 128x224 (the latter adds the
`<res>` token and needs 224x128 portrait clips, 5x28x16 tokens; our data sources yield
square clips, so the run stops at start with that message), `runlocal` (the same recipe
on moving digits at CPU size, over the tokenizers of experiments/magvit2_k600.py:runlocal
and experiments/quickstart_audio.py).

Thesis settings (8.3, 8.4.2, 8.4.6): MAGVIT-v2 tokens (2^18 LFQ codes, one id each),
4 x 1024 SoundStream codes (106 frames per 2.125 s), text embeddings in up to 64 reserved
positions, the "ALL" pretraining mixture of Table 8.1 (T2I, T2V, unconditional, FP,
painting, AVCont) plus I2V, A2V and V2A of 8.3.3, the two-stage image/video schedule of
8.3.4, learning rate 1e-3 and batch 1024 for 300k steps (8.4.2). The thesis' text
encoder is T5 XL (`--config.text.encoder=/path/to/t5_xl --config.text.dim=2048`); the
offline default is MiniLM-L6 (384-d). Entries marked "ours" are where the thesis is silent.
"""

import ml_collections

from videogen import config as config_lib
from videogen.evaluation import protocols

# Pretraining tasks and weights (8.4.2 samples its tasks uniformly).
THESIS_TASKS = {
    "t2i": 1.0,
    "t2v": 1.0,
    "unconditional": 1.0,
    "fp": 1.0,
    "i2v": 1.0,
    "inpaint": 1.0,
    "outpaint": 1.0,
    "avcont": 1.0,
    "a2v": 1.0,
    "v2a": 1.0,
}


def videopoet_config() -> ml_collections.ConfigDict:
    """The thesis-shaped VideoPoet run (1B, 17 x 128 x 128); experiments adjust it."""
    c = ml_collections.ConfigDict()
    c.trainer = "videopoet"
    c.seed = 0
    # Finished tokenizer runs, used frozen: the video tokenizer's EMA model and the codec.
    c.tokenizer_workdir = "runs/magvit2_k600"
    c.tokenizer_command = (
        "python -m videogen.main --config=experiments/magvit2_k600.py --workdir=runs/magvit2_k600"
    )
    c.audio_tokenizer_workdir = "runs/audio_tokenizer"
    c.audio_tokenizer_command = (
        "python -m videogen.main --config=experiments/audio_tokenizer.py "
        "--workdir=runs/audio_tokenizer"
    )
    c.sample_rate = 16_000
    c.model = ml_collections.ConfigDict(
        dict(
            size="1B",  # PREFIX_LM_SIZES, or "" with the four sizes below
            hidden_size=config_lib.optional(None, int),
            num_layers=config_lib.optional(None, int),
            num_heads=config_lib.optional(None, int),
            mlp_dim=config_lib.optional(None, int),
            # Sub-tokens per LFQ code: 1 = the thesis' one id per 2^18 code.
            visual_factors=1,
            dropout_rate=0.0,  # ours (LLM pretraining on never-repeating data)
            attention_dropout_rate=0.0,
            rope_base=10_000.0,
            remat=True,  # ours: 1280-token sequences at 1B
        )
    )
    c.tasks = ml_collections.ConfigDict(
        dict(
            weights=ml_collections.ConfigDict(THESIS_TASKS),
            two_stage=True,  # 8.3.4: 90/10 image/video for the first 25% of steps, then 10/90
            condition_frames=2,  # FP: 5 of 17 frames = 2 latent frames (8.4.1's K600 set-up)
            # AVCont's given audio frames; None: those covering the first frame (106/17 -> 6).
            avcont_audio_frames=config_lib.optional(None, int),
            resolution=config_lib.optional(None, str),  # "128x224" adds the <res> token
        )
    )
    c.text = ml_collections.ConfigDict(
        dict(
            use=True,
            encoder="minilm",  # or a local T5 checkpoint directory (the thesis' T5 XL)
            dim=384,
            max_tokens=64,  # 8.4.6
            drop_prob=0.1,  # captions dropped for classifier-free guidance (ours)
        )
    )
    c.audio = ml_collections.ConfigDict(dict(levels=4))  # RVQ levels modelled (0: no audio)
    c.data = config_lib.data_config()
    c.data.token_dir = ""  # "" : <workdir>/tokens, written before the first step
    c.tokenize = ml_collections.ConfigDict(dict(num_examples=1_000_000, batch_size=64))
    c.batch_size = 1024  # 8.4.2
    c.num_train_steps = 300_000  # 8.4.2
    c.optimizer = config_lib.adam_config(
        peak_lr=1e-3, warmup_steps=10_000, b1=0.9, b2=0.99, weight_decay=0.01, grad_clip_norm=1.0
    )  # lr 8.4.2; the rest ours
    c.optimizer.end_lr_fraction = 0.1
    config_lib.add_run_settings(c)
    c.sampling = ml_collections.ConfigDict(
        dict(
            temperature=1.0,  # ours, as the rest of this dict (0: greedy)
            top_k=0,
            top_p=1.0,
            guidance_scale=3.0,
            # Audio segments' own settings; None: the video's.
            audio_temperature=config_lib.optional(None, float),
            audio_top_k=config_lib.optional(None, int),
            audio_top_p=config_lib.optional(None, float),
        )
    )
    c.eval = ml_collections.ConfigDict(
        dict(
            dataset="video_folder",
            path="",
            tasks=("t2v", "fp", "i2v", "inpaint", "outpaint", "avcont", "v2a", "a2v"),
            num_examples=1024,
            batch_size=32,
            every_steps=config_lib.optional(None, int),
            at_end=True,
            grid_examples=8,
            fps=8,
            classifier_steps=config_lib.optional(None, int),
        )
    )
    # FP FVD as 8.4.6 (16 frames at 64x64, K600 protocol), on the held-out clips read here.
    c.eval.frechet = protocols.protocol_config(
        "k600_fp", num_samples=1024, num_repeats=1, real_temporal_windows=1, real_spatial_crops=1
    )
    return c


def runlocal(c: ml_collections.ConfigDict) -> None:
    """The same recipe shrunk in place to a CPU run on moving digits (captions, audio)."""
    c.tokenizer_workdir = "runs/magvit2_k600_local"
    c.tokenizer_command = (
        "python -m videogen.main --config=experiments/magvit2_k600.py:runlocal "
        "--workdir=runs/magvit2_k600_local"
    )
    c.audio_tokenizer_workdir = "runs/quickstart_audio"
    c.audio_tokenizer_command = (
        "python -m videogen.main --config=experiments/quickstart_audio.py "
        "--workdir=runs/quickstart_audio"
    )
    c.data.update(name="moving_digits", path="", missing_hint="", num_frames=9, resolution=32)
    c.model.update(size="small", visual_factors=2, remat=False)
    c.tasks.update(condition_frames=1)
    c.text.max_tokens = 24  # the longest moving-digits caption is 22 MiniLM tokens
    c.audio.levels = 1
    c.tokenize.update(num_examples=2048, batch_size=64)
    c.batch_size = 16
    c.num_train_steps = 2000
    c.optimizer.update(warmup_steps=200)
    c.checkpoint.every_steps = 500
    c.eval.update(dataset="moving_digits", num_examples=64, batch_size=16, grid_examples=8)
    c.eval.frechet = config_lib.clip_frechet(c, "quickstart", num_samples=64)


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, size="1B", frames=17, res="128x128", runlocal=False)
    if args.size not in ("1B", "8B"):
        raise ValueError(f"videopoet size={args.size!r}; use 1B or 8B (PREFIX_LM_SIZES).")
    if args.frames not in (17, 41):
        raise ValueError(f"videopoet frames={args.frames}; the thesis' clips have 17 or 41.")
    if args.res not in ("128x128", "128x224"):
        raise ValueError(f"videopoet res={args.res!r}; use 128x128 or 128x224 (8.3.3).")
    c = videopoet_config()
    c.model.size = args.size
    c.data.num_frames = args.frames
    if args.res == "128x224":
        c.tasks.resolution = "128x224"
    if args.runlocal:
        runlocal(c)
    c.lock()
    return c
