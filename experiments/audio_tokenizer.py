r"""VideoPoet's audio tokenizer (thesis 8.3.1): a SoundStream-style codec, full size.

  python -m videogen.main --config=experiments/audio_tokenizer.py --workdir=runs/audio_tokenizer
  python -m videogen.main --config=experiments/audio_tokenizer.py --workdir=runs/audio_own \
      --config.data.name=video_folder --config.data.path=/data/my_videos

2.125 s of 16 kHz mono audio -> 106 latent frames x 4 residual-VQ levels of
1024 codes (2 kbit/s), trained with L1 + multi-scale mel + commitment losses
and a multi-scale STFT discriminator (adversarial + feature matching). Trains
on the embedded moving-digits soundtracks unless `data` names other audio
(the audio tracks of a `video_folder`). The CPU-sized twin is
experiments/quickstart_audio.py.
"""

from videogen import config as config_lib


def get_config(arg: str | None = None):
    config_lib.parse_arg(arg)
    c = config_lib.audio_tokenizer_config()
    c.lock()
    return c
