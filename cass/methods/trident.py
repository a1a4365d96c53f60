"""Trident (Shi et al., ICCV 2025): ProxyCLIP's block with one mean per image, spliced windows, SAM.

Its last block is ProxyCLIP's proxy attention (:func:`cass.methods.proxyclip.proxy_mix`)
with one mean over all the windows of an image; its features are spliced
into one grid of the image before CLIP's head (``merge='features'``,
:class:`cass.merges.SpliceFeatures`, :mod:`cass.windows`); SAM aggregates and
refines by default (:mod:`cass.sam_guide`, settings in :class:`~cass.config.SAMConfig`).
"""
from __future__ import annotations

from torch import Tensor

from ..benchmarks import OWN_CLASS_FILES, benchmark_row, benchmark_table, with_settings
from ..stages import stage
from ..windows import crop_grid_scale
from .common import attend
from .proxyclip import ProxySettings, proxy_mix
from .registry import Method, always, register_method

Grid = tuple[int, int]


def features(ctx, crops: Tensor, tokens: Tensor, grid: Grid) -> tuple[Tensor, int]:
    """Trident: ProxyCLIP's block over the VFM with one mean for all the windows of an image.

    ``crops`` are all the windows of one image. CLIP's values are resized to
    the VFM's grid and mixed by :func:`cass.methods.common.proxy_attention`
    with one mean over all the windows (``mean_dims=(-3, -2, -1)``); the
    out-projection follows, no residual, no feed-forward network, and neither
    ``ln_post`` nor ``proj``: the pipeline splices these features into the
    image's grid first (``merge='features'``).

    Returns:
        (K, D, h, w) features on an integer multiple ``ratio`` of CLIP's grid
        (:func:`cass.windows.crop_grid_scale`), and ``ratio``.
    """
    block, attn, values, vfm_grid = proxy_mix(ctx, crops, tokens, grid, mean_dims=(-3, -2, -1))
    with stage("clip"), ctx.tf32("clip"):
        x = block.attn.out_proj(attend(attn[:, None], values).transpose(1, 2).flatten(2))  # (K, M, D)
        x = x.transpose(1, 2).reshape(len(crops), -1, *vfm_grid)
        return crop_grid_scale(x, grid)


ENTRY = register_method(Method(
    name="trident", title="Trident (Shi et al., ICCV 2025)", last_block=features, settings=ProxySettings,
    needs_vfm=always, vfm_positions="absolute", merge="features", sam_aggregation=True, sam_refinement=True,
    # YuHengsss/Trident configs: 336 windows, stride 224 (112 VOC20), ProxyCLIP's beta 1.2 and gamma 3.0 (the
    # settings' defaults) over DINO ViT-B/16, SAM vit_b, predicted-IoU threshold 0.8; ProxyCLIP's VOC and
    # COCO-Object class files
    protocol=with_settings(benchmark_table(dict(slide_crop=336, slide_stride=224, logit_scale=40, prob_thd=0.0,
                                                area_thd=0.0, vfm="dino_vitb16", sam_model_type="vit_b",
                                                cos_fac=1.2, refine_neg_cos=True, sam_halves=False,
                                                coarse_thresh=0.2, minimal_area=225, sam_mask_coff=0.005,
                                                sam_iou_thresh=0.8, short_side=448),
                                           voc21=dict(prob_thd=0.2),
                                           context60=dict(prob_thd=0.15, coarse_thresh=0.15, short_side=576),
                                           coco_object=dict(prob_thd=0.25, coarse_thresh=0.25),
                                           voc20=dict(slide_stride=112, cos_fac=0.0, short_side=336),
                                           context59=dict(coarse_thresh=0.15, short_side=576),
                                           coco_stuff164k=dict(coarse_thresh=0.05),
                                           city_scapes=dict(cos_fac=3.0, refine_neg_cos=False, coarse_thresh=0.1,
                                                            sam_halves=True, short_side=688),
                                           ade20k=dict(refine_neg_cos=False, coarse_thresh=0.05, short_side=576)),
                           {b: dict(class_file=f"proxyclip/cls_{b}.txt") for b in OWN_CLASS_FILES}),
    published=benchmark_row(67.1, 38.6, 41.1, 84.5, 42.2, 28.3, 42.9, 21.9),
    published_with={"ViT-H-14/laion2b_s32b_b79k": benchmark_row(70.8, 40.1, 42.2, 88.7, 44.3, 28.6, 47.6, 26.7)},
    source="Trident paper (Shi et al., ICCV 2025), Table 1 (YuHengsss/Trident assets/data_result.png), "
           "with SAM refinement"))
