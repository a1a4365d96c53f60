"""MaskCLIP (Zhou et al., ECCV 2022): no token mixing in the last block (identity attention).

Every token keeps its own value; the residual and the FFN are kept as in its
ViT backbone (ClearCLIP's re-implementation drops them: ``residual=False``).
"""
from __future__ import annotations

from torch import Tensor

from ..benchmarks import benchmark_row
from .registry import Method, register_method
from .token_mixing import REFERENCE_RERUN, token_mixing_block


def attention(ctx, q: Tensor, k: Tensor, grid: tuple[int, int]) -> None:
    """MaskCLIP: no mixing (identity attention), each token keeps its own value."""
    return None


ENTRY = register_method(Method(
    name="maskclip", title="MaskCLIP (Zhou et al., ECCV 2022)", last_block=token_mixing_block(attention),
    residual=True, protocol=REFERENCE_RERUN,
    published=benchmark_row(43.4, 23.2, 20.6, 74.9, 26.4, 16.7, 24.9, 11.9),
    source="SCLIP paper (Wang et al., ECCV 2024), Table 1, its re-run of MaskCLIP"))
