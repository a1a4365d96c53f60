"""The VFM's input image built from a CLIP-normalised crop (spec section 2).

:func:`reference_dino_images` is what the released code feeds DINO: a uint8
image rebuilt with the 0.255 quirk and resized to a square with PIL. It is
computed on the crops' device, bit for bit what the released code's NumPy
and PIL steps give (:func:`pil_resize` is PIL's fixed-point resampler as
matrix products), so no crop makes a round trip through host memory.
:func:`plain_dino_images` is the true RGB crop (option).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor

from .backbones import VFMSpec
from .constants import IMAGENET_MEAN, IMAGENET_STD, REFERENCE_INVERSE_STD
from .images import denormalise

_PIL_BITS = 22  # PIL's PRECISION_BITS for 8-bit images: 32 - 8 - 2


def _bicubic(x: float) -> float:  # PIL's bicubic kernel, a = -0.5, same operation order
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


_PIL_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_bilinear, 1.0)}


@functools.lru_cache(maxsize=64)
def pil_coefficients(in_size: int, out_size: int, kind: str = "bicubic") -> Tensor:
    """PIL's fixed-point resampling weights for one axis, as an (out, in) matrix.

    The weights of output pixel ``o`` are the filter at the input pixels
    within its support (widened by the scale when shrinking), normalised to
    sum to one and rounded to integers in units of ``2^-22``: the arithmetic
    of PIL's ``precompute_coeffs`` and ``normalize_coeffs_8bpc``, operation
    for operation in float64.

    Returns:
        (out_size, in_size) float64 holding integers.
    """
    kernel, base_support = _PIL_FILTERS[kind]
    scale = filterscale = in_size / out_size
    filterscale = max(filterscale, 1.0)
    support = base_support * filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        first = max(int(center - support + 0.5), 0)  # C's (int) truncates, like int()
        count = min(int(center + support + 0.5), in_size) - first
        taps = [kernel((x + first - center + 0.5) * (1.0 / filterscale)) for x in range(count)]
        total = 0.0
        for t in taps:
            total += t
        if total != 0.0:
            taps = [t / total for t in taps]
        fixed = [math.trunc(-0.5 + t * (1 << _PIL_BITS)) if t < 0 else math.trunc(0.5 + t * (1 << _PIL_BITS))
                 for t in taps]
        weights[o, first:first + count] = torch.tensor(fixed, dtype=torch.float64)
    return weights


def pil_resize(images: Tensor, size: tuple[int, int], kind: str = "bicubic") -> Tensor:
    """PIL's ``Image.resize`` of 8-bit RGB images, on any device.

    PIL resamples rows, rounds and clips to uint8, then columns, likewise;
    an axis whose size does not change is left alone. Each pass is an exact
    float64 matrix product: the products of 8-bit values and 22-bit weights
    and their sums are integers far below 2^53.

    Args:
        images: (..., H, W) integer values 0..255 (any dtype).
        size: (height, width) of the output.

    Returns:
        (..., height, width) float64 holding integers 0..255.
    """
    out = images.double()
    height, width = size
    half = float(1 << (_PIL_BITS - 1))
    unit = float(1 << _PIL_BITS)
    if width != out.shape[-1]:
        weights = pil_coefficients(out.shape[-1], width, kind).to(out.device)
        out = torch.floor((out @ weights.T + half) / unit).clamp_(0, 255)
    if height != out.shape[-2]:
        weights = pil_coefficients(out.shape[-2], height, kind).to(out.device)
        out = torch.floor((weights @ out + half) / unit).clamp_(0, 255)
    return out


def reference_dino_images(crops: Tensor, spec: VFMSpec) -> Tensor:
    """DINO input exactly as the released code builds it from CLIP-normalised crops.

    Each crop is mapped back to pixels with ImageNet statistics (blue std
    0.255), scaled by 255 and cast to uint8 the way NumPy's ``astype`` does on
    x86 (truncation, then the low byte: out-of-range values wrap), resized with
    PIL's bicubic ``Image.resize`` to a square of side ``min(Hc, Wc)`` (to
    518 x 518, bilinear, for the DINOv2 option), cropped to a multiple of the
    patch size and ImageNet-normalised. Computed on the crops' device with
    the same float32 operations and :func:`pil_resize`; tested equal, bit for
    bit, to the NumPy + PIL path.

    Args:
        crops: (B, 3, Hc, Wc) CLIP-normalised RGB crops.

    Returns:
        (B, 3, S, S) float32 on ``crops.device``.
    """
    pixels = TF.normalize(crops.detach().float(), [-m / s for m, s in zip(IMAGENET_MEAN, REFERENCE_INVERSE_STD)],
                          [1 / s for s in REFERENCE_INVERSE_STD])
    values = (pixels * 255).to(torch.int32) & 255
    if spec.fixed_size is None:
        side = min(values.shape[-2:])
        values = pil_resize(values, (side, side), "bicubic")
    else:
        values = pil_resize(values, (spec.fixed_size, spec.fixed_size), "bilinear")
    images = TF.normalize(values.float().div(255), IMAGENET_MEAN, IMAGENET_STD)
    size = images.shape[-1] - images.shape[-1] % spec.patch_size
    return images[..., :size, :size]


def plain_dino_images(crops: Tensor, spec: VFMSpec) -> Tensor:
    """The true RGB crop, ImageNet-normalised, aspect ratio kept (option).

    Args:
        crops: (B, 3, Hc, Wc) CLIP-normalised RGB crops.

    Returns:
        (B, 3, Hc', Wc') with sides cropped to a multiple of the patch size
        (resized to the fixed square first for the DINOv2 option).
    """
    pixels = denormalise(crops) / 255
    if spec.fixed_size is not None:
        pixels = F.interpolate(pixels, size=(spec.fixed_size,) * 2, mode="bilinear", align_corners=False)
    images = TF.normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)
    h, w = images.shape[-2:]
    return images[..., : h - h % spec.patch_size, : w - w % spec.patch_size]
