"""CorrCLIP (Zhang et al., ICCV 2025): region masks, region-level correlations, mask voting.

A class-agnostic mask generator cuts the image into regions (SAM2's
automatic masks, mask files, ...: :mod:`cass.masks`). Each window then runs
CLIP's whole trunk itself, with the window's regions:

* the VFM (DINO ViT-B/8) gives ``f``, the L2-normalised sum of its last
  block's queries and keys; regions whose mean ``f`` are close are merged
  (DBSCAN, :func:`cass.regions.merge_regions`), and the last block's
  attention is ``softmax(tau f f^T)`` restricted to each region
  (:func:`cass.regions.region_scope_attention`): "scope" and "value"
  reconstruction;
* a semantic branch: one token per region (a copy of CLS) runs through every
  block, attending to CLS and its region's patches only
  (:func:`cass.regions.region_token_mask`); each pixel takes its region's
  token after the last block;
* a spatial branch: the mean of intermediate blocks' outputs
  (:func:`cass.regions.spatial_layers`) through the same value-only last
  block as the main branch;
* ``ln_post`` of each, ``main + spatial_weight spatial + semantic_weight
  semantic``, ``proj``; query logits on the VFM's grid, resized to the window.

Windows are padded to multiples of ``crop_multiple`` (the release: 56) with
zeros (CLIP's mean colour) and their masks with the label 10000, their
logits cut back and averaged over the windows (:class:`RegionWindows`, this
method's merge step). After the shared post-processing, each region of the
generator's masks takes its majority class (``region_vote``, a step of the
pipeline any method may use: :func:`cass.regions.vote_regions`).

Reference: ``zdk258/CorrCLIP``, ``CorrCLIPv1/corrclip_segmentor.py`` and
``open_clip/transformer.py`` (``VisionTransformer.forward``); its quirks are
kept and documented in :mod:`cass.regions` and ``docs/methods.md``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import clip_vit
from ..errors import ConfigError, check
from ..merges import image_boxes, register_merge_step
from ..benchmarks import benchmark_row, benchmark_table, with_settings
from ..regions import (PAD_LABEL, labels_on_grid, merge_regions, region_scope_attention, region_token_mask,
                       release_pad, spatial_layers)
from ..stages import stage
from ..tower_checks import check_absolute_positions
from ..vfm_keys import last_attention_input
from .registry import Method, always, register_method

# CLIP's and ImageNet's statistics in [0, 1] units, as the release writes them (myutils.UnNormalize, torchvision).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CorrCLIPSettings:
    """CorrCLIP's own settings; defaults are the release's constants.

    Attributes:
        region_eps: DBSCAN's ``eps`` when regions are merged (the release's EPS).
        region_min_samples: DBSCAN's ``min_samples`` (MIN_SAMPLES).
        region_tau: temperature of the region-restricted VFM attention (TAU).
        spatial_weight: weight of the spatial branch (ALPHA).
        semantic_weight: weight of the semantic branch (BETA).
        crop_multiple: windows are padded to multiples of this many pixels (56).
    """

    region_eps: float = 0.2
    region_min_samples: int = 1
    region_tau: float = 4.0
    spatial_weight: float = 1.0
    semantic_weight: float = 0.5
    crop_multiple: int = 56

    def __post_init__(self) -> None:
        check(self.region_eps > 0, f"region_eps must be > 0, got {self.region_eps}")
        check(self.region_min_samples >= 1, f"region_min_samples must be >= 1, got {self.region_min_samples}")
        check(self.region_tau > 0, f"region_tau must be > 0, got {self.region_tau}")
        check(self.crop_multiple >= 1, f"crop_multiple must be >= 1, got {self.crop_multiple}")


# ------------------------------------------------------------------ the towers
@torch.no_grad()
def vfm_query_keys(vfm: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """``q + k`` of the VFM's last block for the patches, L2-normalised (the release's ``dino_feats``).

    The release hooks DINO's last ``qkv`` during ``get_intermediate_layers``;
    the sum runs over all heads' concatenated queries and keys.

    Args:
        vfm: timm ViT with an absolute positional embedding (DINO).
        images: (B, 3, S_h, S_w) ImageNet-normalised, sides multiples of the patch.

    Returns:
        (B, n, C) features and the patch grid.
    """
    check_absolute_positions(vfm, "CorrCLIP's region correlations")
    y, grid, _ = last_attention_input(vfm, images)
    qkv = vfm.blocks[-1].attn.qkv(y)
    b, n, _ = qkv.shape
    q, k, _ = qkv.reshape(b, n, 3, -1).unbind(2)
    return F.normalize((q + k)[:, vfm.num_prefix_tokens:], dim=-1), grid


def dino_images(crops: Tensor) -> Tensor:
    """CLIP-normalised crops -> ImageNet-normalised, as the release (``norm(unnorm(img))``)."""
    clip_mean, clip_std = (crops.new_tensor(v)[:, None, None] for v in (_CLIP_MEAN, _CLIP_STD))
    mean, std = (crops.new_tensor(v)[:, None, None] for v in (_IMAGENET_MEAN, _IMAGENET_STD))
    return (crops * clip_std + clip_mean - mean) / std


def additive_mask(blocked: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean "may not attend" mask as the additive float mask that ``nn.MultiheadAttention`` makes of it.

    open_clip casts any mask to the tokens' dtype before the attention, which
    would turn a boolean mask into 0/1 additions; the release patched that
    cast away. The additive form is what PyTorch computes from a boolean one.
    """
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(blocked, float("-inf"))


@torch.no_grad()
def window_features(ctx, crop: Tensor, labels: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """CorrCLIP's dense features of one window.

    Args:
        ctx: the :class:`~cass.method_context.MethodContext`.
        crop: (3, H, W) CLIP-normalised window, padded.
        labels: (H, W) integer region labels of the window, padded with 10000.

    Returns:
        (n, E) L2-normalised float32 features on the VFM's grid, and that grid.
    """
    settings, visual = ctx.settings, ctx.clip.visual
    blocks = visual.transformer.resblocks
    spatial_at = set(spatial_layers(len(blocks)))
    if not spatial_at:
        raise ConfigError(f"CorrCLIP's spatial branch averages intermediate blocks: a CLIP of {len(blocks)} blocks "
                          "has none (it needs at least 5)")
    with stage("dino"), ctx.tf32("vfm"):
        dtype = ctx.vfm.patch_embed.proj.weight.dtype
        feats, vfm_grid = vfm_query_keys(ctx.vfm, dino_images(crop[None].float()).to(dtype))
        feats = feats[0].float()
    with stage("regions"):
        vfm_labels = labels_on_grid(labels, vfm_grid)
        rule = ctx.config.regions.unsegmented
        vfm_labels = merge_regions(vfm_labels, feats.reshape(*vfm_grid, -1), settings.region_eps,
                                   settings.region_min_samples, rule)
        attn = region_scope_attention(feats, vfm_labels.flatten(), settings.region_tau, rule)
    with stage("clip"), ctx.tf32("clip"):
        x, grid = clip_vit.embed(visual, crop[None])
        regions, blocked = region_token_mask(labels_on_grid(vfm_labels, grid))
        count = len(regions)
        mask = additive_mask(blocked, x.dtype)
        x = torch.cat([x[:, :1].expand(1, count, -1), x], dim=1)  # one copy of CLS per region, then CLS, patches
        spatial = []
        for index, block in enumerate(blocks[:-1]):
            x = block(x, attn_mask=mask)
            if index in spatial_at:
                spatial.append(x[:, count:])
        last = blocks[-1]
        main_spatial = torch.cat([x[:, count:], torch.stack(spatial).mean(0)])  # (2, 1 + N, D)
        dim = last.attn.embed_dim
        values = F.linear(last.ln_1(main_spatial), last.attn.in_proj_weight[2 * dim:],
                          last.attn.in_proj_bias[2 * dim:])[:, 1:]
        values = values.transpose(1, 2).unflatten(2, grid)
        values = F.interpolate(values, size=vfm_grid, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        main_spatial = last.attn.out_proj(attn.to(values.dtype) @ values)  # (2, n, D)
        tokens = last(x, attn_mask=mask)[0, :count]  # (R, D)
        spread = F.interpolate(regions.reshape(count, 1, *grid).to(tokens.dtype), size=vfm_grid, mode="nearest")
        semantic = spread.flatten(1).T @ tokens  # (n, D): each pixel its region's token
        main, side, sem = visual.ln_post(torch.cat([main_spatial, semantic[None]]))
        x = main + side * settings.spatial_weight + sem * settings.semantic_weight
        return F.normalize((x @ visual.proj).float(), dim=-1), vfm_grid


# ------------------------------------------------------------------ windows -> image
class RegionWindows:
    """CorrCLIP's merge step: each window with its regions through the towers, logits averaged.

    One window at a time (the release's batch of one), padded to multiples of
    ``crop_multiple``; the windows are mmseg's sliding windows, or the whole
    image with ``slide_crop=0``.
    """

    @torch.no_grad()
    def maps(self, model, images: Sequence[Tensor], regions: Sequence[Tensor] | None = None) -> list[Tensor]:
        """(3, H_i, W_i) images and (H_i, W_i) region labels -> (Q, H_i, W_i) float32 query logits."""
        if regions is None:
            raise ValueError("CorrCLIP needs region masks: give them, or configure a mask generator")
        ctx = model.method_context()
        text_feats = model.text_state()[0]
        multiple = ctx.settings.crop_multiple
        out = []
        for image, labels in zip(images, regions):
            height, width = image.shape[-2:]
            total = image.new_zeros(len(text_feats), height, width, dtype=torch.float32)
            count = image.new_zeros(1, height, width, dtype=torch.float32)
            for y1, x1, y2, x2 in image_boxes(height, width, model.config):
                crop, crop_labels = image[:, y1:y2, x1:x2], labels[y1:y2, x1:x2]
                h, w = crop.shape[-2:]
                pad = release_pad(h, w, multiple)
                if any(pad):
                    crop = F.pad(crop, pad)
                    crop_labels = F.pad(crop_labels, pad, value=PAD_LABEL)
                feats, grid = window_features(ctx, crop, crop_labels)
                with stage("text"):
                    logits = (feats @ text_feats.T).T.reshape(1, -1, *grid)
                with stage("post"):
                    logits = F.interpolate(logits, size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]
                    total[:, y1:y2, x1:x2] += logits[:, pad[2]:pad[2] + h, pad[0]:pad[0] + w]
                    count[:, y1:y2, x1:x2] += 1
            out.append(total / count)
        return out

    def logits(self, model, maps: Tensor) -> Tensor:
        """The maps are the logits."""
        return maps


register_merge_step("regions", RegionWindows())

# ------------------------------------------------------------------ the entry
# its published row: SAM2 masks with 32 points per side (the release's live generator uses 8, RegionConfig's default)
_RELEASE = dict(slide_crop=336, slide_stride=112, logit_scale=40, prob_thd=0.0, area_thd=0.0, vfm="dino_vitb8",
                mask_generator="sam2", points_per_side=32, short_side=336)

ENTRY = register_method(Method(
    name="corrclip", title="CorrCLIP (Zhang et al., ICCV 2025)", last_block=None, settings=CorrCLIPSettings,
    needs_vfm=always, vfm_positions="absolute", merge="regions", regions=True, region_vote=True,
    # zdk258/CorrCLIP CorrCLIPv1/configs: 336 windows, stride 112, short side 336 (448 Cityscapes and ADE20K,
    # 224 windows on Cityscapes), DINO ViT-B/8, its own class files (configs/corrclip/)
    protocol=with_settings(benchmark_table(_RELEASE, voc21=dict(prob_thd=0.2), context60=dict(prob_thd=0.15),
                                           coco_object=dict(prob_thd=0.25),
                                           city_scapes=dict(slide_crop=224, short_side=448),
                                           ade20k=dict(short_side=448)),
                           {b: dict(class_file=f"corrclip/cls_{b.replace('164k', '')}.txt")
                            for b in ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff164k",
                                      "city_scapes", "ade20k")}),
    # MetaCLIP ViT-B/16 with SAM2 masks (32 points per side); the README's other rows in published_with
    published=benchmark_row(74.8, 44.2, 43.7, 88.8, 48.8, 31.6, 49.4, 26.9),
    published_with={"ViT-L-14-quickgelu/metaclip_fullcc": benchmark_row(76.7, 44.9, 49.4, 91.5, 50.8, 34.0, 51.1,
                                                                         30.7)},
    source="CorrCLIP README (zdk258/CorrCLIP, CorrCLIPv1), Results, ViT-B (MetaCLIP) with SAM2 masks, 32 points"))
