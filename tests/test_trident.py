"""Trident's and SAM's math (cass.windows, cass.sam_math) against direct per-pixel, per-head and per-region formulas."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from cass import sam_math
from cass import windows as tiling
from cass.methods import common


# ---------------------------------------------------------------------------- crops and splicing
@pytest.mark.parametrize("size, want", [
    ((500, 375), (512, 384)),    # longer side 500 -> 512; 375 * 512 / 500 = 384
    ((200, 300), (336, 336)),    # 300 -> 304; 200 * 304 / 300 = 202.67 -> 202 -> 208; both raised to the crop
    ((448, 1000), (464, 1008)),  # 1000 -> 1008; 448 * 1.008 = 451.58 -> 451 -> 464: rounded up again
])
def test_preprocess_size(size, want):
    assert tiling.preprocess_size(*size) == want


def test_preprocess_size_keeps_multiples_even_below_the_crop():
    assert tiling.preprocess_size(320, 480) == (320, 480)
    assert tiling.preprocess_size(448, 672) == (448, 672)


def test_sliding_windows_by_hand():
    windows, grid = tiling.sliding_windows(448, 672, crop=336, stride=224, patch=16)
    assert grid == (2, 3)
    rows = [(0, 21), (7, 28)]              # 0..336 and 224..560 shifted back to 112..448
    cols = [(0, 21), (14, 35), (21, 42)]  # 0, 224, 448 -> 336
    want = [(r[0], c[0], r[1], c[1]) for r in rows for c in cols]
    assert windows.tolist() == [list(t) for t in want]


def test_sliding_windows_stride_112_and_small_images():
    windows, grid = tiling.sliding_windows(336, 560, crop=336, stride=112)
    assert grid == (1, 3) and windows.tolist() == [[0, 0, 21, 21], [0, 7, 21, 28], [0, 14, 21, 35]]
    windows, grid = tiling.sliding_windows(320, 336)  # a side below the crop: one short window
    assert grid == (1, 1) and windows.tolist() == [[0, 0, 20, 21]]
    with pytest.raises(ValueError, match="token grid"):
        tiling.sliding_windows(448, 672, crop=336, stride=224, patch=10)


def test_sliding_windows_are_the_models_windows_in_tokens():
    """One formula: every method's windows (those of the merge steps, ``cass.merges``) are mmseg's scheme
    written out (the former two copies), and Trident's are them divided by the patch, or refused off the
    token grid."""
    from cass import merges

    assert merges.slide_windows is tiling.slide_windows
    for crop, stride in [(336, 224), (336, 112), (224, 112), (96, 64), (64, 32)]:
        for h in (16, 64, 100, 224, 320, 336, 448, 500, 688):
            for w in (32, 96, 336, 410, 576, 1008):
                rows = max(h - crop + stride - 1, 0) // stride + 1
                cols = max(w - crop + stride - 1, 0) // stride + 1
                want = []
                for r in range(rows):
                    for c in range(cols):
                        y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
                        want.append((max(y2 - crop, 0), max(x2 - crop, 0), y2, x2))
                assert tiling.slide_windows(h, w, crop, stride) == want
                if any(e % 16 for box in want for e in box):
                    with pytest.raises(ValueError, match="token grid"):
                        tiling.sliding_windows(h, w, crop, stride, 16)
                    continue
                windows, grid = tiling.sliding_windows(h, w, crop, stride, 16)
                assert grid == (rows, cols) and windows.dtype == torch.long
                assert windows.tolist() == [[e // 16 for e in box] for box in want]


def direct_splice(crop_feats, windows, grid, ratio):
    """Per image, channel and pixel: the mean over the crops covering the pixel."""
    b, k, c = crop_feats.shape[:3]
    out = torch.empty(b, c, grid[0] * ratio, grid[1] * ratio, dtype=torch.float64)
    for y in range(grid[0] * ratio):
        for x in range(grid[1] * ratio):
            covering = []
            for i, (y1, x1, y2, x2) in enumerate(windows.tolist()):
                if y1 * ratio <= y < y2 * ratio and x1 * ratio <= x < x2 * ratio:
                    covering.append(crop_feats[:, i, :, y - y1 * ratio, x - x1 * ratio].double())
            out[:, :, y, x] = sum(covering) / len(covering)
    return out


@pytest.mark.parametrize("ratio", [1, 2])
def test_splice_averages_overlapping_crops(ratio):
    g = torch.Generator().manual_seed(0)
    windows, grid = tiling.sliding_windows(96, 128, crop=64, stride=32, patch=16)  # 2 x 3 crops of 4 x 4 tokens
    assert grid == (2, 3)
    feats = torch.randn(2, 6, 5, 4 * ratio, 4 * ratio, generator=g)
    got = tiling.splice_crops(feats, windows, (6, 8), ratio)
    assert got.shape == (2, 5, 6 * ratio, 8 * ratio)
    torch.testing.assert_close(got.double(), direct_splice(feats, windows, (6, 8), ratio), rtol=1e-6, atol=1e-6)
    # batch > 1 is the same as one image at a time
    for b in range(2):
        torch.testing.assert_close(got[b:b + 1], tiling.splice_crops(feats[b:b + 1], windows, (6, 8), ratio))


def test_splice_single_crop_is_the_crop_and_gaps_raise():
    feats = torch.randn(1, 1, 3, 4, 5)
    torch.testing.assert_close(tiling.splice_crops(feats, torch.tensor([[0, 0, 4, 5]]), (4, 5)), feats[:, 0])
    with pytest.raises(ValueError, match="cover"):
        tiling.splice_crops(feats, torch.tensor([[0, 0, 4, 5]]), (4, 6))
    with pytest.raises(ValueError, match="crops"):
        tiling.splice_crops(feats, torch.zeros(2, 4, dtype=torch.long), (4, 5))


def test_splice_keeps_half_precision():
    feats = torch.randn(1, 2, 3, 4, 4).half()
    out = tiling.splice_crops(feats, torch.tensor([[0, 0, 4, 4], [0, 2, 4, 6]]), (4, 6))
    assert out.dtype == torch.float16
    torch.testing.assert_close(out[0, :, :, 2:4].float(), (feats[0, 0, :, :, 2:] + feats[0, 1, :, :, :2]).float() / 2,
                               rtol=1e-3, atol=1e-3)


def test_crop_grid_scale():
    feats = torch.randn(3, 4, 21, 21)
    same, ratio = tiling.crop_grid_scale(feats, (21, 21))
    assert same is feats and ratio == 1
    double, ratio = tiling.crop_grid_scale(torch.randn(3, 4, 42, 42), (21, 21))
    assert ratio == 2 and double.shape == (3, 4, 42, 42)
    resized, ratio = tiling.crop_grid_scale(feats, (24, 24))  # DINO /16 crop vs CLIP /14 crop of 336
    assert ratio == 1 and resized.shape == (3, 4, 24, 24)
    for i in range(3):
        want = F.interpolate(feats[i:i + 1], size=(24, 24), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(resized[i], want)
    const, _ = tiling.crop_grid_scale(torch.full((1, 2, 1, 21, 21), 3.0), (24, 24))
    assert const.shape == (1, 2, 1, 24, 24)
    torch.testing.assert_close(const, torch.full_like(const, 3.0))


# ---------------------------------------------------------------------------- SAM correlation
@pytest.mark.parametrize("size, want", [((375, 500), (48, 64)), ((333, 500), (42, 64)), ((300, 410), (46, 64)),
                                        ((1024, 512), (64, 32)), ((650, 1195), (35, 64))])
def test_sam_input_grid(size, want):
    # 300 x 410 -> 304 x 416 -> scale 1024 / 416: 304 * 2.4615 = 748.3 -> 748 // 16 = 46
    # 650 x 1195 -> 656 x 1200 -> 656 * 1024 / 1200 = 559.79 -> 560 (not 559) -> 35
    assert sam_math.sam_input_grid(*size) == want


def test_crop_sam_tokens_keeps_valid_queries_and_keys():
    g = torch.Generator().manual_seed(1)
    gh, gw, h, w = 4, 5, 3, 2
    attn = torch.randn(2, 3, gh * gw, gh * gw, generator=g)
    values = torch.randn(2, 3, gh, gw, 6, generator=g)
    a, v = sam_math.crop_sam_tokens(attn, values, (h, w))
    assert a.shape == (2, 3, 6, 6) and v.shape == (2, 3, 6, 6)
    for i1 in range(h):
        for j1 in range(w):
            torch.testing.assert_close(v[:, :, i1 * w + j1], values[:, :, i1, j1])
            for i2 in range(h):
                for j2 in range(w):
                    want = attn[:, :, i1 * gw + j1, i2 * gw + j2]
                    torch.testing.assert_close(a[:, :, i1 * w + j1, i2 * w + j2], want)


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def direct_correlation(attn, values, cos_fac, refine_neg_cos, max_thresh=0.9):
    """Per image and query: the threshold from every head's cosines, then the kept attention."""
    b, heads, n, _ = attn.shape
    out = torch.zeros(b, n, n, dtype=torch.float64)
    taus = torch.zeros(b, n, dtype=torch.float64)
    for bi in range(b):
        for i in range(n):
            cos = [[cosine(values[bi, h, i].double(), values[bi, h, j].double()) for j in range(n)]
                   for h in range(heads)]
            tau = cos_fac * sum(sum(row) / n for row in cos) / heads
            taus[bi, i] = tau
            if not refine_neg_cos and tau < 0:
                tau = 0.6
            tau = min(tau, max_thresh)
            row = torch.zeros(n, dtype=torch.float64)
            for h in range(heads):
                for j in range(n):
                    if cos[h][j] > tau:
                        row[j] += attn[bi, h, i, j].double() / heads
            out[bi, i] = row / row.sum()
    return out, taus


def sam_inputs(b=2, heads=3, n=10, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    attn = torch.randn(b, heads, n, n, generator=g).softmax(-1)
    values = torch.randn(b, heads, n, d, generator=g)
    return attn, values


@pytest.mark.parametrize("refine_neg_cos", [True, False])
def test_sam_correlation_against_direct_formula(refine_neg_cos):
    attn, values = sam_inputs()
    got = sam_math.sam_correlation(attn, values, 1.2, refine_neg_cos)
    want, taus = direct_correlation(attn, values, 1.2, refine_neg_cos)
    assert (taus < 0).any() and (taus > 0).any()  # both branches of refine_neg_cos are exercised
    assert got.dtype == torch.float32 and got.shape == (2, 10, 10)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert (got == 0).any()
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 10))


def test_refine_neg_cos_changes_only_rows_with_a_negative_threshold():
    attn, values = sam_inputs(seed=3)
    _, taus = direct_correlation(attn, values, 1.2, True)
    kept = sam_math.sam_correlation(attn, values, 1.2, True)
    raised = sam_math.sam_correlation(attn, values, 1.2, False)
    positive = taus >= 0
    torch.testing.assert_close(kept[positive], raised[positive])
    assert not torch.allclose(kept[~positive], raised[~positive])


def test_sam_correlation_threshold_is_clamped():
    # nearly parallel values: the threshold 1.2 * ~1 is clamped to 0.9
    g = torch.Generator().manual_seed(4)
    base = torch.randn(1, 2, 1, 8, generator=g)
    values = base + 0.2 * torch.randn(1, 2, 6, 8, generator=g)
    attn = torch.randn(1, 2, 6, 6, generator=g).softmax(-1)
    want, taus = direct_correlation(attn, values, 1.2, True)
    assert (taus > 0.9).all()
    torch.testing.assert_close(sam_math.sam_correlation(attn, values).double(), want, rtol=1e-5, atol=1e-6)
    unclamped = sam_math.sam_correlation(attn, values, max_thresh=2.0)  # only the token itself passes
    torch.testing.assert_close(unclamped, torch.eye(6)[None])


def test_sam_correlation_empty_row_keeps_its_token_and_batch_is_per_image():
    attn, values = sam_inputs(b=3, seed=5)
    values[1, :, 4] = 0  # a zero value in every head: cosine 0 with all, threshold 0, nothing kept
    got = sam_math.sam_correlation(attn, values)
    torch.testing.assert_close(got[1, 4], torch.eye(10)[4])
    assert torch.isfinite(got).all()
    for b in range(3):
        torch.testing.assert_close(got[b:b + 1], sam_math.sam_correlation(attn[b:b + 1], values[b:b + 1]))


def test_sam_correlation_cosine_is_per_head_not_on_concatenated_values():
    # head 0 values identical for all tokens, head 1 random: per-head cosines differ from the concatenated ones
    attn, values = sam_inputs(b=1, heads=2, seed=6)
    values[0, 0] = values[0, 0, :1]
    want, _ = direct_correlation(attn, values, 1.2, True)
    torch.testing.assert_close(sam_math.sam_correlation(attn, values).double(), want, rtol=1e-5, atol=1e-6)
    concat = values[0].transpose(0, 1).reshape(1, 1, 10, -1)  # one "head" of concatenated values
    other, _ = direct_correlation(attn.mean(1, keepdim=True), concat, 1.2, True)
    assert not torch.allclose(want, other)


def test_aggregate_resizes_then_mixes():
    g = torch.Generator().manual_seed(7)
    spliced = torch.randn(2, 5, 6, 8, generator=g)
    weights = torch.rand(2, 12, 12, generator=g)
    got = sam_math.aggregate(spliced, weights, (3, 4))
    assert got.shape == (2, 12, 5)
    # an exact halving with align_corners=False averages each 2 x 2 block
    blocks = spliced.reshape(2, 5, 3, 2, 4, 2).mean((3, 5))
    for b in range(2):
        for n in range(12):
            want = sum(weights[b, n, m] * blocks[b, :, m // 4, m % 4] for m in range(12))
            torch.testing.assert_close(got[b, n], want, rtol=1e-5, atol=1e-5)
    same = sam_math.aggregate(blocks, weights, (3, 4))
    torch.testing.assert_close(same, got, rtol=1e-5, atol=1e-5)


def test_pipeline_shapes_end_to_end():
    """Crops -> spliced grid -> SAM grid -> mixed tokens, as the released forward chains them, against a
    per-token re-statement: each cell the mean of the crops covering it, PyTorch's bilinear weights
    (``align_corners=False``) written out, then each SAM token the kept-attention mean of the others."""
    h, w = tiling.preprocess_size(300, 410, stride=16, crop=96)
    assert (h, w) == (304, 416)  # 410 -> 416; 300 * 416 / 410 = 304.4 -> 304
    windows, (rows, cols) = tiling.sliding_windows(h, w, crop=96, stride=64)
    assert (rows, cols) == (5, 6) and windows[-1].tolist() == [13, 20, 19, 26]  # the last ones end at the border
    g = torch.Generator().manual_seed(14)
    crops = torch.randn(1, rows * cols, 7, 6, 6, generator=g)
    spliced = tiling.splice_crops(crops, windows, (h // 16, w // 16))
    sam_grid = sam_math.sam_input_grid(300, 410, long_side=128)
    assert sam_grid == (5, 8)  # 304 x 416 -> 93.5 x 128 px -> 94 // 16 = 5 rows, 8 columns
    attn, values = sam_inputs(b=1, heads=2, n=sam_grid[0] * sam_grid[1], d=3)
    mixed = sam_math.aggregate(spliced, sam_math.sam_correlation(attn, values), sam_grid)
    assert mixed.shape == (1, 40, 7) and torch.isfinite(mixed).all()

    def taps(out_size, in_size):
        """(index, weight) pairs of each output position: source (o + 0.5) in / out - 0.5, clamped at 0."""
        out = []
        for o in range(out_size):
            src = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
            i0 = int(src)
            i1 = min(i0 + 1, in_size - 1)
            out.append([(i0, 1 - (src - i0)), (i1, src - i0)])
        return out

    cells = direct_splice(crops, windows, (19, 26), 1)[0]  # (7, 19, 26) float64
    rows_taps, cols_taps = taps(5, 19), taps(8, 26)
    on_sam = torch.zeros(40, 7, dtype=torch.float64)
    for y in range(5):
        for x in range(8):
            on_sam[y * 8 + x] = sum(wy * wx * cells[:, iy, ix]
                                    for iy, wy in rows_taps[y] for ix, wx in cols_taps[x])
    weights, _ = direct_correlation(attn, values, 1.2, True)
    want = torch.stack([sum(weights[0, n, m] * on_sam[m] for m in range(40)) for n in range(40)])
    torch.testing.assert_close(mixed[0].double(), want, rtol=1e-5, atol=1e-6)
    # the same feature in every crop comes through unchanged: the splice averages, the weights sum to 1
    constant = torch.arange(7.0)[None, None, :, None, None].expand_as(crops)
    flat = sam_math.aggregate(tiling.splice_crops(constant, windows, (19, 26)),
                              sam_math.sam_correlation(attn, values), sam_grid)
    torch.testing.assert_close(flat, torch.arange(7.0).expand(1, 40, 7))


# ---------------------------------------------------------------------------- SAM refinement prompts
def test_refinement_inputs_halve_and_ignore():
    g = torch.Generator().manual_seed(8)
    probs = torch.rand(3, 8, 10, generator=g).softmax(0)
    labels = probs.argmax(0)
    small, p = sam_math.refinement_inputs(labels, probs, coarse_thresh=0.36)
    assert small.shape == (4, 5) and p.shape == (3, 4, 5)
    blocks = probs.reshape(3, 4, 2, 5, 2).mean((2, 4))  # bilinear halving: 2 x 2 means
    torch.testing.assert_close(p, blocks)
    for i in range(4):
        for j in range(5):
            want = 3 if blocks[:, i, j].max() < 0.36 else labels[2 * i, 2 * j]
            assert small[i, j] == want
    assert (small == 3).any() and (small < 3).any()
    same, _ = sam_math.refinement_inputs(labels, probs, coarse_thresh=0.0)
    assert (same == labels[::2, ::2]).all()


def test_region_prompts_by_hand():
    labels = np.full((20, 20), 3)
    labels[0:5, 0:5] = 1          # 25 px
    labels[5:8, 5:8] = 1          # touches the first only diagonally: one 8-connected region of 34 px
    labels[12:20, 10:20] = 1      # 80 px
    labels[15:17, 0:2] = 1        # 4 px: below the minimal area
    labels[10:12, 0:20] = 2       # class 2: its probabilities never reach the threshold
    probs = np.full((3, 20, 20), 0.1)
    probs[2] = 0.19               # just below the threshold
    probs[1, 6, 6] = 0.9
    probs[1, 19, 19] = 0.8
    probs[1, 19, 11] = 0.8        # same maximum as (19, 19): the first in row-major order wins
    probs[1, 0, 19] = 0.95        # outside every region of class 1
    regions = sam_math.region_prompts(labels, probs, num_classes=3, coarse_thresh=0.2, minimal_area=10)
    assert [r["class"] for r in regions] == [1, 1]
    first, second = regions
    assert first["mask"].sum() == 34 and second["mask"].sum() == 80
    np.testing.assert_array_equal(first["box"], [0, 0, 7, 7])
    np.testing.assert_array_equal(first["point"], [6, 6])
    np.testing.assert_array_equal(second["box"], [10, 12, 19, 19])
    np.testing.assert_array_equal(second["point"], [11, 19])
    assert second["score"] == pytest.approx((78 * 0.1 + 2 * 0.8) / 80)
    assert sam_math.region_prompts(labels, probs, 3, 0.2, minimal_area=35)[0]["mask"].sum() == 80
    at = sam_math.region_prompts(labels, probs, 3, coarse_thresh=0.19, minimal_area=10)  # max == threshold: kept
    assert [r["class"] for r in at] == [1, 1, 2] and at[2]["mask"].sum() == 40


def test_region_prompts_against_scipy_labelling():
    rng = np.random.default_rng(9)
    coarse = rng.integers(0, 3, size=(6, 8))
    labels = np.kron(coarse, np.ones((4, 4), dtype=int))
    labels[rng.random(labels.shape) < 0.05] = 3  # scattered ignored pixels
    probs = rng.random((3, 24, 32))
    regions = sam_math.region_prompts(labels, probs, 3, coarse_thresh=0.2, minimal_area=12)
    want = []
    for c in range(3):
        components, count = ndimage.label(labels == c, structure=np.ones((3, 3)))
        for r in range(1, count + 1):
            mask = components == r
            if mask.sum() >= 12:
                ys, xs = np.nonzero(mask)
                best = max(zip(ys, xs), key=lambda p: (probs[c][p], -p[0], -p[1]))
                want.append((c, mask, [xs.min(), ys.min(), xs.max(), ys.max()], [best[1], best[0]]))
    assert len(regions) == len(want) > 3
    for got, (c, mask, box, point) in zip(regions, want):
        assert got["class"] == c
        np.testing.assert_array_equal(got["mask"], mask)
        np.testing.assert_array_equal(got["box"], box)
        np.testing.assert_array_equal(got["point"], point)
        assert got["score"] == pytest.approx(probs[c][mask].mean())


def test_mask_prompt():
    const = sam_math.mask_prompt(np.full((32, 48), 0.5), (300, 450), coarse_thresh=0.2, coff=0.005)
    assert const.shape == (256, 256)
    new_h = int(300 * 256 / 450 + 0.5)  # 171
    np.testing.assert_allclose(const[:new_h], 0.0025, rtol=1e-6)
    assert (const[new_h:] == 0).all()
    assert (sam_math.mask_prompt(np.full((32, 48), 0.2), (300, 450)) == 0).all()  # strictly above the threshold
    step = np.zeros((16, 16))
    step[:, 8:] = 1.0
    out = sam_math.mask_prompt(step, (64, 64), coarse_thresh=0.2, coff=0.5)
    assert (out[:, :120] == 0).all() and (out[:, 136:] == 0.5).all()
    assert set(np.unique(out[:, 120:136])) - {0.0} and (out[:, 120:136] <= 0.5).all()


def test_keep_confident_is_strict():
    np.testing.assert_array_equal(sam_math.keep_confident(np.array([[0.79], [0.8], [0.81]]), 0.8), [False, False, True])


def refined_inputs(seed=10, regions=4, classes=3, h=6, w=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(regions, h, w, generator=g) * 3
    probs = torch.rand(classes, h, w, generator=g).softmax(0)
    return logits, probs, probs.argmax(0)


def test_merge_refined_per_pixel():
    logits, probs, coarse = refined_inputs()
    logits[:, 0, 0] = -1.0  # no mask covers this pixel: coarse label, zero scores
    classes = torch.tensor([2, 0, 2, 2])
    labels, scores = sam_math.merge_refined(logits, classes, probs, coarse)
    for y in range(6):
        for x in range(7):
            want = torch.zeros(3)
            for c in (0, 2):
                rs = [r for r in range(4) if classes[r] == c]
                if any(logits[r, y, x] > 0 for r in rs):
                    want[c] = max(torch.sigmoid(logits[r, y, x]) * probs[c, y, x] for r in rs)
            torch.testing.assert_close(scores[:, y, x], want)
            assert labels[y, x] == (coarse[y, x] if want.sum() == 0 else int(want.argmax()))
    assert (scores[1] == 0).all() and labels[0, 0] == coarse[0, 0]


def test_restore_failed_raises_scores_but_not_labels():
    logits, probs, coarse = refined_inputs(seed=11, h=8, w=8)
    labels, scores = sam_math.merge_refined(logits, torch.tensor([0, 1, 1, 2]), probs, coarse)
    failed = torch.zeros(1, 4, 4, dtype=torch.bool)
    failed[0, :2, 1:3] = True  # half resolution: rows 0..3, columns 2..5 at full size
    new_labels, new_scores = sam_math.restore_failed(failed, probs, scores, labels, coarse)
    for y in range(8):
        for x in range(8):
            inside = y < 4 and 2 <= x < 6
            want = torch.maximum(probs[:, y, x], scores[:, y, x]) if inside else scores[:, y, x]
            torch.testing.assert_close(new_scores[:, y, x], want)
    assert (new_labels == labels).all()  # the released label condition compares after the update
    assert not torch.equal(new_scores, scores)
    same = sam_math.restore_failed(torch.zeros(0, 4, 4, dtype=torch.bool), probs, scores, labels, coarse)
    assert same[0] is labels and same[1] is scores


def test_aggregate_halves_puts_the_halves_side_by_side():
    g = torch.Generator().manual_seed(12)
    spliced = torch.randn(2, 3, 4, 10, generator=g)
    w_left, w_right = torch.rand(2, 6, 6, generator=g), torch.rand(2, 9, 9, generator=g)
    got = sam_math.aggregate_halves(spliced, (w_left, w_right), ((3, 2), (3, 3)))
    assert got.shape == (2, 15, 3)
    left = sam_math.aggregate(spliced[..., :5], w_left, (3, 2))
    right = sam_math.aggregate(spliced[..., 5:], w_right, (3, 3))
    for y in range(3):
        for x in range(5):
            want = left[:, y * 2 + x] if x < 2 else right[:, y * 3 + x - 2]
            torch.testing.assert_close(got[:, y * 5 + x], want)
    with pytest.raises(ValueError, match="height"):
        sam_math.aggregate_halves(spliced, (w_left, w_right), ((2, 3), (3, 3)))


def test_proxy_attention_shares_one_mean_over_the_crops():
    g = torch.Generator().manual_seed(13)
    feats = torch.randn(2, 3, 5, 4, generator=g)
    beta, gamma = 1.2, 3.0
    got = common.proxy_attention(feats, beta, gamma, mean_dims=(1, 2, 3))
    assert got.shape == (2, 3, 5, 5)
    for b in range(2):
        f = feats[b] / feats[b].norm(dim=-1, keepdim=True)
        sims = [f[k] @ f[k].T for k in range(3)]
        mean = sum(float(s.sum()) for s in sims) / (3 * 25)
        for k in range(3):
            for i in range(5):
                logits = (sims[k][i] - mean * beta) * gamma
                keep = logits >= 0
                row = torch.zeros(5)
                row[keep] = torch.exp(logits[keep]) / torch.exp(logits[keep]).sum()
                torch.testing.assert_close(got[b, k, i], row)
    # one crop: ProxyCLIP's own attention
    torch.testing.assert_close(common.proxy_attention(feats[:, :1], mean_dims=(1, 2, 3))[:, 0],
                               common.proxy_attention(feats[:, 0]))
    assert not torch.allclose(got[:, 0], common.proxy_attention(feats[:, 0]))
    flat = common.proxy_attention(torch.ones(1, 2, 4, 3), mean_dims=(1, 2, 3))  # the reference's NaN rows
    torch.testing.assert_close(flat, torch.eye(4).expand(1, 2, 4, 4))
