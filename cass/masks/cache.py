"""A disk cache of label maps in front of any mask generator.

The key is the sha256 of the image's pixels and shape and of the generator's
``settings_key()``: the same image under the same settings is generated once,
across runs; a changed setting (model, weights file, threshold) is a new key.
Entries are CorrCLIP-format archives (``<key>.npz`` holding
``instance_mask``) under ``$CASS_CACHE_DIR/masks`` (default
``~/.cache/cass/masks``, beside the text-embedding cache). An entry that cannot
be read, or does not fit its image, is generated again with a warning.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from .files import read_mask_file
from .labels import MaskError, as_label_map, check_image, write_npz
from .registry import MaskGenerator

KEY_VERSION = b"cass-masks-1"  # bump when the stored format changes


def default_cache_dir() -> Path:
    """``$CASS_CACHE_DIR/masks``, beside :func:`cass.text.default_cache_dir`'s ``text`` folder."""
    from ..text import default_cache_dir as text_cache_dir

    return text_cache_dir().parent / "masks"


def cache_key(image: np.ndarray, settings_key: str) -> str:
    """sha256 (hex) of the image's shape, dtype and pixels and of the generator's settings key."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(KEY_VERSION)
    digest.update(repr((image.shape, image.dtype.str)).encode())
    digest.update(image.tobytes())
    digest.update(settings_key.encode())
    return digest.hexdigest()


class CachedMasks:
    """``generator`` with its label maps kept on disk.

    Args:
        generator: any mask generator (:func:`cass.masks.build_mask_generator`).
        cache_dir: where entries go (default :func:`default_cache_dir`, read when called).

    ``hits`` and ``misses`` count the calls answered from the cache and those
    that ran the generator (corrupt entries included).
    """

    def __init__(self, generator: MaskGenerator, cache_dir: str | os.PathLike | None = None):
        self.generator = generator
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.hits = 0
        self.misses = 0

    def settings_key(self) -> str:
        return self.generator.settings_key()

    def entry(self, image: np.ndarray) -> Path:
        """The cache file of ``image`` under the generator's settings."""
        folder = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        return folder / f"{cache_key(image, self.generator.settings_key())}.npz"

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
        shape = check_image(image)
        entry = self.entry(image)
        if entry.is_file():
            try:
                labels = read_mask_file(entry, shape)
            except MaskError as err:
                warnings.warn(f"regenerating a corrupt mask cache entry: {err}", RuntimeWarning, stacklevel=2)
            else:
                self.hits += 1
                return labels
        self.misses += 1
        labels = as_label_map(self.generator(image, path), shape, f"mask generator {type(self.generator).__name__}")
        write_npz(entry, labels)
        return labels
