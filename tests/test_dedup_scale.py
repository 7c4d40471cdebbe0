"""The array near-duplicate search (curation.scores.phash.duplicate_roots) against brute force, with
each key scheme forced (one, two and three frames' bands; two bands of the first frame with one of
the last), so the scheme chosen at corpus scale is as exact as the one small tests exercise."""

from __future__ import annotations

import numpy as np
import pytest

from curation.scores.phash import PAIR_KEYS, duplicate_roots, hamming


def _brute_roots(hashes: np.ndarray, d: int) -> list[int]:
    n = hashes.shape[0]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    h = hashes.astype(np.int64).tolist()
    for a in range(n):
        for b in range(a + 1, n):
            if all(hamming(x, y) <= d for x, y in zip(h[a], h[b], strict=True)):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


@pytest.mark.parametrize("key_frames", [1, 2, 3, PAIR_KEYS])
@pytest.mark.parametrize("d", [1, 3, 6])
def test_duplicate_roots_each_key_scheme_matches_brute_force(key_frames: int, d: int) -> None:
    rng = np.random.default_rng(10 * d + key_frames)
    base = rng.integers(0, 2**63, size=(120, 3), dtype=np.int64)
    rows = [base]
    for _ in range(4):  # planted copies with up to d+1 flipped bits per frame, some beyond d
        pick = base[rng.choice(len(base), 30, replace=False)].copy()
        for r in range(len(pick)):
            for f in range(3):
                for bit in rng.choice(63, int(rng.integers(0, d + 2)), replace=False):
                    pick[r, f] ^= np.int64(1) << np.int64(bit)
        rows.append(pick)
    rows.append(base[:5])  # exact copies
    hashes = np.concatenate(rows)
    perm = rng.permutation(len(hashes))
    hashes = hashes[perm]
    got = duplicate_roots(hashes, d, key_frames=key_frames).tolist()
    want = _brute_roots(hashes, d)
    assert got == want
    assert sum(1 for i, r in enumerate(want) if r != i) > 20  # groups exist
    # Unsigned input, same bits: same groups.
    assert duplicate_roots(hashes.view(np.uint64), d, key_frames=key_frames).tolist() == want
