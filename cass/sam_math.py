"""SAM's math, shared by every method that SAM helps: Trident's correlation, aggregation and refinement prompts.

Trident (Shi et al., ICCV 2025) takes two things from SAM, and any method of
the family can use both (:class:`cass.sam_guide.SAMGuide`, ``docs/methods.md``):

* aggregation: the attention and values of SAM's last global encoder block
  (:mod:`cass.sam_encoder`) give row-stochastic correlation weights on SAM's
  valid token grid, which mix an image's features or logits resized to that grid;
* refinement: each connected region of a coarse prediction prompts SAM with
  its box, its top-probability point and its class's mask prompt; confident
  masks replace their regions, the others keep the coarse prediction.

Each step is a pure function. Trident's own pipeline (window sizes, sliding
windows, splicing crop features) is :mod:`cass.windows`. References, in the
released code (``YuHengsss/Trident``): ``trident.py`` (``Trident.get_trident_seg``,
``get_sam_feat``), ``open_clip/transformer.py`` (``VisionTransformer.guidance_attn``,
``get_sam_sim``), ``seg_utils/utils.py`` (``split_connected_regions``,
``sam_refinement``, ``map_refinement_coarse``, ``map_failed_regions``),
``segment_anything/utils/transforms.py`` (``get_preprocess_shape``).

Notation: ``N = h w`` SAM tokens of a ``(h, w)`` valid grid, ``heads`` SAM's
heads of size ``d``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage import measure
from torch import Tensor


# ---------------------------------------------------------------------------- SAM correlation
def sam_input_grid(height: int, width: int, patch: int = 16, long_side: int = 1024) -> tuple[int, int]:
    """SAM's valid token grid for an image (``Trident.get_trident_seg``, ``get_sam_feat``).

    The released code resizes the original image up to multiples of ``patch``
    (``cv2.resize``), SAM's ``ResizeLongestSide`` scales it to a longer side of
    ``long_side`` with ``int(x + 0.5)`` rounding (``get_preprocess_shape``),
    and the valid grid is that size floor-divided by ``patch``; the rest of
    SAM's 64 x 64 grid is padding.

    Returns:
        (h, w) valid SAM tokens.
    """
    h, w = -(-height // patch) * patch, -(-width // patch) * patch
    scale = long_side / max(h, w)
    return int(h * scale + 0.5) // patch, int(w * scale + 0.5) // patch


def crop_sam_tokens(attn: Tensor, values: Tensor, valid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Keep the tokens of SAM's valid region, as query and as key (``get_sam_feat``).

    The attention is not renormalised here (its rows over the valid keys sum
    to less than 1); :func:`sam_correlation` row-normalises.

    Args:
        attn: (B, heads, G_h G_w, G_h G_w) softmax attention of the last block.
        values: (B, heads, G_h, G_w, d) its values.
        valid: (h, w) from :func:`sam_input_grid`.

    Returns:
        (B, heads, N, N) attention and (B, heads, N, d) values, ``N = h w``.
    """
    b, heads, gh, gw, d = values.shape
    h, w = valid
    a = attn.reshape(b, heads, gh, gw, gh, gw)[:, :, :h, :w, :h, :w]
    return a.reshape(b, heads, h * w, h * w), values[:, :, :h, :w].reshape(b, heads, h * w, d)


def sam_correlation(attn: Tensor, values: Tensor, cos_fac: float = 1.2, refine_neg_cos: bool = True,
                    max_thresh: float = 0.9) -> Tensor:
    """Trident's SAM correlation weights (``VisionTransformer.get_sam_sim``).

    Per head ``h``, ``S_h = v̂_h v̂_h^T`` with ``v̂`` the values L2-normalised
    per head (not the concatenated heads). The threshold of query ``i`` is
    shared by all heads: ``tau_i = cos_fac mean_h mean_j S_h[i, j]`` (mean over
    heads, then over keys, negative cosines included). With
    ``refine_neg_cos=False`` a negative ``tau_i`` becomes 0.6; with the default
    ``True`` it is kept. Then ``tau_i = min(tau_i, max_thresh)``. Each head's
    attention is kept where ``S_h[i, j] > tau_i`` (strictly) and zeroed
    elsewhere, averaged over heads and row-normalised:
    ``W[i] = sum_h A_h[i] [S_h[i] > tau_i] / sum_{h, j} (...)``.

    A token's own entry survives whenever its values are nonzero
    (``S_h[i, i] = 1 > 0.9 >= tau_i``); a row left empty (all-zero values)
    gives NaN in the released code and keeps its own token here. Computed in
    float32, one head at a time (one (B, N, N) buffer, not (B, heads, N, N)).

    Args:
        attn: (B, heads, N, N) softmax attention (decomposed relative
            positions included) of SAM's last global block, valid tokens only.
        values: (B, heads, N, d) that block's values.

    Returns:
        (B, N, N) float32 row-stochastic weights, shared by every head of CLIP.
    """
    v = F.normalize(values.float(), dim=-1)
    # mean_j S_h[i, j] = v̂_hi . mean_j v̂_hj: the threshold without the N x N matrix
    row_mean = (v * v.mean(dim=2, keepdim=True)).sum(-1).mean(dim=1)  # (B, N)
    tau = cos_fac * row_mean
    if not refine_neg_cos:
        tau = torch.where(tau < 0, torch.full_like(tau, 0.6), tau)
    tau = tau.clamp(max=max_thresh)[..., None]  # (B, N, 1)
    kept = torch.zeros(attn.shape[0], attn.shape[2], attn.shape[3], device=attn.device)
    for h in range(attn.shape[1]):
        sim = v[:, h] @ v[:, h].transpose(-1, -2)
        kept += torch.where(sim > tau, attn[:, h].float(), torch.zeros((), device=attn.device))
    empty = kept.sum(-1, keepdim=True) == 0
    eye = torch.eye(kept.shape[-1], device=kept.device, dtype=torch.bool)
    kept = torch.where(empty & eye, torch.ones_like(kept), kept)
    return kept / kept.sum(-1, keepdim=True)


def aggregate(spliced: Tensor, weights: Tensor, sam_grid: tuple[int, int]) -> Tensor:
    """Mix the spliced grid with SAM's correlation (``guidance_attn``'s last step).

    The spliced grid is resized to SAM's valid grid bilinearly
    (``align_corners=False``), flattened row-major and multiplied by the
    weights. The released code splits the channels into CLIP's heads and
    applies the same weights to each, which is the product on all channels.

    Args:
        spliced: (B, C, H, W) (Trident: :func:`cass.windows.splice_crops`).
        weights: (B, N, N) from :func:`sam_correlation`, ``N = h w``.
        sam_grid: (h, w).

    Returns:
        (B, N, C) float32, row-major on ``sam_grid`` (then ``ln_post``, ``proj``).
    """
    x = spliced.float()
    if tuple(x.shape[-2:]) != tuple(sam_grid):
        x = F.interpolate(x, size=sam_grid, mode="bilinear", align_corners=False)
    return weights.float() @ x.flatten(2).transpose(1, 2)


def aggregate_halves(spliced: Tensor, weights: tuple[Tensor, Tensor],
                     sam_grids: tuple[tuple[int, int], tuple[int, int]]) -> Tensor:
    """:func:`aggregate` for an image SAM encodes as a left and a right half (Cityscapes).

    The released code (``get_trident_seg`` with ``CityscapesDataset``,
    ``guidance_attn``'s list branch) splits the spliced grid at column
    ``W // 2``, mixes each half on its own SAM grid with its own weights and
    puts the two results side by side; both SAM grids must have the same height.

    Args:
        spliced: (B, C, H, W).
        weights: (B, N_l, N_l) and (B, N_r, N_r) for the halves.
        sam_grids: (h, w_l) and (h, w_r).

    Returns:
        (B, h (w_l + w_r), C) float32, row-major on ``(h, w_l + w_r)``.
    """
    (h, w_l), (h_r, w_r) = sam_grids
    if h != h_r:
        raise ValueError(f"the halves' SAM grids differ in height: {h} and {h_r}")
    half = spliced.shape[-1] // 2
    b, c = spliced.shape[:2]
    left = aggregate(spliced[..., :half], weights[0], sam_grids[0]).reshape(b, h, w_l, c)
    right = aggregate(spliced[..., half:], weights[1], sam_grids[1]).reshape(b, h, w_r, c)
    return torch.cat([left, right], dim=2).flatten(1, 2)


# ---------------------------------------------------------------------------- SAM refinement prompts
def refinement_inputs(labels: Tensor, probs: Tensor, coarse_thresh: float,
                      down_ratio: int = 2) -> tuple[Tensor, Tensor]:
    """The half-resolution labels and probabilities ``sam_refinement`` splits into regions.

    Labels are resized by nearest neighbour, probabilities bilinearly
    (``align_corners=False``), both to ``(H // down_ratio, W // down_ratio)``.
    With ``coarse_thresh > 0`` a pixel whose largest probability is below it
    gets the label ``C`` (ignored; no region is made of it).

    Args:
        labels: (H, W) long argmax labels of the coarse prediction.
        probs: (C, H, W) its class probabilities.

    Returns:
        (h, w) long labels in ``0 .. C`` and (C, h, w) probabilities.
    """
    size = (labels.shape[-2] // down_ratio, labels.shape[-1] // down_ratio)
    if down_ratio != 1:
        labels = F.interpolate(labels[None, None].float(), size, mode="nearest")[0, 0].long()
        probs = F.interpolate(probs[None].float(), size, mode="bilinear", align_corners=False)[0]
    if coarse_thresh > 0:
        labels = torch.where(probs.max(0).values < coarse_thresh, probs.shape[0], labels)
    return labels, probs


def region_prompts(labels: np.ndarray, probs: np.ndarray, num_classes: int, coarse_thresh: float = 0.2,
                   minimal_area: int = 225) -> list[dict]:
    """Box and point prompts of each connected region (``split_connected_regions``).

    For each class ``c < num_classes`` whose largest probability reaches
    ``coarse_thresh``, the 8-connected regions of ``labels == c`` with at
    least ``minimal_area`` pixels (counted at the resolution given, half the
    image's in the released code) are taken in scikit-image's label order.
    Per region: the box ``(x1, y1, x2, y2)`` of its pixels with inclusive
    maxima (torchvision's ``masks_to_boxes``), the point ``(x, y)`` of the
    first row-major maximum of the class probability inside the region, and
    the region's mean probability. The label ``num_classes`` (ignored pixels)
    never makes a region.

    Args:
        labels: (h, w) int labels (:func:`refinement_inputs`).
        probs: (C, h, w) probabilities.

    Returns:
        One dict per region: ``class`` (int), ``mask`` (h, w) bool, ``box``
        (4,) float, ``point`` (2,) float, ``score`` float.
    """
    regions = []
    for c in range(num_classes):
        if probs[c].max() < coarse_thresh:
            continue
        components = measure.label(labels == c, connectivity=2)
        for r in range(1, components.max() + 1):
            mask = components == r
            if mask.sum() < minimal_area:
                continue
            ys, xs = np.nonzero(mask)
            flat = int(np.argmax(np.where(mask, probs[c], 0).ravel()))
            regions.append(dict(
                **{"class": c}, mask=mask,
                box=np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64),
                point=np.array([flat % mask.shape[1], flat // mask.shape[1]], dtype=np.float64),
                score=float(probs[c][mask].mean())))
    return regions


def mask_prompt(probs: np.ndarray, image_size: tuple[int, int], coarse_thresh: float = 0.2,
                coff: float = 0.005, side: int = 256) -> np.ndarray:
    """SAM's mask prompt of one class from its probability map (``sam_refinement``).

    The map is resized bilinearly (``align_corners=False``) to SAM's
    low-resolution frame (longer side ``side``, ``get_preprocess_shape``
    rounding, from the original image size), zero-padded right and bottom to
    ``side x side``, and each value ``p > coarse_thresh`` becomes ``coff p``,
    every other one 0. Shared by all the regions of the class.

    Args:
        probs: (h, w) the class probabilities.
        image_size: (H, W) of the original image.

    Returns:
        (side, side) float32.
    """
    scale = side / max(image_size)
    new_h, new_w = int(image_size[0] * scale + 0.5), int(image_size[1] * scale + 0.5)
    p = torch.as_tensor(probs, dtype=torch.float32)[None, None]
    p = F.interpolate(p, (new_h, new_w), mode="bilinear", align_corners=False)[0, 0]
    p = F.pad(p, (0, side - new_w, 0, side - new_h))
    return torch.where(p > coarse_thresh, coff * p, torch.zeros(())).numpy()


def keep_confident(scores: np.ndarray, iou_thresh: float = 0.8) -> np.ndarray:
    """Which SAM masks replace their region (``sam_refinement``): predicted IoU ``> iou_thresh``.

    Strictly greater; a region whose mask fails keeps the coarse prediction
    (``map_failed_regions``). The released configs use 0.8 (the class default is 0.9).

    Args:
        scores: (R,) or (R, 1) SAM's predicted IoU, one mask per region.

    Returns:
        (R,) bool.
    """
    return np.asarray(scores).reshape(-1) > iou_thresh


def merge_refined(mask_logits: Tensor, region_classes: Tensor, probs: Tensor, coarse_labels: Tensor,
                  mask_threshold: float = 0.0) -> tuple[Tensor, Tensor]:
    """Merge the kept SAM masks into labels and scores (``map_refinement_coarse``).

    For each class ``c`` with kept regions ``r``:
    ``S[c] = max_r(sigmoid(L_r) P[c]) [any_r L_r > mask_threshold]``, zero for
    the other classes; the labels are ``argmax_c S`` (first maximum), except
    where ``S`` sums to 0 (no kept mask), which keep the coarse labels.

    Args:
        mask_logits: (R, H, W) SAM's mask logits of the kept regions, at the image size.
        region_classes: (R,) long class of each region.
        probs: (C, H, W) coarse class probabilities.
        coarse_labels: (H, W) long coarse labels.

    Returns:
        (H, W) long labels and (C, H, W) float32 refined scores.
    """
    probs = probs.float()
    scores = torch.zeros_like(probs)
    sig, masks = mask_logits.float().sigmoid(), mask_logits > mask_threshold
    for c in torch.unique(region_classes).tolist():
        pick = region_classes == c
        scores[c] = (sig[pick] * probs[c]).amax(0) * masks[pick].any(0)
    labels = torch.where(scores.sum(0) == 0, coarse_labels, scores.argmax(0))
    return labels, scores


def restore_failed(failed: Tensor, probs: Tensor, scores: Tensor, labels: Tensor,
                   coarse_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Give the regions whose SAM mask was rejected their coarse scores back (``map_failed_regions``).

    ``failed`` is resized to the image by nearest neighbour when it is smaller
    (the regions were found at half resolution). Inside any failed region
    each class score becomes ``max(P[c], S[c])``. The released code then takes
    the coarse label where ``max_c P > max_c S``, compared after that update,
    so never: the labels come back unchanged (kept on purpose, as released;
    a failed region no kept mask covers already has its coarse label from
    :func:`merge_refined`).

    Args:
        failed: (F, h, w) bool masks of the rejected regions.
        probs: (C, H, W) coarse probabilities.
        scores: (C, H, W) from :func:`merge_refined`.
        labels, coarse_labels: (H, W) long.

    Returns:
        (H, W) long labels and (C, H, W) float32 scores.
    """
    if failed.shape[0] == 0:
        return labels, scores
    if tuple(failed.shape[-2:]) != tuple(probs.shape[-2:]):
        failed = F.interpolate(failed[None].float(), probs.shape[-2:], mode="nearest")[0] > 0
    coarse = failed.any(0) * probs.float()
    scores = torch.where(coarse > scores, coarse, scores)
    labels = torch.where(coarse.amax(0) > scores.amax(0), coarse_labels, labels)
    return labels, scores
