"""Compare this implementation of CorrCLIP with the authors' released code, on CPU in float32.

    python scripts/compare_corrclip.py [--released /work/.mirror/zdk258+CorrCLIP/repo] \
        [--dino /work/.mirror/facebookresearch+dino/repo] [--families voc21 cityscapes ade20k pc59] \
        [--photos astronaut chelsea] [--classes 8] [--set prob_thd=0] [--json report.json]

CorrCLIP (Zhang et al., ICCV 2025): https://github.com/zdk258/CorrCLIP (folder
``CorrCLIPv1``). Needs a checkout or git directory of it and of
https://github.com/facebookresearch/dino (its ``torch.hub`` code), and the full
environment (mmseg). Nothing is downloaded:

1. random full-size weights in the release formats: CLIP ViT-B/16 (an OpenAI
   state dict; the release builds it as ``ViT-B-16-quickgelu``, MetaCLIP's
   architecture and OpenAI's: QuickGELU) and DINO ViT-B/8;
2. each photo is resized as the benchmark's test pipeline does (short side of
   the published protocol, :mod:`cass.images`), and cut into regions by
   scikit-image's Felzenszwalb segmentation (a class-agnostic mask generator
   both sides are given: "masks given"; SAM2's live masks need SAM2 weights,
   ``--sam2``: both sides generate them);
3. the released ``CorrCLIPSegmentation`` runs on it in a subprocess
   (:func:`cass.bench.corrclip_release.run_release`, which lists its patches);
4. this code runs on the release's own preprocessed input with the same masks
   (``method='corrclip'``, the published settings of the family:
   windows, stride, ``prob_thd``, CorrCLIP's class file);
5. per case: the share of pixels with the same label after the vote and
   before it, and the largest class-probability difference.

Text encoding dominates on a CPU (80 templates per query on the full text
tower, about 10 s a query and side), so ``--classes`` keeps the first classes
of each class file (default 8; the first class keeps its first 4 synonyms,
so that the background-synonym merge is still compared). Random weights give
near-uniform class scores: the published thresholds would make everything
background on VOC21, so ``--set prob_thd=...`` changes them on both sides.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cass.bench.released import agreement, photo, run_comparison  # noqa: E402

MIRRORS = Path("/work/.mirror")
# family -> benchmark config (the published protocol of CorrCLIP's entry)
FAMILIES = {"voc21": "cfg_voc21", "pc59": "cfg_context59", "cityscapes": "cfg_city_scapes", "ade20k": "cfg_ade20k"}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
# SAM2AutomaticMaskGenerator arguments --sam2-set may change on both sides (ones the release's call does not set)
SAM2_STRESS = {"box_nms_thresh": float}


def class_list(config: str, count: int, synonyms: int = 4) -> list[list[str]]:
    """The first ``count`` classes of CorrCLIP's class file for ``config``; the first keeps ``synonyms`` names."""
    from cass.methods import get_method
    from cass.benchmarks import CONFIGS_DIR
    from cass.text import read_class_file

    queries, index, display = read_class_file(CONFIGS_DIR / get_method("corrclip").protocol[config]["class_file"])
    classes = [[q for q, c in zip(queries, index) if c == k] for k in range(min(count, len(display)))]
    classes[0] = classes[0][:synonyms]
    return classes


def region_masks(rgb: np.ndarray) -> np.ndarray:
    """A class-agnostic segmentation of the photo (the ``felzenszwalb`` generator), its labels from 0 as
    recorded in docs/methods.md: the first region then reads "unsegmented" on both sides, a case compared too."""
    from cass.masks.superpixels import FelzenszwalbMasks

    return FelzenszwalbMasks()(rgb) - 1


def resized(rgb: np.ndarray, short_side: int) -> np.ndarray:
    """The photo as mmseg's ``Resize(scale=(2048, short_side), keep_ratio=True)`` makes it (cv2 bilinear)."""
    import cv2

    h, w = rgb.shape[:2]
    factor = min(2048 / max(h, w), short_side / min(h, w))
    size = (int(w * factor + 0.5), int(h * factor + 0.5))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)


def published(config: str, settings: dict) -> dict:
    """CorrCLIP's published model settings on ``config`` (short side and class file apart), with ``settings``."""
    from cass.methods import get_method

    keys = dict(get_method("corrclip").protocol[config])
    keys.pop("class_file")
    keys.pop("vfm", None)
    return {**keys, **settings}


def compare(released: Path, dino: Path, families: Sequence[str], photos: Sequence[str], classes: int, work: Path,
            settings: dict, sam2: bool = False, sam2_settings: dict | None = None) -> list[dict]:
    import torch

    from cass.bench.corrclip_release import run_release
    from cass.build import build_model
    from cass.random_weights import write_clip, write_dino

    (work / "weights").mkdir(parents=True, exist_ok=True)
    clip_file = write_clip(work / "weights" / "ViT-B-16.pt")
    dino_file = write_dino(work / "weights" / "dino_vitbase8_pretrain.pth")
    generator = sam2_file = None
    if sam2:  # a random SAM2 Hiera-L whose masks pass the release's thresholds (cass.masks.random_sam2.lively_sam2)
        from cass.masks import build_mask_generator
        from cass.masks.random_sam2 import write_random_sam2

        sam2_file = write_random_sam2(work / "weights" / "sam2_hiera_large.pt", "sam2_hiera_large")
        generator = build_mask_generator("sam2", model="sam2_hiera_large", checkpoint=str(sam2_file), device="cpu",
                                         **(sam2_settings or {}))
    rows = []
    for family in families:
        config = FAMILIES[family]
        keys = published(config, settings)
        short_side = keys.pop("short_side")
        names = class_list(config, classes)
        model = build_model(clip_path=str(clip_file), vfm="dino_vitb8", vfm_path=str(dino_file),
                            classes=[", ".join(n) for n in names], method="corrclip", precision="fp32",
                            text_cache_dir=str(work / "text"), **keys)
        for name in photos:
            rgb = resized(photo(name), short_side)
            mask = region_masks(rgb) if generator is None else generator(rgb)
            theirs = run_release(released, work / f"released_{family}_{name}", clip_file, dino_file,
                                 [list(n) for n in names], rgb, None if sam2 else mask, sam2_checkpoint=sam2_file,
                                 sam2_settings=sam2_settings,
                                 dino_repo=dino, model_type="ViT-B-16-quickgelu",
                                 slide_crop=keys["slide_crop"], slide_stride=keys["slide_stride"],
                                 logit_scale=keys["logit_scale"], prob_thd=keys["prob_thd"], name=name,
                                 threads=torch.get_num_threads())
            image = torch.from_numpy(theirs["input"]).float()
            voted = model([image], region_masks=[mask])[0]
            model.config = model.config.replace(region_vote=False)
            plain = model([image], region_masks=[mask])[0]
            model.config = model.config.replace(region_vote=None)
            ours = dict(probs=voted.probs.numpy(), labels=voted.labels.numpy())
            before = agreement(dict(probs=plain.probs.numpy(), labels=plain.labels.numpy()),
                               dict(probs=theirs["probs"], labels=theirs["labels_prevote"]))
            same_masks = float((np.asarray(mask) == theirs["instance_mask"]).mean())
            live = "SAM2 live" + "".join(f", {k}={v}" for k, v in (sam2_settings or {}).items())
            rows.append(dict(family=family, photo=name, masks=live if sam2 else "given",
                             same_masks=same_masks, size=list(rgb.shape[:2]), regions=int(len(np.unique(mask))),
                             queries=len(model.vocabulary.queries), **agreement(ours, theirs),
                             label_agreement_before_vote=before["label_agreement"]))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| family | photo | masks (same on both sides) | size | regions | queries | labels equal (voted) "
             "| labels equal (before the vote) | max prob. diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['photo']} | {r['masks']} ({100 * r['same_masks']:.2f}%) "
                     f"| {r['size'][0]}x{r['size'][1]} | {r['regions']} "
                     f"| {r['queries']} | {100 * r['label_agreement']:.3f}% "
                     f"| {100 * r['label_agreement_before_vote']:.3f}% | {r['max_prob_diff']:.1e} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compare_corrclip.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--released", type=Path, default=MIRRORS / "zdk258+CorrCLIP" / "repo",
                        help="the authors' CorrCLIP code: a checkout or a git directory (default: %(default)s)")
    parser.add_argument("--dino", type=Path, default=MIRRORS / "facebookresearch+dino" / "repo",
                        help="facebookresearch/dino (for torch.hub): a checkout or a git directory "
                             "(default: %(default)s)")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=["voc21", "cityscapes", "ade20k"],
                        help="benchmark families (default: %(default)s)")
    parser.add_argument("--photos", nargs="+", choices=PHOTOS, default=["astronaut"],
                        help="scikit-image photos (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=8, help="first classes of each class file (default: 8)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="settings",
                        help="model keys set on both sides (prob_thd, logit_scale, slide_crop, slide_stride)")
    parser.add_argument("--sam2", action="store_true",
                        help="masks generated live by SAM2 on both sides (random Hiera-L weights, 0.9 GB; about "
                             "40 s an image and side on a CPU) instead of given")
    parser.add_argument("--sam2-set", nargs="+", default=[], metavar="KEY=VALUE", dest="sam2_settings",
                        help="with --sam2: SAM2AutomaticMaskGenerator arguments changed on both sides, a stress "
                             "setting, not the release's (box_nms_thresh=1.0 keeps the overlapping masks of "
                             "random weights: many regions)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--keep", type=Path, help="keep the work folder (weights, inputs, outputs) here")
    args = parser.parse_args(argv)
    if args.classes < 2:
        parser.error("--classes must be at least 2")
    settings = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or key not in ("prob_thd", "logit_scale", "slide_crop", "slide_stride"):
            parser.error(f"--set: {item!r} is not KEY=VALUE with KEY one of prob_thd, logit_scale, slide_crop, "
                         "slide_stride")
        settings[key] = float(value) if key in ("prob_thd", "logit_scale") else int(value)
    args.settings = settings
    if args.sam2_settings and not args.sam2:
        parser.error("--sam2-set needs --sam2")
    sam2_settings = {}
    for item in args.sam2_settings:
        key, sep, value = item.partition("=")
        if not sep or key not in SAM2_STRESS:
            parser.error(f"--sam2-set: {item!r} is not KEY=VALUE with KEY one of {', '.join(SAM2_STRESS)}")
        sam2_settings[key] = SAM2_STRESS[key](value)
    args.sam2_settings = sam2_settings
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_comparison("compare_corrclip.py", lambda work: compare(
        args.released, args.dino, args.families, args.photos, args.classes, work, args.settings, args.sam2,
        args.sam2_settings),
        format_table, args.keep, args.json, argv)


if __name__ == "__main__":
    sys.exit(main())
