"""Tiny random T5 encoder checkpoints and their PyTorch outputs, for tests/test_text_encoders.py.

Not a test, never imported by the project. Runs in a separate virtualenv that
has torch and transformers (see benchmarks/minilm_reference.py):

    /tmp/peer_venv/bin/python benchmarks/t5_reference.py tests/data

writes ``tiny_t5_gated_gelu/`` (T5 v1.1 feed-forward, as T5 XL) and
``tiny_t5_relu/`` (original T5), each with ``config.json``, ``model.safetensors``
(saved by transformers' ``save_pretrained``) and ``reference.npz``: token ids,
attention mask and ``T5EncoderModel``'s ``last_hidden_state``. The gated one
also gets a ``tokenizer.json``: a 64-piece Unigram model trained on a few
captions with T5's special tokens (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) and its
post-processing (``</s>`` after the text); a real T5 vocabulary is not needed to
test the loading code.
"""

import os
import sys

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import T5Config, T5EncoderModel

IDS = np.array(
    [[5, 17, 33, 2, 40, 61, 9, 1, 0, 0, 0, 0], [12, 7, 7, 25, 3, 50, 44, 18, 29, 11, 6, 1]],
    np.int64,
)
MASK = (np.arange(IDS.shape[1])[None] < np.array([[8], [12]])).astype(np.int64)


CAPTIONS = (
    "a 7 moves down and to the right, bouncing off the bottom wall",
    "a 3 moves up, without touching a wall",
    "a 1 moves to the left, bouncing off the left and top walls",
)


def tiny_tokenizer(path: str) -> None:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=64, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tokenizer.train_from_iterator(CAPTIONS * 20, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer.save(path)


def main(out_dir: str) -> None:
    for name, proj in (("tiny_t5_gated_gelu", "gated-gelu"), ("tiny_t5_relu", "relu")):
        torch.manual_seed(0)
        config = T5Config(
            vocab_size=64,
            d_model=16,
            d_kv=4,
            num_heads=4,
            d_ff=32,
            num_layers=2,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj=proj,
            dropout_rate=0.0,
        )
        model = T5EncoderModel(config).eval()
        path = os.path.join(out_dir, name)
        model.save_pretrained(path, safe_serialization=True)
        with torch.no_grad():
            hidden = model(
                input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK)
            ).last_hidden_state.numpy()
        np.savez(os.path.join(path, "reference.npz"), ids=IDS, mask=MASK, hidden=hidden)
        print(name, hidden.shape, float(np.abs(hidden).mean()))
        if proj == "gated-gelu":
            tiny_tokenizer(os.path.join(path, "tokenizer.json"))


if __name__ == "__main__":
    main(sys.argv[1])
