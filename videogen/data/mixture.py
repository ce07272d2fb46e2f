"""Round-robin mixture of random-access video sources (e.g. digits + real clips)."""

from __future__ import annotations

from collections.abc import Sequence


class MixtureSource:
    """Interleaves sources in fixed shares: of every sum(weights) consecutive items, source k
    gives weights[k], spread evenly over them (equal weights: item i from source i % n).

    Shorter sources are cycled, so every source is read to its end at least once. All
    sources must yield the same keys and shapes for the fields the iterator keeps.
    """

    def __init__(self, sources: Sequence, weights: Sequence[int] | None = None):
        if not sources:
            raise ValueError("MixtureSource needs at least one source.")
        self.sources = list(sources)
        self.weights = [1] * len(self.sources) if weights is None else [int(w) for w in weights]
        if len(self.weights) != len(self.sources) or min(self.weights) < 1:
            raise ValueError(
                f"mixture weights {list(weights)} for {len(self.sources)} sources; give one "
                "positive integer share per source."
            )
        # The keys every source yields, in the first source's order.
        self.keys = tuple(k for k in self.sources[0].keys if all(k in s.keys for s in self.sources))
        # Slots of one cycle as (source, its r-th item of the cycle), ordered by where
        # (r + 1/2) / weight falls in the cycle, so a heavy source's items are not bunched.
        self._slots = [
            (k, r)
            for _, k, r in sorted(
                ((r + 0.5) / w, k, r) for k, w in enumerate(self.weights) for r in range(w)
            )
        ]
        cycles = max(-(-len(s) // w) for s, w in zip(self.sources, self.weights))
        self._length = len(self._slots) * cycles

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        cycle, slot = divmod(index, len(self._slots))
        k, r = self._slots[slot]
        source = self.sources[k]
        return source[(cycle * self.weights[k] + r) % len(source)]

    @property
    def skipped_files(self) -> int:
        return sum(s.skipped_files for s in self.sources)

    @property
    def short_files(self) -> int:
        return sum(s.short_files for s in self.sources)

    def __repr__(self) -> str:
        return f"MixtureSource({self.sources!r}, weights={self.weights})"
