"""Instance label maps: SAM2's masks stacked into one map, label maps checked and written.

An instance label map is an (H, W) int32 array of region ids, one per pixel;
its smallest value stands for the unsegmented pixels (CorrCLIP's
``generate_mask`` output, which its map correction drops: ``torch.unique(...)[1:]``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NPZ_KEY = "instance_mask"  # the array's name in CorrCLIP's pre-generated .npz archives


class MaskError(ValueError):
    """A mask file or cache entry is missing, unreadable, or does not fit its image."""


def _paint_by_area(masks: Sequence[np.ndarray], areas: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """Boolean masks painted into one label map as CorrCLIP's SAM2 branch does.

    The masks are sorted by area, ascending, with Python's stable sort (equal
    areas keep the generator's order); the i-th of that order paints label
    i + 1 over a zero map, so a larger mask overwrites the smaller ones it
    covers and 0 is left where no mask lies.

    Args:
        masks: (H, W) boolean masks.
        areas: their areas (SAM2's ``'area'``: the mask's pixel count).
        shape: (H, W), the map's size (needed when there is no mask).

    Returns:
        (H, W) int32 labels in 0..len(masks).
    """
    if len(masks) != len(areas):
        raise ValueError(f"{len(masks)} masks but {len(areas)} areas")
    out = np.zeros(shape, dtype=np.int32)
    for label, index in enumerate(sorted(range(len(masks)), key=lambda i: areas[i]), start=1):
        mask = np.asarray(masks[index], dtype=bool)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask {index} has shape {mask.shape}, the map {tuple(shape)}")
        out[mask] = label
    return out


def check_image(image: np.ndarray) -> tuple[int, int]:
    """(H, W) of an (H, W, 3) uint8 RGB image; anything else is a one-line ``ValueError``."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        what = (f"a {image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                else f"a {type(image).__name__}")
        raise ValueError(f"a mask generator takes an (H, W, 3) uint8 RGB image, got {what}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"a mask generator takes a non-empty image, got shape {image.shape}")
    return image.shape[0], image.shape[1]


def as_label_map(array: np.ndarray, shape: tuple[int, int] | None, source: str) -> np.ndarray:
    """``array`` as an (H, W) int32 label map, or a one-line :class:`MaskError` naming ``source``.

    Integer and boolean arrays are accepted (values must fit int32); ``shape``
    (when given) is the image's (H, W), which the map must have.
    """
    array = np.asarray(array)
    if array.ndim != 2:
        raise MaskError(f"{source}: a label map must be 2-D (H, W), found shape {array.shape}")
    if array.dtype != bool and not np.issubdtype(array.dtype, np.integer):
        raise MaskError(f"{source}: a label map must hold integers, found {array.dtype}")
    if shape is not None and array.shape != tuple(shape):
        raise MaskError(f"{source}: mask of size {array.shape[0]}x{array.shape[1]} (HxW) but the image is "
                        f"{shape[0]}x{shape[1]}")
    if array.size and array.dtype.itemsize >= 4 and array.dtype != np.int32:
        info = np.iinfo(np.int32)
        if array.min() < info.min or array.max() > info.max:
            raise MaskError(f"{source}: label values {array.min()}..{array.max()} do not fit int32")
    return np.ascontiguousarray(array, dtype=np.int32)


def write_npz(path: str | os.PathLike, label_map: np.ndarray) -> Path:
    """Write ``label_map`` as CorrCLIP's archives are (``np.savez_compressed``, key ``instance_mask``),
    atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez_compressed(tmp, **{NPZ_KEY: np.asarray(label_map, dtype=np.int32)})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
