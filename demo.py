"""Segment one image with CASS and your own class names.

    python demo.py                                   # scikit-image's astronaut photo
    python demo.py --image photo.jpg --classes "cat, dog, sky" --out result.png
    python demo.py --image photo.jpg --class-file classes.txt --save-logits probs.npy

Writes a PNG (the image under a translucent colour per class, with a legend
of the classes present and their pixel share) and a JSON file beside it with
the same legend; prints the legend on stdout and a line per stage on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mmengine.config import DictAction

from cass import VocabularyError, WeightsError
from cass.api import Segmenter
from cass.images import check_image_file
from cass.visualize import format_share, save_png

PROG = "demo.py"
DEFAULT_CLASSES = "person, flag, rocket, wall"  # for the default photo


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Segment one image with CASS and your own class names.")
    parser.add_argument("--image", type=Path, default=None,
                        help="image file (default: scikit-image's astronaut photo)")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument("--classes", default=None,
                            help=f"comma-separated class names (default with no --config: '{DEFAULT_CLASSES}'); "
                                 "for synonyms use --class-file")
    vocabulary.add_argument("--class-file", type=Path, default=None,
                            help="class-name file: one class per line, synonyms separated by ', '")
    parser.add_argument("--out", type=Path, default=Path("demo_out.png"),
                        help="overlay PNG to write; its legend also goes to the .json beside it")
    parser.add_argument("--save-logits", type=Path, default=None,
                        help="also write the class probabilities, (classes, H, W) float32, to this .npy")
    parser.add_argument("--config", type=Path, default=None,
                        help="benchmark config for the settings (default: configs/cfg_ade20k.py)")
    parser.add_argument("--clip-path", default=None,
                        help="local CLIP ViT-B/16 weights (OpenAI ViT-B-16.pt); default: downloaded once")
    parser.add_argument("--dino-path", default=None,
                        help="local DINO ViT-B/8 weights (dino_vitbase8_pretrain.pth); default: downloaded once")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--precision", choices=["auto", "fp32", "tf32", "fp16", "bf16"], default=None,
                        help="precision of both towers (default: the config's 'auto': on CUDA CLIP fp16 and "
                             "DINO fp32 with TF32, like the released code; fp32 on CPU)")
    parser.add_argument("--opacity", type=float, default=0.5, help="opacity of the class colours (0 to 1)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, metavar="KEY=VALUE",
                        help="override config settings, mmseg style: model.prob_thd=0.1 model.slide_crop=0")
    args = parser.parse_args(argv)
    if not 0 <= args.opacity <= 1:
        parser.error(f"--opacity must lie in [0, 1], got {args.opacity}")
    return args


def class_list(text: str) -> list[str]:
    """``"cat, dog, sky"`` -> ``["cat", "dog", "sky"]``; an empty string is no class."""
    names = [name.strip() for name in text.split(",")]
    return [] if names == [""] else names


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    classes = class_list(args.classes) if args.classes is not None else None
    if classes is None and args.class_file is None and args.config is None:
        classes = class_list(DEFAULT_CLASSES)
    if args.image is None:
        from skimage import data
        image, image_name = data.astronaut(), "scikit-image astronaut"
    else:
        check_image_file(args.image)  # before the slow weight loading
        image, image_name = args.image, str(args.image)

    log(f"loading weights on {args.device}")
    segmenter = Segmenter(args.config, classes=classes, class_file=args.class_file, clip_path=args.clip_path,
                          dino_path=args.dino_path, device=args.device, precision=args.precision,
                          cfg_options=args.cfg_options)
    names = segmenter.class_names
    log(f"encoding text: {len(names)} classes, {len(segmenter.model.vocabulary.queries)} queries")
    segmenter.encode_text()
    log(f"segmenting {image_name}")
    result = segmenter(image)
    height, width = result.labels.shape

    log(f"writing {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    entries = save_png(args.out, result.image, result.labels, names, args.opacity)
    legend = [dict(index=e.index, name=e.name, share=round(e.share, 3), color=list(e.color)) for e in entries]
    sidecar = args.out.with_suffix(".json")
    sidecar.write_text(json.dumps(dict(image=image_name, height=height, width=width, classes=names,
                                       legend=legend), indent=2) + "\n")
    if args.save_logits is not None:
        log(f"writing {args.save_logits}")
        args.save_logits.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.save_logits, result.probs)
    for entry in entries:
        print(f"{format_share(entry.share):>6}  {entry.name}")
    log(f"done in {time.perf_counter() - start:.1f} s: {args.out}, {sidecar}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (WeightsError, VocabularyError, ValueError, OSError) as err:
        log(str(err).splitlines()[0] if str(err) else type(err).__name__)
        return 1
    except (MemoryError, torch.OutOfMemoryError):
        log(f"out of memory on {args.device}: try a smaller image, fewer classes or another --device")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
