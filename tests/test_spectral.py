"""Each step of the spectral distillation against a direct, slow formula."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from cass import spectral
from cass.config import SpectralConfig


def keys(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n", [7, 40, 90])
def test_head_spectra_equals_full_eigendecomposition(n):
    k = keys(3, n, 16)
    fast = spectral.head_spectra(k, top=20)
    graph = k @ k.transpose(-1, -2) / math.sqrt(16)
    slow = torch.linalg.eigvalsh(graph).flip(-1)[:, :20]
    assert fast.shape == slow.shape == (3, min(20, n))
    torch.testing.assert_close(fast, slow, atol=1e-9, rtol=1e-9)


def test_spectral_cost_direct_formula():
    a, b = keys(4, 6, seed=1).abs(), keys(4, 6, seed=2).abs()
    cost = spectral.spectral_cost(a, b)
    for i, j in itertools.product(range(4), range(4)):
        u = a[i] / a[i].norm()
        u = u / u.abs().sum()
        v = b[j] / b[j].norm()
        v = v / v.abs().sum()
        expected = 1 - (torch.sort(u).values - torch.sort(v).values).abs().sum()
        assert cost[i, j].item() == pytest.approx(expected.item(), abs=1e-6)
    assert cost.dtype == torch.float32


def test_canonical_assignment_is_lexicographic_minimum_among_ties():
    rng = np.random.default_rng(0)
    # additive costs: every assignment has the same total, the identity is the smallest
    cost = rng.random(5)[:, None] + rng.random(5)[None, :]
    assert spectral.canonical_assignment(cost).tolist() == [0, 1, 2, 3, 4]
    # random costs with planted ties: compare with brute force over all permutations
    for seed in range(20):
        c = np.round(np.random.default_rng(seed).random((5, 5)) * 4) / 4
        totals = {p: c[range(5), p].sum() for p in itertools.permutations(range(5))}
        best = min(totals.values())
        expected = min(p for p, t in totals.items() if t <= best + 1e-5)
        assert tuple(spectral.canonical_assignment(c)) == expected


def tie_heavy_costs(n: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """Random, coarsely rounded, additive-plus-noise and real spectral costs: the ties CASS meets."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        kind = k % 4
        if kind == 0:
            out.append(rng.random((n, n)))
        elif kind == 1:
            out.append(np.round(rng.random((n, n)) * 3) / 3)
        elif kind == 2:
            planted = rng.random(n)[:, None] + rng.random(n)[None, :]
            out.append(planted + (rng.random((n, n)) < 0.3) * rng.random((n, n)) * 1e-6)
        else:
            g = torch.Generator().manual_seed(k)
            clip_k = torch.randn(1, n, 30, 16, generator=g) * torch.rand(1, n, 1, 16, generator=g)
            dino_k = torch.randn(1, n, 30, 16, generator=g) * torch.rand(1, n, 1, 16, generator=g) ** 3
            out.append(spectral.spectral_cost(spectral.head_spectra(dino_k), spectral.head_spectra(clip_k))[0].numpy())
    return out


def test_canonical_assignment_equals_brute_force():
    """The pruned search picks the lexicographically smallest permutation within tol (all 720 checked)."""
    for cost in tie_heavy_costs(6, 80):
        exact = np.asarray(cost, dtype=np.float64)
        totals = {p: exact[range(6), p].sum() for p in itertools.permutations(range(6))}
        best = min(totals.values())
        expected = min(p for p, t in totals.items() if t <= best + 1e-5)
        assert tuple(spectral.canonical_assignment(cost)) == expected


def test_canonical_assignment_equals_checking_every_column():
    """12 heads, the real size: the reduced-cost pruning changes no choice of the exhaustive rule."""
    for cost in tie_heavy_costs(12, 120, seed=1):
        assert spectral.canonical_assignment(cost).tolist() == spectral.canonical_assignment_exhaustive(cost).tolist()


def test_assignment_duals_price_every_assignment():
    """cost(pi) = opt + sum of reduced costs along pi, reduced costs >= 0, zero on the optimum."""
    rng = np.random.default_rng(2)
    for cost in tie_heavy_costs(8, 20, seed=2):
        cost = np.asarray(cost, dtype=np.float64)
        rows, cols = linear_sum_assignment(cost)
        reduced = spectral.assignment_duals(cost, cols)
        assert reduced.min() >= -1e-12
        assert np.abs(reduced[rows, cols]).max() <= 1e-12
        opt = cost[rows, cols].sum()
        for _ in range(10):
            pi = rng.permutation(8)
            assert abs(cost[range(8), pi].sum() - (opt + reduced[range(8), pi].sum())) <= 1e-12


def test_canonical_assignment_sums_float32_costs_exactly():
    """Costs of a near-constant image: float32 values near 0.999 with many ties.
    Summed in float32 (the old code) 20 of these 300 matrices found no feasible column."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        base = rng.random(20) * 1e-4
        cost = (0.999 + base[rng.integers(0, 20, (12, 12))]).astype(np.float32)
        cols = spectral.canonical_assignment(cost)
        exact = cost.astype(np.float64)
        rows, best = linear_sum_assignment(exact)
        assert sorted(cols) == list(range(12))
        assert exact[range(12), cols].sum() <= exact[rows, best].sum() + 1e-5


def test_match_heads_plain_mode_is_scipy():
    cost = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(3))
    cols = spectral.match_heads(cost, canonical=False)
    for b in range(3):
        assert cols[b].tolist() == linear_sum_assignment(cost[b].numpy())[1].tolist()


def test_pairing_swapped_and_consistent():
    cost = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(4))
    cols = torch.tensor([[2, 0, 3, 1]])
    dino, weight = spectral.pairing(cost, cols, swapped=True)
    for i in range(4):  # fused head i: CLIP head i, DINO head cols[i], weight 1 - C[i, cols[i]]
        assert dino[0, i] == cols[0, i]
        assert weight[0, i] == pytest.approx(1 - cost[0, i, cols[0, i]].item())
    dino, weight = spectral.pairing(cost, cols, swapped=False)
    for i in range(4):  # CLIP head cols[i] paired with DINO head i
        assert dino[0, cols[0, i]] == i
        assert weight[0, cols[0, i]] == pytest.approx(1 - cost[0, i, cols[0, i]].item())


def test_eigenscale_formula_and_zero_range():
    s = torch.tensor([9.0, 5.0, 2.0, 1.0], dtype=torch.float64)
    lo, hi = 1.0, 9.0
    expected = (s - lo) / (hi - lo) * (1.5 * hi - 0.5 * lo) + 0.5 * lo
    torch.testing.assert_close(spectral.eigenscale(s), expected)
    flat = torch.full((3,), 2.0, dtype=torch.float64)
    torch.testing.assert_close(spectral.eigenscale(flat), flat)


def slow_low_rank(k, r, scale):
    graph = k @ k.T / math.sqrt(k.shape[-1])
    vals, vecs = torch.linalg.eigh(graph)
    vals, vecs = vals.flip(0)[:r], vecs.flip(1)[:, :r]
    if scale:
        lo, hi = vals.min(), vals.max()
        vals = (vals - lo) / (hi - lo) * (1.5 * hi - 0.5 * lo) + 0.5 * lo
    return vecs @ torch.diag(vals) @ vecs.T


@pytest.mark.parametrize("scale", [True, False])
def test_low_rank_graph_equals_truncated_eigendecomposition(scale):
    k = keys(2, 50, 16, seed=5)
    fast = spectral.low_rank_graph(k, rank=10, scale_eigenvalues=scale, out_dtype=torch.float64)
    for b in range(2):
        torch.testing.assert_close(fast[b], slow_low_rank(k[b], 10, scale), atol=1e-8, rtol=1e-8)


def test_energy_rank_uses_the_full_spectrum():
    k = keys(50, 16, seed=6)
    vals = torch.linalg.eigvalsh(k @ k.T / 4).flip(0).clamp_min(0)
    share = vals.cumsum(0) / vals.sum()
    r = int((share < 0.95).sum()) + 1
    fast = spectral.low_rank_graph(k, rank=None, energy_threshold=0.95, out_dtype=torch.float64)
    torch.testing.assert_close(fast, slow_low_rank(k, r, True), atol=1e-8, rtol=1e-8)


def test_gaussian_bias_direct():
    g = spectral.gaussian_bias((3, 4), sigma=5.0)
    for p, q in itertools.product(range(12), range(12)):
        d2 = (p // 4 - q // 4) ** 2 + (p % 4 - q % 4) ** 2
        assert g[p, q].item() == pytest.approx(math.exp(-d2 / 50), rel=1e-6)


def test_range_match_and_constant_input():
    x, ref = torch.rand(2, 3, 5), torch.rand(2, 3, 5) * 7 - 2
    out = spectral.range_match(x, ref, dims=(1, 2))
    torch.testing.assert_close(out.amin((1, 2)), ref.amin((1, 2)))
    torch.testing.assert_close(out.amax((1, 2)), ref.amax((1, 2)))
    const = spectral.range_match(torch.ones(2, 3, 5), ref, dims=(1, 2))
    assert torch.isfinite(const).all()


def slow_fuse(clip_k, dino_k, swapped):
    """Per-head loop as the reference writes it, with full N x N eigendecompositions."""
    heads, n, d = clip_k.shape
    clip_g = [clip_k[h] @ clip_k[h].T / math.sqrt(d) for h in range(heads)]
    dino_g = [dino_k[h] @ dino_k[h].T / math.sqrt(d) for h in range(heads)]

    def spectrum(g):
        lam = torch.linalg.eigvalsh(g).flip(0)[:20]
        lam = lam / lam.norm()
        return lam / lam.abs().sum()

    cost = np.zeros((heads, heads), dtype=np.float32)
    for i, j in itertools.product(range(heads), range(heads)):
        cost[i, j] = 1 - (spectrum(dino_g[i]).sort().values - spectrum(clip_g[j]).sort().values).abs().sum()
    cols = spectral.canonical_assignment(cost)
    out = torch.zeros(heads, n, n, dtype=torch.float64)
    for i in range(heads):
        c, dn = (i, cols[i]) if swapped else (cols[i], i)
        w = 1 - float(cost[i, cols[i]])
        approx = slow_low_rank(dino_k[dn], 10, True)
        approx.fill_diagonal_(0)
        approx = (approx - approx.min()) / (approx.max() - approx.min()) * (clip_g[c].max() - clip_g[c].min()) \
            + clip_g[c].min()
        out[c] = (10 * w * approx + clip_g[c]) / (10 * w + 1)
    return out


@pytest.mark.parametrize("swapped", [True, False])
def test_fuse_spectral_against_per_head_loop(swapped):
    clip_k, dino_k = keys(1, 4, 30, 16, seed=7), keys(1, 4, 30, 16, seed=8)
    fast = spectral.fuse_spectral(clip_k.float(), dino_k.float(), SpectralConfig(swapped_pairing=swapped))
    slow = slow_fuse(clip_k[0], dino_k[0], swapped)
    torch.testing.assert_close(fast[0].double(), slow, atol=2e-4, rtol=1e-4)


def test_fuse_sequential_formula():
    clip_k, dino_k = keys(1, 2, 30, 16, seed=9), keys(1, 2, 30, 16, seed=10)
    fast = spectral.fuse_sequential(clip_k.float(), dino_k.float(), SpectralConfig())
    for h in range(2):
        graph = clip_k[0, h] @ clip_k[0, h].T / 4
        approx = slow_low_rank(dino_k[0, h], 10, False)
        approx.fill_diagonal_(0)
        approx = (approx - approx.min()) / (approx.max() - approx.min()) * (graph.max() - graph.min()) + graph.min()
        torch.testing.assert_close(fast[0, h].double(), (approx + graph) / 2, atol=2e-4, rtol=1e-4)


def test_energy_rank_known_answers():
    # shares of the full spectrum: 0.5, 0.8, 0.9, 0.95, 0.975, 1
    vals = torch.tensor([[20.0, 12.0, 4.0, 2.0, 1.0, 1.0]], dtype=torch.float64)
    assert spectral.energy_rank(vals, 0.95).tolist() == [4]  # reaches 0.95 exactly at r = 4
    assert spectral.energy_rank(vals, 0.5).tolist() == [1]
    assert spectral.energy_rank(vals, 0.96).tolist() == [5]
    assert spectral.energy_rank(vals, 1.0).tolist() == [6]
    # negative round-off below zero counts as zero energy
    assert spectral.energy_rank(torch.tensor([[3.0, 1.0, -1e-12]], dtype=torch.float64), 0.75).tolist() == [1]


def test_canonical_matching_changes_a_tied_pairing():
    """Ties where scipy returns another optimal assignment than the lexicographic minimum."""
    cost = np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 0.5, 0.5], [0.5, 1.0, 1.0, 0.0], [1.0, 0.0, 0.5, 0.0]])
    plain = spectral.match_heads(torch.tensor(cost)[None], canonical=False)[0].tolist()
    canonical = spectral.match_heads(torch.tensor(cost)[None], canonical=True)[0].tolist()
    assert plain == [2, 0, 3, 1] and canonical == [0, 2, 3, 1]
    assert cost[range(4), plain].sum() == cost[range(4), canonical].sum()  # both optimal


def test_swapped_pairing_changes_the_output_when_the_matching_is_a_cycle():
    """With 4 heads matched as a 3-cycle (0 -> 0, 1 -> 3 -> 2 -> 1) the two pairings differ."""
    clip_k, dino_k = keys(1, 4, 30, 16, seed=1), keys(1, 4, 30, 16, seed=101)
    cost = spectral.spectral_cost(spectral.head_spectra(dino_k.float()), spectral.head_spectra(clip_k.float()))
    assert spectral.match_heads(cost)[0].tolist() == [0, 3, 1, 2]
    swapped = spectral.fuse_spectral(clip_k.float(), dino_k.float(), SpectralConfig(swapped_pairing=True))
    consistent = spectral.fuse_spectral(clip_k.float(), dino_k.float(), SpectralConfig(swapped_pairing=False))
    assert not torch.allclose(swapped[0, 1:], consistent[0, 1:])
    torch.testing.assert_close(swapped[0, 0], consistent[0, 0])  # head 0 is matched to itself
    for flag, fast in ((True, swapped), (False, consistent)):
        torch.testing.assert_close(fast[0].double(), slow_fuse(clip_k[0], dino_k[0], flag), atol=2e-4, rtol=1e-4)
