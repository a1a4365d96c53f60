"""The math the family's last blocks share: attention forms, the shared tail, the VFM's features.

Every method runs CLIP's trunk unchanged up to its last block and differs only
in how that block mixes the tokens. Here each attention is a pure function of
tensors; :func:`last_block_features` is the shared tail (out-projection,
optional residual and feed-forward network, ``ln_post``, ``proj``).
Notation: ``T = P + N`` tokens (``P`` prefix tokens: CLIP's CLS, ``N`` patches),
``H`` heads of size ``d``, ``s = 1 / sqrt(d)``.

* ``clip``  -- unmodified block: ``softmax(s Q K^T)``, residual and FFN kept.
* ``maskclip`` -- MaskCLIP (Zhou et al., ECCV 2022): no mixing (identity
  attention, every token keeps its own value), residual and FFN kept as in
  its ViT backbone; ClearCLIP's re-implementation drops them (``residual=False``).
* ``sclip`` -- SCLIP (Wang et al., ECCV 2024): correlative self-attention
  ``softmax(s Q Q^T) + softmax(s K K^T)``, residual and FFN kept.
* ``clearclip`` -- ClearCLIP (Lan et al., ECCV 2024): ``softmax(s Q Q^T)``, no
  residual, no FFN.
* ``naclip`` -- NACLIP (Hajimiri et al., WACV 2025): ``softmax(s K K^T + G)``
  with the Gaussian neighbourhood bias ``G`` (zero for the CLS row and
  column), no residual, no FFN.
* ``proxyclip`` -- ProxyCLIP (Lan et al., ECCV 2024): the VFM's normalised
  last-layer patch features ``f`` give the attention of every head,
  ``S = f f^T``, ``A = softmax(gamma (S - beta mean(S)))`` with the negative
  entries masked out, over CLIP's values resized to the VFM grid; no residual,
  no FFN. Trident's block (Shi et al., ICCV 2025) is the same attention with
  one mean over all the crops of an image (:func:`proxy_attention`'s ``mean_dims``).

The attention of the first five methods covers CLIP's CLS token (the
references run the block on all ``T`` tokens); CASS's covers the patches only
(:mod:`cass.spectral`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tower_checks import check_absolute_positions
from ..vfm_keys import embed_tokens


def block_qkv(block: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values of every token in an open_clip block's attention.

    Args:
        block: open_clip ``ResidualAttentionBlock``.
        tokens: (B, T, D) tokens entering the block.

    Returns:
        q, k, v, each (B, H, T, d): ``ln_1`` then the in-projection.
    """
    attn = block.attn
    b, t, dim = tokens.shape
    qkv = F.linear(block.ln_1(tokens), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.reshape(b, t, 3, attn.num_heads, dim // attn.num_heads).permute(2, 0, 3, 1, 4)
    return q, k, v


def _self_logits(x: Tensor, y: Tensor) -> Tensor:
    """``s X Y^T`` in float32: (B, H, T, d), (B, H, T, d) -> (B, H, T, T)."""
    return (x.float() @ y.float().transpose(-1, -2)) / math.sqrt(x.shape[-1])


def vanilla_attention(q: Tensor, k: Tensor) -> Tensor:
    """CLIP's own attention ``softmax(s Q K^T)``: (B, H, T, d) x2 -> (B, H, T, T) float32."""
    return _self_logits(q, k).softmax(-1)


def correlative_attention(q: Tensor, k: Tensor) -> Tensor:
    """SCLIP's correlative self-attention ``softmax(s Q Q^T) + softmax(s K K^T)``.

    SCLIP's ``custom_attn(csa=True)``: both terms scaled by ``1/sqrt(d)``; the
    rows sum to 2 (no renormalisation).

    Args:
        q, k: (B, H, T, d).

    Returns:
        (B, H, T, T) float32.
    """
    return _self_logits(q, q).softmax(-1) + _self_logits(k, k).softmax(-1)


def self_self_attention(x: Tensor, bias: Tensor | None = None) -> Tensor:
    """``softmax(s X X^T + bias)``: ClearCLIP with ``X = Q``, NACLIP with ``X = K`` and ``bias = G``.

    Args:
        x: (B, H, T, d) queries or keys.
        bias: (T, T) added to the logits, or None.

    Returns:
        (B, H, T, T) float32 row-stochastic attention.
    """
    logits = _self_logits(x, x)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(-1)


def with_prefix(patch_bias: Tensor, num_prefix: int = 1) -> Tensor:
    """Pad an (N, N) patch bias with zero rows and columns for the prefix tokens.

    NACLIP's ``get_attention_addition(adjust_for_cls=True)``: the CLS token
    gets no neighbourhood bias, as query or as key.

    Returns:
        (P + N, P + N).
    """
    return F.pad(patch_bias, (num_prefix, 0, num_prefix, 0))


def proxy_attention(vfm_feats: Tensor, beta: float = 1.2, gamma: float = 3.0,
                    mean_dims: tuple[int, ...] = (-2, -1)) -> Tensor:
    """ProxyCLIP's proxy attention from VFM patch features (ProxyCLIP's and Trident's).

    ``f`` = L2-normalised features, ``S = f f^T``,
    ``L = gamma (S - beta mean(S))`` with entries ``L < 0`` set to ``-inf``,
    ``A = softmax(L)`` over the last axis. The mean is over ``mean_dims`` of
    ``S``: by default each image's whole ``M x M`` matrix (ProxyCLIP: the
    reference takes it over its batch of one crop); ``(-3, -2, -1)`` over
    every crop of a stack, one mean shared by them (Trident's
    ``VisionTransformer.custom_attn`` runs all the crops of an image as one
    batch and takes ``torch.mean`` of the whole (K, M, M) similarity). A row
    left without any entry (possible only when ``beta mean(S) >= 1``, e.g. a
    constant image, where the reference gives NaN) keeps its own token.

    Args:
        vfm_feats: (..., M, C) VFM patch features: (B, M, C) images or crops,
            (K, M, C) the crops of one image, (B, K, M, C) per image its crops.
        mean_dims: the axes of the (..., M, M) similarity the mean runs over.

    Returns:
        (..., M, M) float32 row-stochastic attention, shared by all heads.
    """
    f = F.normalize(vfm_feats.float(), dim=-1)
    sim = f @ f.transpose(-1, -2)
    logits = (sim - sim.mean(dim=mean_dims, keepdim=True) * beta) * gamma
    masked = logits.masked_fill(logits < 0, -torch.inf)
    empty = torch.isinf(masked).all(-1, keepdim=True)
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    masked = torch.where(empty & eye, torch.zeros_like(masked), masked)
    return masked.softmax(-1)


def values_on_grid(values: Tensor, grid: tuple[int, int], out_grid: tuple[int, int]) -> Tensor:
    """Resize patch values from CLIP's grid to another (ProxyCLIP: the VFM's), bilinearly.

    Args:
        values: (B, H, N, d) values of the patch tokens, row-major on ``grid``.

    Returns:
        (B, H, M, d), ``M = out_grid[0] * out_grid[1]`` (``align_corners=False``).
    """
    b, heads, _, d = values.shape
    if tuple(grid) == tuple(out_grid):
        return values
    spatial = values.transpose(-1, -2).reshape(b * heads, d, *grid)
    dtype = spatial.dtype
    spatial = F.interpolate(spatial.float(), size=out_grid, mode="bilinear", align_corners=False).to(dtype)
    return spatial.reshape(b, heads, d, -1).transpose(-1, -2)


def last_block_features(visual: nn.Module, mixed: Tensor, tokens: Tensor | None = None,
                        num_prefix: int = 1) -> Tensor:
    """The shared tail of every last block: ``proj(ln_post(x))`` of the patch tokens.

    ``x = out_proj(AV)`` without residual; with ``tokens``, the block's own
    residual and feed-forward network:
    ``x = tokens + out_proj(AV)``, ``x = x + mlp(ln_2(x))``.

    Args:
        visual: open_clip ``VisionTransformer``.
        mixed: (B, H, T, d) attention-weighted values ``AV``.
        tokens: (B, T, D) tokens entering the block, for the residual; None: no residual, no FFN.
        num_prefix: leading rows of ``mixed`` that are not patches (dropped at the end).

    Returns:
        (B, T - num_prefix, E) L2-normalised patch features, float32.
    """
    block = visual.transformer.resblocks[-1]
    x = block.attn.out_proj(mixed.transpose(1, 2).flatten(2))
    if tokens is not None:
        x = tokens + block.ls_1(x)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    feats = visual.ln_post(x[:, num_prefix:]) @ visual.proj
    return F.normalize(feats.float(), dim=-1)


def attend(attn: Tensor, values: Tensor) -> Tensor:
    """``A V`` in the values' dtype: (B, H, T, T) or (B, T, T) shared by all heads, (B, H, T, d) -> (B, H, T, d)."""
    if attn.dim() == 3:
        attn = attn[:, None]
    return attn.to(values.dtype) @ values


@torch.no_grad()
def vfm_last_features(model: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Patch features of a timm ViT's last layer after its final norm (ProxyCLIP's VFM features).

    What DINO's and DINOv2's ``get_intermediate_layers(x, n=1)`` return:
    the last block's output tokens, layer-normalised, prefix (CLS, register)
    tokens dropped. Positions are resized as in :mod:`cass.vfm_keys` (DINO's
    own interpolation).

    Args:
        model: timm ``VisionTransformer`` with an absolute positional embedding
            (a rotary one is a one-line :class:`~cass.config.ConfigError`).
        images: (B, 3, S_h, S_w) ImageNet-normalised, sides multiples of the patch.

    Returns:
        (B, n, C) features and the patch grid (h, w).
    """
    check_absolute_positions(model, "vfm_last_features")
    x, grid = embed_tokens(model, images)
    x = model.norm_pre(x)
    for block in model.blocks:
        x = block(x)
    return model.norm(x)[:, model.num_prefix_tokens:], grid


def drop_small_classes(probs: Tensor, area_thd: float) -> Tensor:
    """SCLIP's small-region filter (its ``area_thd``), class 0 being the background.

    With the argmax labels of ``probs``, a class ``c >= 1`` whose pixel count
    is at most ``area_thd`` times the count of all non-background pixels gets
    its probabilities zeroed (SCLIP's ``postprocess_result``).

    Args:
        probs: (C, H, W) class probabilities.

    Returns:
        (C, H, W), a new tensor.
    """
    counts = torch.bincount(probs.argmax(0).flatten(), minlength=probs.shape[0])[1:].to(probs.dtype)
    keep = (counts > area_thd * counts.sum()).to(probs.dtype)
    return torch.cat([probs[:1], probs[1:] * keep[:, None, None]])
