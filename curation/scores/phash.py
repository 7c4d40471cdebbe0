"""64-bit DCT perceptual hash of frames, and near-duplicate clip grouping by banded (LSH) search.

Hashes are Python ints in the signed int64 range so that they store as-is in an Arrow ``int64`` column;
:func:`hamming` and :func:`near_duplicates` only look at the 64 bit pattern, so the sign is irrelevant.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import cv2
import numpy as np

_MASK64 = (1 << 64) - 1
# Suggested per-frame Hamming threshold for near-duplicate clips (every compared frame within it).
# Re-encodes, rescales, mild crops and brightness changes of the same frame typically stay within 0-6 of
# 64 bits; unrelated frames sit around 32 (distances are even: a non-flat frame's hash has exactly 31 ones).
# Keep it <= 6 for ~1e6 clips: the search cost grows steeply with it (see near_duplicates).
DUP_MAX_DISTANCE = 6


def phash64(gray: np.ndarray) -> int:
    """64-bit perceptual hash of a uint8 grayscale frame, as a signed int64 Python int.

    Classic pHash: resize to 32x32 (area averaging), 2-D DCT, keep the 8x8 lowest frequencies, and set
    each bit where the coefficient is above the median of the 63 AC coefficients. The DC coefficient
    (mean brightness) is left out of the median and its bit is always 0, so a uniform brightness shift
    does not change the hash: 63 informative bits. Bit ``8*row + col`` holds coefficient (row, col).
    """
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    median = float(np.median(low[1:]))
    bits = low > median
    bits[0] = False
    value = int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (signed or unsigned ints)."""
    return bin((a ^ b) & _MASK64).count("1")


if hasattr(np, "bitwise_count"):  # numpy >= 2.0

    def _popcount(x: np.ndarray) -> np.ndarray:
        return np.bitwise_count(x).astype(np.int64)

else:  # pragma: no cover - numpy 1.x
    _BYTE_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)

    def _popcount(x: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(x).view(np.uint8).reshape(*x.shape, 8)
        return _BYTE_POP[b].sum(axis=-1)


def _bands(n_bands: int) -> list[tuple[int, int]]:
    """(shift, width) of ``n_bands`` contiguous bit ranges covering the 64 bits as evenly as possible."""
    n_bands = min(n_bands, 64)
    edges = np.linspace(0, 64, n_bands + 1).round().astype(int)
    return [(int(lo), int(hi - lo)) for lo, hi in itertools.pairwise(edges.tolist())]


def _components(label: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components over edges (a[k], b[k]), vectorised; returns each item's smallest member.

    `label` starts as a forest with label[i] <= i (exact duplicates already pointing at their first
    member). Each round hooks the larger of the two roots of every edge under the smaller, then
    compresses paths; roots only ever get smaller, so the root of a component ends as its smallest
    index (the union-find with smallest-index roots it replaces gave the same)."""
    label = label.copy()
    while True:
        nxt = label[label]
        if np.array_equal(nxt, label):
            break
        label = nxt
    while a.size:
        ra, rb = label[a], label[b]
        diff = ra != rb
        if not diff.any():
            break
        a, b = a[diff], b[diff]
        ra, rb = ra[diff], rb[diff]
        np.minimum.at(label, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
    return label


def _same_key_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i != j, with ``keys[i] == keys[j]``, without an all-pairs comparison.

    Sort the keys, then pair each sorted position with the one ``t`` places later for t = 1, 2, ...
    while both still lie in the same run of equal keys; the work is proportional to the number of pairs.
    """
    n = keys.size
    idx_bits = max(1, (n - 1).bit_length())
    key_bits = int(keys.max()).bit_length() if n else 0
    if key_bits + idx_bits <= 64:
        # Key and index packed in one word: a plain sort (much cheaper than argsort) gives both, and
        # equal keys stay in index order as with a stable argsort.
        packed = np.sort((keys << np.uint64(idx_bits)) | np.arange(n, dtype=np.uint64))
        sk = packed >> np.uint64(idx_bits)
        order = (packed & np.uint64((1 << idx_bits) - 1)).astype(np.int64)
        del packed
    else:
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
    # End (exclusive) of the run of equal keys each sorted position belongs to.
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    run_ends = np.r_[starts[1:], n]
    ends = np.repeat(run_ends, np.diff(np.r_[starts, n]))
    pos = np.flatnonzero(ends - np.arange(n) > 1)  # positions with at least one later partner
    out_a: list[np.ndarray] = []
    out_b: list[np.ndarray] = []
    t = 1
    while pos.size:
        out_a.append(order[pos])
        out_b.append(order[pos + t])
        t += 1
        pos = pos[ends[pos] - pos > t]
    if not out_a:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    return np.concatenate(out_a), np.concatenate(out_b)


def near_duplicates(items: Sequence[tuple[str, Sequence[int]]], max_distance: int) -> dict[str, str]:
    """Group near-duplicate clips; return ``{duplicate_clip_id: survivor_clip_id}`` for every losing clip.

    ``items`` are ``(clip_id, hashes)`` with the :func:`phash64` of the same number of frames, taken at
    the same relative positions, for every clip. Two clips are near-duplicates when EVERY pair of
    corresponding hashes is within ``max_distance`` bits (stricter than a mean: one very different frame
    means different content, and it is what makes the exact banded search below possible). Groups are the
    connected components of that relation (so A~B and B~C puts A, B, C together even if A and C are
    further apart); the lexicographically smallest clip id of a group survives, so the result does not
    depend on the input order. Clip ids must be unique.

    Search without comparing all pairs (exact, no missed pairs): split each 64-bit hash into
    ``max_distance + 1`` bands; by pigeonhole two hashes within ``max_distance`` agree exactly on at
    least one band. With two or more frames per clip, a candidate key joins one band of the first frame's
    hash and one band of the last frame's hash ((d+1)^2 tables of ~128/(d+1)-bit keys), which is far more
    selective than a single ~64/(d+1)-bit band; with one frame, single bands are used. Clips with
    identical hash lists are merged up front, so large groups of identical frames (black, static slides)
    do not produce quadratic candidate lists. Candidates are verified on all frames, vectorised.

    Beyond 1.5M distinct clips the keys get longer: with two frames' ~18-bit keys (d=6) a bucket holds
    clips/2^18 clips on average, so the candidate pairs grow with the square of the clips (2.45M
    clips: ~560M pairs, minutes and GBs). A key then joins two of d+2 bands of the first frame (at
    most d bands differ, so at least two agree) and one of d+1 bands of the last: C(d+2,2)(d+1)
    tables of ~128/(d+2) + 64/(d+1) bits (196 tables of ~25 bits at d=6; a middle frame's band,
    the scheme before, made (d+1)^3 = 343 tables of ~27 bits). Candidates stay few and the cost is
    the sorts, one per table.
    The work lives in :func:`duplicate_roots` (arrays in, arrays out); a large cluster of
    near-identical (not identical) clips is still compared pairwise within its buckets.
    """
    if max_distance < 0:
        raise ValueError("max_distance must be >= 0")
    if not items:
        return {}
    ids = [cid for cid, _ in items]
    if len(set(ids)) != len(ids):
        raise ValueError("clip ids must be unique")
    n_frames = len(items[0][1])
    if n_frames == 0 or any(len(h) != n_frames for _, h in items):
        raise ValueError("every clip needs the same, non-zero number of hashes")
    # Sort by id so index order == id order: the smallest index of a group is its survivor.
    order = sorted(range(len(ids)), key=ids.__getitem__)
    ids = [ids[i] for i in order]
    hashes = np.array([[h & _MASK64 for h in items[i][1]] for i in order], dtype=np.uint64)
    root = duplicate_roots(hashes, max_distance)
    return {ids[i]: ids[r] for i, r in enumerate(root.tolist()) if r != i}


# Measured here (d=6, random hashes, one core): two-frame keys 2.5 s at 245k clips, 9.2 s at 600k
# (growing with the square); three-frame keys 7.8 s and 20.5 s (linear, ~100 s at 2.45M). They cross
# near 2M clips. At 2.45M (10k planted pairs, same groups): pair keys 64 s, three-frame keys 94 s.
_THREE_FRAME_KEYS_FROM = 1_500_000  # representatives: longer keys (PAIR_KEYS) from there on
PAIR_KEYS = -2  # key_frames value of the two-bands-of-the-first-frame scheme (see duplicate_roots)
_VERIFY_CHUNK = 1 << 22  # candidate pairs verified at a time


def _key_frames(n_frames: int, count: int) -> tuple[int, ...]:
    """Which frames' bands make the search keys: the first, the last, then the middle one."""
    if n_frames == 1 or count <= 1:
        return (0,)
    if n_frames == 2 or count == 2:
        return (0, n_frames - 1)
    return (0, n_frames // 2, n_frames - 1)


def duplicate_roots(hashes: np.ndarray, max_distance: int, key_frames: int | None = None) -> np.ndarray:
    """The array core of :func:`near_duplicates`: ``hashes`` is [clips, frames] (int64 or uint64, rows
    in clip id order); returns for each clip the index of its group's survivor (itself when it
    survives). No Python object per clip: millions of clips take seconds and a few arrays of memory.
    """
    if max_distance < 0:
        raise ValueError("max_distance must be >= 0")
    n = hashes.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if hashes.ndim != 2 or hashes.shape[1] == 0:
        raise ValueError("every clip needs the same, non-zero number of hashes")
    hashes = np.ascontiguousarray(hashes).view(np.uint64) if hashes.dtype == np.int64 else hashes
    n_frames = hashes.shape[1]
    if max_distance >= 64:  # every pair of 64-bit hashes is within 64 bits: one group
        return np.zeros(n, dtype=np.int64)

    # Exact duplicates first: each points at its first member; one representative each in the search.
    _, first, inverse = np.unique(hashes, axis=0, return_index=True, return_inverse=True)
    label = first[inverse.ravel()].astype(np.int64)
    reps = np.sort(first).astype(np.int64)
    rh = hashes[reps]
    found: list[np.ndarray] = []
    if reps.size > 1 and max_distance > 0:
        bands = _bands(max_distance + 1)
        if key_frames is None:
            # Two frames give keys of ~2*64/(d+1) bits: fine while buckets hold about one clip; beyond
            # that the candidate pairs grow with the square of the clips, so the keys get longer:
            # two of d+2 bands of the first frame (at most d of them differ, so two agree) and one of
            # d+1 of the last: C(d+2, 2)(d+1) tables of ~128/(d+2) + 64/(d+1) bits (196 of ~25 bits
            # at d=6, where a third frame's band made (d+1)^3 = 343 tables of ~27 bits).
            large = reps.size > _THREE_FRAME_KEYS_FROM and len(bands) <= 8 and n_frames >= 2
            key_frames = PAIR_KEYS if large else 2
        # Per key part: a contiguous column of one frame, its bands, and how many of them a key joins.
        if key_frames == PAIR_KEYS:
            if max_distance + 2 > 64:  # two agreeing bands need d + 2 bands of at least one bit
                raise ValueError("pair keys need max_distance <= 62")
            pair_bands = _bands(max_distance + 2)
            frames = (0, n_frames - 1) if n_frames >= 2 else (0,)
            parts = [(frames[0], pair_bands, 2), *((f, bands, 1) for f in frames[1:])]
        else:
            parts = [(f, bands, 1) for f in _key_frames(n_frames, key_frames)]
        # One contiguous column per key frame; bands are cut from it per table (precomputing every
        # band of every frame would hold (d+1) x frames N-sized arrays: 400 MB at 2.45M clips).
        cols = [np.ascontiguousarray(rh[:, f]) for f, _, _ in parts]
        choices = [
            [[bb[i] for i in pick] for pick in itertools.combinations(range(len(bb)), k)]
            for _, bb, k in parts
        ]
        for combo in itertools.product(*choices):
            # One N-sized key array alive at a time: the chosen bands of each part, concatenated.
            keys = np.zeros(reps.size, dtype=np.uint64)
            for col, picked in zip(cols, combo, strict=True):
                for shift, width in picked:
                    keys <<= np.uint64(width)
                    keys |= (col >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            a, b = _same_key_pairs(keys)
            del keys
            for lo_k in range(0, a.size, _VERIFY_CHUNK):  # bounded memory for crowded buckets
                ca, cb = a[lo_k : lo_k + _VERIFY_CHUNK], b[lo_k : lo_k + _VERIFY_CHUNK]
                ok = _popcount(rh[ca] ^ rh[cb]).max(axis=1) <= max_distance
                if ok.any():
                    # A pair agreeing on several bands is found several times: keep one code per pair.
                    lo = np.minimum(ca[ok], cb[ok]).astype(np.int64)
                    hi = np.maximum(ca[ok], cb[ok]).astype(np.int64)
                    found.append(np.unique(lo * reps.size + hi))
    if not found:
        return _components(label, np.empty(0, np.int64), np.empty(0, np.int64))
    codes = np.unique(np.concatenate(found))
    return _components(label, reps[codes // reps.size], reps[codes % reps.size])
