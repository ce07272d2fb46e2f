"""MiniLM-L6 sentences per second: ours (Flax, jitted, 64-token padding) beside PyTorch
sentence-transformers on the same captions, one after the other on this machine.

    .venv/bin/python benchmarks/text_encoder_speed.py [--batches=1,32] [--repeats=5] \
        [--torch-python=/tmp/peer_venv/bin/python]

Ours: `videogen.models.text_encoders.minilm_text_encoder()` called on a batch of
moving_digits captions (tokenizer included, as a trainer calls it); the time is
the median of --repeats calls after one warm-up call (which compiles). Theirs:
`SentenceTransformer(<the same packaged model dir>).encode(...)` with
max_seq_length 64 and the same batch, torch's default CPU threads, in a
subprocess of --torch-python (a venv that is not a videogen dependency; see
benchmarks/minilm_reference.py for how it is made). Theirs pads each batch to its
longest caption; ours pads to 64 tokens so one compiled program serves every
batch, which costs ours compute on short captions: the table says so.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CAPTIONS = (
    "a 7 moves down and to the right, bouncing off the bottom wall",
    "a 0 moves up",
    "a 3 moves left and up, bouncing off the left wall, then the top wall",
    "a 5 moves right, without touching a wall",
)

THEIRS = r"""
import json, os, statistics, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
from sentence_transformers import SentenceTransformer
model_dir, batch, repeats, captions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
model = SentenceTransformer(model_dir, device="cpu")
model.max_seq_length = 64
texts = [captions[i % len(captions)] for i in range(batch)]
model.encode(texts, batch_size=batch)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    model.encode(texts, batch_size=batch)
    times.append(time.perf_counter() - start)
print(json.dumps(statistics.median(times)))
"""


def ours(batch: int, repeats: int) -> float:
    import jax

    from videogen.models.text_encoders import minilm_text_encoder

    encoder = minilm_text_encoder()
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    jax.block_until_ready(encoder(texts).token_embeddings)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(encoder(texts).token_embeddings)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def theirs(python: str, batch: int, repeats: int) -> float:
    from videogen.models.text_encoders import minilm_file

    model_dir = os.fspath(minilm_file("model.safetensors", None, None, what="MiniLM").parent)
    out = subprocess.run(
        [python, "-c", THEIRS, model_dir, str(batch), str(repeats), json.dumps(CAPTIONS)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-python", default=None)
    args = parser.parse_args()
    print("| batch | ours sentences/s | sentence-transformers sentences/s | ours / theirs |")
    print("|---|---|---|---|")
    for batch in [int(b) for b in args.batches.split(",")]:
        mine = batch / ours(batch, args.repeats)
        if args.torch_python:
            peer = batch / theirs(args.torch_python, batch, args.repeats)
            print(f"| {batch} | {mine:.1f} | {peer:.1f} | {mine / peer:.2f} |")
        else:
            print(f"| {batch} | {mine:.1f} | (no --torch-python) | |")
        sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
