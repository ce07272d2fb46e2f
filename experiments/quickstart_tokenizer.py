r"""The quickstart's tokenizer stage: a MAGVIT-v2 tokenizer on embedded data, on a laptop CPU.

  python -m videogen.main --config=experiments/quickstart_tokenizer.py --workdir=runs/tok

Trains the causal LFQ tokenizer with the thesis' full recipe (reconstruction,
LFQ commitment + entropy, LPIPS, 3D StyleGAN discriminator with R1 and LeCAM) on
moving digits, real clips and coloured shapes (all embedded, no download), then reports
held-out PSNR/SSIM/LPIPS and rFVD of the EMA model on each, with the clips
down-sampled to the latent grid and linearly up-sampled back as a baseline:
on real sources training never saw (real_clips, also one line per source) and
on new clips of the training sources (real_clips_same_sources).
Arguments: `steps=N`; `recipe=reconstruction` (L2 + LFQ losses only, for
comparison); `image=true` builds the image (T=1) stage that the video stage is
inflated from in experiments/quickstart.py.
"""

from videogen import config as config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, steps=1500, recipe="full", image=False)
    if args.recipe not in ("full", "reconstruction"):
        raise ValueError(
            f"quickstart recipe={args.recipe!r}; use recipe=full (every loss of the thesis "
            "recipe) or recipe=reconstruction (L2 + LFQ losses only, for comparison)."
        )
    c = config_lib.tokenizer_config()
    # Coloured shapes, real clips and digits 2:2:1: the digits and half of the real sources
    # teach few colours, and a tokenizer trained on them alone returned unseen ones with
    # casts of 10-50 levels. A fifth of shapes gained the unseen real sources about 1 dB; two
    # fifths, the digits' share halved, about 0.1 dB more with the digits still +5.8 dB over
    # the baseline (BUILD_NOTES.md, sixteenth and seventeenth sessions).
    c.data.name = "moving_digits+real_clips*2+colour_shapes*2"
    c.data.num_frames = 9  # 1 + 4*2
    c.data.resolution = 32
    # Two down-samplings, each also 2x in time (4x4x4): 9x32x32 -> 3x8x8 tokens.
    c.model.base_channels = 16
    c.model.channel_multipliers = (1, 2, 4)
    c.model.temporal_downsample = (True, True)
    c.model.num_res_blocks = 1
    # 4 channels per norm group, as the thesis' 128 channels in 32 groups: at 2 per group a
    # nearly flat frame normalises to +-1 whatever its colour, and unseen colours came back
    # cast (with a video-stage rate of 2e-3: about +0.6 dB on unseen sources over two
    # seeds, one seed's draw moving it by 0.4 dB; BUILD_NOTES.md).
    c.model.num_groups = 4
    # The decoder's last norm conditioned on the latents too, so a flat region's level comes
    # from its own codes rather than from the frame's statistics (about +0.3 dB on unseen
    # sources; BUILD_NOTES.md, fifteenth session).
    c.model.adaptive_norm_out = True
    c.model.num_bits = 18
    c.discriminator.base_channels = 16
    c.discriminator.channel_multipliers = (2, 4, 4)  # 32 -> 4 pixels, like 128 -> 4 in the thesis
    # A short CPU run learns more from many small steps than from few large ones.
    c.batch_size = 4
    c.num_train_steps = args.steps
    # Small model, short run: 10x the thesis' rate. Since inflation fills the up-samplers'
    # untrained sub-frames the video stage starts at the image stage's quality on every
    # frame; after 1200 image steps 1e-3 read 0.3 dB above 2e-3 and 5e-4 on unseen sources
    # (single draws; BUILD_NOTES.md, fifteenth session).
    c.optimizer.peak_lr = 1e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.b1 = 0.9  # momentum steadies batch-4 steps (the thesis uses 0 at batch 256)
    c.optimizer.end_lr_fraction = 0.1  # a short run still learns in its last steps
    c.discriminator_optimizer.warmup_steps = 100
    c.loss.entropy_anneal_steps = 600
    # A tenth of the thesis' entropy weight: moving digits are mostly black background, and
    # the codebook-entropy term spreads identical background cells over thousands of codes
    # to use the codebook evenly. At 0.1 the held-out digit clips used 5,363 codes (11.6 of
    # 18 bits of entropy) and the transformer could not learn them; at 0.01, 1,872 codes
    # (8.4 bits), with better reconstructions too (BUILD_NOTES.md).
    c.loss.entropy_weight = 0.01
    # The GAN starts once reconstructions have taken shape, as VQGAN-style recipes do.
    c.loss.adversarial_start_step = args.steps // 2
    # LPIPS on 2 random frames of each clip per step: VGG16 on all 9 would cost 3x the tokenizer.
    c.loss.perceptual_frames_per_clip = 2
    if args.recipe == "reconstruction":
        c.loss.generator_adversarial_weight = 0.0
        c.loss.perceptual_weight = 0.0
    c.checkpoint.every_steps = 100
    c.log_every_steps = 50
    # real_clips' eval split is sources training never shows (held out by source), with one
    # line per source; real_clips_same_sources is the training sources' held-out frames and
    # camera paths: good there and poor on real_clips would mean memorising.
    c.eval.datasets = ("moving_digits", "real_clips", "real_clips_same_sources")
    c.eval.num_examples = 64
    c.eval.batch_size = 8
    c.eval.every_steps = None  # at the end only: a mid-run evaluation costs ~2 minutes here
    c.eval.frechet = config_lib.clip_frechet(c, "quickstart", num_samples=64)
    if args.image:
        # Image pre-training (thesis 5.4.2): the same model with 1x3x3 kernels on single
        # frames; the video stage inflates it (temporally last slice, as it is causal).
        c.data.num_frames = 1
        c.model.temporal_kernel_size = 1
        c.batch_size = 16
        c.optimizer.peak_lr = 1e-3  # 2e-3 and 600 steps gained here and lost it after stage 2
        # LPIPS on 8 random images of the 16: VGG16 on all of them is 3x the tokenizer's
        # cost at 32x32, and half gives an unbiased estimate of the same loss.
        c.loss.perceptual_clips_per_batch = 8
        # A short stage without the GAN (its discriminator is not carried over anyway).
        c.loss.adversarial_start_step = args.steps
        c.eval.frechet.num_samples = 0  # FVD's I3D needs 9 frames or more
    c.lock()
    return c
