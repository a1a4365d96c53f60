"""Class-agnostic region masks (CorrCLIP's ``mask_generator``): a registry of generators and a disk cache.

    from cass.masks import build_mask_generator, CachedMasks

    sam2 = build_mask_generator("sam2")                       # SAM2 hiera-large, CorrCLIP's settings
    files = build_mask_generator("files", folder="data/region_masks/ade")   # the release's .npz archives
    labels = CachedMasks(sam2)(rgb_uint8)                     # (H, W) int32, generated once per image

Every generator maps an (H, W, 3) uint8 RGB image (and its path, for the
file-based one) to an (H, W) int32 instance label map whose smallest value
marks the unsegmented pixels. Generators: ``sam2`` (:mod:`.sam2_masks`),
``files`` (:mod:`.files`: ``.npz`` / ``.png`` / ``.npy`` per image),
``mask2former`` (:mod:`.mask2former`, needs ``transformers``), ``felzenszwalb``
(:mod:`.superpixels`: scikit-image's superpixels, no weights);
:func:`register_mask_generator` adds one. ``scripts/make_masks.py`` writes a
dataset's masks as the release's archives; ``docs/masks.md`` has the details.
SAM2 and transformers are imported when a generator that needs them is built.
"""
from __future__ import annotations

from .cache import CachedMasks, cache_key, default_cache_dir
from .files import FileMasks, read_mask_file
from .labels import NPZ_KEY, MaskError, as_label_map, write_npz
from .registry import (MASK_GENERATORS, MaskGenerator, build_mask_generator, mask_generator_factory,
                       register_mask_generator)

__all__ = ["MASK_GENERATORS", "NPZ_KEY", "CachedMasks", "FileMasks", "MaskError", "MaskGenerator", "as_label_map",
           "build_mask_generator", "cache_key", "default_cache_dir", "mask_generator_factory", "read_mask_file",
           "register_mask_generator", "write_npz"]
