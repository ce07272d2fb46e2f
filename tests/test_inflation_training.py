"""Image pre-training then inflation, through the trainer: an image run seeds a video run."""

import numpy as np
import pytest
from flax import nnx

from videogen.trainers import frozen_tokenizer, loop
from videogen.trainers import tokenizer as trainer
from tiny_configs import load_experiment, tiny

# Cheap recipe for the plumbing check: no GAN / LPIPS networks to compile.
NO_GAN = {"loss.generator_adversarial_weight": 0.0, "loss.perceptual_weight": 0.0}


def test_video_run_starts_from_the_inflated_image_run(tmp_path):
    image_dir, video_dir = str(tmp_path / "image"), str(tmp_path / "video")
    image_config = tiny(
        load_experiment("quickstart_tokenizer").get_config(),
        **NO_GAN,
        **{"data.num_frames": 1, "model.temporal_kernel_size": 1},
    )
    trainer.train_and_evaluate(image_config, image_dir)
    image_model, _ = frozen_tokenizer.load_tokenizer(image_dir)

    video_config = tiny(
        load_experiment("quickstart_tokenizer").get_config(),
        **NO_GAN,
        **{"init.image_workdir": image_dir},
    )
    graphdef, state, _, step = loop.Run(
        video_config, video_dir, trainer.make_trainer(video_config, video_dir)
    ).create_or_restore_state()
    assert step == 0
    video_model = nnx.merge(graphdef, state).ema_model
    clips = np.random.default_rng(0).uniform(-1, 1, (2, 5, 16, 16, 3)).astype(np.float32)
    # Causal + last-slice inflation: the first frame is tokenized as the image model does.
    np.testing.assert_array_equal(
        np.asarray(video_model.tokenize(clips))[:, 0],
        np.asarray(image_model.tokenize(clips[:, :1]))[:, 0],
    )
    np.testing.assert_allclose(
        np.asarray(video_model.encode(clips))[:, 0],
        np.asarray(image_model.encode(clips[:, :1]))[:, 0],
        atol=1e-5,
    )
    result = trainer.train_and_evaluate(video_config, video_dir)
    assert result.step == 2 and np.isfinite(result.train_metrics["loss"])

    wrong = tiny(
        load_experiment("quickstart_tokenizer").get_config(),
        **NO_GAN,
        **{"init.image_workdir": image_dir, "model.base_channels": 4},
    )
    with pytest.raises(ValueError, match="only a conv kernel's temporal"):
        wrong_dir = str(tmp_path / "wrong")
        loop.Run(wrong, wrong_dir, trainer.make_trainer(wrong, wrong_dir)).create_or_restore_state()
