"""VideoPoet's unified vocabulary (thesis Sec. 8.3.1, 8.4.6, Table 8.3).

One id space for every token the prefix LM reads or writes:

``[0, 256)``            special and task tokens (Table 8.3), see `SPECIAL_TOKENS`
``[256, 256 + V)``      visual codes of the MAGVIT-v2 tokenizer (LFQ)
``[.., .. + A * C)``    audio codes: ``A`` RVQ levels of ``C`` codes, level ``l`` owning
                        the disjoint range ``[l * C, (l + 1) * C)`` of the audio block

With the thesis' tokenizers this is 256 + 262,144 (2^18 LFQ codes) + 4,096
(4 x 1,024 SoundStream codes) = 266,496 ids; the thesis' "small text vocabulary of
English words" is not included, text enters as encoder embeddings only.

Visual layouts. ``visual_factors = 1`` is the thesis: one id per LFQ code.
``visual_factors = f > 1`` splits a 2^K code into ``f`` sub-tokens of 2^(K/f) codes
(Sec. 5.3.2; `videogen.models.quantizers.factorize_indices`, low bits first), factor
``j`` owning the disjoint range ``[j * 2^(K/f), (j + 1) * 2^(K/f))`` of the visual block
(like the audio levels, so that an id says which factor it is). Why: the output softmax
and the embedding table scale with the vocabulary. At 2^18 they hold 2^18 x width
parameters and every position's logits cost 2^18 multiply-adds per width unit; on a
CPU, or with few training tokens per code, the thesis' 2 x 2^9 (1,024 ids) or a 10-bit
code as 2 x 2^5 (64 ids) trains in minutes. A code still takes one sequence position:
its ``f`` sub-token ids sit side by side (`LayoutBatch.factor_tokens`), the model
embeds their sum and predicts factor ``j`` from the position's output and factors
``< j`` (`videogen.models.prefix_lm`), as MAGVIT's transformer embeds and predicts
factorized tokens (Sec. 5.3.2). A video's codes are its ``[t, h, w]`` grid in raster
order.

Task tokens. The thesis gives ``<task>`` "a unique value for each unique output":
"text-to-video, image-to-video, and unconditioned video generation share the same
<task>". `TASK_TOKENS` follows that: every task whose output is a video continuing
its context (unconditional, T2V, T2I, FP, I2V, A2V) shares ``<task_video>`` (T2I is
the first frame of such a video, Sec. 8.3.3); in- and outpainting share
``<task_paint>``; AVCont (video and audio) and V2A (audio) have their own.

The helpers use array operators only, so they map numpy arrays (the host-side
layouts) and jax arrays (inside jit) alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Array, Int

# Table 8.3 (with <eoa_i>/<eoa_o> for the table's <ea_i>/<ea_o>); ids 0..12 in this order.
SPECIAL_TOKENS = (
    "<pad>",  # filler: unused text slots, and after the sequence's end; never a target
    "<bos>",
    "<eos>",
    "<bot_i>",
    "<eot_i>",
    "<bov_i>",
    "<eov_i>",
    "<boa_i>",
    "<eoa_i>",
    "<bov_o>",
    "<eov_o>",
    "<boa_o>",
    "<eoa_o>",
)
# The tasks of Sec. 8.3.3 (video stylization needs flow and depth inputs, not modelled here).
TASKS = (
    "unconditional",
    "t2v",
    "t2i",
    "fp",
    "i2v",
    "inpaint",
    "outpaint",
    "avcont",
    "a2v",
    "v2a",
)
# One <task> value per kind of output (see the module docstring).
TASK_TOKENS = {
    "unconditional": "<task_video>",
    "t2v": "<task_video>",
    "t2i": "<task_video>",
    "fp": "<task_video>",
    "i2v": "<task_video>",
    "a2v": "<task_video>",
    "inpaint": "<task_paint>",
    "outpaint": "<task_paint>",
    "avcont": "<task_avcont>",
    "v2a": "<task_v2a>",
}
TASK_TOKEN_NAMES = ("<task_video>", "<task_paint>", "<task_avcont>", "<task_v2a>")
# <res>: "the resolution is only specified for 128x224 output, 128x128 resolution is
# assumed otherwise" (Sec. 8.4.6).
RESOLUTIONS = ("128x224",)
# <source>: which data source the output should resemble; ids <source_0> .. <source_15>.
NUM_SOURCES = 16

NUM_SPECIAL_IDS = 256
_TASK_BASE = 16
_RESOLUTION_BASE = 32
_SOURCE_BASE = 48


def check_task(name: str) -> str:
    """``name`` if it is one of `TASKS`, else a ValueError listing them."""
    if name not in TASKS:
        raise ValueError(f"unknown VideoPoet task {name!r}; the tasks are {list(TASKS)}.")
    return name


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Id ranges of the unified vocabulary and the maps between codes and ids.

    ``visual_codes``: the visual tokenizer's codebook size (2^18 for MAGVIT-v2's LFQ);
    ``visual_factors``: sub-tokens per visual code (1 = one id per code; > 1 needs a
    power-of-two codebook whose bit count it divides); ``audio_levels`` x
    ``audio_codebook_size``: the audio RVQ (0 levels: no audio ids).
    """

    visual_codes: int = 2**18
    audio_levels: int = 4
    audio_codebook_size: int = 1024
    visual_factors: int = 1

    def __post_init__(self):
        if self.visual_codes < 2 or self.visual_factors < 1:
            raise ValueError(
                f"visual_codes={self.visual_codes} and visual_factors={self.visual_factors} "
                "must be >= 2 and >= 1."
            )
        if self.visual_factors > 1:
            bits = self.visual_codes.bit_length() - 1
            if 2**bits != self.visual_codes or bits % self.visual_factors:
                raise ValueError(
                    f"visual_factors={self.visual_factors} splits an LFQ code's bits evenly, so "
                    f"visual_codes must be 2^K with K divisible by it; got "
                    f"visual_codes={self.visual_codes}. E.g. 2**18 with 2 factors (2 x 2^9)."
                )
        if self.audio_levels < 0 or (self.audio_levels and self.audio_codebook_size < 1):
            raise ValueError(
                f"audio_levels={self.audio_levels}, audio_codebook_size="
                f"{self.audio_codebook_size}: use levels >= 0 (0 = no audio) and a positive "
                "codebook size."
            )

    # --- id ranges ---------------------------------------------------------------------------

    @property
    def visual_sub_codes(self) -> int:
        """Codes per visual sub-token: 2^(K / visual_factors)."""
        if self.visual_factors == 1:
            return self.visual_codes
        bits = self.visual_codes.bit_length() - 1
        return 2 ** (bits // self.visual_factors)

    @property
    def visual_start(self) -> int:
        return NUM_SPECIAL_IDS

    @property
    def visual_size(self) -> int:
        return self.visual_factors * self.visual_sub_codes

    @property
    def audio_start(self) -> int:
        return self.visual_start + self.visual_size

    @property
    def audio_size(self) -> int:
        return self.audio_levels * self.audio_codebook_size

    @property
    def size(self) -> int:
        """Number of ids: the width of the LM's embedding table and output softmax."""
        return self.audio_start + self.audio_size

    def visual_factor_range(self, factor: int) -> tuple[int, int]:
        """``[lo, hi)`` of the ids of visual sub-token ``factor``."""
        if not 0 <= factor < self.visual_factors:
            raise ValueError(f"factor={factor}; this vocabulary has {self.visual_factors}.")
        lo = self.visual_start + factor * self.visual_sub_codes
        return lo, lo + self.visual_sub_codes

    def audio_level_range(self, level: int) -> tuple[int, int]:
        """``[lo, hi)`` of the ids of RVQ level ``level``."""
        if not 0 <= level < self.audio_levels:
            raise ValueError(f"level={level}; this vocabulary has {self.audio_levels} levels.")
        lo = self.audio_start + level * self.audio_codebook_size
        return lo, lo + self.audio_codebook_size

    # --- special tokens ----------------------------------------------------------------------

    def special_id(self, name: str) -> int:
        """Id of a token of `SPECIAL_TOKENS` or `TASK_TOKEN_NAMES`, e.g. ``"<bov_o>"``."""
        if name in SPECIAL_TOKENS:
            return SPECIAL_TOKENS.index(name)
        if name in TASK_TOKEN_NAMES:
            return _TASK_BASE + TASK_TOKEN_NAMES.index(name)
        raise ValueError(
            f"unknown special token {name!r}; the special tokens are "
            f"{list(SPECIAL_TOKENS) + list(TASK_TOKEN_NAMES)} (resolution_id, source_id for "
            "<res> and <source>)."
        )

    @property
    def pad_id(self) -> int:
        return self.special_id("<pad>")

    def task_id(self, task: str) -> int:
        """Id of the ``<task>`` token of ``task`` (shared by tasks with the same output)."""
        return self.special_id(TASK_TOKENS[check_task(task)])

    def resolution_id(self, resolution: str) -> int:
        """Id of the ``<res>`` token of ``resolution`` (one of `RESOLUTIONS`)."""
        if resolution not in RESOLUTIONS:
            raise ValueError(
                f"unknown resolution {resolution!r}; <res> tokens exist for {list(RESOLUTIONS)} "
                "(128x128 is the default and has none)."
            )
        return _RESOLUTION_BASE + RESOLUTIONS.index(resolution)

    def source_id(self, source: int) -> int:
        """Id of ``<source_{source}>``."""
        if not 0 <= source < NUM_SOURCES:
            raise ValueError(f"source={source} is outside [0, {NUM_SOURCES}).")
        return _SOURCE_BASE + source

    def token_name(self, token_id: int) -> str:
        """A readable name of one id, e.g. ``"<bov_o>"``, ``"visual[1]:5"``, ``"audio[0]:7"``."""
        token_id = int(token_id)
        if 0 <= token_id < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[token_id]
        if 0 <= token_id - _TASK_BASE < len(TASK_TOKEN_NAMES):
            return TASK_TOKEN_NAMES[token_id - _TASK_BASE]
        if 0 <= token_id - _RESOLUTION_BASE < len(RESOLUTIONS):
            return f"<res_{RESOLUTIONS[token_id - _RESOLUTION_BASE]}>"
        if 0 <= token_id - _SOURCE_BASE < NUM_SOURCES:
            return f"<source_{token_id - _SOURCE_BASE}>"
        if self.visual_start <= token_id < self.audio_start:
            factor, code = divmod(token_id - self.visual_start, self.visual_sub_codes)
            return f"visual[{factor}]:{code}"
        if self.audio_start <= token_id < self.size:
            level, code = divmod(token_id - self.audio_start, self.audio_codebook_size)
            return f"audio[{level}]:{code}"
        return f"<unused_{token_id}>"

    # --- codes <-> ids -----------------------------------------------------------------------

    def visual_to_ids(self, codes: Int[Array, "*s"]) -> Int[Array, "*s f"]:
        """Visual codes in ``[0, visual_codes)`` -> ids of their ``f`` sub-tokens."""
        f, sub = self.visual_factors, self.visual_sub_codes
        if f == 1:
            return codes[..., None] + self.visual_start
        shifts = (sub.bit_length() - 1) * np.arange(f)
        return ((codes[..., None] >> shifts) & (sub - 1)) + (self.visual_start + sub * np.arange(f))

    def visual_from_ids(self, ids: Int[Array, "*s f"]) -> Int[Array, "*s"]:
        """Inverse of `visual_to_ids` (ids outside their factor's range give garbage)."""
        f, sub = self.visual_factors, self.visual_sub_codes
        factors = ids - (self.visual_start + sub * np.arange(f))
        if f == 1:
            return factors[..., 0]
        shifts = (sub.bit_length() - 1) * np.arange(f)
        return (factors << shifts).sum(-1)

    def audio_to_ids(self, tokens: Int[Array, "*s levels frames"]) -> Int[Array, "*s n"]:
        """RVQ codes ``[..., levels, frames]`` -> level-major ids ``[..., levels * frames]``:
        all frames of level 0 first (the thesis' transposed order: the coarse level of the
        whole clip before the finer ones; `quantizers.flatten_audio_tokens`)."""
        levels = tokens.shape[-2]
        offsets = self.audio_start + self.audio_codebook_size * np.arange(levels)[:, None]
        return (tokens + offsets).reshape(*tokens.shape[:-2], -1)

    def audio_from_ids(self, ids: Int[Array, "*s n"]) -> Int[Array, "*s levels frames"]:
        """Inverse of `audio_to_ids`."""
        levels = self.audio_levels
        if not levels or ids.shape[-1] % levels:
            raise ValueError(
                f"{ids.shape[-1]} audio ids do not split into {levels} equal levels; pass a "
                "whole level-major audio segment."
            )
        tokens = ids.reshape(*ids.shape[:-1], levels, -1)
        return tokens - (self.audio_start + self.audio_codebook_size * np.arange(levels)[:, None])
