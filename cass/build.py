"""Build a model of the family (:class:`~cass.model.CASSModel`) from config keys: weights, vocabulary, settings.

The keys are those of the released configs' ``model=dict(...)`` (minus
mmseg's own ``type``, ``data_preprocessor`` and ``init_cfg``), so the mmseg
adapter, :class:`cass.api.Segmenter`, ``demo.py`` and ``benchmark.py`` build
the same model from the same config files. Settings and vocabulary are checked
before any weights are read.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from .backbones import VFM_SPECS
from .config import CASSConfig, ConfigError, RegionConfig
from .methods import requirements
from .model import CASSModel
from .text import Vocabulary, VocabularyError
from .tower_checks import check_towers
from .weights import build_sam, build_vfm, load_clip, load_sam, load_vfm


def vocabulary_from(classes: Sequence[str] | None = None, name_path: str | os.PathLike | None = None) -> Vocabulary:
    """The vocabulary from a class list or a class-name file (exactly one of them)."""
    if classes is not None and name_path is not None:
        raise VocabularyError("give the vocabulary once: classes (a list) or name_path (a class-name file)")
    if classes is not None:
        return Vocabulary.from_classes(classes)
    if name_path is not None:
        return Vocabulary.from_file(name_path)
    raise VocabularyError("no vocabulary: give classes (a list) or name_path (a class-name file)")


def build_model(clip_path: str = "ViT-B/16", vfm: str = "dino_vitb8", vfm_path: str | None = None,
                vfm_overrides: dict | None = None, name_path: str | os.PathLike | None = None,
                classes: Sequence[str] | None = None, text_cache_dir: str | bool | None = None,
                clip_model: nn.Module | None = None, vfm_model: nn.Module | None = None,
                dino_path: str | None = None, sam_path: str | None = None, sam_overrides: dict | None = None,
                sam_model: nn.Module | None = None, mask_path: str | None = None,
                mask_generator_model: Callable | None = None, mask_cache_dir: str | bool | None = None,
                **settings: Any) -> CASSModel:
    """A model of the family from release weights (or given modules) and flat config keys.

    Only what the configuration needs is built (:func:`cass.methods.requirements`):
    a CLIP-only method reads no VFM file. The towers are checked
    (:func:`cass.tower_checks.check_towers`: head pairing, positional embedding)
    on the VFM's architecture, before its weights are read.

    Args:
        clip_path: ``'ViT-B/16'``, ``'ViT-L/14'`` or ``'ViT-L/14@336px'`` (public
            OpenAI weights, downloaded once) or a local OpenAI ``.pt`` archive / state dict.
        vfm: a key of :data:`cass.backbones.VFM_SPECS` (``'dino_vitb8'``,
            ``'dinov2_vitb14_reg4'``, ``'dinov3_vitb16'``, ...; see ``docs/backbones.md``).
        vfm_path: local VFM release checkpoint (DINO, DINOv2 or DINOv3); None
            downloads the public one (DINOv3's are gated: None reads it from the
            weights cache or says where to get it).
        vfm_overrides: timm keyword arguments that resize the VFM's
            architecture (tiny test models); its weights are still loaded.
        name_path, classes: the vocabulary, as a class-name file or a list.
        text_cache_dir: text-embedding cache; None the default, False none.
        clip_model, vfm_model: ready modules instead of loading weights.
        dino_path: the former name of ``vfm_path`` (still accepted).
        sam_path: local SAM release checkpoint (``sam_vit_b_01ec64.pth``, ...,
            of ``sam_model_type``), read where the configuration uses SAM
            (Trident); None downloads the public one. ``sam_ckpt`` (Trident's
            config key) is the same setting.
        sam_overrides: segment-anything builder arguments that shrink SAM's
            image encoder (tiny test models; :data:`cass.random_weights.TINY_SAM`).
        sam_model: a ready ``Sam`` instead of loading weights (either way the
            model casts its image encoder to ``sam_precision``).
        mask_path: the mask generator's weights (SAM2's release checkpoint,
            ``sam2_hiera_large.pt``, ...), read where the configuration uses
            region masks (CorrCLIP, ``region_vote``) made by ``mask_generator='sam2'``;
            None downloads the public one.
        mask_generator_model: a ready generator (``generator(rgb, path) -> labels``)
            instead of the configured one (the setting ``mask_generator``, :mod:`cass.masks`).
        mask_cache_dir: disk cache of generated masks (keyed by the image and
            the generator's settings); None the default (``$CASS_CACHE_DIR/masks``),
            False none. Mask files are never cached.
        **settings: the method's settings, keys of :class:`~cass.config.CASSConfig`
            (``method='sclip'``, ``global_semantics_weight=0.3``, ``slide_crop=0``,
            ``precision='fp16'``, ``sam_precision='fp32'``, ...).
    """
    if dino_path is not None:
        if vfm_path is not None and vfm_path != dino_path:
            raise ConfigError("give the VFM weights once: vfm_path (dino_path is its former name)")
        vfm_path = dino_path
    if "sam_ckpt" in settings:  # Trident's key for the same file
        ckpt = settings.pop("sam_ckpt")
        if sam_path is not None and ckpt is not None and sam_path != ckpt:
            raise ConfigError("give SAM's weights once: sam_path (sam_ckpt is Trident's name for it)")
        sam_path = sam_path if sam_path is not None else ckpt
    config = CASSConfig.from_keys(settings)
    if vfm not in VFM_SPECS:
        raise ConfigError(f"vfm must be one of {sorted(VFM_SPECS)}, got {vfm!r}")
    vocabulary = vocabulary_from(classes, name_path)
    clip = clip_model if clip_model is not None else load_clip(clip_path)
    need = requirements(config)
    vfm_module = None
    if need.vfm:
        vfm_module = vfm_model if vfm_model is not None else build_vfm(vfm, **(vfm_overrides or {}))
        check_towers(config, clip, vfm_module, vfm)  # on the architecture, before its weights are read
        if vfm_model is None:
            vfm_module = load_vfm(vfm, vfm_path, vfm_module)
    sam = None
    if need.sam:
        sam = sam_model
        if sam is None:
            kind = config.sam.sam_model_type
            sam = load_sam(kind, sam_path, build_sam(kind, **sam_overrides) if sam_overrides else None)
    masks = mask_generator_model
    if need.masks and masks is None and config.regions.mask_generator is not None:
        masks = configured_mask_generator(config.regions, mask_path, mask_cache_dir)
    return CASSModel(clip, vfm_module, vocabulary, config, VFM_SPECS[vfm], text_cache_dir, sam, masks)


def configured_mask_generator(regions: RegionConfig, mask_path: str | None = None,
                              cache_dir: str | bool | None = None) -> Callable:
    """The mask generator a configuration names (:class:`~cass.config.RegionConfig`), its masks cached on disk
    (``cache_dir``: None the default, False none; mask files are read, not cached)."""
    from .masks import CachedMasks, build_mask_generator  # SAM2 and transformers load only when built

    name = regions.mask_generator
    if name == "files":
        if regions.mask_dir is None:
            raise ConfigError("mask_generator='files' reads each image's masks from mask_dir: set mask_dir")
        return build_mask_generator(name, folder=regions.mask_dir)
    if name == "sam2":
        generator = build_mask_generator(name, model=regions.mask_model, checkpoint=mask_path,
                                         points_per_side=regions.points_per_side,
                                         pred_iou_thresh=regions.pred_iou_thresh,
                                         stability_score_thresh=regions.stability_score_thresh)
    else:
        generator = build_mask_generator(name)
    return generator if cache_dir is False else CachedMasks(generator, cache_dir)
