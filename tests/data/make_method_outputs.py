"""Write ``method_outputs.pt``: every method's probabilities and labels on the tiny test models.

    python tests/data/make_method_outputs.py          # rewrite the file (only when an output is meant to change)
    python tests/data/make_method_outputs.py --check  # compare with the file (what tests/test_family.py does)

Made on commit b66ad92, before the methods became registered parts, so that
the refactor can be checked bit for bit (``torch.equal``). Each method runs in
a slide setting (48 px windows, stride 32, a background threshold) and a
whole-image setting, on one seeded image, with tiny random CLIP and DINO
models, float32, one thread (BLAS reductions can depend on the thread count).
The SAM cases (:data:`SAM_CASES`: Trident, and SAM's aggregation and
refinement as options of other methods, with a tiny SAM whose IoU head keeps
some masks and rejects others) were added on commit 5449ae6, before the merge
steps left the model (issue "A method is one module").

Bit for bit holds on one machine; another CPU may round differently
(``tests/test_family.py`` compares with the file to float rounding).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cass.config import CASSConfig
from cass.model import CASSModel
from cass.images import rgb_uint8
from cass.random_weights import lively_iou_head, random_clip, random_dino, random_sam
from cass.text import Vocabulary

OUTPUTS = Path(__file__).with_name("method_outputs.pt")
METHODS = ("cass", "clip", "maskclip", "sclip", "clearclip", "naclip", "proxyclip")
CLASSES = ("background, sky", "cat", "dog, puppy", "grass")
# CASS's text refinement on (it is off in the baselines by default)
COMMON = dict(global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.5, precision="fp32")
SETTINGS = {
    "slide": dict(slide_crop=48, slide_stride=32, prob_thd=0.26),
    "whole": dict(slide_crop=0, prob_thd=0.0),
}
# method/setting -> keys; SAM's refinement with thresholds that make regions on the tiny models' near-uniform scores
_REFINE = dict(coarse_thresh=0.0, minimal_area=4, sam_iou_thresh=0.8)
SAM_CASES = {
    "trident/slide": dict(slide_crop=48, slide_stride=32, prob_thd=0.0, **_REFINE),
    "trident/whole": dict(slide_crop=0, prob_thd=0.0, **_REFINE),
    "trident/no-sam": dict(slide_crop=48, slide_stride=32, sam_aggregation=False, sam_refinement=False),
    "cass/sam-aggregation": dict(slide_crop=48, slide_stride=32, sam_aggregation=True),
    "cass/sam-refinement": dict(slide_crop=0, sam_refinement=True, **_REFINE),
    "proxyclip/sam-both": dict(slide_crop=48, slide_stride=32, sam_aggregation=True, sam_refinement=True, **_REFINE),
}


def image() -> torch.Tensor:
    """(3, 64, 96) smooth random CLIP-normalised image."""
    g = torch.Generator().manual_seed(11)
    base = torch.rand(1, 3, 8, 12, generator=g) * 4 - 2
    return F.interpolate(base, size=(64, 96), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def outputs(methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, torch.Tensor]]:
    """``{"method/setting": {"probs": (C, H, W) float32, "labels": (H, W) uint8}}``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clip, dino = random_clip(tiny=True, seed=0), random_dino(tiny=True, seed=0)
        x = image()
        out = {}
        for method in methods:
            for setting, keys in SETTINGS.items():
                config = CASSConfig.from_keys({**COMMON, **keys, "method": method})
                model = CASSModel(clip, dino, Vocabulary.from_classes(CLASSES), config, text_cache_dir=False)
                prediction = model([x])[0]
                out[f"{method}/{setting}"] = dict(probs=prediction.probs.clone(),
                                                  labels=prediction.labels.to(torch.uint8))
        return out
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def sam_outputs(cases: tuple[str, ...] = tuple(SAM_CASES)) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`outputs` of :data:`SAM_CASES`, with a tiny SAM whose IoU head predicts around 0.8."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clip, dino, sam = random_clip(tiny=True, seed=0), random_dino(tiny=True, seed=0), random_sam("vit_b", True, 0)
        x = image()
        lively_iou_head(sam, rgb_uint8(x, tuple(x.shape[-2:])), center=0.8, spread=0.3)
        out = {}
        for name in cases:
            method = name.split("/")[0]
            config = CASSConfig.from_keys({**COMMON, **SAM_CASES[name], "method": method})
            model = CASSModel(clip, dino, Vocabulary.from_classes(CLASSES), config, text_cache_dir=False, sam=sam)
            prediction = model([x])[0]
            out[name] = dict(probs=prediction.probs.clone(), labels=prediction.labels.to(torch.uint8))
        return out
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored file instead of writing it")
    args = parser.parse_args(argv)
    current = {**outputs(), **sam_outputs()}
    if not args.check:
        torch.save(current, OUTPUTS)
        print(f"wrote {OUTPUTS} ({len(current)} outputs)")
        return 0
    stored = torch.load(OUTPUTS)
    exact = [name for name in stored if all(torch.equal(stored[name][k], current[name][k]) for k in stored[name])]
    bad = [name for name in stored if not close(current[name], stored[name])]
    print(f"{len(exact)} of {len(stored)} bit for bit; "
          + ("the rest equal to float rounding" if not bad else f"differ: {', '.join(bad)}"))
    return 1 if bad else 0


def close(current: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> bool:
    """Probabilities within 5e-5 and labels equal wherever the stored top two classes are 1e-4 apart
    (another CPU may sum in another order; ``tests/test_family.py`` checks this)."""
    if (current["probs"] - stored["probs"]).abs().max() > 5e-5:
        return False
    top2 = stored["probs"].topk(2, dim=0).values
    decided = top2[0] - top2[1] > 1e-4
    return torch.equal(current["labels"][decided], stored["labels"][decided])


if __name__ == "__main__":
    sys.exit(main())
