"""CLIP (Radford et al., ICML 2021): the unmodified last block, ``softmax(s Q K^T)``, residual and FFN kept."""
from __future__ import annotations

from torch import Tensor

from ..benchmarks import benchmark_row
from .common import vanilla_attention
from .registry import Method, register_method
from .token_mixing import REFERENCE_RERUN, token_mixing_block


def attention(ctx, q: Tensor, k: Tensor, grid: tuple[int, int]) -> Tensor:
    """CLIP: the unmodified block, ``softmax(s Q K^T)``."""
    return vanilla_attention(q, k)


ENTRY = register_method(Method(
    name="clip", title="CLIP (Radford et al., ICML 2021)", last_block=token_mixing_block(attention),
    residual=True, protocol=REFERENCE_RERUN,
    published=benchmark_row(18.8, 9.9, 8.1, 49.4, 11.1, 5.7, 6.5, 3.1),
    source="SCLIP paper (Wang et al., ECCV 2024), Table 1, its re-run of CLIP"))
