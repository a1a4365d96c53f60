"""Picture of a segmentation: the image under a translucent colour per class,
with a legend of the classes present and their pixel share (PIL + numpy);
and of region masks: a colour per region, their edges drawn."""
from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GOLDEN_RATIO = 0.618033988749895


@dataclass(frozen=True)
class LegendEntry:
    """One class present in a label map; ``share`` in percent of its pixels."""

    index: int
    name: str
    share: float
    color: tuple[int, int, int]


def format_share(share: float) -> str:
    """``12.3%``; a class present on less than 0.05 % of the pixels shows ``<0.1%``, not ``0.0%``."""
    return f"{share:.1f}%" if share >= 0.05 else "<0.1%"


def class_colors(num_classes: int) -> np.ndarray:
    """(C, 3) uint8 saturated colours, hues spaced by the golden ratio so that
    neighbouring class indices look different."""
    hues = (np.arange(num_classes) * GOLDEN_RATIO) % 1.0
    return np.array([[round(255 * v) for v in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues],
                    dtype=np.uint8).reshape(num_classes, 3)


def legend_entries(labels: np.ndarray, class_names: list[str], colors: np.ndarray) -> list[LegendEntry]:
    """The classes present in ``labels`` (H, W), largest share first."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    order = np.argsort(-counts, kind="stable")
    return [LegendEntry(int(c), class_names[c], 100.0 * counts[c] / labels.size, tuple(int(v) for v in colors[c]))
            for c in order if counts[c] > 0]


def overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """Blend (H, W, 3) uint8 RGB ``image`` with the colour of each pixel's class."""
    return Image.blend(Image.fromarray(image), Image.fromarray(colors[labels]), opacity)


def render_regions(image: np.ndarray, regions: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """(H, W, 3) uint8 RGB ``image`` under a colour per region of ``regions`` (H, W), each region's edge
    in white; pixels no mask covers (labels <= 0, as the generators of :mod:`cass.masks` write them) keep
    the image, in grey."""
    from skimage.segmentation import find_boundaries

    _, index = np.unique(regions, return_inverse=True)
    index = index.reshape(regions.shape)
    painted = np.asarray(overlay(image, index, class_colors(int(index.max()) + 1), opacity)).copy()
    uncovered = regions <= 0
    painted[uncovered] = np.asarray(Image.fromarray(image).convert("L").convert("RGB"))[uncovered]
    painted[find_boundaries(index, mode="inner")] = 255
    return Image.fromarray(painted)


def render(image: np.ndarray, labels: np.ndarray, class_names: list[str],
           opacity: float = 0.5) -> tuple[Image.Image, list[LegendEntry]]:
    """The overlay at the image's size, with a legend panel on its right.

    The panel lists each class present as a colour swatch and ``name share%``;
    the text scales with the image height. The picture is
    ``(W + panel width) x max(H, panel height)``, the overlay at its top left.

    Returns:
        The RGB picture and its legend entries.
    """
    height, width = labels.shape
    colors = class_colors(len(class_names))
    entries = legend_entries(labels, class_names, colors)
    font = ImageFont.load_default(size=max(12, height // 32))
    lines = [f"{e.name}  {format_share(e.share)}" for e in entries]
    size = int(font.getbbox("Mg")[3])
    pad, row = max(4, size // 2), int(size * 1.5)
    text_width = max(int(font.getlength(line)) for line in lines)
    panel_width = 3 * pad + size + text_width
    canvas = Image.new("RGB", (width + panel_width, max(height, 2 * pad + row * len(entries))), "white")
    canvas.paste(overlay(image, labels, colors, opacity), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (entry, line) in enumerate(zip(entries, lines)):
        top = pad + i * row
        draw.rectangle([width + pad, top, width + pad + size - 1, top + size - 1], fill=entry.color)
        draw.text((width + 2 * pad + size, top), line, fill="black", font=font)
    return canvas, entries


def legend_record(labels: np.ndarray, class_names: list[str], entries: list[LegendEntry]) -> dict:
    """The legend as written beside a result (``demo.py``'s JSON, the web app's download):
    image size, the vocabulary, and each class present with its index, name, share and colour."""
    height, width = labels.shape
    legend = [dict(index=e.index, name=e.name, share=round(e.share, 3), color=list(e.color)) for e in entries]
    return dict(height=height, width=width, classes=class_names, legend=legend)


def save_png(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray, class_names: list[str],
             opacity: float = 0.5) -> list[LegendEntry]:
    """Write :func:`render`'s picture as a PNG; returns the legend entries."""
    picture, entries = render(image, labels, class_names, opacity)
    picture.save(path, format="PNG")
    return entries
