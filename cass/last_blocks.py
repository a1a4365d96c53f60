"""The last block of each method of the family: CLIP tokens -> dense patch features.

One function per entry of :data:`cass.family.METHODS` (its ``last_block``),
each with the signature

    block(ctx, crops, tokens, grid) -> (features, feature_grid)

Args (shared):
    ctx: the :class:`~cass.method_context.MethodContext` (the towers, the
        settings, each tower's precision context) -- not the model.
    crops: (B, 3, Hc, Wc) CLIP-normalised crops (the VFM's input).
    tokens: (B, 1 + N, D) CLIP tokens entering the last block.
    grid: CLIP's patch grid (h, w), ``N = h * w``.

Returns:
    (B, M, E) L2-normalised float32 patch features and their grid (CLIP's,
    or the VFM's for ProxyCLIP).

The math is in :mod:`cass.spectral` (CASS) and :mod:`cass.methods` (the
baselines); these functions only wire it to the towers, each part inside its
named :func:`cass.stages.stage`.
"""
from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from . import clip_vit, methods, spectral, trident
from .dino_input import plain_dino_images, reference_dino_images
from .stages import stage
from .vfm_keys import keys_on_clip_grid, last_block_keys

Grid = tuple[int, int]


# ------------------------------------------------------------------ CASS
def cass_vfm_keys(ctx, crops: Tensor, grid: Grid) -> Tensor:
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


def cass_attention(ctx, queries: Tensor, keys: Tensor, crops: Tensor, grid: Grid) -> Tensor:
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
            return methods.vanilla_attention(queries, keys)
    vfm_keys = cass_vfm_keys(ctx, crops, grid)
    with stage("spectral"):
        clip_keys = keys.float()
        vfm_keys = spectral.range_match(vfm_keys, clip_keys, dims=(1, 2, 3))
        fuse = spectral.fuse_spectral if cfg.attn_strategy == "spectral" else spectral.fuse_sequential
        logits = fuse(clip_keys, vfm_keys, cfg)
        bias = spectral.gaussian_bias(grid, cfg.gaussian_std, device=logits.device)
        return (logits + bias).softmax(-1)


def cass_features(ctx, crops: Tensor, tokens: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
    """CASS: the reduced last block over the patches with :func:`cass_attention`."""
    visual = ctx.clip.visual
    with stage("clip"), ctx.tf32("clip"):
        queries, keys, values = clip_vit.last_block_qkv(visual, tokens)
    attn = cass_attention(ctx, queries, keys, crops, grid)
    with stage("clip"), ctx.tf32("clip"):
        return clip_vit.reduced_block_output(visual, attn, values), grid


# ------------------------------------------------------------------ CLIP-only baselines
# Their attention covers CLS + patches (the references run the block on all tokens).
def _vanilla(ctx, q: Tensor, k: Tensor, grid: Grid) -> Tensor:
    """CLIP: the unmodified block, ``softmax(s Q K^T)``."""
    return methods.vanilla_attention(q, k)


def _identity(ctx, q: Tensor, k: Tensor, grid: Grid) -> None:
    """MaskCLIP: no mixing (identity attention), each token keeps its own value."""
    return None


def _correlative(ctx, q: Tensor, k: Tensor, grid: Grid) -> Tensor:
    """SCLIP: correlative self-attention ``softmax(s Q Q^T) + softmax(s K K^T)``."""
    return methods.correlative_attention(q, k)


def _query_query(ctx, q: Tensor, k: Tensor, grid: Grid) -> Tensor:
    """ClearCLIP: ``softmax(s Q Q^T)``."""
    return methods.self_self_attention(q)


def _key_key_neighbourhood(ctx, q: Tensor, k: Tensor, grid: Grid) -> Tensor:
    """NACLIP: ``softmax(s K K^T + G)``, the Gaussian bias free for CLS."""
    bias = spectral.gaussian_bias(grid, ctx.config.spectral.gaussian_std, device=k.device)
    return methods.self_self_attention(k, methods.with_prefix(bias))


def _token_mixing(attention):
    """The last block with ``attention(ctx, q, k, grid)`` ((B, H, T, T), or None for the identity)
    over CLS + patches, then the shared tail with the configured residual (``residual``)."""
    def block(ctx, crops: Tensor, tokens: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        visual = ctx.clip.visual
        with stage("clip"), ctx.tf32("clip"):
            q, k, v = methods.block_qkv(visual.transformer.resblocks[-1], tokens)
        with stage("spectral"):
            attn = attention(ctx, q, k, grid)
        residual = tokens if ctx.config.method.keeps_residual else None
        with stage("clip"), ctx.tf32("clip"):
            mixed = v if attn is None else methods.attend(attn, v)
            return methods.last_block_features(visual, mixed, residual, 1), grid

    block.__doc__ = attention.__doc__
    return block


clip_features = _token_mixing(_vanilla)
maskclip_features = _token_mixing(_identity)
sclip_features = _token_mixing(_correlative)
clearclip_features = _token_mixing(_query_query)
naclip_features = _token_mixing(_key_key_neighbourhood)


# ------------------------------------------------------------------ ProxyCLIP
def proxyclip_features(ctx, crops: Tensor, tokens: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
    """ProxyCLIP: the VFM's proxy attention over CLIP's values resized to the VFM grid; no residual."""
    visual = ctx.clip.visual
    cfg = ctx.config.method
    with stage("clip"), ctx.tf32("clip"):
        _, _, v = methods.block_qkv(visual.transformer.resblocks[-1], tokens)
    with stage("dino"), ctx.tf32("vfm"):
        images = plain_dino_images(crops, replace(ctx.vfm_spec, fixed_size=None))  # the crop as it is
        vfm_feats, vfm_grid = methods.vfm_last_features(ctx.vfm, images)
    with stage("spectral"):
        attn = methods.proxy_attention(vfm_feats, cfg.proxy_beta, cfg.proxy_gamma)
    with stage("clip"), ctx.tf32("clip"):
        values = methods.values_on_grid(v[:, :, 1:], grid, vfm_grid)
        return methods.last_block_features(visual, methods.attend(attn, values), None, 0), vfm_grid


# ------------------------------------------------------------------ Trident
def trident_features(ctx, crops: Tensor, tokens: Tensor, grid: Grid) -> tuple[Tensor, int]:
    """Trident: ProxyCLIP's block over the VFM with one mean for all the windows of an image.

    ``crops`` are all the windows of one image. CLIP's values are resized to
    the VFM's grid and mixed by :func:`cass.methods.proxy_attention` with one
    mean over all the windows (``mean_dims=(-3, -2, -1)``);
    the out-projection follows, no residual, no feed-forward network, and
    neither ``ln_post`` nor ``proj``: the pipeline splices these features into the
    image's grid first (``merge='features'``).

    Returns:
        (K, D, h, w) features on an integer multiple ``ratio`` of CLIP's grid
        (:func:`cass.trident.crop_grid_scale`), and ``ratio``.
    """
    visual = ctx.clip.visual
    cfg = ctx.config.method
    block = visual.transformer.resblocks[-1]
    with stage("clip"), ctx.tf32("clip"):
        _, _, v = methods.block_qkv(block, tokens)
    with stage("dino"), ctx.tf32("vfm"):
        images = plain_dino_images(crops, replace(ctx.vfm_spec, fixed_size=None))  # the crop as it is
        vfm_feats, vfm_grid = methods.vfm_last_features(ctx.vfm, images)
    with stage("spectral"):
        attn = methods.proxy_attention(vfm_feats, cfg.proxy_beta, cfg.proxy_gamma, mean_dims=(-3, -2, -1))
    with stage("clip"), ctx.tf32("clip"):
        values = methods.values_on_grid(v[:, :, 1:], grid, vfm_grid)
        x = block.attn.out_proj(methods.attend(attn[:, None], values).transpose(1, 2).flatten(2))  # (K, M, D)
        x = x.transpose(1, 2).reshape(len(crops), -1, *vfm_grid)
        return trident.crop_grid_scale(x, grid)
