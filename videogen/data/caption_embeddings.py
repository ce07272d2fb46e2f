"""Text-encoder outputs of a dataset's captions, computed once and kept on disk.

A dataset's captions are fixed (moving_digits has a few hundred distinct ones),
so a text-conditioned trainer looks each caption up here instead of running the
frozen text encoder every step. The cache file is keyed by a fingerprint of
everything that determines the output: the encoder's parameters, its tokenizer
and the text length. Another encoder (other weights, a fine-tuned copy) gets
another file, never a stale embedding.
"""

import hashlib
import os
import pathlib
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from videogen.models.text_encoders import TextEncoder


def encoder_fingerprint(encoder: TextEncoder) -> str:
    """SHA-256 over the encoder's parameter values, its tokenizer vocabulary and max length.

    Hashing the parameters themselves (not a file name) keys the cache by what the
    encoder computes: ~0.2 s for MiniLM's 22M parameters.
    """
    digest = hashlib.sha256()
    leaves = jax.tree.leaves_with_path(nnx.to_pure_dict(encoder.state))
    for path, value in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            continue  # dropout streams (rate 0) do not change the output
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(jax.device_get(value)).tobytes())
    digest.update(encoder.tokenizer.tokenizer.to_str().encode())
    digest.update(str(encoder.tokenizer.max_length).encode())
    return digest.hexdigest()


class CaptionEmbeddings:
    """``cache(captions) -> (token_embeddings [b, l, d] float32, mask [b, l] bool)``.

    Captions not seen before are encoded in batches of ``batch_size`` and appended
    to ``<directory>/text_embeddings_<fingerprint[:16]>.npz`` (written atomically,
    so an interrupted run never leaves a broken file); later runs with the same
    encoder read them back instead of encoding.
    """

    def __init__(self, encoder: TextEncoder, directory: str | os.PathLike, *, batch_size: int = 32):
        self.encoder = encoder
        self.batch_size = batch_size
        self.fingerprint = encoder_fingerprint(encoder)
        self.path = pathlib.Path(directory) / f"text_embeddings_{self.fingerprint[:16]}.npz"
        self.index: dict[str, int] = {}
        self.embeddings = np.zeros((0, encoder.tokenizer.max_length, 0), np.float32)
        self.masks = np.zeros((0, encoder.tokenizer.max_length), bool)
        self.encoded_captions = 0  # how many captions this process ran the encoder on
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        with np.load(self.path) as stored:
            if str(stored["fingerprint"]) != self.fingerprint:
                raise ValueError(
                    f"{self.path} holds embeddings of encoder {str(stored['fingerprint'])[:16]}, "
                    f"not {self.fingerprint[:16]}; delete the file to rebuild it."
                )
            captions = [str(c) for c in stored["captions"]]
            self.embeddings, self.masks = stored["embeddings"], stored["masks"]
        self.index = {caption: i for i, caption in enumerate(captions)}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        captions = np.array(sorted(self.index, key=self.index.get), dtype=np.str_)
        partial = self.path.with_suffix(".partial.npz")
        np.savez(
            partial,
            fingerprint=np.str_(self.fingerprint),
            captions=captions,
            embeddings=self.embeddings,
            masks=self.masks,
        )
        os.replace(partial, self.path)

    def add(self, captions: Sequence[str]) -> None:
        """Encodes the captions not in the cache yet and saves the file once."""
        new = sorted(set(captions) - set(self.index))
        if not new:
            return
        embeddings, masks = [], []
        for start in range(0, len(new), self.batch_size):
            chunk = new[start : start + self.batch_size]
            # A fixed batch shape keeps one compiled encoder: the last chunk is padded.
            padded = chunk + [""] * (self.batch_size - len(chunk))
            out = self.encoder(padded)
            embeddings.append(np.asarray(out.token_embeddings, np.float32)[: len(chunk)])
            masks.append(np.asarray(out.mask)[: len(chunk)])
        first = len(self.index)
        self.index.update({caption: first + i for i, caption in enumerate(new)})
        stored = [self.embeddings] if len(self.embeddings) else []
        self.embeddings = np.concatenate(stored + embeddings)
        self.masks = np.concatenate(([self.masks] if len(self.masks) else []) + masks)
        self.encoded_captions += len(new)
        self._write()

    def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        self.add(captions)
        rows = np.array([self.index[c] for c in captions], np.int64)
        return self.embeddings[rows], self.masks[rows]
