"""Superpixels as regions: scikit-image's Felzenszwalb segmentation, a mask generator without weights.

Felzenszwalb & Huttenlocher's graph-based segmentation
(:func:`skimage.segmentation.felzenszwalb`) cuts an image into regions of
similar colour in a fraction of a second on a CPU. Its regions are not
objects, as SAM2's are, but they follow edges: a quick region vote for any
method, a generator for trials without SAM2's weights, and the masks that
``scripts/compare_corrclip.py`` gives both implementations. Every pixel
belongs to a region: the label map starts at 1, so that no pixel reads
"unsegmented" (the smallest label would, :mod:`cass.masks.registry`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..config import ConfigError
from .labels import check_image


@dataclass(frozen=True)
class FelzenszwalbMasks:
    """The ``felzenszwalb`` generator.

    Args:
        scale: larger gives larger regions (scikit-image's ``scale``).
        sigma: the Gaussian smoothing before segmenting.
        min_size: the smallest region in pixels; None: 1/400 of the image, at least 50.
    """

    scale: float = 200.0
    sigma: float = 0.8
    min_size: int | None = None

    def __post_init__(self) -> None:
        if not self.scale > 0 or not self.sigma >= 0 or (self.min_size is not None and self.min_size < 1):
            raise ConfigError(f"mask generator 'felzenszwalb': scale must be > 0, sigma >= 0 and min_size >= 1, "
                              f"got scale={self.scale}, sigma={self.sigma}, min_size={self.min_size}")

    def region_size(self, height: int, width: int) -> int:
        return self.min_size if self.min_size is not None else max(50, height * width // 400)

    def settings_key(self) -> str:
        return f"felzenszwalb:scale={self.scale}:sigma={self.sigma}:min_size={self.min_size}"

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        height, width = check_image(image)
        labels = felzenszwalb(image, scale=self.scale, sigma=self.sigma, min_size=self.region_size(height, width))
        return labels.astype(np.int32) + 1
