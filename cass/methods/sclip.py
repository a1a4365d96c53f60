"""SCLIP (Wang et al., ECCV 2024): correlative self-attention ``softmax(s Q Q^T) + softmax(s K K^T)``."""
from __future__ import annotations

from torch import Tensor

from ..benchmarks import benchmark_row, benchmark_table
from .common import correlative_attention
from .registry import Method, register_method
from .token_mixing import SCLIP_BASE, SCLIP_SIZES, token_mixing_block


def attention(ctx, q: Tensor, k: Tensor, grid: tuple[int, int]) -> Tensor:
    """SCLIP: correlative self-attention ``softmax(s Q Q^T) + softmax(s K K^T)``."""
    return correlative_attention(q, k)


ENTRY = register_method(Method(
    name="sclip", title="SCLIP (Wang et al., ECCV 2024)", last_block=token_mixing_block(attention),
    residual=True,
    protocol=benchmark_table(SCLIP_BASE, voc21=dict(logit_scale=65, prob_thd=0.1, area_thd=0.1),
                             context60=dict(logit_scale=50, prob_thd=0.1),
                             coco_object=dict(logit_scale=50, prob_thd=0.1), **SCLIP_SIZES),
    published=benchmark_row(59.1, 30.4, 30.5, 80.4, 34.2, 22.4, 32.2, 16.1),
    source="SCLIP paper (Wang et al., ECCV 2024), Table 1"))
