"""Round-robin mixture of random-access video sources (e.g. digits + real clips)."""

from __future__ import annotations

from collections.abc import Sequence


class MixtureSource:
    """Interleaves sources: item i comes from source i % n, so each has an equal share.

    Shorter sources are cycled, so the mixture's length is n times the longest
    source's length. All sources must yield the same keys and shapes for the
    fields the iterator keeps.
    """

    def __init__(self, sources: Sequence):
        if not sources:
            raise ValueError("MixtureSource needs at least one source.")
        self.sources = list(sources)
        # The keys every source yields, in the first source's order.
        self.keys = tuple(k for k in self.sources[0].keys if all(k in s.keys for s in self.sources))
        self._length = len(self.sources) * max(len(s) for s in self.sources)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        n = len(self.sources)
        source = self.sources[index % n]
        return source[(index // n) % len(source)]

    @property
    def skipped_files(self) -> int:
        return sum(s.skipped_files for s in self.sources)

    def __repr__(self) -> str:
        return f"MixtureSource({self.sources!r})"
