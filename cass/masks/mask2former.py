"""Mask2Former's panoptic segments as regions, as CorrCLIP's ``set_mask_generator('mask2former')``.

The release (transformers 4.47.1) loads ``facebook/mask2former-swin-large-coco-panoptic`` with
transformers' ``AutoImageProcessor`` (its PIL/numpy image processor, which transformers 5 calls
``Mask2FormerImageProcessorPil``: taken here with ``backend='pil'``) and ``Mask2FormerForUniversalSegmentation``,
runs it under float16 autocast on CUDA (float32 weights) on the PIL image, and
takes ``post_process_panoptic_segmentation(outputs, target_sizes=[(H, W)])[0]
["segmentation"]`` as the label map: segments 1..n, 0 where no segment won
the pixel (-1 everywhere when no query passed the threshold). The class of a
segment is not used. transformers is an optional dependency (``pip install
transformers``); the generator says so in one line when it is missing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .labels import as_label_map, check_image
from .runtime import half_autocast, load_pretrained, pretrained_identity, resolve_device, runs_half

RELEASE_MODEL = "facebook/mask2former-swin-large-coco-panoptic"


def _numpy_processor() -> dict:
    """``from_pretrained`` keywords for the PIL/numpy image processor, the one ``AutoImageProcessor`` gave
    the release (transformers 4.47.1); transformers 5 defaults to a torchvision-backed one."""
    import transformers

    return {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}


def _transformers():
    try:
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation
    except ImportError as err:
        raise ImportError(f"the 'mask2former' mask generator needs transformers ({err}); install it with "
                          "`pip install transformers`") from None
    return AutoImageProcessor, Mask2FormerForUniversalSegmentation


@dataclass
class Mask2FormerMasks:
    """The ``mask2former`` generator: a Mask2Former's panoptic segmentation map.

    Args:
        model: a Hugging Face hub id (default the release's
            ``facebook/mask2former-swin-large-coco-panoptic``, downloaded into
            the hub cache) or a local folder written by ``save_pretrained``
            (model and image processor).
        threshold, mask_threshold, overlap_mask_area_threshold:
            ``post_process_panoptic_segmentation``'s (transformers' defaults, as released).
        device: None: CUDA when available.
        precision: ``'auto'`` (float16 autocast on CUDA, as released; float32
            elsewhere), ``'float16'`` (CUDA only) or ``'float32'``.
    """

    model: str = RELEASE_MODEL
    threshold: float = 0.5
    mask_threshold: float = 0.5
    overlap_mask_area_threshold: float = 0.8
    device: str | None = None
    precision: str = "auto"
    _loaded: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.device = resolve_device("mask2former", self.device, self.precision)
        _transformers()  # a missing package is said when the generator is built

    @property
    def half(self) -> bool:
        return runs_half(self.device, self.precision)

    def settings_key(self) -> str:
        settings = dict(model=pretrained_identity(self.model), threshold=self.threshold,
                        mask_threshold=self.mask_threshold,
                        overlap_mask_area_threshold=self.overlap_mask_area_threshold,
                        precision="float16" if self.half else "float32")
        return "mask2former " + json.dumps(settings, sort_keys=True)

    def load(self) -> tuple:
        """(image processor, model), loaded on first use."""
        if self._loaded is None:
            processor_class, model_class = _transformers()
            processor, model = load_pretrained("Mask2Former", self.model, lambda: (
                processor_class.from_pretrained(self.model, **_numpy_processor()),
                model_class.from_pretrained(self.model)))
            self._loaded = processor, model.to(self.device).eval()
        return self._loaded

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
        from PIL import Image

        h, w = check_image(image)
        processor, model = self.load()
        inputs = processor(Image.fromarray(image), return_tensors="pt").to(self.device)
        with torch.inference_mode(), half_autocast(self.half):
            outputs = model(**inputs)
        result = processor.post_process_panoptic_segmentation(
            outputs, threshold=self.threshold, mask_threshold=self.mask_threshold,
            overlap_mask_area_threshold=self.overlap_mask_area_threshold,
            label_ids_to_fuse=set(),  # the release passes None: the same (nothing fused), with a log line per image
            target_sizes=[(h, w)])[0]
        return as_label_map(result["segmentation"].cpu().numpy().astype(np.int64), (h, w), "Mask2Former's segmentation")
