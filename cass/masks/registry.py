"""The registry of mask generators: a name -> a factory of generators.

A mask generator is a callable object with

* ``settings_key() -> str``: what determines its masks (model, weights,
  thresholds), the second half of the disk cache's key
  (:class:`cass.masks.cache.CachedMasks`);
* ``__call__(image, path=None) -> (H, W) int32``: the instance label map of
  an (H, W, 3) uint8 RGB image, its smallest value marking unsegmented pixels
  (CorrCLIP's ``generate_mask``); ``path`` is the image's file, which file-based
  generators need.

A factory takes the generator's settings as keyword arguments. The built-in
ones are named by ``"module:attribute"`` and imported on first use, so that
``import cass.masks`` loads neither SAM2 nor transformers.
"""
from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..config import ConfigError


class MaskGenerator(Protocol):
    def settings_key(self) -> str: ...

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray: ...


MASK_GENERATORS: dict[str, Callable[..., MaskGenerator] | str] = {
    "sam2": "cass.masks.sam2_masks:SAM2Masks",
    "files": "cass.masks.files:FileMasks",
    "mask2former": "cass.masks.mask2former:Mask2FormerMasks",
    "eomt": "cass.masks.eomt:EoMTMasks",
    "felzenszwalb": "cass.masks.superpixels:FelzenszwalbMasks",
}


def register_mask_generator(name: str, factory: Callable[..., MaskGenerator] | str) -> Callable[..., MaskGenerator] | str:
    """Add a generator that :func:`build_mask_generator` can name; ``factory`` is a callable taking the
    settings as keywords, or a ``"module:attribute"`` string imported on first use. A name is registered once."""
    if name in MASK_GENERATORS:
        raise ValueError(f"mask generator {name!r} is already registered")
    MASK_GENERATORS[name] = factory
    return factory


def mask_generator_factory(name: str) -> Callable[..., MaskGenerator]:
    """The factory registered as ``name``; an unknown name is a one-line :class:`ConfigError`."""
    if name not in MASK_GENERATORS:
        raise ConfigError(f"unknown mask generator {name!r}; mask generators: {', '.join(MASK_GENERATORS)} "
                          "(cass.masks.register_mask_generator adds one)")
    factory = MASK_GENERATORS[name]
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    return factory


def build_mask_generator(name: str, **settings) -> MaskGenerator:
    """The mask generator ``name`` (``'sam2'``, ``'files'``, ``'mask2former'``) with ``settings``.

    An unknown name or setting is a one-line :class:`ConfigError` listing the
    names (or the generator's settings).
    """
    factory = mask_generator_factory(name)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: let it check its own keywords
        parameters = None
    if parameters is not None and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        known = [p for p, v in parameters.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"mask generator {name!r} has no setting {', '.join(map(repr, unknown))}; "
                              f"its settings: {', '.join(known)}")
        missing = [p for p in known if parameters[p].default is inspect.Parameter.empty and p not in settings]
        if missing:
            raise ConfigError(f"mask generator {name!r} needs the setting {', '.join(map(repr, missing))}")
    return factory(**settings)
