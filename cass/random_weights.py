"""Random-weight CLIP, VFMs and SAM through the real builders, and release-format files of them.

For tests, benchmarks and offline trials: random weights cost the same time as
real ones (only the labels depend on the weights). ``tiny=True`` gives the
test suite's small models (2 layers, width 128, 2 heads of 64) with each
backbone's patch size, image size, prefix tokens and positional scheme; for
SAM (:data:`TINY_SAM`) a 4-block image encoder, windowed and global blocks
alternating, at SAM's 1024-px input.

    python -m cass.random_weights DIR          # DIR/ViT-B-16.pt and DIR/dino_vitbase8_pretrain.pth
    python -m cass.random_weights DIR --tiny   # the tiny test models instead
    python -m cass.random_weights DIR --clip ViT-L/14 --vfm dinov2_vitl14 dinov3_vitl16
    python -m cass.random_weights DIR --tiny --sam vit_b   # also DIR/sam_vit_b_01ec64.pth
    python -m cass.random_weights DIR --clip ViT-B-16-quickgelu/metaclip_fullcc   # DIR/b16_fullcc2.5b.pt
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from .backbones import CLIP_SPECS, SAM_SPECS, VFM_SPECS
from .weights import build_sam, build_vfm

TINY_VFM = dict(embed_dim=128, depth=2, num_heads=2)
# SAM's image encoders shrunk, widths growing b < l < h as the real ones (so one kind's file does
# not fit another's model); heads of 32 channels; blocks 1 and 3 global, 0 and 2 windowed
TINY_SAM = {kind: dict(embed_dim=32 * heads, depth=4, num_heads=heads, global_attn_indexes=(1, 3))
            for kind, heads in (("vit_b", 2), ("vit_l", 3), ("vit_h", 4))}


def random_clip(tiny: bool = False, seed: int = 0, arch: str = "ViT-B/16", layers: int = 2) -> CLIP:
    """open_clip CLIP (OpenAI layout, QuickGELU) of ``arch`` (a key of :data:`CLIP_SPECS`) with random
    weights; float32, eval.

    ``tiny``: ``layers`` layers (CorrCLIP's spatial branch needs 5 or more) of
    width 128 (2 heads) with the architecture's patch and image size; text tower
    width 64, 1 layer.
    """
    torch.manual_seed(seed)
    name = CLIP_SPECS[arch].open_clip_name
    if tiny:
        vision = open_clip.get_model_config(name)["vision_cfg"]
        model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=layers, width=128, patch_size=vision["patch_size"],
                                                            image_size=vision["image_size"]),
                     text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                     quick_gelu=True)
    else:
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True)
    return model.eval()


def random_dino(tiny: bool = False, seed: int = 0, vfm: str = "dino_vitb8") -> nn.Module:
    """timm model of ``vfm`` with random weights, given content like trained ones; eval.

    timm zero-initialises the tokens and biases and starts layer scales at
    1e-5, which would make the blocks near identities: tokens, attention
    biases and layer scales get random values.
    """
    torch.manual_seed(seed)
    model = build_vfm(vfm, **(TINY_VFM if tiny else {}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in ("cls_token", "reg_token", "pos_embed"):
                param.normal_(std=0.5)
            elif name.endswith(("q_bias", "v_bias")):
                param.normal_(std=0.1)
            elif name.endswith(("ls1.gamma", "ls2.gamma", "gamma_1", "gamma_2")):
                param.uniform_(0.05, 0.5)
    return model


def random_sam(kind: str = "vit_b", tiny: bool = False, seed: int = 0) -> nn.Module:
    """segment-anything ``Sam`` of ``kind`` with random weights (``tiny``: :data:`TINY_SAM`); eval.

    SAM zero-initialises the positional embedding and the relative positions;
    they get random values so that both matter, as in trained weights.
    """
    torch.manual_seed(seed)
    model = build_sam(kind, **(TINY_SAM[kind] if tiny else {}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "image_encoder.pos_embed":
                param.normal_(std=0.5)
            elif name.endswith(("attn.rel_pos_h", "attn.rel_pos_w")):
                param.normal_(std=0.2)
    return model


def lively_iou_head(sam: nn.Module, rgb: np.ndarray, center: float = 0.8, spread: float = 0.05, prompts: int = 64,
                    seed: int = 0) -> None:
    """Make random SAM weights predict IoUs around ``center``, so that a threshold there keeps some
    masks and rejects others (random weights predict IoUs near 0, below any sensible threshold).

    The last layer of the IoU head is rescaled and its bias set, in place, so that on ``prompts``
    random box + point + mask prompts over ``rgb`` the predicted IoUs have median ``center`` and
    half their interquartile range ``spread``. Only that layer changes: SAM's masks are those of
    the random weights.
    """
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam.eval())
    predictor.set_image(np.ascontiguousarray(rgb))
    h, w = rgb.shape[:2]
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(prompts, 2, 2, generator=g) * torch.tensor([w, h])
    boxes = torch.cat([corners.amin(1), corners.amax(1)], dim=1)
    points = boxes[:, None, :2] + torch.rand(prompts, 1, 2, generator=g) * (boxes[:, None, 2:] - boxes[:, None, :2])
    mask = 0.005 * torch.rand(1, 256, 256, generator=g)  # unbatched, as Trident passes its mask prompt
    last = sam.mask_decoder.iou_prediction_head.layers[-1]
    with torch.no_grad():
        last.bias.zero_()
        raw = predictor.predict_torch(predictor.transform.apply_coords_torch(points, (h, w)),
                                      torch.ones(prompts, 1), predictor.transform.apply_boxes_torch(boxes, (h, w)),
                                      mask, multimask_output=False)[1].reshape(-1)
        low, mid, high = torch.quantile(raw, torch.tensor([0.25, 0.5, 0.75])).tolist()
        scale = 2 * spread / (high - low)
        last.weight.mul_(scale)
        last.bias.fill_(center - scale * mid)


def write_sam(path: str | Path, kind: str = "vit_b", tiny: bool = False, seed: int = 0) -> Path:
    """SAM's release layout: a plain float32 state dict of ``Sam``."""
    torch.save(random_sam(kind, tiny, seed).state_dict(), path)
    return Path(path)


def write_clip(path: str | Path, tiny: bool = False, seed: int = 0, arch: str = "ViT-B/16", layers: int = 2) -> Path:
    """``arch``'s release layout (:attr:`cass.backbones.CLIPSpec.release_format`) of :func:`random_clip`.

    * ``'openai'``, ``'open_clip'``: a plain state dict in OpenAI's key
      layout (OpenCLIP's shares it), float16 like OpenAI's released weights.
    * ``'metaclip'``: Meta's checkpoint, ``{'state_dict': weights}``, the
      float32 weights in OpenAI's key layout without a wrapper prefix (what
      MetaCLIP's ``load_checkpoint`` and open_clip's ``load_state_dict`` read).
    """
    state = random_clip(tiny, seed, arch, layers).state_dict()
    if CLIP_SPECS[arch].release_format == "metaclip":
        torch.save({"state_dict": state}, path)
        return Path(path)
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, path)
    return Path(path)


def release_state_dict(model: nn.Module, vfm: str, seed: int = 0) -> dict:
    """A timm model's weights in ``vfm``'s release layout (the inverse of timm's filters).

    * DINO: timm's keys are DINO's.
    * DINOv2: ``mask_token``; with registers ``register_tokens`` and a CLS row
      in ``pos_embed`` (timm folds it into ``cls_token``; a random split).
    * DINOv3 (Meta's ``DinoVisionTransformer``): ``storage_tokens``, ``ls1.gamma``,
      one ``qkv.bias`` with a ``bias_mask`` zeroing its k part (random values
      there, which loading must drop), ``rope_embed.periods`` rounded to
      bfloat16 as in the release, ``mask_token``.
    """
    state = dict(model.state_dict())
    width = state["cls_token"].shape[-1]
    fmt = VFM_SPECS[vfm].release_format
    generator = torch.Generator().manual_seed(seed + 1)
    if fmt == "dinov2":
        if "reg_token" in state:
            cls_pos = torch.randn(1, 1, width, generator=generator)
            state["register_tokens"] = state.pop("reg_token")
            state["cls_token"] = state["cls_token"] - cls_pos
            state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        state["mask_token"] = torch.zeros(1, width)
    elif fmt == "dinov3":
        out = {"cls_token": state.pop("cls_token"), "storage_tokens": state.pop("reg_token"),
               "mask_token": torch.zeros(1, width),
               "rope_embed.periods": model.rope.periods.to(torch.bfloat16).float()}
        for key, value in state.items():
            if key.endswith("attn.q_bias"):
                block = key.removesuffix("q_bias")
                k_bias = torch.randn(value.shape, generator=generator)
                out[block + "qkv.bias"] = torch.cat([value, k_bias, state[block + "v_bias"]])
                out[block + "qkv.bias_mask"] = torch.cat([torch.ones_like(value), torch.zeros_like(value),
                                                          torch.ones_like(value)])
            elif not key.endswith("attn.v_bias"):
                out[key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")] = value
        state = out
    return state


def write_dino(path: str | Path, tiny: bool = False, seed: int = 0, full: bool = False,
               vfm: str = "dino_vitb8") -> Path:
    """``vfm``'s release layout: a plain state dict, or (``full``) a training
    checkpoint with ``teacher``/``student`` entries, prefixes and a head."""
    state = release_state_dict(random_dino(tiny, seed, vfm), vfm, seed)
    if full:
        teacher = {f"backbone.{k}": v for k, v in state.items()}
        width = state["cls_token"].shape[-1]
        teacher["head.mlp.0.weight"] = torch.zeros(4, width)
        state = {"teacher": teacher, "student": {f"module.{k}": v for k, v in teacher.items()}, "epoch": 3}
    torch.save(state, path)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cass.random_weights",
                                     description="Write random CLIP, VFM, SAM and SAM2 weights in their release formats "
                                                 "and file names (for offline trials and benchmarks).")
    parser.add_argument("out_dir", type=Path,
                        help="folder for the files (e.g. ViT-B-16.pt, dino_vitbase8_pretrain.pth)")
    parser.add_argument("--clip", nargs="*", default=["ViT-B/16"], choices=sorted(CLIP_SPECS),
                        help="CLIP architectures (default ViT-B/16)")
    parser.add_argument("--vfm", nargs="*", default=["dino_vitb8"], choices=sorted(VFM_SPECS),
                        help="VFMs (default dino_vitb8)")
    parser.add_argument("--sam", nargs="*", default=[], choices=sorted(SAM_SPECS),
                        help="SAM releases, for Trident (default none)")
    parser.add_argument("--sam2", nargs="*", default=[],
                        choices=("sam2_hiera_large", "sam2_hiera_base_plus", "sam2_hiera_small", "sam2_hiera_tiny"),
                        help="SAM2 releases, CorrCLIP's mask generator (default none; needs the sam2 package)")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for arch in args.clip:
        print(write_clip(args.out_dir / CLIP_SPECS[arch].release_file, args.tiny, args.seed, arch))
    for vfm in args.vfm:
        print(write_dino(args.out_dir / VFM_SPECS[vfm].release_file, args.tiny, args.seed, vfm=vfm))
    for kind in args.sam:
        print(write_sam(args.out_dir / SAM_SPECS[kind].release_file, kind, args.tiny, args.seed))
    if args.sam2:
        from .masks.random_sam2 import write_random_sam2  # sam2 is imported only here
        from .masks.sam2_masks import SAM2_MODELS

        for model in args.sam2:
            print(write_random_sam2(args.out_dir / SAM2_MODELS[model].release_file, model, args.tiny, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
