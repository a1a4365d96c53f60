"""ProxyCLIP (Lan et al., ECCV 2024): the VFM's proxy attention over CLIP's values.

The VFM's normalised last-layer patch features ``f`` give one attention for
every head, ``A = softmax(gamma (S - beta mean(S)))`` with ``S = f f^T`` and
negative entries masked out (:func:`cass.methods.common.proxy_attention`),
over CLIP's values resized to the VFM's grid; no residual, no FFN. Trident
(:mod:`cass.methods.trident`) shares :class:`ProxySettings` and
:func:`proxy_mix`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from ..dino_input import plain_dino_images
from ..errors import check
from ..benchmarks import benchmark_row, benchmark_table, class_files, with_settings
from ..stages import stage
from .common import attend, block_qkv, last_block_features, proxy_attention, values_on_grid, vfm_last_features
from .registry import Method, always, register_method

Grid = tuple[int, int]


@dataclass(frozen=True)
class ProxySettings:
    """ProxyCLIP's (and Trident's) attention settings.

    Attributes:
        proxy_beta: similarities below ``beta`` times their mean are masked out (published: 1.2).
        proxy_gamma: the temperature of the attention (published: 3.0).
    """

    proxy_beta: float = 1.2
    proxy_gamma: float = 3.0

    def __post_init__(self) -> None:
        check(self.proxy_beta >= 0, f"proxy_beta must be >= 0, got {self.proxy_beta}")
        check(self.proxy_gamma > 0, f"proxy_gamma must be > 0, got {self.proxy_gamma}")


def proxy_mix(ctx, crops: Tensor, tokens: Tensor, grid: Grid,
              mean_dims: tuple[int, ...] = (-2, -1)) -> tuple[nn.Module, Tensor, Tensor, Grid]:
    """The proxy attention of the crops and CLIP's last-block values on the VFM's grid.

    Returns:
        CLIP's last block, the (B, M, M) attention, the (B, H, M, d) values and the VFM grid.
    """
    block = ctx.clip.visual.transformer.resblocks[-1]
    with stage("clip"), ctx.tf32("clip"):
        _, _, v = block_qkv(block, tokens)
    with stage("dino"), ctx.tf32("vfm"):
        images = plain_dino_images(crops, replace(ctx.vfm_spec, fixed_size=None))  # the crop as it is
        vfm_feats, vfm_grid = vfm_last_features(ctx.vfm, images)
    with stage("spectral"):
        attn = proxy_attention(vfm_feats, ctx.settings.proxy_beta, ctx.settings.proxy_gamma, mean_dims=mean_dims)
    with stage("clip"), ctx.tf32("clip"):
        values = values_on_grid(v[:, :, 1:], grid, vfm_grid)
    return block, attn, values, vfm_grid


def features(ctx, crops: Tensor, tokens: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
    """ProxyCLIP: the VFM's proxy attention over CLIP's values resized to the VFM grid; no residual."""
    _, attn, values, vfm_grid = proxy_mix(ctx, crops, tokens, grid)
    with stage("clip"), ctx.tf32("clip"):
        return last_block_features(ctx.clip.visual, attend(attn, values), None, 0), vfm_grid


ENTRY = register_method(Method(
    name="proxyclip", title="ProxyCLIP (Lan et al., ECCV 2024)", last_block=features, settings=ProxySettings,
    needs_vfm=always, vfm_positions="absolute",
    # 336 windows, stride 112, beta 1.2, gamma 3.0 (the settings' defaults) with DINO ViT-B/8 (its default
    # VFM); its own class files
    protocol=with_settings(benchmark_table(dict(slide_crop=336, slide_stride=112, logit_scale=40, prob_thd=0.0,
                                                area_thd=0.0, vfm="dino_vitb8", short_side=336),
                                           voc21=dict(prob_thd=0.2), context60=dict(prob_thd=0.15),
                                           coco_object=dict(prob_thd=0.25), ade20k=dict(short_side=448),
                                           city_scapes=dict(short_side=448, slide_crop=224)),
                           class_files("proxyclip")),
    published=benchmark_row(None, None, None, None, None, None, None, None),
    source="not found per benchmark (two sources disagree; CASS's Table 1 gives the average, 41.4)"))
