"""A toy method registered from outside the ``cass`` package (``tests/test_toy_method.py``).

The worked example of ``docs/architecture.md`` ("Adding a method"): key-key
attention ``softmax(s K K^T)`` over CLS + patches in CLIP's last block, without
NACLIP's neighbourhood bias and without the residual and feed-forward network,
then ``out_proj``, ``ln_post`` and ``proj``. Importing this module registers it
as :data:`NAME`; nothing in ``cass/`` names it.
"""
from __future__ import annotations

from cass.methods import common
from cass.methods import Method, register_method

NAME = "toy_keykey"


def key_key_features(ctx, crops, tokens, grid):
    """softmax(s K K^T) over CLS + patches, then out_proj, ln_post, proj (no residual)."""
    visual = ctx.clip.visual
    q, k, v = common.block_qkv(visual.transformer.resblocks[-1], tokens)
    attn = common.self_self_attention(k)
    return common.last_block_features(visual, common.attend(attn, v), None, 1), grid


METHOD = register_method(Method(name=NAME, title="key-key attention (toy, registered outside cass)",
                                last_block=f"{__name__}:key_key_features"))
