"""CLIP ViT trunk for CASS (spec sections 1 and 5, "text tower").

Works on an open_clip ``CLIP`` model built from OpenAI weights (see
:mod:`cass.weights`); nothing of CLIP is re-implemented, the functions only
run its modules in the order CASS needs:

* :func:`clip_trunk` -- :func:`embed` (patch embedding, positional embedding
  resized the way the reference does, ``ln_pre``) and every block but the last;
* :func:`global_embedding` -- the unmodified last block, CLS, ``ln_post``,
  ``proj`` (the image embedding ``v`` of the object-presence prior);
* :func:`last_block_keys_values` and :func:`reduced_block_output` -- the
  "reduced" last block of NACLIP/CASS: no residual, no MLP, patch tokens only;
* :func:`encode_text` -- the text tower, run only up to the longest EOT token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
    """Resize a square ViT positional-embedding grid to ``grid``.

    Reproduces the call used by the CASS/DINO reference: bicubic,
    ``align_corners=False``, driven by the *scale factors*
    ``((h + 0.1) / g, (w + 0.1) / g)`` rather than a target size. The two give
    different values, so the quirk is kept to match the released numbers.

    Args:
        pos_embed: (P + g*g, D) embedding, ``P = num_prefix`` leading tokens
            (CLS, ...) that are not resized.
        grid: target patch grid (h, w).
        num_prefix: number of leading non-spatial rows.

    Returns:
        (P + h*w, D) embedding in the dtype of ``pos_embed``.
    """
    prefix, patches = pos_embed[:num_prefix], pos_embed[num_prefix:]
    side = math.isqrt(patches.shape[0])
    h, w = grid
    if (h, w) == (side, side):
        return pos_embed
    dim = patches.shape[-1]
    spatial = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic",
                            align_corners=False, recompute_scale_factor=False)
    if tuple(spatial.shape[-2:]) != (h, w):  # cannot happen for h, w >= 1; guards the +0.1 trick
        raise RuntimeError(f"positional embedding resized to {tuple(spatial.shape[-2:])}, expected {(h, w)}")
    spatial = spatial.permute(0, 2, 3, 1).reshape(h * w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, spatial], dim=0)


def clip_trunk(visual: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Run CLIP's vision tower up to (not including) the last block.

    Args:
        visual: open_clip ``VisionTransformer`` (OpenAI layout, CLS pooling).
        images: (B, 3, H, W) CLIP-normalised images; H, W need not be
            multiples of the patch size (the remainder is ignored, like the
            strided patch convolution).

    Returns:
        (B, 1 + h*w, D) tokens entering the last block, and the grid (h, w).
    """
    x, grid = embed(visual, images)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    return x, grid


def embed(visual: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """The tokens entering CLIP's first block: patch embedding, CLS, positions (:func:`resize_pos_embed`), ``ln_pre``.

    Returns:
        (B, 1 + h*w, D) tokens and the grid (h, w).
    """
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(images.to(dtype))  # (B, D, h, w)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + resize_pos_embed(visual.positional_embedding, grid).to(dtype)
    return visual.ln_pre(x), grid


def global_embedding(visual: nn.Module, tokens: Tensor) -> Tensor:
    """Image embedding ``v`` from the unmodified last block.

    Args:
        tokens: (B, 1 + N, D) output of :func:`clip_trunk`.

    Returns:
        (B, E) L2-normalised CLS embedding (``ln_post`` then ``proj``).
    """
    x = visual.transformer.resblocks[-1](tokens)
    v = visual.ln_post(x[:, 0]) @ visual.proj
    return F.normalize(v.float(), dim=-1)


def project_patches(visual: nn.Module, x: Tensor) -> Tensor:
    """``proj(ln_post(x))`` of patch features, L2-normalised: (..., D) -> (..., E) float32."""
    feats = visual.ln_post(x.to(visual.proj.dtype)) @ visual.proj
    return F.normalize(feats.float(), dim=-1)


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    b, n, dim = x.shape
    return x.reshape(b, n, num_heads, dim // num_heads).transpose(1, 2)


def last_block_qkv(visual: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values of the last block's attention for the patch tokens.

    Args:
        tokens: (B, 1 + N, D) output of :func:`clip_trunk`.

    Returns:
        q, k, v, each (B, H, N, d): ``ln_1`` then the in-projection, CLS row dropped.
    """
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    y = block.ln_1(tokens)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_split_heads(t[:, 1:], attn.num_heads) for t in (q, k, v))
    return q, k, v


def reduced_block_output(visual: nn.Module, attn_weights: Tensor, values: Tensor) -> Tensor:
    """Patch features of the reduced last block: ``proj(ln_post(out_proj(A V)))``.

    Args:
        attn_weights: (B, H, N, N) row-stochastic attention.
        values: (B, H, N, d) values of the patch tokens.

    Returns:
        (B, N, E) L2-normalised patch features ``F`` (float32).
    """
    attn = visual.transformer.resblocks[-1].attn
    out = (attn_weights.to(values.dtype) @ values).transpose(1, 2).flatten(2)  # (B, N, D)
    out = attn.out_proj(out)
    feats = visual.ln_post(out) @ visual.proj
    return F.normalize(feats.float(), dim=-1)


@torch.no_grad()
def encode_text(model: nn.Module, tokens: Tensor) -> Tensor:
    """open_clip ``encode_text`` that stops at the longest EOT token.

    The text tower is causal, so the EOT embedding depends only on the tokens
    before it: cutting the 77-token context after the longest EOT changes no
    value and saves most of the work.

    Args:
        model: open_clip ``CLIP`` with argmax (EOT) pooling.
        tokens: (B, 77) token ids from ``open_clip.tokenize``.

    Returns:
        (B, E) text embeddings (not normalised), float32.
    """
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    return (x @ model.text_projection).float()
