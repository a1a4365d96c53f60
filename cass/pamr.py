"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020).

Optional post-processing of the segmentation logits (off for CASS). Each step
replaces a pixel's logits by an affinity-weighted average of its 8 neighbours
at every dilation; affinities come from local colour differences scaled by
the local standard deviation.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _neighbours(x: Tensor, dilations: Sequence[int], with_centre: bool) -> Tensor:
    """(B, C, H, W) -> (B, C, P, H, W): shifted copies (replicate padding), row-major per dilation."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        for dy, dx in _OFFSETS:
            if (dy, dx) == (0, 0) and not with_centre:
                continue
            out.append(padded[..., d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w])
    return torch.stack(out, dim=2)


def pamr(image: Tensor, logits: Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16),
         class_chunk: int | None = None) -> Tensor:
    """Refine (B, K, H, W) ``logits`` with the affinities of (B, 3, H, W) ``image``.

    Affinity to neighbour j: ``softmax_j(mean_c(-|x_c - x_cj| / (1e-8 + 0.1 std_c)))``,
    ``std_c`` the (unbiased) deviation over the 3x3 neighbourhoods of all
    dilations, centre included. The affinities are shared by all classes and
    each class is propagated on its own, so ``class_chunk`` classes at a time
    give the same values with less memory.

    Returns:
        (B, K, H, W) refined logits, in the dtype of ``logits``.
    """
    if steps <= 0:
        return logits
    x = image.float()
    std = _neighbours(x, dilations, with_centre=True).std(dim=2, keepdim=True)
    diff = (x[:, :, None] - _neighbours(x, dilations, with_centre=False)).abs()
    affinity = F.softmax((-diff / (1e-8 + 0.1 * std)).mean(dim=1, keepdim=True), dim=2)  # (B, 1, P, H, W)
    del std, diff
    chunk = logits.shape[1] if class_chunk is None else max(1, class_chunk)
    out = []
    for start in range(0, logits.shape[1], chunk):
        mask = logits[:, start:start + chunk].float()
        for _ in range(steps):
            mask = (_neighbours(mask, dilations, with_centre=False) * affinity).sum(dim=2)
        out.append(mask.to(logits.dtype))
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def pamr_within_memory(image: Tensor, logits: Tensor, steps: int = 10,
                       dilations: Sequence[int] = (8, 16)) -> Tensor | None:
    """:func:`pamr`, retried with fewer classes at a time (same values) when
    memory runs out; None when even one class at a time does not fit."""
    chunk = logits.shape[1]
    while True:
        try:
            return pamr(image, logits, steps, dilations, class_chunk=chunk)
        except (RuntimeError, MemoryError) as err:
            if not _out_of_memory(err):
                raise
            if image.is_cuda:
                torch.cuda.empty_cache()
            if chunk == 1:
                return None
            chunk = max(1, chunk // 4)
