"""Random-weight SAM2 through the package's own builder, and release-format files of it.

For tests, benchmarks and offline trials. ``tiny=True`` shrinks the model by
hydra overrides (:data:`TINY_SAM2_OVERRIDES`: a 5-block Hiera of width 8,
256 -> 16 channels in the neck and mask decoder) at SAM2's fixed 1024-px
input; a :class:`cass.masks.sam2_masks.SAM2Masks` with
``overrides=TINY_SAM2_OVERRIDES`` loads such a file.

Random weights predict mask logits near zero and IoUs near 0.5, so that
CorrCLIP's thresholds keep no mask; :func:`lively_sam2` rescales the mask
decoder's last layers (``lively=True``, the default) so that on a photo the
masks cover varied parts of the image and the predicted IoUs and stability
scores fall on both sides of the release's thresholds.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .sam2_masks import build_sam2_model

_D = 16  # the tiny model's neck / decoder width (SAM2's is 256); its mask decoder upscales to _D // 8 channels
TINY_SAM2_OVERRIDES: tuple[str, ...] = (
    # Hiera: stages of 1, 1, 2, 1 blocks, width 8 (doubling per stage), the 4th block global (not a pooling one)
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    f"++model.image_encoder.neck.d_model={_D}",
    f"++model.image_encoder.neck.position_encoding.num_pos_feats={_D}",
    # the video memory (unused on images) shrunk to match
    f"++model.memory_attention.d_model={_D}",
    "++model.memory_attention.num_layers=1",
    f"++model.memory_attention.layer.d_model={_D}",
    "++model.memory_attention.layer.dim_feedforward=32",
    f"++model.memory_attention.layer.self_attention.embedding_dim={_D}",
    f"++model.memory_attention.layer.cross_attention.embedding_dim={_D}",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16",
    f"++model.memory_encoder.in_dim={_D}",
    f"++model.memory_encoder.mask_downsampler.embed_dim={_D}",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    f"++model.memory_encoder.fuser.layer.dim={_D}",
)


def calibration_photo(height: int = 96, width: int = 128) -> np.ndarray:
    """scikit-image's astronaut, downscaled: (height, width, 3) uint8 RGB."""
    from PIL import Image
    from skimage import data

    return np.array(Image.fromarray(data.astronaut()).resize((width, height), Image.BILINEAR))


@torch.no_grad()
def lively_sam2(sam2: nn.Module, rgb: np.ndarray | None = None, points_per_side: int = 4, logit_std: float = 3.0,
                iou_center: float = 0.5, iou_spread: float = 0.1) -> nn.Module:
    """Rescale random SAM2 weights in place so that its automatic masks are varied and some pass
    CorrCLIP's thresholds (random weights give none).

    One image encoding and one decoder pass on a ``points_per_side``² grid
    of point prompts over ``rgb`` (default :func:`calibration_photo`). Then,
    per mask token, the last layer of its hypernetwork MLP gets a bias shift
    along the mean upscaled embedding that centres its mask logits at 0, and
    a scale that makes their standard deviation ``logit_std``; the last layer
    of the IoU head, per token, a scale and bias that put the predicted IoUs'
    median at ``iou_center`` and their quartiles ``iou_spread`` away. The
    image encoder and the prompt encoder are unchanged.
    """
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.utils.amg import build_all_layer_point_grids

    rgb = calibration_photo() if rgb is None else rgb
    decoder = sam2.sam_mask_decoder
    seen: dict[str, object] = {"hyper": {}}
    hooks = [decoder.output_upscaling[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("up", out)),
             decoder.iou_prediction_head.layers[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("iou", out))]
    for i, mlp in enumerate(decoder.output_hypernetworks_mlps):
        hooks.append(mlp.register_forward_hook(lambda m, a, out, i=i: seen["hyper"].__setitem__(i, out)))
    try:
        predictor = SAM2ImagePredictor(sam2.eval())
        predictor.set_image(np.ascontiguousarray(rgb))
        h, w = rgb.shape[:2]
        points = torch.as_tensor(build_all_layer_point_grids(points_per_side, 0, 1)[0] * np.array([w, h]),
                                 dtype=torch.float32, device=predictor.device)
        coords = predictor._transforms.transform_coords(points, normalize=True, orig_hw=(h, w))
        predictor._predict(coords[:, None], torch.ones(len(coords), 1, dtype=torch.int, device=coords.device),
                           multimask_output=False, return_logits=True)
    finally:
        for hook in hooks:
            hook.remove()
    up = seen["up"].float()  # (P, C, 256, 256): the upscaled embedding every token's hypernetwork dots with
    mean_up = up.mean(dim=(0, 2, 3))
    for i, mlp in enumerate(decoder.output_hypernetworks_mlps):
        last = mlp.layers[-1]
        hyper = seen["hyper"][i].float()  # (P, C)
        logits = torch.einsum("pc,pchw->phw", hyper, up)
        shift = -logits.mean() * mean_up / mean_up.dot(mean_up)  # a bias change adds shift . up(x) to the logits
        logits = logits + torch.einsum("c,pchw->phw", shift, up)
        scale = logit_std / logits.std().clamp_min(1e-12)
        last.bias.add_(shift.to(last.bias.dtype)).mul_(scale)
        last.weight.mul_(scale)
    raw = seen["iou"].float()  # (P, tokens), before the sigmoid
    last = decoder.iou_prediction_head.layers[-1]
    center = math.log(iou_center / (1 - iou_center))
    half = math.log((iou_center + iou_spread) / (1 - iou_center - iou_spread)) - center
    for token in range(raw.shape[1]):
        low, mid, high = torch.quantile(raw[:, token], torch.tensor([0.25, 0.5, 0.75])).tolist()
        scale = 2 * half / max(high - low, 1e-12)
        last.weight[token].mul_(scale)
        last.bias[token] = scale * (last.bias[token] - mid) + center
    return sam2


def random_sam2(model: str = "sam2_hiera_tiny", tiny: bool = False, seed: int = 0, lively: bool = True) -> nn.Module:
    """SAM2 ``model`` with random weights (``tiny``: shrunk by :data:`TINY_SAM2_OVERRIDES`;
    ``lively``: rescaled by :func:`lively_sam2`); CPU, float32, eval."""
    torch.manual_seed(seed)
    sam2 = build_sam2_model(model, TINY_SAM2_OVERRIDES if tiny else ())
    if lively:
        lively_sam2(sam2)
    return sam2.eval()


def write_random_sam2(path: str | os.PathLike, model: str = "sam2_hiera_tiny", tiny: bool = False, seed: int = 0,
                      lively: bool = True) -> Path:
    """A random SAM2 in Meta's release format: ``{"model": float32 state dict}`` (``sam2_hiera_*.pt``).

    A ``tiny`` file loads with ``SAM2Masks(model=model, checkpoint=path, overrides=TINY_SAM2_OVERRIDES)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": random_sam2(model, tiny, seed, lively).state_dict()}, path)
    return path
