"""Check a benchmark's dataset before a long evaluation run.

    python -m cass.mmseg.check_data --config configs/cfg_coco_object.py [--data-root DIR] [--all]

Reports, one line each: a missing data root, image/label folder or split
file; label files with the wrong suffix (e.g. ``_labelTrainIds.png`` where
COCO-Object needs ``_instanceTrainIds.png``); images without labels and labels
without images; label values outside the dataset's class range (on a sample
of label maps, or all with ``--all``); a class-name file whose class count
differs from the dataset's. Exits 1 when anything is wrong. ``eval.py`` runs
the same check (with a small sample) before it builds the model.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from glob import escape, glob

import numpy as np
from mmengine.config import Config, DictAction
from PIL import Image

# Where label files with a given suffix come from, for the wrong-suffix message.
LABEL_SOURCES = (
    ("_instanceTrainIds.png", "COCO-Object labels are written by `python datasets/cvt_coco_object.py "
                              "data/coco_stuff164k`"),
    ("_gtFine_labelTrainIds.png", "Cityscapes train-id labels are written by mmseg's "
                                  "tools/dataset_converters/cityscapes.py"),
    ("_labelTrainIds.png", "COCO-Stuff train-id labels are written by mmseg's "
                           "tools/dataset_converters/coco_stuff164k.py"),
)
MAX_LISTED = 8  # label values listed in one message


@dataclass
class DataReport:
    """Outcome of a check: ``problems`` (one line each) and what was looked at."""

    problems: list[str] = field(default_factory=list)
    images: int = 0
    labels_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _under(root: str | None, path: str) -> str:
    return osp.join(root, path) if root and not osp.isabs(path) else path


def _where(path: str) -> str:
    return path if osp.isabs(path) else f"{path} (relative to {os.getcwd()})"


def _files(folder: str, suffix: str) -> list[str]:
    """Paths relative to ``folder`` of the files ending in ``suffix``, recursively."""
    found = []
    for root, _, names in os.walk(folder, followlinks=True):
        found += [osp.relpath(osp.join(root, n), folder) for n in names if n.endswith(suffix)]
    return sorted(found)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _sample(items: list, count: int | None) -> list:
    """``count`` items evenly spread over ``items`` (all of them when None)."""
    if count is None or count >= len(items):
        return items
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, max(count, 1)).round().astype(int))]


def _label_source(suffix: str) -> str:
    return next((source for end, source in LABEL_SOURCES if suffix.endswith(end)), "")


def check_dataset(dataset_cfg: dict, label_samples: int | None = 32, class_count: int | None = None,
                  class_source: str = "the vocabulary") -> DataReport:
    """Check the files of one mmseg segmentation dataset config.

    Args:
        dataset_cfg: a ``test_dataloader.dataset`` dict (type, data_root,
            data_prefix, ann_file, suffix/reduce_zero_label overrides).
        label_samples: label maps whose values are checked, spread over the
            dataset; None checks all of them.
        class_count: the model's number of classes, compared with the
            dataset's (None skips this check).
        class_source: how to name the vocabulary in that message.
    """
    from mmseg.registry import DATASETS

    report = DataReport()
    root = dataset_cfg.get("data_root")
    if root and not osp.isdir(root):
        report.problems.append(f"data root not found: {_where(root)}; set --data-root or the config's data_root")
        return report
    prefix = dataset_cfg.get("data_prefix", {})
    img_dir = _under(root, prefix.get("img_path", ""))
    seg_dir = _under(root, prefix["seg_map_path"]) if prefix.get("seg_map_path") is not None else None
    ann_file = _under(root, dataset_cfg["ann_file"]) if dataset_cfg.get("ann_file") else None
    for what, path in (("image folder", img_dir), ("label folder", seg_dir)):
        if path is not None and not osp.isdir(path):
            report.problems.append(f"{what} not found: {_where(path)}")
    if ann_file is not None and not osp.isfile(ann_file):
        report.problems.append(f"split file not found: {_where(ann_file)}")
    if report.problems:
        return report

    dataset = DATASETS.build(dict(dataset_cfg, pipeline=[], lazy_init=True))
    name, num_classes = type(dataset).__name__, len(dataset.metainfo["classes"])
    if class_count is not None and class_count != num_classes:
        report.problems.append(f"{class_source} has {class_count} classes but {name} declares {num_classes}")
    data_list = dataset.load_data_list()
    report.images = len(data_list)
    report.problems += _image_problems(data_list, img_dir, ann_file, dataset.img_suffix)
    if not data_list or seg_dir is None:
        return report
    report.problems += _label_file_problems(data_list, img_dir, seg_dir, ann_file, dataset.img_suffix,
                                            dataset.seg_map_suffix)
    sample = _sample([d["seg_map_path"] for d in data_list if osp.isfile(d["seg_map_path"])], label_samples)
    report.problems += _check_label_values(sample, num_classes, dataset.reduce_zero_label, dataset.ignore_index,
                                           name)
    report.labels_read = len(sample)
    return report


def _image_problems(data_list: list[dict], img_dir: str, ann_file: str | None, img_suffix: str) -> list[str]:
    """No images at all, or listed images missing."""
    if not data_list:
        if ann_file is not None:
            return [f"split file lists no images: {ann_file}"]
        others = sorted({osp.splitext(f)[1] for f in _files(img_dir, "")} - {""})
        hint = f"; found {', '.join(repr('*' + s) for s in others)} files" if others else ""
        return [f"no '*{img_suffix}' images in {img_dir}{hint}"]
    absent = [d["img_path"] for d in data_list if not osp.isfile(d["img_path"])]
    if ann_file is not None and absent:
        return [f"{len(absent)} of {len(data_list)} images listed in {ann_file} are missing (e.g. {absent[0]})"]
    return []


def _label_file_problems(data_list: list[dict], img_dir: str, seg_dir: str, ann_file: str | None,
                         img_suffix: str, seg_suffix: str) -> list[str]:
    """Labels under another suffix, images without labels, labels without images."""
    unlabeled = [d["img_path"] for d in data_list if not osp.isfile(d["seg_map_path"])]
    if len(unlabeled) == len(data_list):
        # Nothing matches: most often the labels exist under another suffix.
        first = data_list[0]["seg_map_path"]
        stem = first[:-len(seg_suffix)] if seg_suffix else first
        found = sorted({p[len(stem):] for p in glob(escape(stem) + "*") if p != first})
        if not found:
            return [f"no '*{seg_suffix}' labels in {seg_dir} for any of the {len(data_list)} images"]
        source = _label_source(seg_suffix)
        return [f"wrong label suffix: no '*{seg_suffix}' labels in {seg_dir}, but "
                f"{', '.join(repr('*' + s) for s in found)} files are there" + (f"; {source}" if source else "")]
    if ann_file is not None:  # the split file decides which labels are needed
        if not unlabeled:
            return []
        return [f"image/label count mismatch: {len(data_list)} images listed in {ann_file}, "
                f"{len(data_list) - len(unlabeled)} with a '*{seg_suffix}' label in {seg_dir} "
                f"(e.g. no label for {unlabeled[0]})"]
    labels = _files(seg_dir, seg_suffix)
    orphans = sorted(set(labels) - {osp.relpath(d["seg_map_path"], seg_dir) for d in data_list})
    if not unlabeled and not orphans:
        return []
    details = []
    if unlabeled:
        details.append(f"{_count(len(unlabeled), 'image')} without a label, e.g. {unlabeled[0]}")
    if orphans:
        details.append(f"{_count(len(orphans), 'label')} without an image, e.g. {osp.join(seg_dir, orphans[0])}")
    return [f"image/label count mismatch: {len(data_list)} '*{img_suffix}' images in {img_dir}, "
            f"{len(labels)} '*{seg_suffix}' labels in {seg_dir} ({'; '.join(details)})"]


def _check_label_values(paths: Sequence[str], num_classes: int, reduce_zero_label: bool, ignore_index: int,
                        dataset_name: str) -> list[str]:
    """Label maps must be single-channel with values in the dataset's class range."""
    if reduce_zero_label:  # file value v is class v - 1; 0 becomes the ignore index
        allowed, rule = np.arange(num_classes + 1), f"1..{num_classes} (0 = ignored) or {ignore_index}"
    else:
        allowed, rule = np.arange(num_classes), f"0..{num_classes - 1} or {ignore_index} (ignored)"
    allowed = np.append(allowed, ignore_index)
    bad_values: set[int] = set()
    bad_files, multi_channel = [], []
    for path in paths:
        label = np.asarray(Image.open(path))
        if label.ndim != 2:
            multi_channel.append(path)
            continue
        values = np.unique(label)
        outside = values[~np.isin(values, allowed)]
        if outside.size:
            bad_values.update(int(v) for v in outside)
            bad_files.append(path)
    problems = []
    if multi_channel:
        problems.append(f"{len(multi_channel)} of {len(paths)} checked labels are not single-channel class-index "
                        f"maps (e.g. {multi_channel[0]}: colour-coded labels?)")
    if bad_files:
        listed = sorted(bad_values)
        shown = ", ".join(map(str, listed[:MAX_LISTED])) + (", ..." if len(listed) > MAX_LISTED else "")
        problems.append(f"label values outside the class range: {shown} in {len(bad_files)} of {len(paths)} "
                        f"checked labels (e.g. {bad_files[0]}); {dataset_name} labels must be {rule}")
    return problems


def check_config(cfg: Config, label_samples: int | None = 32) -> DataReport:
    """Check the test dataset of a benchmark config, and its class-name file."""
    from ..text import read_class_file

    model = cfg.get("model", {})
    class_count, source = None, "the vocabulary"
    if model.get("classes") is not None:
        class_count = len(model["classes"])
    elif model.get("name_path"):
        class_count, source = len(read_class_file(model["name_path"])[2]), f"class file {model['name_path']}"
    return check_dataset(cfg.test_dataloader.dataset, label_samples, class_count, source)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cass.mmseg.check_data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="benchmark config, e.g. configs/cfg_voc21.py")
    parser.add_argument("--data-root", help="dataset root, replacing the config's data_root")
    parser.add_argument("--samples", type=int, default=32, help="label maps whose values are checked (default 32)")
    parser.add_argument("--all", action="store_true", help="check the values of every label map")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="config overrides, key=value (mmengine syntax)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        print(f"check_data: config not found: {args.config}", file=sys.stderr)
        return 1
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    if args.data_root is not None:
        cfg.test_dataloader.dataset.data_root = args.data_root
    report = check_config(cfg, None if args.all else args.samples)
    for problem in report.problems:
        print(f"check_data: {problem}", file=sys.stderr)
    if not report.ok:
        return 1
    dataset = cfg.test_dataloader.dataset
    print(f"check_data: OK: {dataset.type} at {dataset.get('data_root')}: {report.images} images, "
          f"{report.labels_read} label maps read")
    return 0


if __name__ == "__main__":
    sys.exit(main())
