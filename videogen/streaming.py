"""Tokenizing videos of any length and frame size with the causal (MAGVIT-v2) tokenizer.

Time: the first frame is tokenized alone, then chunks of ``chunk_frames``
frames (a multiple of the temporal factor ``f``), each conv carrying its causal
context from the previous chunk (`CausalVideoTokenizer.start_stream`), so the
tokens equal those of one pass over the whole video (tested) while memory stays
that of one chunk. ``T`` frames give ``1 + ceil((T - 1) / f)`` token frames: the
last chunk is filled up by repeating the last frame, as a one-pass encoder
would need ``1 + f*k`` frames too. Decoding mirrors it: one token frame, then
chunks of ``chunk_frames / f``, cropped back to ``T`` frames.

Space: frames are padded at the bottom and right, by repeating the last row and
column, to multiples of the spatial factor ``s``, and decoded frames are
cropped back. Frames are not tiled: a chunk of whole frames must fit in memory
(lower ``chunk_frames``, or resize the video, if it does not).

Programs: one jitted encode and one decode program per shape (the first frame,
a full chunk), shared by every tokenizer of the same architecture.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Int, UInt8

from videogen.evaluation.video_grid import to_uint8
from videogen.models.layers import StreamCarry
from videogen.models.tokenizer import CausalVideoTokenizer
from videogen.trainers.frozen_tokenizer import to_float


@functools.partial(jax.jit, static_argnames="graphdef")
def _encode_chunk(graphdef, params, carries, frames):
    model = nnx.merge(graphdef, params)
    model.start_stream()
    if carries is not None:
        nnx.update(model.encoder, carries)
    tokens = model.stream_tokenize(to_float(frames))
    return tokens[0], nnx.state(model.encoder, StreamCarry)


@functools.partial(jax.jit, static_argnames="graphdef")
def _decode_chunk(graphdef, params, carries, tokens):
    model = nnx.merge(graphdef, params)
    model.start_stream()
    if carries is not None:
        nnx.update(model.decoder, carries)
    video = model.stream_detokenize(tokens[None])
    return video[0], nnx.state(model.decoder, StreamCarry)


class ChunkedTokenizer:
    """Encodes frames to tokens and back, chunk by chunk (see the module docstring)."""

    def __init__(self, tokenizer: CausalVideoTokenizer, *, chunk_frames: int):
        if not isinstance(tokenizer, CausalVideoTokenizer):
            raise ValueError(
                f"chunked tokenization needs a causal tokenizer (CausalVideoTokenizer), got "
                f"{type(tokenizer).__name__}, whose tokens depend on future frames; use a "
                "MAGVIT-v2 tokenizer run."
            )
        f = tokenizer.temporal_factor
        if chunk_frames < f or chunk_frames % f:
            raise ValueError(
                f"chunk_frames={chunk_frames} must be a positive multiple of the tokenizer's "
                f"temporal factor {f}; use e.g. {max(f, chunk_frames // f * f)}."
            )
        self.temporal_factor = f
        self.spatial_factor = tokenizer.spatial_factor
        self.chunk_frames = chunk_frames
        self.chunk_tokens = chunk_frames // f
        self._graphdef, self._params = nnx.split(tokenizer)

    def num_token_frames(self, num_frames: int) -> int:
        """Token frames of a ``num_frames``-frame video: ``1 + ceil((T - 1) / f)``."""
        return 1 + -(-(num_frames - 1) // self.temporal_factor)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token rows and columns of ``height x width`` frames (padded up to the factor)."""
        s = self.spatial_factor
        return -(-height // s), -(-width // s)

    def _pad_space(self, frames: UInt8[np.ndarray, "n H W 3"]) -> UInt8[np.ndarray, "n H2 W2 3"]:
        h, w = frames.shape[1:3]
        h2, w2 = (self.spatial_factor * n for n in self.token_grid(h, w))
        return np.pad(frames, ((0, 0), (0, h2 - h), (0, w2 - w), (0, 0)), mode="edge")

    def encode_chunks(
        self, frames: Iterable[UInt8[np.ndarray, "H W 3"]]
    ) -> Iterator[tuple[UInt8[np.ndarray, "n H W 3"], Int[Array, "m h w"]]]:
        """Yields ``(frames of a chunk, their tokens)``: the first frame with 1 token frame,
        then up to ``chunk_frames`` frames with up to ``chunk_frames / f`` token frames.

        At most two chunks are in flight, so a long video never queues up in memory.
        """
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            raise ValueError("the video has no frames; expected at least one.")
        size = first.shape

        def chunks() -> Iterator[np.ndarray]:
            yield first[None]
            chunk = []
            for index, frame in enumerate(frames, start=1):
                if frame.shape != size:
                    raise ValueError(
                        f"frame {index} has shape {frame.shape}, frame 0 has {size}; every "
                        "frame of a video must have one size (resize them first)."
                    )
                chunk.append(frame)
                if len(chunk) == self.chunk_frames:
                    yield np.stack(chunk)
                    chunk = []
            if chunk:
                yield np.stack(chunk)

        carries, previous = None, None
        for index, chunk in enumerate(chunks()):
            n, full = len(chunk), 1 if index == 0 else self.chunk_frames
            # The last chunk is filled up with its last frame; the extra tokens are dropped.
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], full - n, axis=0)])
            tokens, carries = _encode_chunk(
                self._graphdef, self._params, carries, self._pad_space(padded)[None]
            )
            tokens = tokens[: 1 if index == 0 else -(-n // self.temporal_factor)]
            if previous is not None:
                yield previous[0], jax.block_until_ready(previous[1])
            previous = (chunk, tokens)
        yield previous[0], jax.block_until_ready(previous[1])

    def token_chunks(self, tokens: Int[np.ndarray, "t h w"]) -> Iterator[Int[np.ndarray, "m h w"]]:
        """``tokens`` cut as `encode_chunks` yields them: 1 token frame, then chunks."""
        yield tokens[:1]
        for start in range(1, len(tokens), self.chunk_tokens):
            yield tokens[start : start + self.chunk_tokens]

    def decode_chunks(
        self,
        token_chunks: Iterable[Int[Array, "m h w"]],
        *,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> Iterator[UInt8[np.ndarray, "n H W 3"]]:
        """Yields the uint8 frames of each token chunk (the first of 1 token frame, the others
        of up to ``chunk_frames / f``), cropped to ``height x width`` and ``num_frames`` in all
        where given. Only the last chunk may be short."""
        carries, previous, done, short = None, None, 0, False
        limit = float("inf") if num_frames is None else num_frames
        for index, tokens in enumerate(token_chunks):
            if done >= limit:
                break
            tokens = jnp.asarray(tokens, jnp.int32)
            m, full = tokens.shape[0], 1 if index == 0 else self.chunk_tokens
            if short or not 1 <= m <= full:
                raise ValueError(
                    f"token chunk {index} has {m} token frames; expected 1 for the first chunk, "
                    f"then {self.chunk_tokens} per chunk (fewer only in the last): cut tokens "
                    "with token_chunks()."
                )
            short = m < full
            padded = jnp.pad(tokens, ((0, full - m), (0, 0), (0, 0)))
            video, carries = _decode_chunk(self._graphdef, self._params, carries, padded)
            count = int(min(1 if index == 0 else self.temporal_factor * m, limit - done))
            done += count
            if previous is not None:
                yield to_uint8(previous)
            previous = video[:count, :height, :width]
        if previous is None:
            raise ValueError("got no token chunk to decode; expected at least the first one.")
        if done < limit < float("inf"):
            raise ValueError(
                f"the tokens decode to {done} frames, fewer than num_frames={num_frames}; "
                f"{num_frames} frames need {self.num_token_frames(num_frames)} token frames."
            )
        yield to_uint8(previous)
