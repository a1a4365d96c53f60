"""SAM's image encoder up to its last global block: that block's attention and values (Trident's input).

Trident (:func:`cass.trident.sam_correlation`) weighs CLIP's aggregation by
the softmax attention of the last global-attention block of SAM's
``ImageEncoderViT`` and that block's values. They are recomputed here from
the block's own modules, as segment-anything's ``Attention.forward`` does
(decomposed relative positions included); no forward is patched and nothing
of the encoder changes.
"""
from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import ImageEncoderViT, add_decomposed_rel_pos
from torch import Tensor


def last_global_index(image_encoder: ImageEncoderViT) -> int:
    """Index of the last global-attention block (the last of the builder's ``global_attn_indexes``).

    The encoder does not keep ``global_attn_indexes``; its global blocks are
    the ones built with ``window_size`` 0.
    """
    indexes = [i for i, block in enumerate(image_encoder.blocks) if block.window_size == 0]
    if not indexes:
        raise ValueError("the SAM image encoder has no global-attention block")
    return indexes[-1]


@torch.no_grad()
def last_global_attention(image_encoder: ImageEncoderViT, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Softmax attention and values of the last global block of SAM's image encoder.

    Runs the patch embedding, the absolute positions and the blocks before the
    last global one, then recomputes that block's ``qkv`` from
    ``block.norm1(x)`` and its logits ``(q * scale) k^T`` plus the decomposed
    relative positions (``add_decomposed_rel_pos``), as ``Attention.forward``.
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
    attention = block.attn
    batch, h, w, _ = x.shape
    heads = attention.num_heads
    # as Attention.forward: (3, B * heads, N, d)
    qkv = attention.qkv(block.norm1(x)).reshape(batch, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * heads, h * w, -1).unbind(0)
    logits = (q * attention.scale) @ k.transpose(-2, -1)
    if attention.use_rel_pos:
        logits = add_decomposed_rel_pos(logits, q, attention.rel_pos_h, attention.rel_pos_w, (h, w), (h, w))
    attn = logits.softmax(dim=-1)
    n = h * w
    return attn.view(batch, heads, n, n), v.view(batch, heads, n, -1), (h, w)
