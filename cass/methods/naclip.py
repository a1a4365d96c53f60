"""NACLIP (Hajimiri et al., WACV 2025): ``softmax(s K K^T + G)``, no residual, no FFN.

``G`` is the Gaussian neighbourhood bias (sigma ``gaussian_std``), zero for
the CLS row and column.
"""
from __future__ import annotations

from torch import Tensor

from .. import spectral
from ..benchmarks import benchmark_row, benchmark_table
from .common import self_self_attention, with_prefix
from .registry import Method, register_method
from .token_mixing import token_mixing_block


def attention(ctx, q: Tensor, k: Tensor, grid: tuple[int, int]) -> Tensor:
    """NACLIP: ``softmax(s K K^T + G)``, the Gaussian bias free for CLS."""
    bias = spectral.gaussian_bias(grid, ctx.config.spectral.gaussian_std, device=k.device)
    return self_self_attention(k, with_prefix(bias))


ENTRY = register_method(Method(
    name="naclip", title="NACLIP (Hajimiri et al., WACV 2025)", last_block=token_mixing_block(attention),
    residual=False,
    # SCLIP's windows, whole image on VOC21/VOC20, sigma 5, no PAMR for the compared numbers
    protocol=benchmark_table(dict(slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0,
                                  gaussian_std=5.0, short_side=336),
                             voc21=dict(slide_crop=0, prob_thd=0.1), voc20=dict(slide_crop=0),
                             context60=dict(prob_thd=0.1), coco_object=dict(prob_thd=0.1),
                             city_scapes=dict(short_side=560)),
    published=benchmark_row(58.9, 32.2, 33.2, 79.7, 35.2, 23.3, 35.5, 17.4),
    source="NACLIP paper (Hajimiri et al., WACV 2025), main table, without post-processing"))
