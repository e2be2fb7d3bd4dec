"""Where ids assembled from separately tokenised pieces differ from encoding the whole text.

Both id sequences decode to the same bytes. Token boundaries at the same byte offset in both are
sync points; between two sync points the sequences either hold the same single token or they
differ. A difference can only arise where a piece boundary cuts a pre-token of the whole text
(for example a document that ends in ``.`` followed by the ``\\n\\n`` separator, which the whole
text merges into one ``.\\n\\n`` token). :func:`diff_regions` lists those places in linear time;
:func:`regions_at_joins` tells which of them straddle a piece boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DiffRegion", "token_byte_lengths", "diff_regions", "regions_at_joins"]


@dataclass(frozen=True)
class DiffRegion:
    ours: tuple[int, int]    # [start, end) token indices in the assembled ids
    theirs: tuple[int, int]  # [start, end) token indices in the plain encoding
    byte_offset: int         # where the region starts in the decoded bytes

    @property
    def size(self) -> int:
        """Tokens involved on the larger side."""
        return max(self.ours[1] - self.ours[0], self.theirs[1] - self.theirs[0])


def token_byte_lengths(tokenizer) -> np.ndarray:
    """Bytes per token id for the tiktoken Llama-3 tokenizer (special tokens by their text)."""
    enc = tokenizer.encoding
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for i in range(enc.n_vocab):
        try:
            lengths[i] = len(enc.decode_single_token_bytes(i))
        except KeyError:  # unused id
            lengths[i] = 0
    return lengths


def diff_regions(ours: Sequence[int], theirs: Sequence[int], byte_lengths: np.ndarray) -> list[DiffRegion]:
    """Maximal runs where the two tokenisations of the same bytes disagree."""
    a = np.asarray(ours, dtype=np.int64)
    b = np.asarray(theirs, dtype=np.int64)
    ends_a = np.cumsum(byte_lengths[a])
    ends_b = np.cumsum(byte_lengths[b])
    if ends_a[-1] != ends_b[-1]:
        raise ValueError(f"the sequences decode to different byte counts ({ends_a[-1]} vs {ends_b[-1]})")
    sync = np.intersect1d(ends_a, ends_b)           # common token ends, sorted
    group_a = np.searchsorted(sync, ends_a)          # sync interval each token ends in
    group_b = np.searchsorted(sync, ends_b)
    count_a = np.bincount(group_a, minlength=len(sync))
    count_b = np.bincount(group_b, minlength=len(sync))
    single = (count_a == 1) & (count_b == 1)
    first_a = np.concatenate(([0], np.cumsum(count_a)[:-1]))
    first_b = np.concatenate(([0], np.cumsum(count_b)[:-1]))
    same = single.copy()
    same[single] = a[first_a[single]] == b[first_b[single]]
    regions: list[DiffRegion] = []
    bad = np.flatnonzero(~same)
    if not len(bad):
        return regions
    # merge consecutive differing intervals
    breaks = np.flatnonzero(np.diff(bad) > 1)
    for lo, hi in zip(np.concatenate(([0], breaks + 1)), np.concatenate((breaks, [len(bad) - 1]))):
        g0, g1 = bad[lo], bad[hi]
        sa, ea = int(first_a[g0]), int(first_a[g1] + count_a[g1])
        sb, eb = int(first_b[g0]), int(first_b[g1] + count_b[g1])
        offset = int(sync[g0 - 1]) if g0 > 0 else 0
        regions.append(DiffRegion((sa, ea), (sb, eb), offset))
    return regions


def regions_at_joins(regions: Sequence[DiffRegion], piece_starts: Sequence[int]) -> list[bool]:
    """For each region: does a piece boundary of ours fall strictly inside it (or on its edge)?"""
    starts = np.asarray(sorted(piece_starts), dtype=np.int64)
    out = []
    for r in regions:
        i = np.searchsorted(starts, r.ours[0])
        out.append(bool(i < len(starts) and starts[i] <= r.ours[1]))
    return out
