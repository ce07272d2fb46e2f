r"""The audio tokenizer on a laptop CPU: VideoPoet's codec interface, shrunk, on moving digits.

  python -m videogen.main --config=experiments/quickstart_audio.py --workdir=runs/quickstart_audio

Keeps the token interface of experiments/audio_tokenizer.py (2.125 s of 16 kHz
audio -> 106 frames x 4 levels of 1024 codes, 2 kbit/s) with narrower
convolutions, and trains on the embedded moving-digits soundtracks (a tone
whose pitch names the digit, a click per wall bounce). Evaluation on held-out
clips: SI-SNR and multi-scale spectral distance next to the mu-law codec at
the same bit rate, and how often the reconstruction keeps the digit's pitch.
Arguments: `steps=N`; `gan=true` adds the STFT discriminator (off: at this
scale it keeps the codec silent, -49.7 dB SI-SNR and 22% pitch after 250 steps
against +14.3 dB and 100% without, at 3.4x the CPU; BUILD_NOTES.md); `spectral=X` weighs the multi-scale mel loss (0 by
default: at this scale its log-mel gradients keep the young codec silent,
-50 dB SI-SNR after 200 steps with weight 1 against +12.5 dB without;
BUILD_NOTES.md).
"""

from videogen import config as config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, steps=250, gan=False, spectral=0.0)
    c = config_lib.audio_tokenizer_config()
    c.model.update(channels=8, latent_dim=64)
    c.discriminator.update(channels=8, num_layers=2)
    c.batch_size = 8
    c.num_train_steps = args.steps
    c.optimizer.update(peak_lr=1e-3, warmup_steps=100, b1=0.9, b2=0.99, end_lr_fraction=0.1)
    c.discriminator_optimizer.update(peak_lr=1e-3, warmup_steps=100, end_lr_fraction=0.1)
    c.loss.spectral_weight = args.spectral
    if not args.gan:
        c.loss.adversarial_weight = 0.0
    c.checkpoint.every_steps = 250
    c.log_every_steps = 50
    c.eval.update(num_examples=128, batch_size=16, every_steps=None, grid_examples=4)
    c.lock()
    return c
