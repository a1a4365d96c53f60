"""Convert COCO-Stuff164k label maps to COCO-Object (background + 80 things).

    python datasets/cvt_coco_object.py data/coco_stuff164k [--splits val2017] [--nproc 8]

Input: the COCO-Stuff164k release label maps
``<root>/annotations/<split>/<image id>.png``, whose pixel values are COCO
category ids minus one (0..181) and 255 for unlabeled pixels. Output:
``<out>/annotations/<split>/<image id>_instanceTrainIds.png`` with

- thing ids (COCO categories 1..90, 80 of them) -> their index 1..80, in
  category-id order (the order of ``COCOObjectDataset``'s classes);
- stuff ids (COCO categories 92..182) and unlabeled (255) -> background 0, as
  in the GroupViT/TCL/SCLIP protocol that produced the published numbers.

Values that are no COCO category become 255 (ignored) and are counted in a
warning. Files already ending in ``TrainIds.png`` (mmseg's
``_labelTrainIds.png`` or earlier outputs) are skipped as inputs.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from mmengine.utils import mkdir_or_exist, track_parallel_progress, track_progress
from PIL import Image

# COCO category ids never used by the 2017 release (the 80 things are 1..90 without these).
UNUSED_THING_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
THING_IDS = tuple(i for i in range(1, 91) if i not in UNUSED_THING_IDS)
STUFF_IDS = tuple(range(92, 183))
UNLABELED = 255
IGNORE = 255
OUTPUT_SUFFIX = "_instanceTrainIds.png"


def coco_object_lut() -> np.ndarray:
    """(256,) uint8 lookup table from a COCO-Stuff label value (category id - 1)
    to its COCO-Object label."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for index, category in enumerate(THING_IDS, start=1):
        lut[category - 1] = index
    lut[[category - 1 for category in STUFF_IDS]] = 0
    lut[UNLABELED] = 0
    return lut


def convert_label(label: np.ndarray, lut: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(H, W) uint8 COCO-Stuff label map -> COCO-Object label map and the
    number of pixels whose value is no COCO category (set to 255)."""
    lut = coco_object_lut() if lut is None else lut
    if label.dtype != np.uint8:
        raise ValueError(f"COCO-Stuff label maps are uint8, got {label.dtype}")
    out = lut[label]
    unknown = int(np.count_nonzero(out == IGNORE))
    return out, unknown


def convert_file(src: str, out_dir: str) -> int:
    """Convert one label file into ``out_dir``; returns its unknown-pixel count."""
    label = np.asarray(Image.open(src))
    if label.ndim != 2:
        raise ValueError(f"{src}: expected a single-channel label map, got shape {label.shape}")
    out, unknown = convert_label(label)
    Image.fromarray(out).save(os.path.join(out_dir, Path(src).stem + OUTPUT_SUFFIX))
    return unknown


def label_files(folder: Path) -> list[str]:
    """The release label maps of one split (``*.png`` not ending in ``TrainIds.png``)."""
    return sorted(str(p) for p in folder.glob("*.png") if not p.name.endswith("TrainIds.png"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Convert COCO-Stuff164k label maps to COCO-Object "
                                                 "(background + 80 things), *_instanceTrainIds.png.")
    parser.add_argument("coco_path", type=Path, help="COCO-Stuff164k root holding annotations/<split>/*.png")
    parser.add_argument("-o", "--out-dir", type=Path,
                        help="output root (default: coco_path, writing next to the inputs); "
                             "images/ is linked there so the config's data_root can point at it")
    parser.add_argument("--splits", nargs="+", default=["val2017"],
                        help="splits to convert (default: val2017, the benchmark's; add train2017 for all)")
    parser.add_argument("--nproc", type=int, default=min(8, os.cpu_count() or 1),
                        help="worker processes (1 converts in this process)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_root = args.out_dir or args.coco_path
    jobs = []
    for split in args.splits:
        folder = args.coco_path / "annotations" / split
        files = label_files(folder) if folder.is_dir() else []
        if not files:
            print(f"cvt_coco_object: no COCO-Stuff label maps (*.png) in {folder}", file=sys.stderr)
            return 1
        jobs.append((split, files))
    if out_root != args.coco_path and not (out_root / "images").exists():
        mkdir_or_exist(out_root)
        (out_root / "images").symlink_to((args.coco_path / "images").resolve(), target_is_directory=True)

    unknown = 0
    for split, files in jobs:
        out_dir = out_root / "annotations" / split
        mkdir_or_exist(out_dir)
        print(f"{split}: {len(files)} label maps -> {out_dir}/*{OUTPUT_SUFFIX}")
        convert = partial(convert_file, out_dir=str(out_dir))
        if args.nproc > 1:
            counts = track_parallel_progress(convert, files, nproc=args.nproc)
        else:
            counts = track_progress(convert, files)
        unknown += sum(counts)
    if unknown:
        print(f"cvt_coco_object: warning: {unknown} pixels had values that are no COCO category; "
              f"they are {IGNORE} (ignored)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
