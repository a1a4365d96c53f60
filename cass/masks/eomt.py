"""EoMT's panoptic segments as regions, as CorrCLIP's ``set_mask_generator('eomt')``.

The release builds its vendored EoMT (``get_eomt(cfg_file="eomt_large_640.yaml")``: a DINOv2-L/16
ViT with 200 queries, masked attention switched off, weights ``pytorch_model.bin`` of
``tue-mps/coco_panoptic_eomt_large_640``) and, in ``generate_mask``, under float16 autocast on CUDA:

1. reads the image with PIL as RGB; resizes it (PIL bilinear, uint8) by ``min(640 / H, 640 / W)``
   to ``round(H * f) x round(W * f)`` and pads it with zeros at the bottom and right to 640 x 640;
2. runs the network on ``(x / 255 - mean) / std`` (ImageNet's mean and std, the DINOv2 backbone's);
3. upsamples the last layer's mask logits bilinearly to 640 x 640, crops the unpadded
   ``round(H * f) x round(W * f)`` corner and upsamples that bilinearly to H x W;
4. ``to_per_pixel_preds_panoptic(mask_logits, class_logits, stuff_classes, mask_thresh=0.8,
   overlap_thresh=0.8)[0][..., 1]``: queries whose most likely class is not "no object" and scores
   above 0.8 are kept; each pixel goes to the kept query maximising score x mask probability; a
   query becomes a segment when its pixels there that also have probability >= 0.5 are non-empty
   and its won area is at least ``overlap_thresh`` of its probability >= 0.5 area; segments are
   numbered 0, 1, ... in query order, a stuff class (COCO's 80..132) is one segment however many
   queries predict it, and pixels of no segment are -1 (all -1 when no query is kept).

``EoMTMasks`` runs transformers' ``EomtForUniversalSegmentation`` (the same network in
transformers' format, from the same hub repository) and does 1-4 itself, op for op as the
release, rather than through transformers' image processor and
``post_process_panoptic_segmentation``, which differ from the release in these points:

* transformers' model applies masked attention in its last blocks whenever its
  ``attn_mask_probs`` are above 0 (a new model holds ones; transformers' conversion script does not
  carry the release's buffer over); the release builds its network with
  ``masked_attn_enabled=False``. The generator sets them to 0.
* the processor's resize and ``unpad_image`` size the image with ``get_size_with_aspect_ratio``
  (``int()`` of a product), which can be a pixel short of the release's ``round``; the release
  resizes the uint8 image before scaling to 0-1, which the generator keeps.
* ``compute_segments`` drops a segment unless its area ratio is strictly above the overlap
  threshold (a float32 ratio); the release keeps it unless the ratio (Python's float division)
  is below it, so a ratio equal to the threshold is kept.
* ``post_process_panoptic_segmentation`` merges no stuff class unless given ``stuff_classes``.

The label map is the release's shifted by one: segment k is labelled k + 1 and the pixels no
segment won 0 (the release: 0..n-1 and -1), the convention of every generator here (SAM2's,
Mask2Former's: uncovered pixels 0, regions from 1). CorrCLIP computes the same with either: it
reads only the order and equality of labels (regions in ascending order, the smallest one
"unsegmented"; merged regions are relabelled 10000 + k whatever their value), and the shift keeps
both; ``unsegmented='nonpositive'`` (the fix of the smallest-label rule) then reads the uncovered
pixels right. On an image that segments cover entirely, the smallest value is segment 1, which
CorrCLIP's correction drops under the release's rule, as the release drops its segment 0. The image's mean and std are the model's image processor's. The
release compiles the model with ``torch.compile``; the generator does not. transformers is an
optional dependency (``pip install transformers``); the generator says so in one line when it is
missing.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError
from .labels import as_label_map, check_image
from .runtime import half_autocast, load_pretrained, pretrained_identity, resolve_device, runs_half

RELEASE_MODEL = "tue-mps/coco_panoptic_eomt_large_640"
COCO_STUFF_CLASSES = tuple(range(80, 133))  # eomt/configs/coco/panoptic/eomt_large_640.yaml


def _transformers():
    try:
        from transformers import AutoImageProcessor, EomtForUniversalSegmentation
    except ImportError as err:
        raise ImportError(f"the 'eomt' mask generator needs transformers with EoMT ({err}); install it with "
                          "`pip install -U transformers`") from None
    return AutoImageProcessor, EomtForUniversalSegmentation


def scaled_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The release's ``scale_img_size_instance_panoptic``: ``size`` scaled by ``min(target / size)``, rounded."""
    factor = min(target[0] / size[0], target[1] / size[1])
    return round(size[0] * factor), round(size[1] * factor)


def resize_and_pad(image: np.ndarray, target: tuple[int, int]) -> torch.Tensor:
    """(3, target) uint8: ``image`` resized with PIL's bilinear filter to :func:`scaled_size` and padded with
    zeros at the bottom and right (the release's ``resize_and_pad_imgs_instance_panoptic``)."""
    from PIL import Image

    new_h, new_w = scaled_size(image.shape[:2], target)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    padded = np.zeros((target[0], target[1], 3), dtype=np.uint8)
    padded[:new_h, :new_w] = resized[:target[0], :target[1]]
    return torch.from_numpy(padded).permute(2, 0, 1)


def segment_ids(mask_logits: torch.Tensor, class_logits: torch.Tensor, stuff_classes: Sequence[int],
                threshold: float, mask_threshold: float, overlap_threshold: float) -> torch.Tensor:
    """(H, W) long segment ids (0..n-1, -1: no segment) of one image: the release's
    ``to_per_pixel_preds_panoptic(...)[0][..., 1]``, with ``mask_logits`` (Q, H, W) at the image's size
    and ``class_logits`` (Q, classes + 1), the last class being "no object"."""
    scores, classes = class_logits.softmax(dim=-1).max(-1)
    segments = -torch.ones(mask_logits.shape[-2:], dtype=torch.long, device=mask_logits.device)
    keep = classes.ne(class_logits.shape[-1] - 1) & (scores > threshold)
    if not keep.any():
        return segments
    masks = mask_logits[keep].sigmoid()
    winners = (scores[keep][..., None, None] * masks).argmax(0)
    stuff_ids: dict[int, int] = {}
    next_id = 0
    for k, class_id in enumerate(classes[keep].tolist()):
        own = masks[k] >= mask_threshold
        won = winners == k
        final = own & won
        own_area, won_area, final_area = own.sum().item(), won.sum().item(), final.sum().item()
        if own_area == 0 or won_area == 0 or final_area == 0 or won_area / own_area < overlap_threshold:
            continue
        if class_id in stuff_classes:
            if class_id in stuff_ids:
                segments[final] = stuff_ids[class_id]
                continue
            stuff_ids[class_id] = next_id
        segments[final] = next_id
        next_id += 1
    return segments


@dataclass
class EoMTMasks:
    """The ``eomt`` generator: an EoMT's panoptic segment ids, as CorrCLIP's release computes them, plus one.

    Args:
        model: a Hugging Face hub id (default the release's
            ``tue-mps/coco_panoptic_eomt_large_640``, from the hub cache) or a local folder written
            by ``save_pretrained`` (model and image processor).
        threshold: a query is kept when its most likely class is not "no object" and that class's
            probability is above this (the release's ``mask_thresh``, 0.8).
        mask_threshold: a query's mask is its pixels of probability >= this (0.5 in the release).
        overlap_threshold: a kept query becomes a segment when the area it wins is at least this
            fraction of its mask's (the release's ``overlap_thresh``, 0.8).
        stuff_classes: classes merged into one segment per image (the release's COCO 80..132).
        device: None: CUDA when available.
        precision: ``'auto'`` (float16 autocast on CUDA, as released; float32 elsewhere),
            ``'float16'`` (CUDA only) or ``'float32'``.
    """

    model: str = RELEASE_MODEL
    threshold: float = 0.8
    mask_threshold: float = 0.5
    overlap_threshold: float = 0.8
    stuff_classes: Sequence[int] = COCO_STUFF_CLASSES
    device: str | None = None
    precision: str = "auto"
    _loaded: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.device = resolve_device("eomt", self.device, self.precision)
        try:
            self.stuff_classes = tuple(int(c) for c in self.stuff_classes)
        except (TypeError, ValueError):
            raise ConfigError(f"mask generator 'eomt': stuff_classes must be class ids, not "
                              f"{self.stuff_classes!r}") from None
        _transformers()  # a missing package is said when the generator is built

    @property
    def half(self) -> bool:
        return runs_half(self.device, self.precision)

    def settings_key(self) -> str:
        settings = dict(model=pretrained_identity(self.model), threshold=self.threshold,
                        mask_threshold=self.mask_threshold,
                        overlap_threshold=self.overlap_threshold, stuff_classes=list(self.stuff_classes),
                        precision="float16" if self.half else "float32")
        return "eomt " + json.dumps(settings, sort_keys=True)

    def load(self) -> tuple:
        """(model, input size (h, w), mean, std), loaded on first use; the model without masked attention."""
        if self._loaded is None:
            processor_class, model_class = _transformers()
            processor, model = load_pretrained("EoMT", self.model, lambda: (
                processor_class.from_pretrained(self.model), model_class.from_pretrained(self.model)))
            with torch.no_grad():  # the release's network: masked_attn_enabled=False
                model.attn_mask_probs.zero_()
            size = model.config.image_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            mean = torch.tensor(processor.image_mean, dtype=torch.float32).reshape(1, -1, 1, 1)
            std = torch.tensor(processor.image_std, dtype=torch.float32).reshape(1, -1, 1, 1)
            self._loaded = model.to(self.device).eval(), size, mean.to(self.device), std.to(self.device)
        return self._loaded

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
        h, w = check_image(image)
        model, size, mean, std = self.load()
        with torch.inference_mode(), half_autocast(self.half):  # the release runs all of it under autocast
            pixels = resize_and_pad(image, size)[None].to(self.device)
            outputs = model(pixel_values=(pixels / 255.0 - mean) / std)
            mask_logits = F.interpolate(outputs.masks_queries_logits, size, mode="bilinear")
            new_h, new_w = scaled_size((h, w), size)
            mask_logits = F.interpolate(mask_logits[:, :, :new_h, :new_w], (h, w), mode="bilinear")[0]
            labels = segment_ids(mask_logits, outputs.class_queries_logits[0], self.stuff_classes,
                                 self.threshold, self.mask_threshold, self.overlap_threshold)
        return as_label_map(labels.cpu().numpy() + 1, (h, w), "EoMT's segment ids")  # uncovered 0, segments 1..n
