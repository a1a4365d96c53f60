"""SAM's image encoder up to its last global block: that block's attention and values (Trident's input).

Trident (:func:`cass.sam_math.sam_correlation`) weighs CLIP's aggregation by
the softmax attention of the last global-attention block of SAM's
``ImageEncoderViT`` and that block's values. They are recomputed here from
the block's own modules, as segment-anything's ``Attention.forward`` does
(decomposed relative positions included); no forward is patched and nothing
of the encoder changes.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from segment_anything.modeling.image_encoder import ImageEncoderViT, add_decomposed_rel_pos
from torch import Tensor, nn


def last_global_index(image_encoder: ImageEncoderViT) -> int:
    """Index of the last global-attention block (the last of the builder's ``global_attn_indexes``).

    The encoder does not keep ``global_attn_indexes``; its global blocks are
    the ones built with ``window_size`` 0.
    """
    indexes = [i for i, block in enumerate(image_encoder.blocks) if block.window_size == 0]
    if not indexes:
        raise ValueError("the SAM image encoder has no global-attention block")
    return indexes[-1]


def block_attention(attention: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax attention and values of a global SAM ``Attention`` on its input, as its forward computes them.

    ``qkv(x)``, logits ``(q * scale) k^T`` plus the decomposed relative
    positions (``add_decomposed_rel_pos``), softmax.

    Args:
        attention: the block's ``attn`` module.
        x: (B, h, w, C) its input (the block's ``norm1`` output).

    Returns:
        (B, heads, N, N) attention, rows summing to 1, and (B, heads, N, d) values, ``N = h w`` row-major.
    """
    batch, h, w, _ = x.shape
    heads = attention.num_heads
    # as Attention.forward: (3, B * heads, N, d)
    qkv = attention.qkv(x).reshape(batch, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * heads, h * w, -1).unbind(0)
    logits = (q * attention.scale) @ k.transpose(-2, -1)
    if attention.use_rel_pos:
        logits = add_decomposed_rel_pos(logits, q, attention.rel_pos_h, attention.rel_pos_w, (h, w), (h, w))
    n = h * w
    return logits.softmax(dim=-1).view(batch, heads, n, n), v.view(batch, heads, n, -1)


@contextlib.contextmanager
def last_global_input(image_encoder: ImageEncoderViT) -> Iterator[dict]:
    """Record the input of the last global block's attention during the encoder's own forward.

    A forward pre-hook on that ``attn`` module, removed when the block exits
    (also on error): inside, every forward of the encoder stores the module's
    input under ``"x"`` of the yielded dict. :func:`block_attention` turns it
    into the attention; this way SAM's predictor computes its image
    embedding and Trident's attention in one encoder pass.
    """
    seen: dict = {}
    attention = image_encoder.blocks[last_global_index(image_encoder)].attn

    def keep(module: nn.Module, args: tuple) -> None:
        seen["x"] = args[0]

    handle = attention.register_forward_pre_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def last_global_attention(image_encoder: ImageEncoderViT, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Softmax attention and values of the last global block of SAM's image encoder.

    Runs the patch embedding, the absolute positions and the blocks before the
    last global one, then :func:`block_attention` on ``block.norm1(x)``.
    Stops there: neither the block's output, the later blocks nor the neck
    are computed.

    Args:
        images: (B, 3, S, S) inputs already preprocessed as ``Sam.preprocess``
            does (normalised, padded to the encoder's ``img_size``, 1024).

    Returns:
        attn: (B, heads, N, N) softmax attention, rows sum to 1, N = h * w.
        values: (B, heads, N, d) the block's values.
        grid: (h, w) token grid (64 x 64 for 1024 px), tokens in row-major order.
    """
    size = image_encoder.img_size
    if images.dim() != 4 or tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"SAM's image encoder takes (B, 3, {size}, {size}) preprocessed images, "
                         f"got {tuple(images.shape)}")
    last = last_global_index(image_encoder)
    x = image_encoder.patch_embed(images)  # (B, h, w, C)
    if image_encoder.pos_embed is not None:
        x = x + image_encoder.pos_embed
    for block in image_encoder.blocks[:last]:
        x = block(x)
    block = image_encoder.blocks[last]
    attn, values = block_attention(block.attn, block.norm1(x))
    return attn, values, tuple(x.shape[1:3])
