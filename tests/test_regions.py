"""CorrCLIP's region math (cass.regions) against direct loops over pixels, tokens and regions."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from cass import regions


def random_labels(shape, values, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.as_tensor(values)
    return values[torch.randint(len(values), shape, generator=g)]


# ---------------------------------------------------------------------------- labels_on_grid
def nearest_loop(labels: np.ndarray, grid) -> np.ndarray:
    """PyTorch's legacy 'nearest': source index floor(i * (in / out)) with a float32 scale."""
    (h_in, w_in), (h, w) = labels.shape, grid
    sy, sx = np.float32(h_in) / np.float32(h), np.float32(w_in) / np.float32(w)
    out = np.zeros(grid, dtype=np.int64)
    for i in range(h):
        for j in range(w):
            y = min(int(np.floor(np.float32(i) * sy)), h_in - 1)
            x = min(int(np.floor(np.float32(j) * sx)), w_in - 1)
            out[i, j] = labels[y, x]
    return out


@pytest.mark.parametrize("size, grid", [((48, 40), (6, 5)), ((37, 29), (7, 11)), ((5, 6), (13, 9)),
                                        ((42, 42), (21, 21))])
def test_labels_on_grid_matches_nearest_loop(size, grid):
    labels = random_labels(size, [0, 3, 7, 10000, 12345], seed=1)
    out = regions.labels_on_grid(labels, grid)
    assert out.dtype == torch.int32 and out.shape == grid
    assert out.tolist() == nearest_loop(labels.numpy(), grid).tolist()
    batch = torch.stack([labels, labels.flip(0)])
    out_b = regions.labels_on_grid(batch, grid)
    assert out_b.shape == (2, *grid)
    assert out_b[1].tolist() == nearest_loop(labels.flip(0).numpy(), grid).tolist()


# ---------------------------------------------------------------------------- merge_regions
def clustered_feats(labels: torch.Tensor, groups: dict[int, int], c=8, noise=0.02, seed=0):
    """(h, w, C) unit features: region ``v`` draws near centre ``groups[v]``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(groups.values()) + 1, c, generator=g, dtype=torch.float64)
    feats = torch.zeros(*labels.shape, c, dtype=torch.float64)
    for v, k in groups.items():
        m = labels == v
        feats[m] = centres[k] + noise * torch.randn(int(m.sum()), c, generator=g, dtype=torch.float64)
    return F.normalize(feats, dim=-1)


def unsegmented_loop(value: int, values: list[int], rule: str) -> bool:
    """Whether ``value`` reads "unsegmented" among the map's ``values``: the smallest (the release), or <= 0."""
    return value == min(values) if rule == "smallest" else value <= 0


def merge_loop(labels: torch.Tensor, feats: torch.Tensor, eps=0.2, min_samples=1,
               unsegmented="smallest") -> list[list[int]]:
    lab = labels.tolist()
    h, w = len(lab), len(lab[0])
    present = sorted({v for row in lab for v in row})
    values = [v for v in present if not unsegmented_loop(v, present, unsegmented)]
    if len(values) < 2:
        return lab
    means = []
    for v in values:
        acc, n = [0.0] * feats.shape[-1], 0
        for i in range(h):
            for j in range(w):
                if lab[i][j] == v:
                    acc = [a + float(f) for a, f in zip(acc, feats[i, j])]
                    n += 1
        norm = math.sqrt(sum((a / n) ** 2 for a in acc))
        means.append([a / n / norm for a in acc])
    sim = [[sum(a * b for a, b in zip(p, q)) for q in means] for p in means]
    top = max(max(row) for row in sim)
    dist = np.array([[top - s for s in row] for row in sim])
    clusters = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dist)
    relabel = {v: int(k) + 10000 for v, k in zip(values, clusters) if k != -1}
    return [[relabel.get(v, v) for v in row] for row in lab]


def components_loop(dist: np.ndarray, eps: float) -> list[int]:
    """DBSCAN with min_samples=1: connected components of d <= eps, numbered by first member."""
    n, comp = len(dist), [-1] * len(dist)
    k = 0
    for start in range(n):
        if comp[start] != -1:
            continue
        stack, comp[start] = [start], k
        while stack:
            a = stack.pop()
            for b in range(n):
                if comp[b] == -1 and dist[a][b] <= eps:
                    comp[b] = k
                    stack.append(b)
        k += 1
    return comp


@pytest.mark.parametrize("seed", range(4))
def test_merge_regions_matches_loop_and_dbscan(seed):
    labels = random_labels((9, 10), [0, 1, 2, 3, 4, 5, 6], seed=seed)
    groups = {0: 0, 1: 1, 2: 2, 3: 1, 4: 3, 5: 2, 6: 1}  # 1, 3, 6 are one object; 2, 5 another
    feats = clustered_feats(labels, groups, seed=seed)
    out = regions.merge_regions(labels, feats)
    assert out.tolist() == merge_loop(labels, feats)
    assert out.dtype == labels.dtype
    # the smallest region is kept; 1, 3, 6 share a label, 2 and 5 share another
    assert (out[labels == 0] == 0).all()
    lab = {v: set(out[labels == v].tolist()) for v in range(1, 7)}
    assert lab[1] == lab[3] == lab[6] == {10000} and lab[2] == lab[5] != lab[4]


def test_merge_regions_min_samples_one_is_connected_components():
    labels = random_labels((8, 8), list(range(9)), seed=5)
    feats = clustered_feats(labels, {v: v % 4 for v in range(9)}, noise=0.3, seed=5)
    means = F.normalize(torch.stack([feats[labels == v].mean(0) for v in range(9)]), dim=1)[1:]
    sim = means @ means.T
    comp = components_loop((sim.max() - sim).numpy(), 0.2)
    out = regions.merge_regions(labels, feats)
    for v, k in zip(range(1, 9), comp):
        assert set(out[labels == v].tolist()) == {10000 + k}


def test_merge_regions_smallest_label_not_zero_is_unsegmented():
    labels = random_labels((8, 9), [3, 5, 8, 11], seed=2)
    feats = clustered_feats(labels, {3: 0, 5: 0, 8: 1, 11: 0}, seed=2)
    out = regions.merge_regions(labels, feats)
    assert out.tolist() == merge_loop(labels, feats)
    assert (out[labels == 3] == 3).all()  # same features as 5 and 11, never merged
    assert set(out[labels == 5].tolist()) == set(out[labels == 11].tolist()) == {10000}
    assert set(out[labels == 8].tolist()) == {10001}


@pytest.mark.parametrize("values", [[4], [0, 7], [2, 10000]])
def test_merge_regions_one_or_two_labels_unchanged(values):
    labels = random_labels((6, 7), values, seed=3)
    feats = clustered_feats(labels, {v: 0 for v in values}, seed=3)
    out = regions.merge_regions(labels, feats)
    assert out.tolist() == labels.tolist() and out is not labels


def test_merge_regions_padding_label_collides_with_cluster_zero():
    labels = torch.zeros(8, 10, dtype=torch.int32)
    labels[:, :3], labels[:, 3:6], labels[:4, 6:8] = 1, 2, 3
    labels[:, 8:] = regions.PAD_LABEL  # a padded strip on the right
    feats = clustered_feats(labels, {0: 0, 1: 1, 2: 1, 3: 2, regions.PAD_LABEL: 3}, seed=4)
    before = labels.clone()
    # min_samples=2: 1 and 2 form cluster 0 (label 10000), 3 and the padding are noise;
    # the padding keeps 10000 and so joins cluster 0
    out = regions.merge_regions(labels, feats, min_samples=2)
    assert out.tolist() == merge_loop(labels, feats, min_samples=2)
    assert set(out[labels == 1].tolist()) == set(out[labels == 2].tolist()) == {10000}
    assert set(out[labels == regions.PAD_LABEL].tolist()) == {10000}
    assert set(out[labels == 3].tolist()) == {3}
    # default min_samples=1: no noise, the padding is its own cluster (10002)
    out = regions.merge_regions(labels, feats)
    assert out.tolist() == merge_loop(labels, feats)
    assert set(out[labels == regions.PAD_LABEL].tolist()) == {10002}
    assert torch.equal(labels, before)


# ---------------------------------------------------------------------------- region_scope_attention
def scope_loop(feats: torch.Tensor, labels: list[int], tau=4.0, unsegmented="smallest") -> torch.Tensor:
    n = len(labels)
    sim = [[sum(float(a) * float(b) for a, b in zip(feats[i], feats[j])) for j in range(n)] for i in range(n)]
    mean = sum(map(sum, sim)) / n**2
    free = [unsegmented_loop(v, labels, unsegmented) for v in labels]
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        logits = {}
        for j in range(n):
            if labels[i] == labels[j] and not free[i]:
                logits[j] = tau * sim[i][j]
            elif (free[i] or free[j]) and sim[i][j] > mean:
                logits[j] = tau * sim[i][j]
        z = sum(math.exp(v) for v in logits.values())
        for j, v in logits.items():
            out[i, j] = math.exp(v) / z
    return out


@pytest.mark.parametrize("values, seed", [([0, 1, 2, 3], 0), ([5, 9, 10000], 1), ([2, 2, 2, 6], 2), ([10001], 3)])
def test_region_scope_attention_matches_loop(values, seed):
    g = torch.Generator().manual_seed(seed)
    labels = random_labels((24,), values, seed=seed)
    feats = F.normalize(torch.randn(24, 6, generator=g, dtype=torch.float64), dim=-1)
    attn = regions.region_scope_attention(feats, labels)
    expected = scope_loop(feats, labels.tolist())
    torch.testing.assert_close(attn, expected, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(attn.sum(-1), torch.ones(24, dtype=torch.float64))


def test_region_scope_attention_batched_equals_per_image():
    g = torch.Generator().manual_seed(7)
    feats = F.normalize(torch.randn(3, 20, 5, generator=g, dtype=torch.float64), dim=-1)
    labels = torch.stack([random_labels((20,), [0, 1, 2], 7), random_labels((20,), [4, 8], 8),
                          random_labels((20,), [1, 2, 3, 9], 9)])
    attn = regions.region_scope_attention(feats, labels, tau=2.5)
    assert attn.shape == (3, 20, 20)
    for b in range(3):
        torch.testing.assert_close(attn[b], scope_loop(feats[b], labels[b].tolist(), tau=2.5))
    # a label map (h, w) is read in row-major order
    torch.testing.assert_close(regions.region_scope_attention(feats[0], labels[0].view(4, 5), tau=2.5), attn[0])


# ---------------------------------------------------------------------------- region_token_mask
@pytest.mark.parametrize("values", [[0, 1, 2], [3, 10000, 10002, 10005], [7]])
def test_region_token_mask_matches_loop(values):
    labels = random_labels((3, 4), values, seed=len(values))
    masks, attn_mask = regions.region_token_mask(labels)
    flat = labels.flatten().tolist()
    present = sorted(set(flat))
    r, n = len(present), len(flat)
    assert masks.shape == (r, n) and attn_mask.shape == (r + 1 + n, r + 1 + n)
    assert masks.tolist() == [[v == p for v in flat] for p in present]
    for q in range(r + 1 + n):
        for k in range(r + 1 + n):
            if q < r:  # region token: CLS and its own region's patches
                may = k == r or (k > r and flat[k - r - 1] == present[q])
            else:  # CLS and patches: CLS and patches
                may = k >= r
            assert bool(attn_mask[q, k]) == (not may), (q, k)


# ---------------------------------------------------------------------------- spatial_layers
@pytest.mark.parametrize("num_layers", [4, 6, 12, 16, 24, 32, 40])
def test_spatial_layers_matches_release_loop(num_layers):
    if num_layers == 12:
        num_spatial = 5
    elif num_layers == 24:
        num_spatial = 12
    elif num_layers == 32:
        num_spatial = 28
    else:
        num_spatial = num_layers - 4
    expected = []
    for idx in range(num_layers - 1):  # every block but the last
        if num_layers - 2 - num_spatial <= idx <= num_layers - 3:
            expected.append(idx)
    assert regions.spatial_layers(num_layers) == tuple(expected)


def test_spatial_layers_known_values():
    assert regions.spatial_layers(12) == (5, 6, 7, 8, 9)
    assert regions.spatial_layers(24) == tuple(range(10, 22))
    assert regions.spatial_layers(32) == tuple(range(2, 30))


# ---------------------------------------------------------------------------- vote_regions
def mode_loop(values: list[int]) -> int:
    counts = Counter(values)
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)  # ties: the smallest class


def vote_loop(pred: torch.Tensor, mask: torch.Tensor, unsegmented="smallest") -> list[list[int]]:
    p, m = pred.tolist(), mask.tolist()
    h, w = len(p), len(p[0])
    out = [row[:] for row in p]
    present = sorted({x for row in m for x in row})
    for v in [v for v in present if not unsegmented_loop(v, present, unsegmented)]:
        winner = mode_loop([p[i][j] for i in range(h) for j in range(w) if m[i][j] == v])
        for i in range(h):
            for j in range(w):
                if m[i][j] == v:
                    out[i][j] = winner
    return out


def test_torch_mode_breaks_ties_to_smallest_on_cpu():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        values = torch.randint(5, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g)
        assert torch.mode(values)[0].item() == mode_loop(values.tolist())


@pytest.mark.parametrize("mask_values, seed", [([0, 1, 2, 3], 0), ([4, 6, 9], 1), ([2], 2), ([0, 10000], 3)])
def test_vote_regions_matches_counter_loop(mask_values, seed):
    pred = random_labels((7, 9), [0, 1, 2, 3], seed=seed + 10)
    mask = random_labels((7, 9), mask_values, seed=seed).int()
    before = pred.clone()
    out = regions.vote_regions(pred, mask)
    assert out.tolist() == vote_loop(pred, mask)
    assert torch.equal(pred, before)
    assert out[mask == mask.min()].tolist() == pred[mask == mask.min()].tolist()  # unsegmented untouched


def test_vote_regions_ties():
    pred = torch.tensor([[2, 2, 5, 5, 1, 1], [0, 0, 0, 3, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [2, 2, 2, 2, 2, 2]])
    out = regions.vote_regions(pred, mask)
    assert out.tolist() == vote_loop(pred, mask) == [[2, 2, 2, 2, 1, 1], [0, 0, 0, 0, 0, 0]]


# ---------------------------------------------------------------------------- release_pad
@pytest.mark.parametrize("h, w, multiple", [(336, 336, 56), (300, 217, 56), (1, 57, 56), (55, 112, 56), (10, 13, 4)])
def test_release_pad_matches_loop_and_round_trips(h, w, multiple):
    extra_h = 0
    while (h + extra_h) % multiple:
        extra_h += 1
    extra_w = 0
    while (w + extra_w) % multiple:
        extra_w += 1
    expected = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    pad = regions.release_pad(h, w, multiple)
    assert pad == expected
    img = torch.randn(1, 1, h, w)
    padded = F.pad(img, pad)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    l, t = pad[0], pad[2]
    assert torch.equal(padded[..., t:t + h, l:l + w], img)


# ------------------------------------------------------------------ the 'nonpositive' rule (the fix)
@pytest.mark.parametrize("values, seed", [([1, 2, 3, 4, 5], 0), ([-1, 0, 3, 4, 6], 1), ([2, 7], 2), ([0, 5], 3)])
def test_merge_regions_nonpositive_rule_matches_loop(values, seed):
    labels = random_labels((9, 10), values, seed=seed)
    groups = {v: i % 2 for i, v in enumerate(values)}
    feats = clustered_feats(labels, groups, seed=seed)
    out = regions.merge_regions(labels, feats, unsegmented="nonpositive")
    assert out.tolist() == merge_loop(labels, feats, unsegmented="nonpositive")
    assert (out[labels <= 0] == labels[labels <= 0]).all()
    if min(values) > 0:  # a covered map: every region is merged, the smallest too (the release leaves it)
        assert (out >= 10000).all()
        assert (regions.merge_regions(labels, feats)[labels == min(values)] == min(values)).all()


@pytest.mark.parametrize("values, seed", [([1, 2, 3], 0), ([-1, 0, 4, 10000], 1), ([3, 3, 8], 2), ([0, 2], 3)])
def test_region_scope_attention_nonpositive_rule_matches_loop(values, seed):
    g = torch.Generator().manual_seed(seed)
    labels = random_labels((24,), values, seed=seed)
    feats = F.normalize(torch.randn(24, 6, generator=g, dtype=torch.float64), dim=-1)
    attn = regions.region_scope_attention(feats, labels, unsegmented="nonpositive")
    torch.testing.assert_close(attn, scope_loop(feats, labels.tolist(), unsegmented="nonpositive"),
                               atol=1e-12, rtol=1e-9)
    if min(values) > 0:  # covered: every token attends within its own region only
        assert (attn[labels[:, None] != labels[None, :]] == 0).all()


@pytest.mark.parametrize("mask_values, seed", [([1, 2, 3], 0), ([-1, 0, 4], 1), ([5], 2), ([0, 9], 3)])
def test_vote_regions_nonpositive_rule_matches_loop(mask_values, seed):
    pred = random_labels((7, 9), [0, 1, 2, 3], seed=seed + 10)
    mask = random_labels((7, 9), mask_values, seed=seed).int()
    out = regions.vote_regions(pred, mask, unsegmented="nonpositive")
    assert out.tolist() == vote_loop(pred, mask, unsegmented="nonpositive")
    assert out[mask <= 0].tolist() == pred[mask <= 0].tolist()
    if min(mask_values) > 0:  # covered: every region takes one class
        assert all(len(set(out[mask == v].tolist())) == 1 for v in mask_values)


def test_unknown_unsegmented_rule_is_one_line():
    with pytest.raises(ValueError, match="unsegmented must be one of smallest, nonpositive, got 'zero'"):
        regions.vote_regions(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), "zero")
