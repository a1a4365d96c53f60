"""Random-weight CLIP and DINO through the real builders, and release-format files of them.

For tests, benchmarks and offline trials: random weights cost the same time as
real ones (only the labels depend on the weights). ``tiny=True`` gives the
test suite's small models (2 layers, width 128, 2 heads of 64).

    python -m cass.random_weights DIR          # DIR/ViT-B-16.pt and DIR/dino_vitbase8_pretrain.pth
    python -m cass.random_weights DIR --tiny   # the tiny test models instead
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from .weights import build_vfm

TINY_VFM = dict(embed_dim=128, depth=2, num_heads=2)


def random_clip(tiny: bool = False, seed: int = 0) -> CLIP:
    """open_clip CLIP ViT-B/16 (OpenAI layout, QuickGELU) with random weights; float32, eval."""
    torch.manual_seed(seed)
    if tiny:
        model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=128, patch_size=16, image_size=224),
                     text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                     quick_gelu=True)
    else:
        model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    return model.eval()


def random_dino(tiny: bool = False, seed: int = 0) -> nn.Module:
    """timm DINO ViT-B/8 with random weights (tokens given content like trained ones); eval."""
    torch.manual_seed(seed)
    model = build_vfm("dino_vitb8", **(TINY_VFM if tiny else {}))
    with torch.no_grad():  # timm zero-inits the tokens
        model.cls_token.normal_(std=0.5)
        model.pos_embed.normal_(std=0.5)
    return model


def write_clip(path: str | Path, tiny: bool = False, seed: int = 0) -> Path:
    """An OpenAI-format CLIP state dict, float16 like the released weights."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in random_clip(tiny, seed).state_dict().items()}
    torch.save(state, path)
    return Path(path)


def write_dino(path: str | Path, tiny: bool = False, seed: int = 0, full: bool = False) -> Path:
    """DINO's release layout: a plain state dict, or (``full``) a training
    checkpoint with ``teacher``/``student`` entries, prefixes and a head."""
    state = random_dino(tiny, seed).state_dict()
    if full:
        teacher = {f"backbone.{k}": v for k, v in state.items()}
        width = state["cls_token"].shape[-1]
        teacher["head.mlp.0.weight"] = torch.zeros(4, width)
        state = {"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()}, "epoch": 3}
    torch.save(state, path)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cass.random_weights",
                                     description="Write random CLIP ViT-B/16 and DINO ViT-B/8 weights in the "
                                                 "release formats (for offline trials and benchmarks).")
    parser.add_argument("out_dir", type=Path, help="folder for ViT-B-16.pt and dino_vitbase8_pretrain.pth")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in (write_clip(args.out_dir / "ViT-B-16.pt", args.tiny, args.seed),
                 write_dino(args.out_dir / "dino_vitbase8_pretrain.pth", args.tiny, args.seed)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
