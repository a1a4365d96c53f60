"""SAM's help for one image: Trident's correlation (aggregation) and its prompt refinement.

:class:`SAMGuide` wraps segment-anything's ``SamPredictor`` (the library's
own preprocessing, encoder and prompt decoding) and the math of
:mod:`cass.sam_math`. Per image it

1. resizes the original RGB image up to multiples of CLIP's patch and lets
   the predictor encode it (Cityscapes: the left and right halves, then the
   whole image for refinement), recording the input of the encoder's last
   global attention in the same pass (:func:`cass.sam_encoder.last_global_input`);
2. turns that attention into Trident's correlation weights on SAM's valid
   token grid (:func:`cass.sam_math.sam_correlation`) and mixes an image's
   features or logits with them (:meth:`SAMGuide.aggregate`);
3. refines a coarse prediction with box, point and mask prompts of its
   connected regions (:meth:`SAMGuide.refine`).

SAM's image encoder computes in the precision the model sets
(:meth:`SAMGuide.set_precision`, the config key ``sam_precision``); its
prompt encoder and mask decoder in float32, as released.

References: ``Trident.get_trident_seg`` / ``get_sam_feat`` (``trident.py``)
and ``sam_refinement`` (``seg_utils/utils.py``) of YuHengsss/Trident.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sam_math
from .config import SAMConfig
from .images import ImageError
from .precision import DTYPES, tf32_matmuls
from .sam_encoder import block_attention, last_global_index, last_global_input
from .stages import stage


@dataclass
class SAMView:
    """SAM's correlation of one image (one entry per encoded part: the image, or its two halves).

    Attributes:
        weights: (N_i, N_i) float32 row-stochastic weights per part.
        grids: (h_i, w_i) SAM's valid token grid per part.
    """

    weights: list[Tensor]
    grids: list[tuple[int, int]]

    @property
    def grid(self) -> tuple[int, int]:
        """The image's grid: the parts side by side."""
        return self.grids[0][0], sum(w for _, w in self.grids)


def sam_image(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """The image SAM encodes: the original resized up to multiples of ``multiple`` (CLIP's patch).

    As released (``get_trident_seg``): each side not a multiple is rounded up,
    ``cv2.resize`` with its default bilinear interpolation; the image is kept
    as it is when both sides are multiples.
    """
    h, w = rgb.shape[:2]
    new_h, new_w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if (new_h, new_w) == (h, w):
        return rgb
    return cv2.resize(rgb, (new_w, new_h))


class SAMGuide(nn.Module):
    """SAM's aggregation and refinement for one image at a time.

    Args:
        sam: segment-anything ``Sam`` (:func:`cass.weights.load_sam`), used
            in its own dtypes until :meth:`set_precision`.
        config: the settings (:class:`~cass.config.SAMConfig`).
    """

    def __init__(self, sam: nn.Module, config: SAMConfig) -> None:
        from segment_anything import SamPredictor  # only SAM's users need the package loaded

        super().__init__()
        self.sam = sam.eval()
        self.config = config
        self.predictor = SamPredictor(self.sam)  # holds the image set last (its embedding, sizes)
        self._image_size: tuple[int, int] | None = None
        self.precision: str | None = None  # None: SAM's dtypes as given, no TF32

    def set_precision(self, precision: str) -> None:
        """Cast SAM's image encoder to ``precision`` (fp32, tf32, fp16 or bf16; see
        :meth:`cass.config.PrecisionConfig.resolve_sam`), as Trident's release does for float16
        (``sam.half()``, then its prompt encoder and mask decoder ``.float()``): the whole ``Sam``,
        its normalisation buffers included (the encoder's input then has its dtype), then the
        prompt encoder and the mask decoder back to float32. ``'tf32'``: float32 with TF32 matrix
        products on CUDA in the encoder's forward.
        """
        dtype = DTYPES[precision]
        if self.sam.image_encoder.patch_embed.proj.weight.dtype != dtype:
            self.sam.to(dtype)
            self.sam.prompt_encoder.float()
            self.sam.mask_decoder.float()
        self.precision = precision

    def _tf32(self) -> contextlib.AbstractContextManager:
        """TF32 products on CUDA inside the block when SAM's image encoder computes in tf32."""
        return tf32_matmuls(self.precision == "tf32" and self.predictor.device.type == "cuda")

    @property
    def patch_size(self) -> int:
        return self.sam.image_encoder.patch_embed.proj.kernel_size[0]

    @torch.no_grad()
    def set_image(self, rgb: np.ndarray, clip_patch: int, correlation: bool) -> SAMView | None:
        """Encode one image; with ``correlation`` also return its :class:`SAMView`.

        Args:
            rgb: (H, W, 3) uint8 RGB original image.
            clip_patch: CLIP's patch size (the image is resized up to its multiples, as released).
            correlation: compute the correlation weights (SAM aggregation).

        Afterwards the predictor holds the whole image, for :meth:`refine`.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ImageError(f"SAM takes an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        image = sam_image(rgb, clip_patch)
        self._image_size = rgb.shape[:2]
        parts = [image]
        if self.config.sam_halves:
            half = image.shape[1] // 2
            parts = [image[:, :half], image[:, half:]]
        grids = [self._valid_grid(part.shape[:2], rgb.shape[:2]) for part in parts]  # before SAM resizes them
        view = SAMView([], []) if correlation else None
        attention = self.sam.image_encoder.blocks[last_global_index(self.sam.image_encoder)].attn
        side = self.sam.image_encoder.img_size // self.patch_size
        for part, grid in zip(parts, grids) if correlation else []:
            with stage("sam"), last_global_input(self.sam.image_encoder) as seen, self._tf32():
                self.predictor.set_image(np.ascontiguousarray(part))
            with stage("aggregate"):
                with self._tf32():  # the encoder's attention, in the encoder's dtype (float16: as released)
                    attn, values = block_attention(attention, seen.pop("x"))
                # the correlation computes in float32 whatever the encoder's dtype (the release: in that dtype)
                values = values.reshape(*values.shape[:2], side, side, -1)
                attn, values = sam_math.crop_sam_tokens(attn, values, grid)
                view.weights.append(sam_math.sam_correlation(attn, values, self.config.cos_fac,
                                                             self.config.refine_neg_cos)[0])
                view.grids.append(grid)
        if not correlation or len(parts) > 1:  # the whole image, for refinement
            with stage("sam"), self._tf32():
                self.predictor.set_image(np.ascontiguousarray(image))
        return view

    def _valid_grid(self, size: tuple[int, int], original: tuple[int, int]) -> tuple[int, int]:
        """SAM's valid token grid of an image part of ``size`` (``get_sam_feat``): its input size // SAM's
        patch; an image too elongated to have one is a one-line error naming its ``original`` size."""
        long_side = self.sam.image_encoder.img_size
        h, w = self.predictor.transform.get_preprocess_shape(size[0], size[1], long_side)
        grid = (h // self.patch_size, w // self.patch_size)
        if min(grid) < 1:
            raise ImageError(f"a {original[1]}x{original[0]} image is too elongated for SAM: at SAM's {long_side}-pixel "
                             f"long side its short side is {min(h, w)} px, less than one {self.patch_size}-pixel "
                             "SAM patch; crop it to a less elongated shape")
        return grid

    @staticmethod
    def aggregate(maps: Tensor, view: SAMView) -> Tensor:
        """Mix (C, H, W) features or logits with SAM's correlation: (C, h, w) on SAM's grid.

        Each part (the image, or its halves split at column ``W // 2``) is
        resized to its SAM grid (bilinear) and multiplied by its weights
        (:func:`cass.sam_math.aggregate`, :func:`cass.sam_math.aggregate_halves`).
        """
        with stage("aggregate"):
            if len(view.weights) == 1:
                mixed = sam_math.aggregate(maps[None], view.weights[0][None], view.grids[0])
            else:
                mixed = sam_math.aggregate_halves(maps[None], (view.weights[0][None], view.weights[1][None]),
                                                  tuple(view.grids))
            h, w = view.grid
            return mixed[0].T.reshape(-1, h, w)

    @torch.no_grad()
    def refine(self, probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Trident's SAM refinement of the image set last (``sam_refinement``, as released).

        Connected regions of the half-resolution coarse labels
        (:func:`cass.sam_math.region_prompts`) prompt SAM with their box, their
        top-probability point and their class's mask prompt; masks whose
        predicted IoU exceeds ``sam_iou_thresh`` are merged
        (:func:`cass.sam_math.merge_refined`), rejected regions get their
        coarse scores back (:func:`cass.sam_math.restore_failed`). Without any
        accepted mask the coarse prediction is returned unchanged.

        Args:
            probs: (C, H, W) coarse class probabilities at the original size.
            labels: (H, W) long coarse labels (``prob_thd`` applied).

        Returns:
            (C, H, W) scores (the released refined ``seg_logits``: SAM's sigmoid
            times the class probability inside accepted masks, coarse
            probabilities in rejected regions, 0 elsewhere) and (H, W) labels.
        """
        cfg, predictor = self.config, self.predictor
        num_classes = probs.shape[0]
        with stage("refine"):
            if predictor.is_image_set:  # as released: a float16 encoder's embedding, decoded in float32
                predictor.features = predictor.features.float()
            small_labels, small_probs = sam_math.refinement_inputs(labels, probs, cfg.coarse_thresh)
            # Every class makes regions, with or without a coarse threshold: the release's ``split_last``
            # skips only its extra "below the threshold" channel (its docstring says otherwise; its code rules)
            regions = sam_math.region_prompts(small_labels.cpu().numpy(), small_probs.cpu().numpy(), num_classes,
                                              cfg.coarse_thresh, cfg.minimal_area)
            small = tuple(small_labels.shape)
            device = predictor.device
            kept_logits, kept_classes, failed = [], [], []
            for c in sorted({r["class"] for r in regions}):
                group = [r for r in regions if r["class"] == c]
                mask = sam_math.mask_prompt(small_probs[c].cpu().numpy(), self._image_size, cfg.coarse_thresh,
                                            cfg.sam_mask_coff)
                boxes = torch.as_tensor(np.stack([r["box"] for r in group]), dtype=torch.float32, device=device)
                points = torch.as_tensor(np.stack([r["point"] for r in group]), dtype=torch.float32, device=device)
                _, scores, low_res = predictor.predict_torch(
                    point_coords=predictor.transform.apply_coords_torch(points, small)[:, None],
                    point_labels=torch.ones(len(group), 1, device=device),
                    boxes=predictor.transform.apply_boxes_torch(boxes, small),
                    # [quirk] (1, 256, 256) as released, not (1, 1, 256, 256): SAM's mask encoder takes it as
                    # one unbatched image, and its LayerNorm2d then normalises over rows instead of channels
                    mask_input=torch.as_tensor(mask, device=device)[None],
                    multimask_output=False)
                keep = torch.as_tensor(sam_math.keep_confident(scores.cpu().numpy(), cfg.sam_iou_thresh))
                failed += [torch.as_tensor(r["mask"]) for r, k in zip(group, keep.tolist()) if not k]
                if keep.any():
                    kept_logits.append(low_res[keep.to(low_res.device)])
                    kept_classes += [c] * int(keep.sum())
            if not kept_logits:
                return probs, labels
            logits = self.sam.postprocess_masks(torch.cat(kept_logits), predictor.input_size,
                                                predictor.original_size)
            if tuple(logits.shape[-2:]) != tuple(labels.shape):
                logits = F.interpolate(logits, tuple(labels.shape), mode="bilinear", align_corners=False)
            region_classes = torch.tensor(kept_classes, device=logits.device)
            new_labels, scores = sam_math.merge_refined(logits[:, 0], region_classes, probs, labels,
                                                        self.sam.mask_threshold)
            if failed:
                new_labels, scores = sam_math.restore_failed(torch.stack(failed).to(probs.device), probs, scores,
                                                             new_labels, labels)
            return scores, new_labels
