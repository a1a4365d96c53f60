"""DINO keys for CASS (spec section 2).

The vision foundation model is a timm ``VisionTransformer`` (DINO ViT-B/8 by
default, DINOv2 ViT-B/14 with 4 registers as an option). CASS needs only the
keys of its last block, so the forward stops there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip_vit import resize_pos_embed


@dataclass(frozen=True)
class VFMSpec:
    """What CASS needs to know about a vision foundation model."""

    timm_name: str
    patch_size: int
    fixed_size: int | None  # the input is resized to this square (DINOv2 option), else None

    @property
    def num_prefix_tokens(self) -> int:
        return 5 if "reg4" in self.timm_name else 1


VFM_SPECS = {
    "dino_vitb8": VFMSpec("vit_base_patch8_224", 8, None),
    "dinov2_vitb14_reg4": VFMSpec("vit_base_patch14_reg4_dinov2", 14, 518),
}


def last_block_keys(model: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Keys of the patch tokens in the last block of a timm ViT.

    The positional embedding is resized like DINO's own code does (see
    :func:`cass.clip_vit.resize_pos_embed`), not with timm's antialiased
    resampling, so the values match the released DINO model.

    Args:
        model: timm ``VisionTransformer`` (CLS token, optional registers).
        images: (B, 3, S_h, S_w) ImageNet-normalised, sides multiples of the patch.

    Returns:
        (B, H, n, d) keys (prefix tokens dropped) and the patch grid (h, w).
    """
    dtype = model.patch_embed.proj.weight.dtype
    x = model.patch_embed.proj(images.to(dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = model.patch_embed.norm(x.flatten(2).transpose(1, 2))
    prefix = [t.to(dtype).expand(x.shape[0], -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
    pos_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos = resize_pos_embed(model.pos_embed[0], grid, pos_prefix).to(dtype)
    if model.no_embed_class:
        x = torch.cat(prefix + [x + pos], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + pos
    x = model.norm_pre(x)
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    attn = last.attn
    b, n, dim = x.shape
    qkv = attn.qkv(last.norm1(x)).reshape(b, n, 3, attn.num_heads, dim // attn.num_heads)
    keys = attn.k_norm(qkv[:, :, 1].transpose(1, 2))
    return keys[:, :, model.num_prefix_tokens:], grid


def keys_on_clip_grid(keys: Tensor, vfm_grid: tuple[int, int], clip_grid: tuple[int, int],
                      half_precision: bool = True) -> Tensor:
    """Resize DINO keys to the CLIP patch grid (bilinear, ``align_corners=False``).

    Args:
        keys: (B, H, n, d) DINO keys on ``vfm_grid``.
        half_precision: round to float16 before and after the resize, as the
            reference does on every device (quirk).

    Returns:
        (B, H, N, d) float32 keys on ``clip_grid``.
    """
    b, heads, _, d = keys.shape
    # float16 kernels accumulate in float32 and round the result: the same as
    # rounding the input, resampling in float32 and rounding again.
    spatial = keys.float().transpose(-1, -2).reshape(b * heads, d, *vfm_grid)
    if half_precision:
        spatial = spatial.half().float()
    spatial = F.interpolate(spatial, size=clip_grid, mode="bilinear", align_corners=False)
    if half_precision:
        spatial = spatial.half().float()
    return spatial.reshape(b, heads, d, -1).transpose(-1, -2)
