"""How a method's crops become one image: a method entry's ``merge`` (:class:`cass.methods.Method`).

A merge step has two halves, so that SAM's correlation (an option of every
method, :class:`cass.sam_guide.SAMGuide`) can mix what lies between them:

* ``maps(model, images, regions)``: per image, (C, h, w) maps from its crops
  (``regions``: each image's (H, W) region labels at its input size, where the
  configuration uses region masks, else None);
* ``logits(model, maps)``: (Q, h, w) query logits of those maps.

:class:`AverageLogits` (``merge="logits"``, CASS and the baselines): the
maps are already query logits, each crop's averaged over the windows that
cover a pixel; :class:`SpliceFeatures` (``merge="features"``, Trident): the
maps are the windows' features spliced into one token grid of the image
before CLIP's head, which turns them into logits. The model
(:class:`cass.model.CASSModel`) calls ``MERGE_STEPS[entry.merge]`` and
branches on no method; :func:`register_merge_step` adds a step from outside
the package (a method whose crops become an image in another way).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from . import clip_vit, windows
from .config import CASSConfig, ConfigError
from .stages import stage
from .windows import slide_windows


class MergeStep(Protocol):
    def maps(self, model, images: Sequence[Tensor], regions: Sequence[Tensor] | None = None) -> list[Tensor]: ...

    def logits(self, model, maps: Tensor) -> Tensor: ...


def image_boxes(height: int, width: int, cfg: CASSConfig) -> list[tuple[int, int, int, int]]:
    """The crops of one resized image: the whole image, or the sliding windows."""
    if cfg.window.whole_image:
        return [(0, 0, height, width)]
    return slide_windows(height, width, cfg.window.slide_crop, cfg.window.slide_stride)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class AverageLogits:
    """Crop logits averaged over the windows (mmseg's slide inference).

    All crops of all images go through the towers in batches of equal-size
    crops (:meth:`cass.model.CASSModel.crop_logits`); with CASS's text
    refinement the whole-image embedding ``v`` is computed once per image.
    """

    @torch.no_grad()
    def maps(self, model, images: Sequence[Tensor], regions: Sequence[Tensor] | None = None) -> list[Tensor]:
        """(3, H_i, W_i) CLIP-normalised resized images -> (Q, H_i, W_i) float32 query logits (regions unused)."""
        window = model.config.window
        boxes = [image_boxes(*img.shape[-2:], model.config) for img in images]
        embeddings: list[Tensor | None] = [None] * len(images)
        if not window.whole_image and not model.config.text.prior_from_crop and model.config.method.refines_text:
            by_shape = defaultdict(list)
            for i, img in enumerate(images):
                by_shape[tuple(img.shape)].append(i)
            for idx in by_shape.values():
                for chunk in _chunks(idx, window.crop_batch_size):
                    for i, v in zip(chunk, model.global_embeddings(torch.stack([images[i] for i in chunk]))):
                        embeddings[i] = v
        jobs = defaultdict(list)  # crop shape -> (image, box)
        for i, image_boxes_ in enumerate(boxes):
            for box in image_boxes_:
                jobs[(box[2] - box[0], box[3] - box[1])].append((i, box))
        queries = len(model.vocabulary.queries)
        sums = [img.new_zeros(queries, *img.shape[-2:], dtype=torch.float32) for img in images]
        counts = [img.new_zeros(1, *img.shape[-2:], dtype=torch.float32) for img in images]
        for items in jobs.values():
            for chunk in _chunks(items, window.crop_batch_size):
                crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, x1, y2, x2) in chunk])
                prior = None if embeddings[chunk[0][0]] is None else torch.stack([embeddings[i] for i, _ in chunk])
                logits = model.crop_logits(crops, prior)
                with stage("post"):
                    for (i, (y1, x1, y2, x2)), crop_logits in zip(chunk, logits):
                        sums[i][:, y1:y2, x1:x2] += crop_logits
                        counts[i][:, y1:y2, x1:x2] += 1
        with stage("post"):
            return [s / c for s, c in zip(sums, counts)]

    def logits(self, model, maps: Tensor) -> Tensor:
        """The maps are the logits."""
        return maps


class SpliceFeatures:
    """Trident's merge: the windows' features spliced into one grid, then CLIP's head."""

    def maps(self, model, images: Sequence[Tensor], regions: Sequence[Tensor] | None = None) -> list[Tensor]:
        return [splice_features(model, img) for img in images]

    def logits(self, model, maps: Tensor) -> Tensor:
        return features_logits(model, maps)


@torch.no_grad()
def splice_features(model, image: Tensor) -> Tensor:
    """One image's window features spliced into one grid (``merge='features'``).

    The image is resized as Trident's ``preprocess_image``
    (:func:`cass.windows.preprocess_size`: sides to multiples of CLIP's
    patch, at least ``slide_crop``), cut into its windows
    (:func:`cass.windows.sliding_windows`; one window with
    ``slide_crop=0``), all of which go through CLIP's trunk and the
    method's last block together; their features are spliced, overlaps
    averaged (:func:`cass.windows.splice_crops`).

    Args:
        model: the :class:`~cass.model.CASSModel`.
        image: (3, H, W) CLIP-normalised resized image.

    Returns:
        (D, h, w) features before ``ln_post`` and ``proj``.
    """
    patch, window = model.patch_size, model.config.window
    crop = 0 if window.whole_image else window.slide_crop
    with stage("post"):
        size = windows.preprocess_size(*image.shape[-2:], patch, crop)
        if size != tuple(image.shape[-2:]):
            image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        if window.whole_image:
            boxes = torch.tensor([[0, 0, size[0] // patch, size[1] // patch]])
        else:
            boxes, _ = windows.sliding_windows(*size, crop, window.slide_stride, patch)
        crops = torch.stack([image[:, y1 * patch:y2 * patch, x1 * patch:x2 * patch]
                             for y1, x1, y2, x2 in boxes.tolist()])
    with stage("clip"), model.tf32("clip"):
        tokens = [clip_vit.clip_trunk(model.clip.visual, chunk) for chunk in crops.split(window.crop_batch_size)]
        grid = tokens[0][1]
        tokens = torch.cat([t for t, _ in tokens])
    feats, ratio = model.patch_features(crops, tokens, grid)
    with stage("post"):
        return windows.splice_crops(feats[None], boxes, (size[0] // patch, size[1] // patch), ratio)[0]


@torch.no_grad()
def features_logits(model, feats: Tensor) -> Tensor:
    """(D, h, w) image features before CLIP's head -> (Q, h, w) query logits.

    ``proj(ln_post(x))``, L2-normalised, dotted with the query embeddings.
    """
    text_feats = model.text_state()[0]
    with stage("clip"), model.tf32("clip"):
        projected = clip_vit.project_patches(model.clip.visual, feats.flatten(1).T)  # (h w, E)
    with stage("text"):
        return (projected @ text_feats.T).T.reshape(-1, *feats.shape[-2:])


MERGE_STEPS: dict[str, MergeStep] = {"logits": AverageLogits(), "features": SpliceFeatures()}


def register_merge_step(name: str, step: MergeStep) -> MergeStep:
    """Add a merge step that a method entry can name (``Method(merge=name)``); a name is registered once."""
    if name in MERGE_STEPS:
        raise ValueError(f"merge step {name!r} is already registered")
    MERGE_STEPS[name] = step
    return step


def get_merge_step(method: str, name: str) -> MergeStep:
    """The merge step ``name`` of ``method``'s entry; an unknown one is a one-line :class:`ConfigError`."""
    if name not in MERGE_STEPS:
        raise ConfigError(f"method {method!r} merges its crops with {name!r}, which is no merge step; merge steps: "
                          f"{', '.join(MERGE_STEPS)} (cass.merges.register_merge_step adds one)")
    return MERGE_STEPS[name]
