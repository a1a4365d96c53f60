"""What a method's pass through the towers may use: the towers, the settings, the precision.

A method's pass (its entry's ``last_block``, :mod:`cass.methods`) receives a
:class:`MethodContext`, not the model: the coupling between a method and the
pipeline is these six fields and nothing else. The model
(:class:`cass.model.CASSModel`) makes one per call from its current state, so a
change of precision or device is always seen.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .backbones import VFMSpec
from .config import CASSConfig


@dataclass(frozen=True)
class MethodContext:
    """The towers and settings a method's pass computes with.

    Attributes:
        clip: open_clip ``CLIP`` (its ``visual`` tower: trunk, last block, ``ln_post``, ``proj``).
        vfm: timm ``VisionTransformer``, or None where the configuration uses no VFM.
        vfm_spec: what the VFM is (patch size, prefix tokens, fixed input size).
        config: every setting (which method and its variants in ``config.method``,
            CASS's graphs in ``config.spectral``, ...).
        settings: the method's own settings (its entry's ``settings`` dataclass), or None.
        tf32: ``tf32("clip")`` / ``tf32("vfm")``: the context in which that tower's
            products run (TF32 on CUDA when its precision says so).
    """

    clip: nn.Module
    vfm: nn.Module | None
    vfm_spec: VFMSpec
    config: CASSConfig
    settings: Any
    tf32: Callable[[str], contextlib.AbstractContextManager]
