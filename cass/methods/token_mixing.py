"""The CLIP-only baselines' shared last block: an attention over CLS + patches, then the shared tail.

CLIP, MaskCLIP, SCLIP, ClearCLIP and NACLIP differ only in the attention of
CLIP's last block (their references run it on all tokens, CLS included) and
in whether the block keeps its residual and feed-forward network
(``residual``). :func:`token_mixing_block` turns such an attention into the
method's last block; each method's module holds its attention and entry.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..benchmarks import benchmark_table
from ..stages import stage
from .common import attend, block_qkv, last_block_features

Grid = tuple[int, int]

# SCLIP's configs: 224 windows, stride 112, short side 336 (448 COCO-Stuff, 560 Cityscapes), logit scale 40.
SCLIP_BASE = dict(slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0, short_side=336)
SCLIP_SIZES = dict(coco_stuff164k=dict(short_side=448), city_scapes=dict(short_side=560))
# CLIP and MaskCLIP as SCLIP re-ran them (its Table 1): SCLIP's windows and sizes are assumed,
# with the usual background threshold and without SCLIP's own tuning.
REFERENCE_RERUN = benchmark_table(SCLIP_BASE, voc21=dict(prob_thd=0.1), context60=dict(prob_thd=0.1),
                                  coco_object=dict(prob_thd=0.1), **SCLIP_SIZES)


def token_mixing_block(attention: Callable) -> Callable:
    """The last block with ``attention(ctx, q, k, grid)`` ((B, H, T, T), or None for the identity)
    over CLS + patches, then the shared tail with the configured residual (``residual``)."""
    def block(ctx, crops: Tensor, tokens: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        visual = ctx.clip.visual
        with stage("clip"), ctx.tf32("clip"):
            q, k, v = block_qkv(visual.transformer.resblocks[-1], tokens)
        with stage("spectral"):
            attn = attention(ctx, q, k, grid)
        residual = tokens if ctx.config.method.keeps_residual else None
        with stage("clip"), ctx.tf32("clip"):
            mixed = v if attn is None else attend(attn, v)
            return last_block_features(visual, mixed, residual, 1), grid

    block.__doc__ = attention.__doc__
    return block
