"""Exact and near duplicates: a 256-bit perceptual hash and the groups it forms."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from transferkit.data.findings import DuplicateGroup, Finding, ImageRecord, PHASH_BITS, SPLITS

logger = logging.getLogger("transferkit")

# --- duplicates ----------------------------------------------------------------------------

_DCT = np.sqrt(2 / 64) * np.cos(np.pi * (2 * np.arange(64)[None, :] + 1) * np.arange(64)[:, None] / 128)
_DCT[0] /= np.sqrt(2)


def phash(rgb: np.ndarray) -> int:
    """256-bit perceptual hash: which of the 16x16 lowest frequencies of a 64x64 grey DCT are above median.

    Survives resizing, re-encoding and mild colour changes, so copies that differ
    byte-wise land within a few bits of each other. The common 64-bit (8x8) variant
    is too coarse for objects on plain backgrounds: it calls different hands alike.
    """
    grey = Image.fromarray(np.ascontiguousarray(rgb)).convert("L").resize((64, 64), Image.Resampling.BOX)
    low = (_DCT @ np.asarray(grey, dtype=np.float64) @ _DCT.T)[:16, :16].ravel()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(values)
    return _POPCOUNT8[values[..., None].view(np.uint8)].sum(-1)


def _close_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j within `max_distance` bits of (n, words) hashes: all pairs, a block at a time."""
    n, pairs = len(hashes), []
    rows = max(1, 1_000_000 // max(n, 1))
    for start in range(0, n, rows):
        block = hashes[start:start + rows]
        distance = _popcount(block[:, None, :] ^ hashes[None, :, :]).sum(-1, dtype=np.int64)
        for i, j in zip(*np.nonzero(distance <= max_distance)):
            if start + i < j:
                pairs.append((int(start + i), int(j), int(distance[i, j])))
    return pairs


def duplicate_groups(records: Sequence[ImageRecord], near_distance: int) -> list[DuplicateGroup]:
    """Exact groups by sha256; near groups by pHash, linking one representative per content."""
    by_content: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        if record.usable:
            by_content[record.sha256].append(record)
    groups = [_group("exact", members, 0) for members in by_content.values() if len(members) > 1]
    representatives = [members[0] for members in by_content.values()]
    hashes = np.array([_words(r.phash) for r in representatives], dtype=np.uint64).reshape(-1, PHASH_BITS // 64)
    parent = list(range(len(representatives)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    linking: dict[int, int] = defaultdict(int)
    pairs = _close_pairs(hashes, near_distance)
    for i, j, _ in pairs:
        parent[root(i)] = root(j)
    for i, _, distance in pairs:
        linking[root(i)] = max(linking[root(i)], distance)
    components: dict[int, list[ImageRecord]] = defaultdict(list)
    for i, record in enumerate(representatives):
        components[root(i)].append(record)
    groups += [_group("near", members, linking[key]) for key, members in components.items() if len(members) > 1]
    return sorted(groups, key=lambda g: (g.kind, g.paths))


def _words(value: int) -> list[int]:
    """A pHash as 64-bit words, for vectorised XOR and popcount."""
    return [(value >> shift) & 0xFFFF_FFFF_FFFF_FFFF for shift in range(PHASH_BITS - 64, -1, -64)]


def _group(kind: str, members: Sequence[ImageRecord], distance: int) -> DuplicateGroup:
    members = sorted(members, key=lambda r: (SPLITS.index(r.split), r.path))
    return DuplicateGroup(kind, tuple(r.path for r in members), tuple(r.class_name for r in members),
                          tuple(r.split for r in members), distance)


def duplicate_finding(group: DuplicateGroup, data_root: Path) -> Finding:
    """One finding per group, on its first file; the worst aspect decides the code."""
    near = group.kind == "near"
    prefix = "near-duplicate" if near else "duplicate"
    same = (f"look almost the same (perceptual hashes within {group.distance} of {PHASH_BITS} bits)" if near
            else "are identical")
    shown = [_short(p, data_root) for p in group.paths]
    listing = _listing([f"{path} ({split}, '{name}')" for path, split, name in zip(shown, group.splits, group.classes)])
    if len(set(group.splits)) > 1:
        code = f"{prefix}-across-splits"
        reason = f"{len(shown)} files {same} across splits: {listing}; held-out accuracy is overstated"
    elif len(set(group.classes)) > 1:
        code = f"{prefix}-across-classes"
        reason = (f"{len(shown)} files {same} but are labelled differently: {listing}; a labelling mistake, "
                  "or classes that overlap")
    else:
        code = prefix
        reason = (f"{len(shown)} files in class '{group.classes[0]}' {same}: {_listing(shown)}; "
                  + ("they count as one image several times" if not near else
                     "fine if intended (a burst, video frames), but a random split can put them on both sides"))
    return Finding(group.paths[0], code, reason, group.paths[1:])


def _listing(items: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more (see 'related')" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _short(path: str, data_root: Path) -> str:
    relative = os.path.relpath(path, data_root)
    return path if relative.startswith("..") else relative
