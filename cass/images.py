"""Images in, model input out: mmseg's test pipeline without mmcv.

The benchmark configs load an image with ``LoadImageFromFile`` (OpenCV,
BGR uint8), resize it with ``Resize(scale=(2048, 336), keep_ratio=True)``
(mmcv's ``imrescale``: one scale factor, sizes rounded half up, OpenCV's
bilinear ``cv2.resize``) and normalise it with CLIP's statistics after
BGR -> RGB. The functions here compute exactly that (the tests compare them
with mmseg's transforms), so segmenting a photo needs neither mmcv nor mmseg.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from skimage.util import img_as_ubyte
from torch import Tensor

from .constants import CLIP_MEAN, CLIP_STD


class ImageError(ValueError):
    """An image is missing, unreadable, empty or of an unsupported kind."""


def check_image_file(path: str | os.PathLike) -> None:
    """Raise :class:`ImageError` unless ``path`` is an existing file (before any slow work)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}" if not path.exists() else f"not a file: {path}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 BGR, decoded like mmcv's ``imfrombytes(flag='color')``:
    grey repeated over three channels, alpha dropped, 16 bits reduced to 8,
    EXIF orientation applied."""
    path = Path(path)
    check_image_file(path)
    try:
        data = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as err:
        raise ImageError(f"cannot read image {path}: {err.strerror or err}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(f"cannot read image {path}: not an image format OpenCV can decode")
    return image


def as_bgr_uint8(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA array -> (H, W, 3) uint8 BGR.

    Done as OpenCV does when it loads such a file: grey is repeated over the
    three channels and alpha is dropped. 16-bit and float ([0, 1]) images are
    scaled to 8 bits by scikit-image's ``img_as_ubyte`` (16-bit: the high byte,
    which is also what OpenCV keeps of a 16-bit PNG).
    """
    if not isinstance(array, np.ndarray):
        raise ImageError(f"expected an image array, got {type(array).__name__}")
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


def rescaled_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(new_h, new_w) of mmcv's ``imrescale`` with ``scale=(long, short)`` bounds:
    one factor ``min(long / max(h, w), short / min(h, w))``, sizes rounded half up."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def resize_keep_ratio(image: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """mmseg's ``Resize(scale, keep_ratio=True)`` of an (H, W, 3) uint8 image (bilinear)."""
    height, width = image.shape[:2]
    new_h, new_w = rescaled_size(height, width, scale)
    if new_h < 1 or new_w < 1:
        raise ImageError(f"a {width}x{height} image is too elongated to resize to the model's scale {scale}: "
                         f"its short side would be {min(new_h, new_w)} pixels; crop it to a less elongated shape")
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def normalise(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 BGR -> (3, H, W) float32 CLIP-normalised RGB (mmseg's data pre-processor)."""
    rgb = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[[2, 1, 0]].float()
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (rgb - mean) / std


def denormalise(image: Tensor) -> Tensor:
    """(..., 3, H, W) CLIP-normalised RGB -> float32 RGB values in [0, 255] (the inverse of :func:`normalise`)."""
    mean = image.new_tensor(CLIP_MEAN)[:, None, None]
    std = image.new_tensor(CLIP_STD)[:, None, None]
    return image.float() * std + mean


def rgb_uint8(image: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(3, h, w) CLIP-normalised image -> (H, W, 3) uint8 RGB at ``size`` (bilinear, ``cv2.resize``)."""
    rgb = denormalise(image).round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    if rgb.shape[:2] != tuple(size):
        rgb = cv2.resize(rgb, (size[1], size[0]))
    return rgb
