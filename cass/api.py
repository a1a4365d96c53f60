"""Segment your own images: CASS for notebooks and scripts, without mmcv or mmseg.

    from cass import Segmenter

    segmenter = Segmenter(classes=["cat", "dog, puppy", "sky"])  # synonyms: ", " inside one entry
    result = segmenter("photo.jpg")      # or an (H, W, 3) RGB uint8 array, or a PIL image
    result.probs                         # (C, H, W) class probabilities at the image's size
    result.labels                        # (H, W) class index per pixel

Settings come from a benchmark config (``configs/cfg_<benchmark>.py``, read
by :func:`cass.config_files.load_config` like in ``eval.py``; default: the
ADE20K one, the broadest vocabulary): its model keys build the
:class:`~cass.model.CASSModel` and its test pipeline's ``Resize`` scale sizes
the input, computed by :mod:`cass.images` exactly as mmseg's pipeline does,
so a result equals what ``eval.py`` predicts for the same file. The text embeddings of a vocabulary
are computed once and reused.

Another method of the family runs with the config's settings (``protocol='cass'``,
the default) or with its own published ones for the config's benchmark
(``protocol='published'``: windows, test resize, thresholds, class-name file,
:func:`cass.protocols.protocol_options`), as ``eval.py``, ``demo.py`` and the web
app do with ``--protocol``::

    Segmenter("configs/cfg_voc21.py", method="trident", protocol="published")
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .build import build_model
from .config import ConfigError
from .config_files import DEFAULT_CONFIG, load_config, model_keys, resize_scale, with_vfm_path
from .benchmarks import PROTOCOL_NAMES
from .protocols import protocol_options
from .images import ImageError, as_bgr_uint8, normalise, pil_to_array, read_image, resize_keep_ratio
from .model import CASSModel
from .text import VocabularyError

ImageInput = str | os.PathLike | np.ndarray | Image.Image
# Without a protocol a config's settings are used as they are, whatever the method (the behaviour before
# protocols were a setting); 'published' gives a method its own (eval_all.sh's default, the web app's).
DEFAULT_PROTOCOL = "cass"


def protocol_cfg_options(config: str | os.PathLike | None, cfg_options: dict | None = None,
                         protocol: str = DEFAULT_PROTOCOL, method: str | None = None) -> dict:
    """The overrides every entry point merges into a benchmark config: the method's ``protocol``
    settings for the config's benchmark (:func:`cass.protocols.protocol_options`), then ``cfg_options``,
    the user's explicit ones, which win.

    Args:
        config: the config file; None: the default one (ADE20K's).
        cfg_options: mmseg-style overrides (``{'model.prob_thd': 0.1}``).
        protocol: ``'published'`` (the method's published settings) or ``'cass'``
            (the config's own: ``cfg_options`` unchanged).
        method: the method; None: ``cfg_options``' ``model.method``, else the config's.

    Raises:
        ConfigError: an unknown protocol or method, or published settings asked
            for a config that is no benchmark's (one line).
    """
    options = dict(cfg_options or {})
    if protocol not in PROTOCOL_NAMES:
        raise ConfigError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOL_NAMES)}")
    if protocol == "cass":
        return options
    path = DEFAULT_CONFIG if config is None else config
    if method is None:
        method = options.get("model.method") or load_config(path, options).model.get("method", "cass")
    try:
        published = protocol_options(method, path, protocol)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
    return {**published, **options}


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


def _device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {str(device)!r}: use 'cpu', 'cuda' or 'cuda:<index>'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here")
    return device


class Segmenter:
    """CASS for your images: built once, called on any number of images.

    Args:
        config: a benchmark config (``configs/*.py``); None: the ADE20K one.
        classes: the vocabulary, one entry per class, synonyms separated by
            ``", "`` (``["sky", "dog, puppy"]``); replaces the config's class file.
        class_file: a class-name file instead (one class per line).
        clip_path, vfm_path: local weights of CLIP and of the VFM (DINO,
            DINOv2, DINOv3); None keeps the config's (public weights,
            downloaded once). ``dino_path`` is the VFM's old name.
        sam_path: local SAM weights where the method uses SAM (Trident);
            None: the public file, downloaded once.
        mask_path: local weights of the mask generator (SAM2) where the method
            uses region masks (CorrCLIP); None: the public file, downloaded once.
        device: where the model runs (``'cpu'``, ``'cuda'``, ``'cuda:1'``).
        precision: one of :data:`cass.config.PRECISIONS` for every tower (CLIP, the VFM, SAM);
            None keeps the config's (``'auto'``: float32 on the CPU).
        cfg_options: mmseg-style overrides of the config, ``{'model.prob_thd': 0.1}``;
            they win over the protocol's settings.
        protocol: ``'cass'`` (default): the config's settings, whatever the
            method; ``'published'``: the method's published settings for the
            config's benchmark (windows, test resize, thresholds, class-name
            file; :func:`protocol_cfg_options`), the same as ``eval.py --protocol
            published``. Identical for CASS. ``classes``, ``class_file`` and
            ``**overrides`` win over both.
        **overrides: model keys (:func:`cass.build.build_model`, settings of
            :class:`cass.config.CASSConfig`), e.g. ``slide_crop=0``.
    """

    def __init__(self, config: str | os.PathLike | None = None, classes: Sequence[str] | None = None,
                 class_file: str | os.PathLike | None = None, clip_path: str | None = None,
                 vfm_path: str | None = None, device: str | torch.device = "cpu", precision: str | None = None,
                 cfg_options: dict | None = None, dino_path: str | None = None, sam_path: str | None = None,
                 protocol: str = DEFAULT_PROTOCOL, mask_path: str | None = None, **overrides) -> None:
        if vfm_path is not None and dino_path is not None:
            raise ConfigError("give the VFM's weights once: vfm_path (dino_path is its old name)")
        self.protocol = protocol
        cfg = load_config(config, protocol_cfg_options(config, cfg_options, protocol, overrides.get("method")))
        keys = with_vfm_path(model_keys(cfg), vfm_path if vfm_path is not None else dino_path)
        if clip_path is not None:
            keys["clip_path"] = clip_path
        if sam_path is not None:
            keys.pop("sam_ckpt", None)
            keys["sam_path"] = sam_path
        if mask_path is not None:
            keys["mask_path"] = mask_path
        if precision is not None:
            keys["precision"] = precision
            for tower in ("vfm_precision", "sam_precision"):  # one precision for every tower
                keys.pop(tower, None)
        keys.update(overrides)
        if classes is not None and class_file is not None:
            raise VocabularyError("give classes or class_file, not both")
        if classes is not None:
            keys.pop("name_path", None)
            keys["classes"] = classes
        elif class_file is not None:
            keys.pop("classes", None)
            keys["name_path"] = str(class_file)
        self.scale = resize_scale(cfg)
        device = _device(device)
        self.model: CASSModel = build_model(**keys).to(device)
        self.device = self.model.device

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def set_classes(self, classes: Sequence[str]) -> None:
        """Replace the vocabulary (one entry per class, synonyms ``", "``-separated)."""
        self.model.set_vocabulary(classes)

    def encode_text(self) -> Tensor:
        """Text embeddings (Q, E) of the vocabulary on the model's device.

        Computed on the first call (or read from the disk cache) and reused by
        every image until the vocabulary changes; calling it is optional.
        """
        return self.model.text_state()[0]

    def load(self, image: ImageInput) -> np.ndarray:
        """(H, W, 3) uint8 BGR image from a path, an array or a PIL image."""
        if isinstance(image, (str, os.PathLike)):
            return read_image(image)
        if isinstance(image, Image.Image):
            image = pil_to_array(image)
        if not isinstance(image, np.ndarray):
            raise ImageError(f"expected an image path, an RGB array or a PIL image, got {type(image).__name__}")
        return as_bgr_uint8(image)

    def prepare(self, bgr: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 BGR -> (3, h, w) resized, normalised model input."""
        height, width = bgr.shape[:2]
        resized = resize_keep_ratio(bgr, self.scale)
        if min(resized.shape[:2]) < self.model.patch_size:
            raise ImageError(f"a {width}x{height} image is resized to {resized.shape[:2]} pixels, "
                             "less than one CLIP patch across: crop it to a less elongated shape")
        return normalise(resized)

    def __call__(self, image: ImageInput) -> Segmentation:
        """Segment one image: a file path, an (H, W[, 3|4]) array (RGB, uint8,
        uint16 or float in [0, 1]) or a PIL image."""
        return self.segment([image])[0]

    def segment(self, images: Sequence[ImageInput]) -> list[Segmentation]:
        """Segment several images in one batch (their crops share tower forwards)."""
        paths = [str(image) if isinstance(image, (str, os.PathLike)) else None for image in images]
        return self.segment_loaded([self.load(image) for image in images], paths=paths)

    def segment_loaded(self, originals: Sequence[np.ndarray], inputs: Sequence[Tensor] | None = None,
                       paths: Sequence[str | None] | None = None,
                       region_masks: Sequence[np.ndarray] | None = None) -> list[Segmentation]:
        """:meth:`segment` for images already loaded by :meth:`load` ((H, W, 3) uint8 BGR),
        and optionally already prepared by :meth:`prepare`; ``paths``: their files (mask files are
        found by the image's name); ``region_masks``: each image's (H, W) region labels, where the
        method uses them (CorrCLIP), instead of its mask generator's."""
        if inputs is None:
            inputs = [self.prepare(bgr) for bgr in originals]
        rgbs = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for bgr in originals]
        sam_images = rgbs if self.model.sees_originals else None  # SAM and mask generators see the original
        predictions = self.model(inputs, [bgr.shape[:2] for bgr in originals], sam_images, region_masks, paths)
        return [Segmentation(probs=p.probs.cpu().numpy(), labels=p.labels.cpu().numpy(),
                             class_names=self.class_names, image=rgb)
                for p, rgb in zip(predictions, rgbs)]
