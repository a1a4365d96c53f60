"""Tiny benchmark datasets in mmseg's real folder layouts, for tests."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ("2007_000032", "2007_000039", "2007_000063")


def write_image(path: Path, height: int = 64, width: int = 96, seed: int = 0) -> Path:
    """A smooth random RGB JPEG."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)
    return path


def block_label(classes: Sequence[int], height: int = 64, width: int = 96, border: int | None = 255) -> np.ndarray:
    """Vertical bands of ``classes`` with a one-pixel ``border`` frame (VOC's ignore style)."""
    label = np.zeros((height, width), dtype=np.uint8)
    bands = np.array_split(np.arange(width), len(classes))
    for cls, columns in zip(classes, bands):
        label[:, columns] = cls
    if border is not None:
        label[[0, -1], :] = border
        label[:, [0, -1]] = border
    return label


def write_label(path: Path, label: np.ndarray, palette: bool = False) -> Path:
    """A label PNG: plain 8-bit, or palette-mode like VOC's ``SegmentationClass``."""
    if palette:
        image = Image.frombytes("P", label.shape[::-1], np.ascontiguousarray(label).tobytes())
        image.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tolist())
    else:
        image = Image.fromarray(label)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def voc_layout(root: Path, names: Sequence[str] = NAMES, labels: Sequence[np.ndarray] | None = None) -> Path:
    """``JPEGImages``, ``SegmentationClass`` (palette PNGs), ``ImageSets/Segmentation/val.txt``."""
    if labels is None:
        labels = [block_label([0, 15, 8 + i, 12]) for i in range(len(names))]
    for i, (name, label) in enumerate(zip(names, labels)):
        write_image(root / "JPEGImages" / f"{name}.jpg", *label.shape, seed=i)
        write_label(root / "SegmentationClass" / f"{name}.png", label, palette=True)
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("".join(f"{n}\n" for n in names))
    return root


def coco_layout(root: Path, suffix: str = "_instanceTrainIds.png", names: Sequence[str] = ("000000000139",),
                label: np.ndarray | None = None) -> Path:
    """``images/val2017/*.jpg`` and ``annotations/val2017/*<suffix>``."""
    label = block_label([0, 1, 62], border=None) if label is None else label
    for i, name in enumerate(names):
        write_image(root / "images" / "val2017" / f"{name}.jpg", *label.shape, seed=i)
        write_label(root / "annotations" / "val2017" / f"{name}{suffix}", label)
    return root


def ade_layout(root: Path, names: Sequence[str] = ("ADE_val_00000001", "ADE_val_00000002"),
               label: np.ndarray | None = None) -> Path:
    """``images/validation/*.jpg`` and ``annotations/validation/*.png`` (0 = other, 1..150)."""
    label = block_label([0, 1, 150], border=None) if label is None else label
    for i, name in enumerate(names):
        write_image(root / "images" / "validation" / f"{name}.jpg", *label.shape, seed=i)
        write_label(root / "annotations" / "validation" / f"{name}.png", label)
    return root
