"""The precisions of the towers as torch dtypes, and TF32 products on CUDA for the span of a block.

Shared by the model (CLIP, the VFM) and SAM's helper (:mod:`cass.sam_guide`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# what model.to(dtype), .float(), .half() and .bfloat16() set as the precision of every tower
DTYPE_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """TF32 matrix products and convolutions on CUDA inside the block, restored after."""
    if not enabled:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
