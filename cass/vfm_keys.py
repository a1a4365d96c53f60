"""VFM keys for CASS (spec section 2): DINO, DINOv2 and DINOv3.

The vision foundation model is a timm ViT: ``VisionTransformer`` for DINO and
DINOv2 (absolute positional embedding, optional registers), ``Eva`` for DINOv3
(RoPE, 4 register tokens). CASS needs only the keys of its last block, so the
forward stops there. The supported models, their release files and URLs are
:data:`cass.backbones.VFM_SPECS`, the loaders in :mod:`cass.weights`, the
table in ``docs/backbones.md``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from torch import Tensor, nn

from .clip_vit import resize_pos_embed


def embed_tokens(model: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """The tokens that enter a timm ViT's first block (before ``norm_pre``).

    Patch embedding, then the prefix tokens (CLS, registers) ahead of the
    patches, then the absolute positional embedding resized to the patch grid
    as DINO's own code does (:func:`cass.clip_vit.resize_pos_embed`), added to
    the patches only or to all tokens as the model was trained (timm's
    ``no_embed_class``). DINOv3 has no absolute positions (RoPE acts inside
    the attention): its tokens are returned without them.

    Args:
        model: timm ``VisionTransformer`` or ``Eva`` (CLS token, optional registers).
        images: (B, 3, S_h, S_w) ImageNet-normalised, sides multiples of the patch.

    Returns:
        (B, P + h * w, C) tokens in the patch embedding's dtype (P prefix tokens)
        and the patch grid (h, w).
    """
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
    y, grid, block_args = last_attention_input(model, images)
    last = model.blocks[-1]
    keys = _keys(last.attn, y)[:, :, model.num_prefix_tokens:]
    if "rope" in block_args and rotary:
        keys = apply_rot_embed_cat(keys, block_args["rope"], half=last.attn.rotate_half).type_as(keys)
    return keys, grid


def last_attention_input(model: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int], dict]:
    """The tokens the last block's attention projects (after its ``norm1``), the patch grid, and the
    blocks' keyword arguments (the RoPE embedding of the grid, if the model has one).

    Positions as :func:`last_block_keys` says (DINO's own resize; RoPE built for the grid).
    """
    x, grid = embed_tokens(model, images)
    rope = getattr(model, "rope", None)
    if rope is not None and getattr(model, "rope_mixed", False):
        raise ValueError("per-depth (mixed) RoPE models are not supported: their keys need one embedding per block")
    block_args = {} if rope is None else {"rope": rope.get_embed(shape=list(grid))}
    x = model.norm_pre(x)
    for block in model.blocks[:-1]:
        x = block(x, **block_args)
    return model.blocks[-1].norm1(x), grid, block_args


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
