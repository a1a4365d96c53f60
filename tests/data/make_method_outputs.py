"""Write ``method_outputs.pt``: every method's probabilities and labels on the tiny test models.

    python tests/data/make_method_outputs.py          # rewrite the file (only when an output is meant to change)
    python tests/data/make_method_outputs.py --check  # compare with the file (what tests/test_method_outputs.py does)

Made on commit b66ad92, before the methods became registered parts, so that
the refactor can be checked bit for bit (``torch.equal``). Each method runs in
a slide setting (48 px windows, stride 32, a background threshold) and a
whole-image setting, on one seeded image, with tiny random CLIP and DINO
models, float32, one thread (BLAS reductions can depend on the thread count).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cass.config import CASSConfig
from cass.model import CASSModel
from cass.random_weights import random_clip, random_dino
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored file instead of writing it")
    args = parser.parse_args(argv)
    current = outputs()
    if not args.check:
        torch.save(current, OUTPUTS)
        print(f"wrote {OUTPUTS} ({len(current)} outputs)")
        return 0
    stored = torch.load(OUTPUTS)
    bad = [name for name in stored if not all(torch.equal(stored[name][k], current[name][k]) for k in stored[name])]
    print("all equal" if not bad else f"differ: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
