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

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..weights import WeightsError
from .labels import as_label_map, check_image

RELEASE_MODEL = "facebook/mask2former-swin-large-coco-panoptic"
PRECISIONS = ("auto", "float16", "float32")


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
        if self.precision not in PRECISIONS:
            raise ConfigError(f"mask generator 'mask2former': precision {self.precision!r} is not one of "
                              f"{', '.join(PRECISIONS)}")
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.precision == "float16" and torch.device(self.device).type != "cuda":
            raise ConfigError(f"mask generator 'mask2former': precision float16 needs a CUDA device, "
                              f"not {self.device!r}")
        _transformers()  # a missing package is said when the generator is built

    @property
    def half(self) -> bool:
        return self.precision == "float16" or (self.precision == "auto" and torch.device(self.device).type == "cuda")

    def settings_key(self) -> str:
        folder = Path(self.model).expanduser()
        if folder.is_dir():  # a local model: its files' sizes and times stand for its weights
            files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
            model = [str(folder.resolve()), files]
        else:
            model = self.model
        settings = dict(model=model, threshold=self.threshold, mask_threshold=self.mask_threshold,
                        overlap_mask_area_threshold=self.overlap_mask_area_threshold,
                        precision="float16" if self.half else "float32")
        return "mask2former " + json.dumps(settings, sort_keys=True)

    def load(self) -> tuple:
        """(image processor, model), loaded on first use."""
        if self._loaded is None:
            processor_class, model_class = _transformers()
            try:
                processor = processor_class.from_pretrained(self.model, **_numpy_processor())
                model = model_class.from_pretrained(self.model)
            except (OSError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise WeightsError(f"cannot load Mask2Former {self.model!r} ({type(err).__name__}: {first}); "
                                   "give a hub id that is reachable or cached, or a folder written by "
                                   "save_pretrained") from None
            self._loaded = processor, model.to(self.device).eval()
        return self._loaded

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
        from PIL import Image

        h, w = check_image(image)
        processor, model = self.load()
        inputs = processor(Image.fromarray(image), return_tensors="pt").to(self.device)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.half else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            outputs = model(**inputs)
        result = processor.post_process_panoptic_segmentation(
            outputs, threshold=self.threshold, mask_threshold=self.mask_threshold,
            overlap_mask_area_threshold=self.overlap_mask_area_threshold,
            label_ids_to_fuse=set(),  # the release passes None: the same (nothing fused), with a log line per image
            target_sizes=[(h, w)])[0]
        return as_label_map(result["segmentation"].cpu().numpy().astype(np.int64), (h, w), "Mask2Former's segmentation")
