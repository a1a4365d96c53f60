"""CASS (Kim et al., CVPR 2025): spectral object-level context distillation in CLIP's last block.

The reduced last block over the patches, whose attention fuses CLIP's and the
VFM's key graphs (:mod:`cass.spectral`, spec sections 2-4) and adds the
Gaussian bias. Its settings are the central :class:`~cass.config.SpectralConfig`
and :class:`~cass.config.TextConfig` (the benchmark configs are its protocol).
"""
from __future__ import annotations

from torch import Tensor

from .. import clip_vit, spectral
from ..dino_input import plain_dino_images, reference_dino_images
from ..benchmarks import BENCHMARKS, benchmark_row
from ..stages import stage
from ..vfm_keys import keys_on_clip_grid, last_block_keys
from .common import vanilla_attention
from .registry import Method, register_method

Grid = tuple[int, int]


def vfm_keys(ctx, crops: Tensor, grid: Grid) -> Tensor:
    """The VFM's last-block keys of the crops on CLIP's grid: (B, 3, Hc, Wc) -> (B, H, N, d) float32.

    The VFM's input follows ``dino_input`` (the released code's rebuilt uint8
    image, or the plain crop); the keys are rounded to float16 with
    ``dino_keys_fp16`` (spec section 2).
    """
    cfg = ctx.config.spectral
    with stage("dino"), ctx.tf32("vfm"):
        make_input = reference_dino_images if cfg.dino_input == "reference" else plain_dino_images
        keys, vfm_grid = last_block_keys(ctx.vfm, make_input(crops, ctx.vfm_spec))
        return keys_on_clip_grid(keys, vfm_grid, grid, cfg.dino_keys_fp16)


def attention(ctx, queries: Tensor, keys: Tensor, crops: Tensor, grid: Grid) -> Tensor:
    """CASS's attention of the reduced last block (spec sections 2-4).

    Args:
        queries, keys: (B, H, N, d) CLIP patch queries and keys.

    Returns:
        (B, H, N, N) row-stochastic attention, float32: the spectral (or
        sequential) fusion of CLIP's and the VFM's key graphs plus the
        Gaussian bias, or ordinary q.k attention for ``attn_strategy='vanilla'``.
    """
    cfg = ctx.config.spectral
    if cfg.attn_strategy == "vanilla":
        with stage("spectral"):
            return vanilla_attention(queries, keys)
    vfm = vfm_keys(ctx, crops, grid)
    with stage("spectral"):
        clip_keys = keys.float()
        vfm = spectral.range_match(vfm, clip_keys, dims=(1, 2, 3))
        fuse = spectral.fuse_spectral if cfg.attn_strategy == "spectral" else spectral.fuse_sequential
        logits = fuse(clip_keys, vfm, cfg)
        bias = spectral.gaussian_bias(grid, cfg.gaussian_std, device=logits.device)
        return (logits + bias).softmax(-1)


def features(ctx, crops: Tensor, tokens: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
    """CASS: the reduced last block over the patches with :func:`attention`."""
    visual = ctx.clip.visual
    with stage("clip"), ctx.tf32("clip"):
        queries, keys, values = clip_vit.last_block_qkv(visual, tokens)
    attn = attention(ctx, queries, keys, crops, grid)
    with stage("clip"), ctx.tf32("clip"):
        return clip_vit.reduced_block_output(visual, attn, values), grid


ENTRY = register_method(Method(
    name="cass", title="CASS (Kim et al., CVPR 2025)", last_block=features,
    needs_vfm=lambda config: config.spectral.attn_strategy != "vanilla", pairs_heads=True, refines_text=True,
    protocol={b: {} for b in BENCHMARKS},  # the benchmark configs themselves
    published=benchmark_row(65.8, 36.7, 37.8, 87.8, 40.2, 26.7, 39.4, 20.4),
    source="CASS paper (Kim et al., CVPR 2025), Table 1"))
