"""Segment your own images: CASS on single images for notebooks and scripts.

    from cass.api import Segmenter

    segmenter = Segmenter(classes=["cat", "dog, puppy", "sky"])  # synonyms: ", " inside one entry
    result = segmenter("photo.jpg")      # or an (H, W, 3) RGB uint8 array, or a PIL image
    result.probs                         # (C, H, W) class probabilities at the image's size
    result.labels                        # (H, W) class index per pixel

The model is the mmseg segmentor built from a benchmark config (or from the
defaults below) and each image goes through that config's test pipeline
(``LoadImageFromFile``, ``Resize``, ``PackSegInputs``) and the model's data
pre-processor, so a result equals what ``model.predict`` gives inside mmseg.
The text embeddings of a vocabulary are computed once and reused.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmseg.registry import MODELS, TRANSFORMS
from PIL import Image
from skimage.util import img_as_ubyte
from torch import Tensor

from .segmentor import CASSSegmentor
from .text import VocabularyError, parse_vocabulary, read_class_file

# Without a config: the ADE20K config's settings (the broadest vocabulary of
# the benchmarks) and the test pipeline shared by all configs but Cityscapes.
DEFAULT_MODEL = dict(type="CASSSegmentor", clip_path="ViT-B/16", vfm="dino_vitb8", global_semantics_weight=0.3,
                     mean_vector_weight=0.05, h_threshold=0.06, slide_crop=224, slide_stride=112, prob_thd=0.0)
DEFAULT_TEST_PIPELINE = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(2048, 336), keep_ratio=True),
                         dict(type="PackSegInputs")]
ImageInput = str | os.PathLike | np.ndarray | Image.Image


class ImageError(ValueError):
    """An image is missing, unreadable or not an image array."""


@dataclass
class Segmentation:
    """CASS output for one image, at the image's original size.

    Attributes:
        probs: (C, H, W) float32 class probabilities: softmax over the queries,
            max over each class's synonyms. It takes C x H x W x 4 bytes
            (1.6 GB for 4 classes on a 10000 x 10000 image).
        labels: (H, W) int64 class index per pixel (argmax; 0 where the top
            probability is below the model's ``prob_thd``).
        class_names: display name of each class (its first synonym).
        image: (H, W, 3) uint8 RGB image as loaded, before resizing.
    """

    probs: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    image: np.ndarray

    def shares(self) -> dict[str, float]:
        """Percentage of pixels of each class present, largest first."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        order = np.argsort(-counts, kind="stable")
        return {self.class_names[c]: 100.0 * counts[c] / self.labels.size for c in order if counts[c] > 0}


def load_config(config: str | os.PathLike | None = None, cfg_options: dict | None = None) -> Config:
    """A benchmark config (mmengine), or the defaults, with mmseg-style
    ``--cfg-options`` overrides (``{'model.prob_thd': 0.1}``) merged in."""
    if config is None:
        cfg = Config(copy.deepcopy(dict(model=DEFAULT_MODEL, test_pipeline=DEFAULT_TEST_PIPELINE)))
    else:
        if not Path(config).is_file():
            raise FileNotFoundError(f"config not found: {config}")
        cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def image_pipeline(cfg: Config) -> list[dict]:
    """The config's test pipeline without annotation loading: a loader first."""
    pipeline = cfg.get("test_pipeline") or cfg.test_dataloader.dataset.pipeline
    steps = [dict(step) for step in pipeline if "Annotations" not in step["type"]]
    if not steps or not steps[0]["type"].startswith("LoadImage"):
        raise ValueError("the config's test pipeline must start with an image loader (LoadImageFromFile)")
    return steps


def as_bgr_uint8(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA array -> (H, W, 3) uint8 BGR.

    Done as OpenCV does when mmseg loads such a file: grey is repeated over the
    three channels and alpha is dropped. 16-bit and float ([0, 1]) images are
    scaled to 8 bits by scikit-image's ``img_as_ubyte`` (16-bit: the high byte,
    which is also what OpenCV keeps of a 16-bit PNG).
    """
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"empty image array of shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16, np.bool_) and array.dtype.kind != "f":
        raise ImageError(f"unsupported image dtype {array.dtype}: pass uint8, uint16 or float in [0, 1]")
    try:
        array = img_as_ubyte(array)
    except ValueError as err:  # floats outside [-1, 1]
        raise ImageError(f"float image values must lie in [0, 1] ({err})") from None
    conversion = {1: cv2.COLOR_GRAY2BGR, 3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGR}[array.shape[2]]
    return cv2.cvtColor(np.ascontiguousarray(array), conversion)


def pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as an array for :func:`as_bgr_uint8`; palette, CMYK, ... become RGB."""
    if image.mode in ("L", "RGB", "RGBA") or image.mode.startswith("I;16"):
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def check_image_file(path: str | os.PathLike) -> None:
    """Raise :class:`ImageError` unless ``path`` is an existing file (before any slow work)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}" if not path.exists() else f"not a file: {path}")


def _device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}: use 'cpu', 'cuda' or 'cuda:<index>'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here")
    return device


class Segmenter:
    """CASS for single images: built once, called on any number of images.

    Args:
        config: a benchmark config (``configs/*.py``); None uses
            :data:`DEFAULT_MODEL` and :data:`DEFAULT_TEST_PIPELINE`.
        classes: the vocabulary, one entry per class, synonyms separated by
            ``", "`` (``["sky", "dog, puppy"]``); replaces the config's class file.
        class_file: a class-name file instead (one class per line).
        clip_path, dino_path: local weights; None keeps the config's (public
            weights, downloaded once).
        device: where the model runs (``'cpu'``, ``'cuda'``, ``'cuda:1'``).
        precision: ``'auto'``, ``'fp32'``, ``'fp16'`` or ``'bf16'``; None keeps
            the config's.
        cfg_options: mmseg-style overrides of the config, ``{'model.prob_thd': 0.1}``.
        **overrides: keyword arguments of :class:`~cass.segmentor.CASSSegmentor`.
    """

    def __init__(self, config: str | os.PathLike | None = None, classes: Sequence[str] | None = None,
                 class_file: str | os.PathLike | None = None, clip_path: str | None = None,
                 dino_path: str | None = None, device: str | torch.device = "cpu", precision: str | None = None,
                 cfg_options: dict | None = None, **overrides) -> None:
        cfg = load_config(config, cfg_options)
        model_cfg = cfg.model.to_dict()
        given = dict(clip_path=clip_path, dino_path=dino_path, precision=precision)
        model_cfg.update({key: value for key, value in given.items() if value is not None}, **overrides)
        if classes is not None and class_file is not None:
            raise VocabularyError("give classes or class_file, not both")
        # Check the vocabulary before the (slow) weights are loaded.
        if classes is not None:
            if isinstance(classes, str):
                raise VocabularyError(f"classes must be a list of class names, got the string {classes!r}")
            parse_vocabulary(list(classes))
            model_cfg.pop("name_path", None)
            model_cfg["classes"] = list(classes)
        elif class_file is not None:
            read_class_file(class_file)
            model_cfg.pop("classes", None)
            model_cfg["name_path"] = str(class_file)
        elif model_cfg.get("classes") is None and model_cfg.get("name_path") is None:
            raise VocabularyError("no classes: give classes=[...] or class_file=...")

        # Built in the config's registry scope, as mmseg's runner does (nested
        # parts such as the data pre-processor are looked up there too).
        model_cfg.setdefault("_scope_", cfg.get("default_scope", "mmseg"))
        device = _device(device)
        try:
            self.model: CASSSegmentor = MODELS.build(model_cfg)
        except TypeError as err:  # a misspelt setting
            if "unexpected keyword argument" not in str(err):
                raise
            raise ValueError(f"unknown model setting: {err}") from None
        self.model.to(device).eval()
        self.device = next(self.model.clip.parameters()).device  # resolved: 'cuda' -> 'cuda:0'

        steps = image_pipeline(cfg)
        self.file_loader = TRANSFORMS.build(steps[0])
        self.array_loader = TRANSFORMS.build(dict(type="LoadImageFromNDArray"))
        self.transforms = Compose([TRANSFORMS.build(step) for step in steps[1:]])

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    def set_classes(self, classes: Sequence[str]) -> None:
        """Replace the vocabulary (one entry per class, synonyms ``", "``-separated)."""
        if isinstance(classes, str):
            raise VocabularyError(f"classes must be a list of class names, got the string {classes!r}")
        self.model.set_vocabulary(list(classes))

    def encode_text(self) -> Tensor:
        """Text embeddings (Q, E) of the vocabulary on the model's device.

        Computed on the first call (or read from the disk cache) and reused by
        every image until the vocabulary changes; calling it is optional.
        """
        return self.model.text_state(self.device)[0]

    def load(self, image: ImageInput) -> dict:
        """mmseg pipeline results of the loading step: ``img`` is (H, W, 3) uint8 BGR."""
        if isinstance(image, (str, os.PathLike)):
            return self._load_file(Path(image))
        if isinstance(image, Image.Image):
            image = pil_to_array(image)
        if not isinstance(image, np.ndarray):
            raise ImageError(f"expected an image path, an RGB array or a PIL image, got {type(image).__name__}")
        return self.array_loader(dict(img=as_bgr_uint8(image)))

    def _load_file(self, path: Path) -> dict:
        check_image_file(path)
        try:
            return self.file_loader(dict(img_path=str(path)))
        except OSError as err:
            raise ImageError(f"cannot read image {path}: {err.strerror or err}") from None
        except Exception:  # noqa: BLE001 - mmcv fails on undecodable bytes with assorted errors
            raise ImageError(f"cannot read image {path}: not an image format OpenCV can decode") from None

    def __call__(self, image: ImageInput) -> Segmentation:
        """Segment one image: a file path, an (H, W[, 3|4]) array (RGB, uint8,
        uint16 or float in [0, 1]) or a PIL image."""
        results = self.load(image)
        original = results["img"]
        height, width = original.shape[:2]
        try:
            packed = self.transforms(results)
        except cv2.error:  # the resized short side rounds to zero pixels
            raise ImageError(f"a {width}x{height} image is too elongated to resize for the model: "
                             "crop it to a less elongated shape") from None
        small = min(packed["inputs"].shape[-2:])
        if small < self.model.clip.visual.conv1.stride[0]:
            raise ImageError(f"a {width}x{height} image is resized to {tuple(packed['inputs'].shape[-2:])} pixels, "
                             "less than one CLIP patch across: crop it to a less elongated shape")
        batch = dict(inputs=[packed["inputs"]], data_samples=[packed["data_samples"]])
        sample = self.model.test_step(batch)[0]
        return Segmentation(probs=sample.seg_logits.data.cpu().numpy(),
                            labels=sample.pred_sem_seg.data[0].cpu().numpy(),
                            class_names=self.class_names, image=cv2.cvtColor(original, cv2.COLOR_BGR2RGB))
