"""The CASS model: CLIP and a VFM, a vocabulary and a typed configuration.

:class:`CASSModel` is a plain ``nn.Module`` that needs torch, torchvision,
open_clip, timm, scipy and scikit-learn only; mmseg sees it through the
adapter in :mod:`cass.mmseg`. It is the pipeline around the configured
method (spec sections 0-6): input -> windows -> the method's pass (its module
in :mod:`cass.methods`) -> its merge step (:mod:`cass.merges`) -> shared
post-processing (SAM's aggregation and refinement, :mod:`cass.sam_guide`;
PAMR, thresholds) -> labels. The math lives in :mod:`cass.clip_vit`,
:mod:`cass.methods`, :mod:`cass.spectral`, :mod:`cass.text` and
:mod:`cass.pamr`. Each part runs inside a named :func:`cass.stages.stage`;
nothing here names a method.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import convert_weights_to_lp
from torch import Tensor, nn

from . import clip_vit, text
from .backbones import VFM_SPECS, VFMSpec
from .config import CASSConfig, ConfigError
from .methods import get_method, requirements
from .images import rgb_uint8
from .merges import get_merge_step
from .methods.common import drop_small_classes
from .method_context import MethodContext
from .pamr import pamr_within_memory
from .regions import labels_on_grid, vote_regions
from .precision import DTYPE_PRECISIONS, DTYPES, tf32_matmuls
from .stages import stage
from .text import Vocabulary
from .tower_checks import check_towers

logger = logging.getLogger(__name__)


class Prediction(NamedTuple):
    """Segmentation of one image at its output size.

    Attributes:
        probs: (C, H, W) float32 class probabilities (softmax over the queries,
            max over each class's synonyms).
        labels: (H, W) int64 class index (0 where the top probability is
            below ``prob_thd``).
    """

    probs: Tensor
    labels: Tensor


class CASSModel(nn.Module):
    """Training-free open-vocabulary segmentation with CASS (Kim et al., CVPR 2025).

    Assembled from parts, like segment-anything's ``Sam``: the two towers are
    passed in (see :func:`cass.build.build_model` to load them from release
    checkpoints), the settings come as one :class:`~cass.config.CASSConfig`.

    The towers become part of the model. Their precision is set from
    ``config.precision`` when the model is built and whenever it is moved
    (``.to(device)``, ``.cuda()``, ...): on CUDA by default CLIP in float16 and
    DINO in float32 with TF32 products, like the released code; on the CPU
    float32. A cast sets that precision for both towers, as PyTorch users
    expect: ``.half()`` / ``.to(torch.float16)`` is ``precision='fp16'``,
    ``.bfloat16()`` ``'bf16'``, ``.float()`` ``'fp32'`` (LayerNorms and
    embeddings stay float32, as in OpenAI's half-precision CLIP); ``.double()``
    is refused. SAM's image encoder, where a method uses SAM, follows CLIP's
    precision unless ``sam_precision`` is set (``'auto'``: float16 on CUDA as
    Trident's release runs it, float32 on the CPU; its prompt encoder and
    mask decoder stay float32). Segmenting never changes a parameter or a dtype.

    Args:
        clip: open_clip ``CLIP`` in OpenAI's layout (CLS pooling, EOT text pooling).
        vfm: timm ``VisionTransformer`` of ``vfm_spec``; None only where the
            configuration does not use it (:func:`cass.methods.requirements`:
            the CLIP-only baselines, CASS's ``'vanilla'`` strategy); given
            where it is not used, it is dropped.
        vocabulary: the classes (see :class:`~cass.text.Vocabulary`).
        config: every setting of the method.
        vfm_spec: what the VFM is (patch size, prefix tokens, fixed input size).
        text_cache_dir: on-disk cache of text embeddings; None: the default
            (``$CASS_CACHE_DIR/text``), False: no cache.
        sam: segment-anything ``Sam`` where the configuration uses SAM
            (``sam_aggregation``, ``sam_refinement``: Trident's default, an
            option of every method); its image encoder is cast to
            :meth:`sam_precision` (:meth:`cass.sam_guide.SAMGuide.set_precision`).
        mask_generator: where the configuration uses region masks (CorrCLIP's
            pass, ``region_vote``), what makes them when :meth:`forward` is not
            given them: ``generator(rgb, path) -> (H, W)`` integer labels
            (:mod:`cass.masks`).
    """

    def __init__(self, clip: nn.Module, vfm: nn.Module | None, vocabulary: Vocabulary,
                 config: CASSConfig | None = None, vfm_spec: VFMSpec = VFM_SPECS["dino_vitb8"],
                 text_cache_dir: str | bool | None = None, sam: nn.Module | None = None,
                 mask_generator: Callable | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else CASSConfig()
        self.vfm_spec = vfm_spec
        self.text_cache_dir = text_cache_dir
        self.clip = clip.eval()
        self.method = get_method(self.config.method.name)
        self.merge_step = get_merge_step(self.method.name, self.method.merge)  # how crops become an image
        need = requirements(self.config)
        if not need.vfm:
            vfm = None  # never looked at: not kept, not moved, not cast
        check_towers(self.config, clip, vfm)
        self.vfm = vfm.eval() if vfm is not None else None
        self.sam_guide = None
        if need.sam:
            if sam is None:
                raise ConfigError(f"method {self.method.name!r} with sam_aggregation={self.config.sam_aggregates} "
                                  f"and sam_refinement={self.config.sam_refines} needs SAM (sam is None)")
            from .sam_guide import SAMGuide  # segment-anything is needed only here

            self.sam_guide = SAMGuide(sam, self.config.sam)
        self.mask_generator = mask_generator if need.masks else None
        self._last_block = self.method.block()
        self._text: tuple[Tensor, Tensor, int] | None = None
        self.set_vocabulary(vocabulary)
        self._set_precision()

    # ------------------------------------------------------------------ state
    @property
    def config(self) -> CASSConfig:
        """Every setting. Replacing it (``model.config = model.config.replace(...)``) reaches SAM's
        helper too, which reads its own part (:class:`~cass.config.SAMConfig`)."""
        return self._config

    @config.setter
    def config(self, config: CASSConfig) -> None:
        self._config = config
        if getattr(self, "sam_guide", None) is not None:
            self.sam_guide.config = config.sam

    @property
    def uses_masks(self) -> bool:
        """Whether the current settings use region masks (the method's pass or ``region_vote``)."""
        return requirements(self.config).masks

    @property
    def sees_originals(self) -> bool:
        """Whether SAM or a mask generator looks at each original image (:meth:`forward`'s ``sam_images``)."""
        return self.sam_guide is not None or self.mask_generator is not None

    @property
    def device(self) -> torch.device:
        return self.clip.visual.conv1.weight.device

    @property
    def patch_size(self) -> int:
        return self.clip.visual.conv1.kernel_size[0]

    @property
    def class_names(self) -> list[str]:
        return list(self.vocabulary.class_names)

    @property
    def num_classes(self) -> int:
        return self.vocabulary.num_classes

    def set_vocabulary(self, vocabulary: Vocabulary | Sequence[str]) -> None:
        """Replace the vocabulary (a :class:`Vocabulary` or one entry per class,
        synonyms ``", "``-separated); text embeddings are recomputed on next use."""
        if not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary.from_classes(vocabulary)
        self.vocabulary = vocabulary
        self._text = None

    def precisions(self) -> tuple[str, str]:
        """(clip, vfm) precision on the model's current device: fp32, tf32, fp16 or bf16."""
        return self.config.precision.resolve(self.device.type)

    def sam_precision(self) -> str:
        """SAM's image-encoder precision on the model's current device: fp32, tf32, fp16 or bf16."""
        return self.config.precision.resolve_sam(self.device.type)

    def _set_precision(self) -> None:
        """Cast the towers (and SAM's image encoder) to the configured precision for their device."""
        clip_precision, vfm_precision = self.precisions()
        dtype = DTYPES[clip_precision]
        if self.clip.visual.conv1.weight.dtype != dtype or self.clip.text_projection.dtype != dtype:
            # like OpenAI's half-precision CLIP: matrices in low precision; LayerNorms
            # and embeddings stay float32 (LayerNormFp32 computes in float32)
            self.clip.float()
            if dtype != torch.float32:
                convert_weights_to_lp(self.clip, dtype)
        if self.vfm is not None and self.vfm.patch_embed.proj.weight.dtype != DTYPES[vfm_precision]:
            self.vfm.to(DTYPES[vfm_precision])
        if self.sam_guide is not None:
            self.sam_guide.set_precision(self.sam_precision())
        self._text = None  # text embeddings follow the text tower's device and precision

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - nn.Module's signature
        super()._apply(fn, recurse)
        self._set_precision()
        return self

    def set_precision(self, precision: str, vfm_precision: str | None = None,
                      sam_precision: str | None = None) -> CASSModel:
        """Set the towers' precision (``'auto'``, ``'fp32'``, ``'tf32'``, ``'fp16'``, ``'bf16'``;
        ``vfm_precision``, ``sam_precision`` None: the same for the VFM, for SAM's image encoder)
        and cast them; returns the model."""
        self.config = self.config.replace(precision=precision, vfm_precision=vfm_precision,
                                          sam_precision=sam_precision)
        self._set_precision()
        return self

    def to(self, *args, **kwargs):  # noqa: ANN002, ANN003 - nn.Module's signature
        """``nn.Module.to``; a dtype sets the precision of both towers (see the class docs)."""
        dtype = kwargs.pop("dtype", None)
        rest = []
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, Tensor):  # .to(tensor): its device and dtype
                dtype = arg.dtype
                rest.append(arg.device)
            else:
                rest.append(arg)
        if dtype is not None:
            self._precision_of(dtype)
        return super().to(*rest, **kwargs) if rest or kwargs else self

    def _precision_of(self, dtype: torch.dtype) -> None:
        if dtype not in DTYPE_PRECISIONS:
            raise TypeError(f"CASSModel computes in float32, float16 or bfloat16, not {dtype}; "
                            "set_precision() gives every choice (tf32, a precision per tower)")
        self.set_precision(DTYPE_PRECISIONS[dtype])

    def float(self) -> CASSModel:
        self._precision_of(torch.float32)
        return self

    def half(self) -> CASSModel:
        self._precision_of(torch.float16)
        return self

    def bfloat16(self) -> CASSModel:
        self._precision_of(torch.bfloat16)
        return self

    def double(self) -> CASSModel:
        self._precision_of(torch.float64)
        return self

    def text_state(self) -> tuple[Tensor, Tensor]:
        """Query embeddings (Q, E) and cluster ids (Q,) on the model's device.

        Computed once per vocabulary, device and precision (or read from the
        on-disk cache).
        """
        return self._text_state()[:2]

    def _text_state(self) -> tuple[Tensor, Tensor, int]:
        """:meth:`text_state` and the cluster count, kept on the host (reading it
        from the clusters on a GPU would wait for the GPU)."""
        if self._text is None:
            with self.tf32("clip"):
                feats = text.query_embeddings(self.clip, self.vocabulary.queries, cache_dir=self.text_cache_dir)
            self._use_text(feats)
        return self._text

    def set_text_embeddings(self, embeddings: Tensor) -> None:
        """Use these (Q, E) L2-normalised query embeddings instead of the text
        tower's (other prompts, or random ones in benchmarks); clusters are
        recomputed from them. Kept until the vocabulary, device or precision changes."""
        queries = len(self.vocabulary.queries)
        if embeddings.dim() != 2 or len(embeddings) != queries:
            raise ValueError(f"expected ({queries}, E) query embeddings, got shape {tuple(embeddings.shape)}")
        self._use_text(embeddings.detach().float())

    def _use_text(self, feats: Tensor) -> None:
        clusters = text.query_clusters(feats, self.config.text.h_threshold)
        self._text = (feats.to(self.device), torch.as_tensor(clusters, device=self.device), int(clusters.max()) + 1)

    # ------------------------------------------------------------------ parts
    def tf32(self, tower: str) -> contextlib.AbstractContextManager:
        """TF32 products on CUDA inside the block when ``tower`` (``'clip'`` or ``'vfm'``) computes in tf32."""
        clip_precision, vfm_precision = self.precisions()
        precision = clip_precision if tower == "clip" else vfm_precision
        return tf32_matmuls(precision == "tf32" and self.device.type == "cuda")

    @torch.no_grad()
    def global_embeddings(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, E): the image embedding ``v`` of each whole image."""
        with stage("clip"), self.tf32("clip"):
            tokens, _ = clip_vit.clip_trunk(self.clip.visual, images)
            return clip_vit.global_embedding(self.clip.visual, tokens)

    def patch_features(self, crops: Tensor, tokens: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """The method's last block (its entry's ``last_block``, :mod:`cass.methods`).

        Args:
            crops: (B, 3, Hc, Wc) the crops (the VFM's input).
            tokens: (B, 1 + N, D) CLIP tokens entering the last block.
            grid: CLIP's patch grid.

        Returns:
            (B, M, E) L2-normalised float32 features and their grid.
        """
        return self._last_block(self.method_context(), crops, tokens, grid)

    def method_context(self) -> MethodContext:
        """What the method's pass may use (:class:`~cass.method_context.MethodContext`): the towers,
        the settings and the precision contexts as they are now."""
        return MethodContext(self.clip, self.vfm, self.vfm_spec, self.config, self.config.settings, self.tf32)

    @torch.no_grad()
    def crop_logits(self, crops: Tensor, image_embeddings: Tensor | None) -> Tensor:
        """Query logits of a batch of equal-size crops, at crop resolution.

        Args:
            crops: (B, 3, Hc, Wc) CLIP-normalised crops.
            image_embeddings: (B, E) presence-prior embeddings ``v``; None takes
                them from the crops themselves (unused without text refinement).

        Returns:
            (B, Q, Hc, Wc) float32 logits: ``S``, or ``F . t`` without text
            refinement (the baselines' default).
        """
        text_feats, clusters, num_clusters = self._text_state()
        visual = self.clip.visual
        refines = self.config.method.refines_text
        with stage("clip"), self.tf32("clip"):
            tokens, grid = clip_vit.clip_trunk(visual, crops)
            if image_embeddings is None and refines:
                image_embeddings = clip_vit.global_embedding(visual, tokens)
        feats, grid = self.patch_features(crops, tokens, grid)
        with stage("text"):
            if refines:
                presence = image_embeddings.float() @ text_feats.T
                refined = text.refine_text(feats, text_feats, presence, clusters, self.config.text, num_clusters)
                logits = text.class_logits(feats, refined, presence, self.config.text)  # (B, N, Q)
            else:
                logits = feats @ text_feats.T
        with stage("post"):
            logits = logits.transpose(1, 2).reshape(len(crops), -1, *grid)
            return F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def query_logits(self, images: Sequence[Tensor], regions: Sequence[Tensor] | None = None) -> list[Tensor]:
        """Query logits of each image, its crops merged as the method's entry says
        (:data:`cass.merges.MERGE_STEPS`), without SAM's aggregation (see :meth:`forward`).

        Args:
            images: (3, H_i, W_i) CLIP-normalised resized images.
            regions: each image's (H_i, W_i) integer region labels, for a method whose pass uses them.

        Returns:
            (Q, h_i, w_i) float32 logits per image: at the image's size (``merge='logits'``),
            or on the grid its crops were spliced into (``merge='features'``).
        """
        self._check_inputs(images)
        return [self.merge_step.logits(self, maps) for maps in self.merge_step.maps(self, images, regions)]

    def _check_inputs(self, images: Sequence[Tensor]) -> None:
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"expected (3, H, W) images, got shape {tuple(img.shape)}")
            if min(img.shape[-2:]) < self.patch_size:
                raise ValueError(f"image of {tuple(img.shape[-2:])} px after resizing is smaller than one "
                                 f"CLIP patch ({self.patch_size} px); it is too thin to segment")

    def postprocess(self, logits: Tensor, image: Tensor, out_size: tuple[int, int]) -> Prediction:
        """Query logits -> class probabilities and label map at ``out_size``.

        Bilinear resize, optional PAMR, ``x logit_scale`` softmax over queries,
        max over each class's synonyms, optional small-class filter
        (``area_thd``), argmax, ``prob_thd`` -> class 0.

        Args:
            logits: (Q, h, w), consumed (changed in place to save memory);
            image: (3, h, w) the normalised input (PAMR's guide).
        """
        cfg = self.config.output
        with stage("post"):
            if tuple(logits.shape[-2:]) != tuple(out_size):
                logits = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]
            if cfg.pamr_steps > 0:
                guide = F.interpolate(image[None].float(), size=out_size, mode="bilinear", align_corners=False)
                refined = pamr_within_memory(guide, logits[None], cfg.pamr_steps, cfg.pamr_dilations)
                if refined is None:  # the released code skips PAMR on out-of-memory too
                    logger.warning("PAMR skipped for a %dx%d output: out of memory even one class at a time",
                                   *out_size)
                else:
                    logits = refined[0]
            # softmax in place: at the original size of a large image every copy counts
            probs = logits.mul_(cfg.logit_scale)
            probs.sub_(probs.amax(0, keepdim=True)).exp_()
            probs.div_(probs.sum(0, keepdim=True))
            if self.vocabulary.has_synonyms:
                merged = probs.new_zeros(self.num_classes, *out_size)
                for q, c in enumerate(self.vocabulary.query_class):
                    torch.maximum(merged[c], probs[q], out=merged[c])
                probs = merged
            if cfg.area_thd > 0:
                probs = drop_small_classes(probs, cfg.area_thd)
            top, labels = probs.max(0)
            labels = torch.where(top < cfg.prob_thd, 0, labels)  # no boolean indexing: it waits for the GPU
            return Prediction(probs, labels)

    @torch.no_grad()
    def forward(self, images: Tensor | Sequence[Tensor], out_sizes: Sequence[tuple[int, int]] | None = None,
                sam_images: Sequence[np.ndarray] | None = None,
                region_masks: Sequence[np.ndarray | Tensor] | None = None,
                paths: Sequence[str | None] | None = None) -> list[Prediction]:
        """Segment a batch of images.

        Args:
            images: (B, 3, H, W) or a list of (3, H_i, W_i) CLIP-normalised RGB
                images, already resized (see :mod:`cass.images`).
            out_sizes: output size of each image (its original size);
                default: the input size.
            sam_images: where SAM or a mask generator is used, each original
                image as they see it (in the released Trident and CorrCLIP),
                (H_i, W_i, 3) uint8 RGB at its output size; None: the model
                input resized back to the output size (an approximation of the
                original).
            region_masks: where region masks are used, each image's (H_i, W_i)
                integer labels at its output size (the smallest label reads
                "unsegmented"); None: the mask generator makes them.
            paths: each image's file (a mask generator reading mask files
                finds them by the image's name).

        Returns:
            one :class:`Prediction` per image. With SAM refinement its
            ``probs`` are the refinement's scores, as released
            (:meth:`cass.sam_guide.SAMGuide.refine`); with ``region_vote`` its
            labels are voted, its ``probs`` are not (as released).
        """
        images = list(images)
        if out_sizes is None:
            out_sizes = [tuple(img.shape[-2:]) for img in images]
        if len(out_sizes) != len(images):
            raise ValueError(f"{len(images)} images but {len(out_sizes)} output sizes")
        images = [img.to(self.device) for img in images]
        self._check_inputs(images)
        if (self.sam_guide is not None or (self.uses_masks and region_masks is None)) and sam_images is None:
            sam_images = [rgb_uint8(img, tuple(size)) for img, size in zip(images, out_sizes)]
        if sam_images is not None:
            self._check_originals(sam_images, out_sizes)
        masks = self._region_masks(region_masks, sam_images, out_sizes, paths) if self.uses_masks else None
        inputs = None
        if masks is not None and self.method.regions:  # the method's pass sees them at its input size
            inputs = [labels_on_grid(m, tuple(img.shape[-2:])) for m, img in zip(masks, images)]
        predictions = []
        for i, (img, size, maps) in enumerate(zip(images, out_sizes, self.merge_step.maps(self, images, inputs))):
            if self.sam_guide is not None:
                view = self.sam_guide.set_image(sam_images[i], self.patch_size,
                                                correlation=self.config.sam_aggregates)
                if view is not None:  # SAM's correlation mixes what the merge step gives: logits or features
                    maps = self.sam_guide.aggregate(maps, view)
            prediction = self.postprocess(self.merge_step.logits(self, maps), img, tuple(size))
            if self.sam_guide is not None and self.config.sam_refines:
                prediction = Prediction(*self.sam_guide.refine(prediction.probs, prediction.labels))
            if masks is not None and self.config.region_votes:
                with stage("post"):
                    prediction = Prediction(prediction.probs, vote_regions(prediction.labels, masks[i],
                                                                             self.config.regions.unsegmented))
            predictions.append(prediction)
        return predictions

    @staticmethod
    def _check_originals(originals: Sequence[np.ndarray], out_sizes: Sequence[tuple[int, int]]) -> None:
        if len(originals) != len(out_sizes):
            raise ValueError(f"{len(out_sizes)} images but {len(originals)} SAM images")
        for rgb, size in zip(originals, out_sizes):
            if tuple(rgb.shape[:2]) != tuple(size):
                raise ValueError(f"SAM image of {tuple(rgb.shape[:2])} px for an output of {tuple(size)} px: "
                                 "pass each original image at its output size")

    def _region_masks(self, given: Sequence[np.ndarray | Tensor] | None, originals: Sequence[np.ndarray] | None,
                      out_sizes: Sequence[tuple[int, int]], paths: Sequence[str | None] | None) -> list[Tensor]:
        """Each image's (H, W) int64 region labels on the model's device: given, or made by the mask generator."""
        if given is None:
            if self.mask_generator is None:
                raise ConfigError(f"method {self.method.name!r} with region_vote={self.config.region_votes} uses "
                                  "region masks: give them (region_masks) or configure a mask generator "
                                  "(mask_generator)")
            paths = [None] * len(originals) if paths is None else list(paths)
            with stage("masks"):
                given = [self.mask_generator(rgb, path) for rgb, path in zip(originals, paths)]
        if len(given) != len(out_sizes):
            raise ValueError(f"{len(out_sizes)} images but {len(given)} region masks")
        masks = []
        for mask, size in zip(given, out_sizes):
            mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
            if tuple(mask.shape) != tuple(size) or mask.is_floating_point() or mask.dtype == torch.bool:
                raise ValueError(f"region mask of shape {tuple(mask.shape)} and type {mask.dtype} for an output of "
                                 f"{tuple(size)} px: give (H, W) integer labels at each image's output size")
            masks.append(mask.to(self.device, torch.int64))
        return masks
