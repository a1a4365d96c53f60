"""VFM keys for CASS (spec section 2).

The vision foundation model is a timm ViT: ``VisionTransformer`` for DINO and
DINOv2 (absolute positional embedding, optional registers), ``Eva`` for DINOv3
(RoPE, 4 register tokens). CASS needs only the keys of its last block, so the
forward stops there. :data:`VFM_SPECS` lists the supported models; their
release files and URLs are in :mod:`cass.constants`, the loaders in
:mod:`cass.weights`, the table in ``docs/backbones.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from torch import Tensor, nn

from .clip_vit import resize_pos_embed


@dataclass(frozen=True)
class VFMSpec:
    """What CASS needs to know about a vision foundation model (full size).

    Attributes:
        timm_name: the timm architecture.
        patch_size: side of a patch in pixels.
        fixed_size: side of the square the VFM input is resized to (the
            DINOv2 option of the released code), None to keep the crop's size.
        num_prefix_tokens: CLS plus register tokens ahead of the patches
            (timm's ``model.num_prefix_tokens``; checked against it in the tests).
        num_heads: heads of the last block (CASS pairs them one to one with CLIP's).
        release_format: layout of the public checkpoint: ``'dino'``
            (facebookresearch/dino), ``'dinov2'`` or ``'dinov3'``.

    All supported models take ImageNet-normalised input (DINOv3's LVD-1689M
    models too; only its satellite models use other statistics).
    """

    timm_name: str
    patch_size: int
    fixed_size: int | None
    num_prefix_tokens: int
    num_heads: int
    release_format: str


VFM_SPECS = {
    "dino_vitb8": VFMSpec("vit_base_patch8_224", 8, None, 1, 12, "dino"),
    "dino_vitb16": VFMSpec("vit_base_patch16_224", 16, None, 1, 12, "dino"),
    "dinov2_vitb14": VFMSpec("vit_base_patch14_dinov2", 14, 518, 1, 12, "dinov2"),
    "dinov2_vitb14_reg4": VFMSpec("vit_base_patch14_reg4_dinov2", 14, 518, 5, 12, "dinov2"),
    "dinov2_vitl14": VFMSpec("vit_large_patch14_dinov2", 14, 518, 1, 16, "dinov2"),
    "dinov2_vitl14_reg4": VFMSpec("vit_large_patch14_reg4_dinov2", 14, 518, 5, 16, "dinov2"),
    # the qkvb variants hold the q and v biases of Meta's release (mask_k_bias: k's is zero)
    "dinov3_vitb16": VFMSpec("vit_base_patch16_dinov3_qkvb", 16, None, 5, 12, "dinov3"),
    "dinov3_vitl16": VFMSpec("vit_large_patch16_dinov3_qkvb", 16, None, 5, 16, "dinov3"),
}


def vfms_with_heads(count: int) -> list[str]:
    """The VFMs whose last block has ``count`` heads (those CASS can pair with a CLIP of ``count`` heads)."""
    return [name for name, spec in VFM_SPECS.items() if spec.num_heads == count]


def _tokens(model: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Patch embedding, prefix tokens and absolute positional embedding (if any)."""
    dtype = model.patch_embed.proj.weight.dtype
    x = model.patch_embed.proj(images.to(dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = model.patch_embed.norm(x.flatten(2).transpose(1, 2))
    prefix = [t.to(dtype).expand(x.shape[0], -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
    if model.pos_embed is None:  # DINOv3: positions enter the attention through RoPE only
        return torch.cat(prefix + [x], dim=1), grid
    pos_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos = resize_pos_embed(model.pos_embed[0], grid, pos_prefix).to(dtype)
    if model.no_embed_class:
        return torch.cat(prefix + [x + pos], dim=1), grid
    return torch.cat(prefix + [x], dim=1) + pos, grid


def _keys(attn: nn.Module, y: Tensor) -> Tensor:
    """(B, n, D) normalised tokens -> (B, H, n, d) keys, computed as the attention module does."""
    b, n, _ = y.shape
    if getattr(attn, "q_bias", None) is not None:  # timm Eva: fused qkv weight, separate biases (k's is zero)
        qkv = F.linear(y, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
    elif attn.qkv is not None:  # timm Attention, or Eva without biases
        qkv = attn.qkv(y)
    else:  # Eva with separate projections
        return attn.k_norm(attn.k_proj(y).reshape(b, n, attn.num_heads, -1).transpose(1, 2))
    keys = qkv.reshape(b, n, 3, attn.num_heads, -1)[:, :, 1].transpose(1, 2)
    return attn.k_norm(keys)


def last_block_keys(model: nn.Module, images: Tensor, *, rotary: bool = True) -> tuple[Tensor, tuple[int, int]]:
    """Keys of the patch tokens in the last block of a timm ViT.

    An absolute positional embedding (DINO, DINOv2) is resized like DINO's own
    code does (see :func:`cass.clip_vit.resize_pos_embed`), not with timm's
    antialiased resampling, so the values match the released DINO model. A
    rotary embedding (DINOv3) is built for the input's patch grid, as timm's
    ``Eva`` does with ``dynamic_img_size``, and passed to every block.

    With RoPE the keys are, by default, the rotated keys that the last
    attention compares with the queries (timm's ``EvaAttention``: patch tokens
    rotated, prefix tokens not): like the DINO and DINOv2 keys, which carry
    their absolute positions, they are the vectors of the model's own
    attention product, and their Gram matrix k_i R(p_j - p_i) k_j is the
    model's key geometry. ``rotary=False`` gives the keys before RoPE
    (content only; positions enter them only through earlier blocks).

    Args:
        model: timm ``VisionTransformer`` or ``Eva`` (CLS token, optional registers).
        images: (B, 3, S_h, S_w) ImageNet-normalised, sides multiples of the patch.
        rotary: apply the model's RoPE to the keys (no effect without RoPE).

    Returns:
        (B, H, n, d) keys (prefix tokens dropped) and the patch grid (h, w).
    """
    x, grid = _tokens(model, images)
    rope = getattr(model, "rope", None)
    if rope is not None and getattr(model, "rope_mixed", False):
        raise ValueError("per-depth (mixed) RoPE models are not supported: their keys need one embedding per block")
    block_args = {} if rope is None else {"rope": rope.get_embed(shape=list(grid))}
    x = model.norm_pre(x)
    for block in model.blocks[:-1]:
        x = block(x, **block_args)
    last = model.blocks[-1]
    keys = _keys(last.attn, last.norm1(x))[:, :, model.num_prefix_tokens:]
    if rope is not None and rotary:
        keys = apply_rot_embed_cat(keys, block_args["rope"], half=last.attn.rotate_half).type_as(keys)
    return keys, grid


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
