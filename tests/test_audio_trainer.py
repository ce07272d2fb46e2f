"""The audio tokenizer trainer on the shared loop: both recipes, resume, evaluation outputs."""

import json

import numpy as np
import pytest

from train_states import leaves
from tiny_configs import tiny_audio
from videogen import main as videogen_main
from videogen.data import moving_digits
from videogen.trainers import audio_tokenizer


@pytest.mark.parametrize(
    "name,gan",
    [("quickstart_audio", False), ("audio_tokenizer", True)],  # GAN on by default
)
def test_both_experiments_train_and_report_against_the_mu_law_baseline(tmp_path, name, gan):
    config = tiny_audio(name)
    assert audio_tokenizer.uses_gan(config) == gan
    result = videogen_main.run(config, str(tmp_path))
    assert result.step == 2
    logged = result.history[-1]
    for name in ("loss", "l1_loss", "spectral_loss", "commitment_loss", "train_si_snr"):
        assert np.isfinite(logged[name]), name
    assert ("discriminator_loss" in logged) == gan
    assert ("feature_matching_loss" in logged) == gan
    assert logged["quantizer/codebook_usage_max"] <= 1.0
    metrics = json.loads((tmp_path / "eval_step0000002.json").read_text())
    assert metrics == result.eval_metrics
    for key in ("si_snr", "baseline_si_snr", "spectral_distance", "baseline_spectral_distance"):
        assert np.isfinite(metrics[f"eval/moving_digits/{key}"]), key
    assert 0.0 <= metrics["eval/moving_digits/pitch_accuracy"] <= 1.0
    assert 0.0 < metrics["eval/moving_digits/codebook_usage_level0"] <= 1.0
    samples = tmp_path / "samples"
    assert (samples / "moving_digits_step0000002.png").exists()
    assert len(list(samples.glob("moving_digits_step0000002_*_input.wav"))) == 2


def test_resume_restores_the_codebooks_and_equals_uninterrupted(tmp_path):
    """The RVQ codebooks live outside the parameters (EMA state): a run stopped after step 1
    and resumed must end where the uninterrupted run ends."""
    config = tiny_audio(**{"eval.at_end": False})
    straight = audio_tokenizer.train_and_evaluate(config, str(tmp_path / "straight"))
    audio_tokenizer.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=1)
    resumed = audio_tokenizer.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed.step == straight.step == 2
    for a, b in zip(leaves(straight.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pitch_of_the_soundtrack_names_its_digit():
    """The evaluator's pitch check reads the embedded soundtracks' digits exactly."""
    source = moving_digits.MovingDigits("eval", num_frames=17, resolution=16, num_examples=20)
    clips = [source[i] for i in range(20)]
    audio = np.stack([c["audio"] for c in clips])
    labels = np.array([c["label"] for c in clips])
    np.testing.assert_array_equal(audio_tokenizer.digit_of_pitch(audio, 16_000), labels)
    # Digits are two semitones apart: a tone a quarter-tone off is still its digit.
    t = np.arange(16_000) / 16_000
    for digit, offset in ((4, 2 ** (1 / 24)), (5, 2 ** (-1 / 24))):
        tone = np.sin(2 * np.pi * moving_digits.DIGIT_PITCHES_HZ[digit] * offset * t)[None]
        assert audio_tokenizer.digit_of_pitch(tone, 16_000)[0] == digit
