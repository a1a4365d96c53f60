"""Benchmark-evaluation pieces used by ``eval.py`` through the configs.

- :class:`PerClassIoUMetric`: mmseg's ``IoUMetric`` (same numbers, same log
  table) that also keeps its per-class IoU/Acc for the JSON report.
- :class:`SegResultWriter`: a test hook writing, per image, a side-by-side
  picture (image | prediction | ground truth, in the dataset's palette) and/or
  the raw predicted label map.

Registered in mmseg's ``METRICS`` and ``HOOKS`` on import; the base config's
``custom_imports`` lists this module.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mmengine.hooks import Hook
from mmseg.evaluation import IoUMetric
from mmseg.registry import HOOKS, METRICS
from mmseg.structures import SegDataSample
from PIL import Image

from ..config import ConfigError

IGNORE_COLOUR = (255, 255, 255)  # ignored ground-truth pixels
SEPARATOR = 4  # white pixels between the panels


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """mmseg's ``IoUMetric``; after each evaluation ``per_class`` holds
    ``{class: {"IoU": %, "Acc": %}}`` (None where a class never occurs) and
    ``num_images`` the number of evaluated images.

    Only the main process computes metrics, so only there are they filled.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.per_class: dict[str, dict[str, float]] = {}
        self.num_images = 0

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only or not results:
            return metrics
        intersect, union, pred_area, label_area = (sum(areas) for areas in zip(*results))
        table = self.total_area_to_metrics(intersect, union, pred_area, label_area, ["mIoU"],
                                           self.nan_to_num, self.beta)
        self.per_class = {name: {"IoU": _percent(iou), "Acc": _percent(acc)}
                          for name, iou, acc in zip(self.dataset_meta["classes"], table["IoU"], table["Acc"])}
        self.num_images = len(results)
        return metrics


def _percent(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value * 100, 2)


def colourise(labels: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 RGB; ``ignore_index`` white,
    values outside the palette black."""
    lut = np.zeros((max(int(labels.max(initial=0)), len(palette), ignore_index) + 1, 3), dtype=np.uint8)
    lut[:len(palette)] = palette
    lut[ignore_index] = IGNORE_COLOUR
    return lut[labels]


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate (H, W_i, 3) uint8 panels left to right, white gaps between."""
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, SEPARATOR, 3), 255, dtype=np.uint8)
    row = []
    for panel in panels:
        if panel.shape[0] < height:
            panel = np.pad(panel, ((0, height - panel.shape[0]), (0, 0), (0, 0)), constant_values=255)
        row += [panel, gap]
    return np.concatenate(row[:-1], axis=1)


@HOOKS.register_module()
class SegResultWriter(Hook):
    """Write each test image's results as files.

    Args:
        show_dir: where ``<name>.png`` pictures go: image | prediction |
            ground truth (when the sample has one), coloured with the
            dataset's palette; ignored ground-truth pixels are white.
        pred_dir: where ``<name>.png`` raw predictions go, in the encoding of
            the dataset's label files (class index, ``+1`` when the dataset
            uses ``reduce_zero_label``), so they compare directly with them.
    """

    priority = "LOW"

    def __init__(self, show_dir: str | None = None, pred_dir: str | None = None) -> None:
        if show_dir is None and pred_dir is None:
            raise ValueError("SegResultWriter needs show_dir and/or pred_dir")
        self.show_dir = None if show_dir is None else Path(show_dir)
        self.pred_dir = None if pred_dir is None else Path(pred_dir)
        self.palette = np.zeros((0, 3), dtype=np.uint8)

    def before_test(self, runner) -> None:
        for folder in (self.show_dir, self.pred_dir):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        meta = runner.test_dataloader.dataset.metainfo
        self.palette = np.asarray(meta.get("palette", []), dtype=np.uint8).reshape(-1, 3)

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict | None = None,
                        outputs: Sequence[SegDataSample] | None = None) -> None:
        for sample in outputs or []:
            self.write(sample)

    def write(self, sample: SegDataSample) -> None:
        name = Path(sample.img_path).stem + ".png"
        pred = sample.pred_sem_seg.data[0].cpu().numpy()
        if self.pred_dir is not None:
            raw = pred + 1 if sample.metainfo.get("reduce_zero_label", False) else pred
            dtype = np.uint8 if raw.max(initial=0) < 256 else np.uint16
            # written whole or not at all: an interrupted run leaves no half file to resume from
            tmp = self.pred_dir / f".{name}.{os.getpid()}.tmp"
            Image.fromarray(raw.astype(dtype)).save(tmp, format="PNG")
            tmp.replace(self.pred_dir / name)
        if self.show_dir is not None:
            image = np.asarray(Image.open(sample.img_path).convert("RGB"))
            panels = [image, colourise(pred, self.palette)]
            if "gt_sem_seg" in sample:
                panels.append(colourise(sample.gt_sem_seg.data[0].cpu().numpy(), self.palette))
            Image.fromarray(side_by_side(panels)).save(self.show_dir / name)


def prediction_path(pred_dir: str | os.PathLike, sample: SegDataSample) -> Path:
    """Where :class:`SegResultWriter` writes the raw prediction of ``sample``."""
    return Path(pred_dir) / (Path(sample.img_path).stem + ".png")


def read_prediction(path: str | os.PathLike, sample: SegDataSample) -> np.ndarray:
    """(H, W) int64 labels of a prediction written by :class:`SegResultWriter`
    (its encoding undone); its size must be the sample's ``ori_shape``."""
    raw = np.asarray(Image.open(path)).astype(np.int64)
    expected = tuple(sample.metainfo["ori_shape"][:2])
    if raw.shape != expected:
        raise ConfigError(f"saved prediction {path} is {raw.shape[1]}x{raw.shape[0]}, the image "
                         f"{expected[1]}x{expected[0]}: it belongs to another dataset; remove it or resume elsewhere")
    return raw - 1 if sample.metainfo.get("reduce_zero_label", False) else raw


def write_metrics_json(path: str | os.PathLike, report: dict) -> None:
    """Write ``report`` as JSON, converting numpy scalars (IoUMetric returns float32/64)."""
    def plain(value):
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=plain) + "\n")
