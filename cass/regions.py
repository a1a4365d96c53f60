"""CorrCLIP's region math: label maps of instance masks merged, used as attention scopes, voted on.

CorrCLIP (Zhang et al., ICCV 2025) reads an image's class-agnostic masks
(SAM2, Mask2Former, EoMT, ...: :mod:`cass.masks` stacks them) as one integer label map whose smallest value
stands for "unsegmented", and uses it four times:

* mask merging: regions whose mean VFM (DINO) features are close are clustered
  by DBSCAN and relabelled, so one object split by the generator becomes one;
* scope reconstruction: the last CLIP block's patch-patch attention is replaced
  by VFM similarities restricted to a token's own region (value reconstruction);
* the semantic branch: one extra token per region attends to CLS and its own
  region's patches only;
* map correction: every region of the final prediction takes its majority class.

Each function follows the released code (``zdk258/CorrCLIP``) exactly, quirks
included, and says so where a quirk is kept on purpose. Line numbers refer to
``CorrCLIPv1/open_clip/transformer.py`` (``VisionTransformer.forward``) and
``CorrCLIPv1/corrclip_segmentor.py``. A label map's regions are its distinct
values in ascending order (``torch.unique``), region 0 being the smallest;
``N = h w`` tokens in row-major order, ``C`` feature channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from torch import Tensor

from .config import UNSEGMENTED_RULES

PAD_LABEL = 10000
"""Label of padded mask pixels (``forward_slide``, line 160); merged clusters start at the same value."""

MERGED_OFFSET = 10000
"""Merged region ``k`` (DBSCAN cluster ``k``) gets label ``MERGED_OFFSET + k`` (transformer.py line 562)."""

_SPATIAL_DEPTH = {12: 5, 24: 12, 32: 28}  # NUM_SPATIAL, transformer.py lines 530-537


def _check_rule(unsegmented: str) -> None:
    if unsegmented not in UNSEGMENTED_RULES:
        raise ValueError(f"unsegmented must be one of {', '.join(UNSEGMENTED_RULES)}, got {unsegmented!r}")


def segmented_values(values: Tensor, unsegmented: str = "smallest") -> Tensor:
    """The labels among ``values`` (ascending, distinct) that are regions, not "unsegmented".

    ``'smallest'`` (the release's rule): all but the first, whatever its value;
    ``'nonpositive'`` (the fix, :attr:`cass.config.RegionConfig.unsegmented`): those above 0.
    """
    _check_rule(unsegmented)
    return values[1:] if unsegmented == "smallest" else values[values > 0]


def labels_on_grid(labels: Tensor, grid: tuple[int, int]) -> Tensor:
    """A label map resized to a token grid as the release does it (transformer.py lines 545, 582).

    ``F.interpolate(labels.float(), grid, mode='nearest').int()``: PyTorch's
    legacy ``'nearest'`` samples source index ``floor(i * in / out)`` (float32
    scale), not the pixel centre. Labels pass through float32, exact below 2**24.
    The release resizes twice: image-size masks to the VFM grid, then the
    merged VFM-grid labels to CLIP's grid (not the original masks again).

    Args:
        labels: (H, W) or (B, H, W) integer labels.
        grid: (h, w) output size.

    Returns:
        (h, w) or (B, h, w) int32 labels.
    """
    batched = labels.dim() == 3
    x = labels.float()[:, None] if batched else labels.float()[None, None]
    out = F.interpolate(x, size=tuple(grid), mode="nearest").int()
    return out[:, 0] if batched else out[0, 0]


def merge_regions(labels: Tensor, feats: Tensor, eps: float = 0.2, min_samples: int = 1,
                  unsegmented: str = "smallest") -> Tensor:
    """Mask merging: DBSCAN over the regions' mean VFM features (transformer.py lines 544-562).

    Runs only when the map has more than 2 distinct labels. Each region's mean
    feature is L2-normalised; region 0 is dropped; the others are clustered by
    scikit-learn's DBSCAN on the precomputed distance ``S.max() - S`` (``S`` their
    cosine similarities, ``S.max()`` the largest entry, ~1, rather than 1), and
    each region not labelled noise (-1) gets label ``MERGED_OFFSET + cluster``.

    Quirks kept on purpose:

    * region 0 (the smallest label, whatever its value: a crop fully covered by
      masks has no 0) is read as "unsegmented" and is never merged;
    * merged labels ``10000 + k`` share their range with the padding label
      ``PAD_LABEL = 10000``. With ``min_samples=1`` no region is noise, so the
      padded strip is itself clustered (a region of zero-padding features) and
      relabelled; with ``min_samples > 1`` a noise padding strip keeps 10000 and
      thereby joins cluster 0. Likewise any noise region whose label already
      equals ``10000 + k`` joins cluster k.

    Args:
        labels: (h, w) integer labels on the VFM grid.
        feats: (h, w, C) L2-normalised VFM features (the release: DINO q + k, fp16).
        eps, min_samples: DBSCAN's parameters (the release's EPS, MIN_SAMPLES).
        unsegmented: ``'smallest'`` (above, the release's) or ``'nonpositive'``: labels <= 0 are
            not merged, every other one is (:func:`segmented_values`); merging needs two such regions.

    Returns:
        (h, w) new labels, dtype of ``labels`` (the input is not modified).
    """
    merged = labels.clone()
    values = segmented_values(torch.unique(labels), unsegmented)
    if values.numel() < 2:
        return merged
    regions = [labels == v for v in values]
    means = F.normalize(torch.stack([feats[m].mean(dim=0) for m in regions]), dim=1)
    sim = torch.einsum("mc,nc->mn", means, means)
    dist = (sim.max() - sim).cpu().numpy()
    clusters = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dist)
    for region, cluster in zip(regions, clusters.tolist()):
        if cluster != -1:  # masks are taken before relabelling, so the order of updates does not matter
            merged[region] = cluster + MERGED_OFFSET
    return merged


def region_scope_attention(feats: Tensor, labels: Tensor, tau: float = 4.0, unsegmented: str = "smallest") -> Tensor:
    """Scope + value reconstruction: VFM similarities restricted to regions (transformer.py lines 541-578).

    ``S = F F^T``. Token pair (i, j) is allowed when i and j lie in the same
    region other than region 0, or when i or j lies in region 0 and
    ``S[i, j] > mean(S)`` (mean over the whole N x N matrix of the image, taken
    before masking). The release ORs these with ``+=`` on bool tensors and
    keeps the ``unsqueeze(0) + unsqueeze(1)`` variant (its "method 1"), so
    segmented and unsegmented tokens may attend to each other. Returns
    ``softmax(tau * S)`` with disallowed pairs at ``-inf``; a region-0 token
    whose whole row is at or below the mean (e.g. all features equal) gives a
    NaN row, as in the release.

    Args:
        feats: (N, C) or (B, N, C) L2-normalised VFM features.
        labels: (N,) or (B, N) labels (or any shape with N elements per image),
            the merged ones on the VFM grid.
        tau: the temperature TAU.
        unsegmented: ``'smallest'``: region 0 as above (the release's); ``'nonpositive'``:
            the tokens labelled <= 0 take its place (none where masks cover the window).

    Returns:
        (N, N) or (B, N, N) attention weights, rows summing to 1.
    """
    _check_rule(unsegmented)
    batched = feats.dim() == 3
    if not batched:
        feats = feats[None]
    labels = labels.reshape(feats.shape[:-1])
    sim = torch.einsum("bmc,bnc->bmn", feats, feats)
    mean = torch.stack([s.mean() for s in sim])[:, None, None]  # per image, as the release's loop
    first = labels == labels.amin(dim=-1, keepdim=True) if unsegmented == "smallest" else labels <= 0
    same = (labels[:, :, None] == labels[:, None, :]) & ~first[:, :, None]
    allowed = same | ((first[:, :, None] | first[:, None, :]) & (sim > mean))
    attn = (sim.masked_fill(~allowed, float("-inf")) * tau).softmax(dim=-1)
    return attn if batched else attn[0]


def region_token_mask(labels: Tensor) -> tuple[Tensor, Tensor]:
    """The semantic branch's attention mask (transformer.py lines 580-592).

    One region token per distinct label, region 0 included, is prepended to
    ``[CLS, patches]`` (each a copy of CLS after ``ln_pre``). Region token r
    attends to CLS and the patches of region r only (not to itself nor to other
    region tokens); CLS and patches attend to CLS and patches only. The release
    builds this for the first image of the batch only (``masks[0]``); here it is
    per image. After the last block, each VFM-grid pixel takes the output of
    its region's token (``expand_masks.T @ mct``, line 621).

    Args:
        labels: (h, w) integer labels on CLIP's token grid.

    Returns:
        ``(regions, attn_mask)``: (R, h*w) bool region masks in ascending label
        order, and an (R+1+N, R+1+N) bool mask in ``nn.MultiheadAttention``'s
        convention (True = may NOT attend), token order [regions, CLS, patches].
    """
    values = torch.unique(labels)
    regions = (labels.reshape(1, -1) == values[:, None])
    num_regions, n = regions.shape
    allowed = torch.zeros(num_regions + 1 + n, num_regions + 1 + n, dtype=torch.bool, device=labels.device)
    allowed[num_regions:, num_regions:] = True
    allowed[:num_regions, num_regions] = True
    allowed[:num_regions, num_regions + 1:] = regions
    return regions, ~allowed


def spatial_layers(num_layers: int) -> tuple[int, ...]:
    """Blocks whose outputs the spatial branch averages (transformer.py lines 529-537, 597-600).

    ``NUM_SPATIAL`` is 5, 12, 28 for 12, 24, 32 blocks, else ``num_layers - 4``;
    block ``idx`` (0-based, all blocks but the last) counts when
    ``num_layers - 2 - NUM_SPATIAL <= idx <= num_layers - 3``. The average is over
    their ``[CLS, patches]`` outputs (region tokens dropped). Blocks 5-9 of 12.

    Returns:
        Ascending block indices; empty below 5 blocks (the release's ``torch.stack`` fails).
    """
    depth = _SPATIAL_DEPTH.get(num_layers, num_layers - 4)
    return tuple(idx for idx in range(num_layers - 1) if num_layers - 2 - depth <= idx <= num_layers - 3)


def vote_regions(pred: Tensor, instance_mask: Tensor, unsegmented: str = "smallest") -> Tensor:
    """Map correction: each region takes its most frequent predicted class (``postprocess_result``, lines 216-222).

    Every distinct value of ``instance_mask`` but the smallest (read as
    "unsegmented", whatever its value) sets all its pixels to ``torch.mode`` of
    the prediction over them; ``torch.mode`` itself is used so ties break as in
    the release (on CPU: the smallest tied class). Regions are disjoint and
    their pixels listed before any update, so the order of regions does not
    matter. The release votes with the generator's original masks at the image's
    resolution, not the merged crop labels, after the ``prob_thd`` zeroing.

    Args:
        pred: (H, W) int64 class labels.
        instance_mask: (H, W) integer instance labels.
        unsegmented: ``'smallest'`` (the release's) or ``'nonpositive'``: labels <= 0 are not
            voted, every other one is (:func:`segmented_values`).

    Returns:
        (H, W) corrected labels (a new tensor).
    """
    if pred.shape != instance_mask.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and instance_mask {tuple(instance_mask.shape)} differ in shape")
    out = pred.clone()
    for value in segmented_values(torch.unique(instance_mask), unsegmented):
        region = instance_mask == value
        out[region] = torch.mode(pred[region])[0]
    return out


def release_pad(h: int, w: int, multiple: int) -> tuple[int, int, int, int]:
    """Padding of a crop to multiples of ``multiple`` (``compute_padsize``, lines 348-360).

    The missing rows (columns) are split, the smaller half on top (left).
    ``forward_slide`` (lines 154-166) uses ``multiple=56``, pads the crop with
    zeros in CLIP-normalised space (CLIP's mean colour) and its mask with
    ``PAD_LABEL``, and crops the logits back to ``[t:t+h, l:l+w]``. 56 is not a
    multiple of 16: a ViT-B/16 may still floor-drop a partial patch.

    Returns:
        ``(left, right, top, bottom)``, the order ``F.pad`` takes for the last two dims.
    """
    extra_w = (multiple - w % multiple) % multiple
    extra_h = (multiple - h % multiple) % multiple
    return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2
