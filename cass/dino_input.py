"""The VFM's input image built from a CLIP-normalised crop (spec section 2).

:func:`reference_dino_images` is what the released code feeds DINO (a uint8
image rebuilt with the 0.255 quirk, PIL-resized to a square);
:func:`plain_dino_images` the true RGB crop (option).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from .constants import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, REFERENCE_INVERSE_STD
from .dino_keys import VFMSpec


def reference_dino_images(crops: Tensor, spec: VFMSpec) -> Tensor:
    """DINO input exactly as the released code builds it from CLIP-normalised crops.

    Each crop is mapped back to pixels with ImageNet statistics (blue std
    0.255), scaled by 255, truncated to uint8, resized with PIL's bicubic
    ``Image.resize`` to a square of side ``min(Hc, Wc)`` (to 518 x 518,
    bilinear, for the DINOv2 option), cropped to a multiple of the patch size
    and ImageNet-normalised. Runs on the CPU (PIL); one transfer per batch.

    Args:
        crops: (B, 3, Hc, Wc) CLIP-normalised RGB crops.

    Returns:
        (B, 3, S, S) float32 on ``crops.device``.
    """
    host = crops.detach().float().cpu()
    side = min(host.shape[-2:])
    out = []
    for crop in host:
        pixels = TF.normalize(crop, [-m / s for m, s in zip(IMAGENET_MEAN, REFERENCE_INVERSE_STD)],
                              [1 / s for s in REFERENCE_INVERSE_STD])
        array = (pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        image = Image.fromarray(array)
        if spec.fixed_size is None:
            image = image.resize((side, side))
        else:
            image = image.resize((spec.fixed_size, spec.fixed_size), Image.BILINEAR)
        out.append(TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD))
    images = torch.stack(out)
    size = images.shape[-1] - images.shape[-1] % spec.patch_size
    return images[..., :size, :size].to(crops.device)


def plain_dino_images(crops: Tensor, spec: VFMSpec) -> Tensor:
    """The true RGB crop, ImageNet-normalised, aspect ratio kept (option).

    Args:
        crops: (B, 3, Hc, Wc) CLIP-normalised RGB crops.

    Returns:
        (B, 3, Hc', Wc') with sides cropped to a multiple of the patch size
        (resized to the fixed square first for the DINOv2 option).
    """
    mean = crops.new_tensor(CLIP_MEAN)[:, None, None]
    std = crops.new_tensor(CLIP_STD)[:, None, None]
    pixels = (crops.float() * std + mean) / 255
    if spec.fixed_size is not None:
        pixels = F.interpolate(pixels, size=(spec.fixed_size,) * 2, mode="bilinear", align_corners=False)
    images = TF.normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)
    h, w = images.shape[-2:]
    return images[..., : h - h % spec.patch_size, : w - w % spec.patch_size]
