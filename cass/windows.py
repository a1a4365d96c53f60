"""Trident's own pipeline math (Shi et al., ICCV 2025): window sizes, sliding windows, splicing crops.

Trident runs ProxyCLIP's last block on sliding-window crops and splices the
crops' token grids into one grid of the whole image (features, not logits,
overlaps averaged); that grid is then resized to SAM's token grid and mixed
with a correlation built from the attention of SAM's last (global) encoder
block, and a coarse prediction can be refined with SAM prompts. SAM's part
is usable by every method and lives beside SAM's helper
(:mod:`cass.sam_math`, :class:`cass.sam_guide.SAMGuide`); this module is the
rest. Here each step is a pure function; the references are the released
code (``YuHengsss/Trident``): ``trident.py`` (``Trident.get_windowed_imgs``),
``open_clip/transformer.py`` (``VisionTransformer.custom_attn``, ``guidance_attn``),
``seg_utils/utils.py`` (``preprocess_image``).

Notation: ``K`` crops, ``(h, w)`` a token grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------------------- crops and splicing
def preprocess_size(height: int, width: int, stride: int = 16, crop: int = 336) -> tuple[int, int]:
    """The size ``preprocess_image`` (``seg_utils/utils.py``) resizes an image to before cropping.

    An image whose sides are both multiples of ``stride`` is kept as it is
    (even when smaller than ``crop``: a quirk kept on purpose). Otherwise the
    longer side is rounded up to a multiple of ``stride``, both sides are
    scaled by that factor and truncated (``int``), each is rounded up to a
    multiple of ``stride``, then raised to at least ``crop``. The released
    resize is bilinear with ``align_corners=False``.

    Returns:
        (new_height, new_width).
    """
    if height % stride == 0 and width % stride == 0:
        return height, width
    longer = max(height, width)
    target = -(-longer // stride) * stride
    new_h, new_w = int(height * target / longer), int(width * target / longer)
    new_h, new_w = -(-new_h // stride) * stride, -(-new_w // stride) * stride
    return max(new_h, crop), max(new_w, crop)


def _slide_spans(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's windows along one side: ``(start, end)`` pixels, the last one shifted back to end at the border."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, size)
        spans.append((max(end - crop, 0), end))
    return spans


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding-window boxes ``(y1, x1, y2, x2)`` in pixels, row-major: the windows of every method.

    ``1 + ceil(max(side - crop, 0) / stride)`` windows per side, the last one
    shifted back to end at the border; a side shorter than ``crop`` gives one
    window of that side's length. The logit-merging methods average their
    crops' logits over these windows (:class:`cass.merges.AverageLogits`;
    also ``cass.slide_windows``); Trident splices its crops' features over
    them in tokens (:func:`sliding_windows`).

    Returns:
        ``rows * cols`` boxes (``y2``, ``x2`` exclusive).
    """
    return [(y1, x1, y2, x2) for y1, y2 in _slide_spans(height, crop, stride)
            for x1, x2 in _slide_spans(width, crop, stride)]


def sliding_windows(height: int, width: int, crop: int = 336, stride: int = 224,
                    patch: int = 16) -> tuple[Tensor, tuple[int, int]]:
    """Crop windows of ``Trident.get_windowed_imgs`` in token coordinates, row-major.

    The windows of :func:`slide_windows` (mmseg's slide grid), divided by
    ``patch``. The released code asserts every window edge is a multiple of
    ``patch``; so does this (``ValueError``). A side shorter than ``crop``
    gives one window of that side's length (the released code then pads the
    crop, which its splicing cannot take back; :func:`splice_crops` takes
    windows as given).

    Args:
        height, width: image size after :func:`preprocess_size`, pixels.

    Returns:
        (K, 4) long windows ``(y1, x1, y2, x2)`` in tokens (``y2``, ``x2``
        exclusive), and the window grid ``(rows, cols)``, ``K = rows cols``.
    """
    boxes = slide_windows(height, width, crop, stride)
    off_grid = [box for box in boxes if any(e % patch for e in box)]
    if off_grid:
        raise ValueError(f"window {off_grid[0]} of a {height}x{width} image is not on the "
                         f"{patch}-pixel token grid")
    grid = (len(_slide_spans(height, crop, stride)), len(_slide_spans(width, crop, stride)))
    return torch.tensor(boxes, dtype=torch.long) // patch, grid


def crop_grid_scale(crop_feats: Tensor, clip_grid: tuple[int, int]) -> tuple[Tensor, int]:
    """Bring each crop's VFM token grid to an integer multiple of its CLIP token grid.

    ``guidance_attn``: the ProxyCLIP output lives on the VFM's grid
    ``(h_v, w_v)``. If ``w_v`` is a multiple of the CLIP width ``w``, the grid
    is kept and ``ratio = w_v // w``; otherwise ``ratio = round(h_v / h)`` and
    the grid is resized bilinearly (``align_corners=False``) to
    ``(h ratio, w ratio)``. Only the width is tested for divisibility, as released.

    Args:
        crop_feats: (..., C, h_v, w_v).
        clip_grid: (h, w) CLIP tokens of one crop.

    Returns:
        (..., C, h_v', w_v') features and the integer ``ratio``.
    """
    (h, w), (h_v, w_v) = clip_grid, crop_feats.shape[-2:]
    if w_v % w == 0:
        return crop_feats, w_v // w
    ratio = int(round(h_v / h))
    flat = crop_feats.reshape(-1, *crop_feats.shape[-3:]).float()
    out = F.interpolate(flat, size=(h * ratio, w * ratio), mode="bilinear", align_corners=False)
    return out.to(crop_feats.dtype).reshape(*crop_feats.shape[:-2], h * ratio, w * ratio), ratio


def splice_crops(crop_feats: Tensor, windows: Tensor, grid: tuple[int, int], ratio: int = 1) -> Tensor:
    """Splice crop token grids into the whole image's grid, overlaps averaged.

    ``guidance_attn``: crop ``k`` is added at rows ``y1 ratio .. y2 ratio``,
    columns ``x1 ratio .. x2 ratio`` of a zero grid, a count grid likewise, and
    the sum is divided by the count. The released code splices the features
    after ProxyCLIP's out-projection (before ``ln_post`` and ``proj``). A
    position no window covers would be 0/0 there; here it raises.

    Args:
        crop_feats: (B, K, C, h_c, w_c) per image, its ``K`` crops' features,
            ``h_c = (y2 - y1) ratio``, ``w_c = (x2 - x1) ratio``.
        windows: (K, 4) ``(y1, x1, y2, x2)`` in tokens (:func:`sliding_windows`).
        grid: (H, W) whole-image token grid.
        ratio: grid cells per token (:func:`crop_grid_scale`).

    Returns:
        (B, C, H ratio, W ratio) in ``crop_feats``' dtype.
    """
    b, k, c = crop_feats.shape[:3]
    if windows.shape[0] != k:
        raise ValueError(f"{k} crops but {windows.shape[0]} windows")
    size = (grid[0] * ratio, grid[1] * ratio)
    total = crop_feats.new_zeros(b, c, *size, dtype=torch.float32)
    count = crop_feats.new_zeros(size, dtype=torch.float32)
    for i, (y1, x1, y2, x2) in enumerate((windows * ratio).tolist()):
        total[:, :, y1:y2, x1:x2] += crop_feats[:, i].float()
        count[y1:y2, x1:x2] += 1
    if (count == 0).any():
        raise ValueError("the windows do not cover the whole token grid")
    return (total / count).to(crop_feats.dtype)
