"""Fréchet distance: known values, growth with shift and noise, stability with singular covariances."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.eval import fvd as fvd_mod
from training.eval.fvd import FeatureStats, frechet_distance, fvd, split_halves, trace_sqrt_product


def _features(n: int = 300, d: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features, like network logits
    return rng.normal(size=(n, d)) @ mix + rng.normal(size=d)


def test_a_set_against_itself_is_zero() -> None:
    x = _features()
    scale = float(np.trace(np.cov(x, rowvar=False)))
    assert fvd(x, x) < 1e-9 * scale
    assert fvd(x, x.copy()[::-1]) < 1e-9 * scale  # order does not matter


def test_a_pure_shift_costs_exactly_its_squared_length_and_grows_with_it() -> None:
    x = _features()
    d = x.shape[1]
    values = [fvd(x, x + s) for s in (0.1, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and len(set(values)) == 4
    for s, v in zip((0.1, 0.5, 1.0, 2.0), values, strict=True):
        assert v == pytest.approx(d * s * s, rel=1e-6)  # covariance unchanged: only the mean term


def test_noise_raises_the_distance_monotonically() -> None:
    x = _features(n=2000)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=x.shape)
    values = [fvd(x, x + sigma * noise) for sigma in (0.0, 0.2, 0.5, 1.0)]
    assert values[0] < 1e-9
    assert all(a < b for a, b in itertools.pairwise(values)), values


def test_matches_the_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.0])  # one variance exactly 0
    want = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    got = frechet_distance(FeatureStats(mu1, np.diag(a), 10), FeatureStats(mu2, np.diag(b), 10))
    assert got == pytest.approx(want, rel=1e-12)


def test_trace_sqrt_of_non_commuting_matrices_matches_the_2x2_formula() -> None:
    # For a 2x2 matrix M with eigenvalues l1, l2 >= 0: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    rng = np.random.default_rng(3)
    for _ in range(20):
        p, q = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
        s1, s2 = p @ p.T, q @ q.T
        m = s1 @ s2
        want = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
        assert trace_sqrt_product(s1, s2) == pytest.approx(want, rel=1e-9)


def test_near_singular_covariances_stay_real_finite_and_exact() -> None:
    # 12 samples in 64 dimensions: rank-11 covariances, where sqrtm(S1 @ S2) goes complex.
    x = _features(n=12, d=64, seed=5)
    y = _features(n=12, d=64, seed=6)
    sx = np.cov(x, rowvar=False)
    assert np.linalg.matrix_rank(sx) == 11
    assert trace_sqrt_product(sx, sx) == pytest.approx(np.trace(sx), rel=1e-9)  # sqrt(S S) = S
    assert fvd(x, x) < 1e-9 * np.trace(sx)
    d_xy, d_yx = fvd(x, y), fvd(y, x)
    assert np.isfinite(d_xy) and d_xy > 0 and d_xy == pytest.approx(d_yx, rel=1e-9)
    # Commuting, with eigenvalues down to 1e-14 and exact zeros: the answer is known in closed form.
    q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(32, 32)))
    a = np.r_[np.logspace(0, -14, 16), np.zeros(16)]
    b = np.r_[np.zeros(8), np.logspace(-14, 0, 24)]
    got = trace_sqrt_product(q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(float(np.sqrt(a * b).sum()), abs=1e-7)


def test_eigh_failure_falls_back_to_an_eps_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real = fvd_mod._trace_sqrt

    def flaky(s1: np.ndarray, s2: np.ndarray) -> float:
        calls.append(float(s1[0, 0]))
        if len(calls) == 1:
            raise np.linalg.LinAlgError("Eigenvalues did not converge")
        return real(s1, s2)

    monkeypatch.setattr(fvd_mod, "_trace_sqrt", flaky)
    s = np.diag([1.0, 2.0])
    assert trace_sqrt_product(s, s) == pytest.approx(3.0, rel=1e-5)
    assert calls == [1.0, 1.0 + fvd_mod.EPS_OFFSET]


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        fvd(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="dimensions differ"):
        fvd(np.ones((3, 4)) * np.arange(3)[:, None], np.ones((3, 5)) * np.arange(3)[:, None])
    with pytest.raises(ValueError, match="NaN"):
        fvd(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_real_vs_real_halves_are_disjoint_and_seeded() -> None:
    a, b = split_halves(11, seed=4)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert [list(h) for h in split_halves(11, seed=4)] == [list(a), list(b)]
    assert [list(h) for h in split_halves(11, seed=5)] != [list(a), list(b)]
    with pytest.raises(ValueError):
        split_halves(3, seed=0)
