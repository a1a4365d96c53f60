"""Segment your images with CASS and your own class names: one, several, a folder or a glob.

    python demo.py                                   # scikit-image's astronaut photo -> demo_out.png
    python demo.py --image photo.jpg --classes "cat, dog, sky" --out result.png
    python demo.py --image photo.jpg --class-file classes.txt --save-probs probs.npy
    python demo.py --image photos/ "more/*.jpg" --classes "cat, dog" --out-dir results/ --batch-size 8
    python demo.py --image photo.jpg --config configs/cfg_voc21.py --cfg-options model.method=trident \
        --protocol published                        # Trident with its own VOC21 settings and class names

For each image it writes a PNG (the image under a translucent colour per
class, with a legend of the classes present and their pixel share) and a JSON
file beside it with the same legend; one image's legend also goes to stdout.
With several images (or a folder or a glob) the outputs go to ``--out-dir``,
named after the inputs; images whose outputs exist are skipped unless
``--overwrite``; a bad image is reported and the others go on, and the run
ends with a summary of the failures and exit status 1 if any failed.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cass import ConfigError, VocabularyError, WeightsError
from cass.api import Segmentation, Segmenter
from cass.cli import DeprecatedAlias, add_model_arguments, check_model_arguments
from cass.images import ImageError, check_image_file, read_image
from cass.text import class_list
from cass.visualize import format_share, legend_record, save_png

PROG = "demo.py"
DEFAULT_CLASSES = "person, flag, rocket, wall"  # for the default photo
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Segment images with CASS and your own class names.")
    parser.add_argument("--image", nargs="+", default=None, metavar="PATH",
                        help="image files, folders (their images, recursively) or glob patterns "
                             "(default: scikit-image's astronaut photo)")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument("--classes", default=None,
                            help=f"comma-separated class names (default with no --config: '{DEFAULT_CLASSES}'); "
                                 "for synonyms use --class-file")
    vocabulary.add_argument("--class-file", type=Path, default=None,
                            help="class-name file: one class per line, synonyms separated by ', '")
    parser.add_argument("--out", type=Path, default=None,
                        help="overlay PNG of a single image (default: demo_out.png); its legend also goes to "
                             "the .json beside it")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="folder for the outputs of several images (default: demo_out/): "
                             "<name>.png, <name>.json and, with --save-probs, <name>.npy")
    parser.add_argument("--save-probs", nargs="?", const=True, default=None, metavar="NPY",
                        help="also write the class probabilities, (classes, H, W) float32: to this .npy for a "
                             "single image, beside each PNG otherwise")
    parser.add_argument("--save-logits", action=DeprecatedAlias, dest="save_probs", new="--save-probs", nargs="?",
                        const=True, metavar="NPY",
                        help="deprecated: the old name of --save-probs (it always wrote probabilities)")
    parser.add_argument("--overwrite", action="store_true", help="redo images whose outputs already exist")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call (default: 4)")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Job:
    """One input image and where its outputs go."""

    source: Path | None  # None: the bundled photo
    png: Path
    npy: Path | None

    @property
    def name(self) -> str:
        return "scikit-image astronaut" if self.source is None else str(self.source)

    def done(self) -> bool:
        return self.png.is_file() and self.png.with_suffix(".json").is_file() and (
            self.npy is None or self.npy.is_file())


def expand_inputs(specs: list[str]) -> list[tuple[Path, Path]]:
    """Image files from files, folders and glob patterns, each with its name
    for the outputs (relative to its folder or pattern root). Raises
    :class:`ImageError` for a path or pattern that gives no image."""
    found: list[tuple[Path, Path]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
            found += [(p, p.relative_to(path)) for p in files]
        elif glob.has_magic(spec):
            files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not files:
                raise ImageError(f"no file matches {spec!r}")
            root = Path(spec.split("*")[0].split("?")[0].split("[")[0])
            root = root if spec.endswith("/") or root.is_dir() else root.parent
            found += [(p, p.relative_to(root) if p.is_relative_to(root) else Path(p.name)) for p in files]
        else:
            check_image_file(path)
            found.append((path, Path(path.name)))
    return found


def plan(args: argparse.Namespace) -> tuple[list[Job], bool]:
    """The jobs of this run and whether it is a batch run (outputs in --out-dir)."""
    if args.image is None:
        return [Job(None, args.out or Path("demo_out.png"), _single_npy(args))], False
    inputs = expand_inputs(args.image)
    batch = len(inputs) > 1 or any(Path(s).is_dir() or glob.has_magic(s) for s in args.image)
    if not batch:
        if args.out_dir is not None:
            return [_batch_job(inputs[0], args.out_dir, args)], False
        return [Job(inputs[0][0], args.out or Path("demo_out.png"), _single_npy(args))], False
    if args.out is not None:
        raise ValueError("--out names one output; for several images use --out-dir")
    if isinstance(args.save_probs, str):
        raise ValueError("--save-probs NPY names one file; with several images use --save-probs alone "
                         "(one .npy beside each PNG)")
    out_dir = args.out_dir or Path("demo_out")
    jobs = [_batch_job(item, out_dir, args) for item in inputs]
    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.png in seen:
            raise ValueError(f"{seen[job.png]} and {job.source} would both write {job.png}")
        seen[job.png] = job.source
    return jobs, True


def _single_npy(args: argparse.Namespace) -> Path | None:
    if args.save_probs is None:
        return None
    if args.save_probs is True:
        return (args.out or Path("demo_out.png")).with_suffix(".npy")
    return Path(args.save_probs)


def _batch_job(item: tuple[Path, Path], out_dir: Path, args: argparse.Namespace) -> Job:
    source, name = item
    png = (out_dir / name).with_suffix(".png")
    return Job(source, png, png.with_suffix(".npy") if args.save_probs is not None else None)


def write_outputs(job: Job, result: Segmentation, opacity: float) -> list:
    """PNG with legend, JSON legend and optional probabilities of one image."""
    job.png.parent.mkdir(parents=True, exist_ok=True)
    entries = save_png(job.png, result.image, result.labels, result.class_names, opacity)
    record = legend_record(result.labels, result.class_names, entries)
    job.png.with_suffix(".json").write_text(json.dumps(dict(image=job.name, **record), indent=2) + "\n")
    if job.npy is not None:
        job.npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(job.npy, result.probs)
    return entries


def segment_jobs(segmenter: Segmenter, jobs: list[Job], args: argparse.Namespace,
                 failures: dict[str, str], announce: bool = False) -> list:
    """Run the jobs in batches; a failing image is recorded and the others go on."""
    entries: list = []
    bar = tqdm(total=len(jobs), desc="segmenting", unit="image", file=sys.stderr, disable=len(jobs) < 2)
    for start in range(0, len(jobs), args.batch_size):
        chunk, images, inputs = [], [], []
        for job in jobs[start:start + args.batch_size]:
            try:
                image = _load(segmenter, job)
                inputs.append(segmenter.prepare(image))  # too elongated: fails here, alone
                images.append(image)
                chunk.append(job)
            except ImageError as err:
                failures[job.name] = str(err)
                bar.update(1)
        try:
            results = segmenter.segment_loaded(images, inputs) if images else []
        except (MemoryError, torch.OutOfMemoryError):
            results = None  # one at a time instead
        for i, job in enumerate(chunk):
            try:
                result = results[i] if results is not None else \
                    segmenter.segment_loaded([images[i]], [inputs[i]])[0]
                if announce:
                    log(f"writing {job.png}" + (f" and {job.npy}" if job.npy else ""))
                entries = write_outputs(job, result, args.opacity)
            except (ImageError, OSError) as err:
                failures[job.name] = str(err).splitlines()[0]
            except (MemoryError, torch.OutOfMemoryError):
                failures[job.name] = f"out of memory on {args.device}"
            bar.update(1)
    bar.close()
    return entries


def _load(segmenter: Segmenter, job: Job) -> np.ndarray:
    """(H, W, 3) uint8 BGR, as :meth:`Segmenter.load` reads it."""
    if job.source is None:
        from skimage import data
        return segmenter.load(data.astronaut())
    return segmenter.load(job.source)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    classes = class_list(args.classes) if args.classes is not None else None
    if classes is None and args.class_file is None and args.config is None:
        classes = class_list(DEFAULT_CLASSES)
    jobs, batch = plan(args)
    if not batch and jobs[0].source is not None:
        read_image(jobs[0].source)  # a bad image fails here, before the slow weight loading
    todo = jobs if args.overwrite or not batch else [job for job in jobs if not job.done()]
    if len(todo) < len(jobs):
        log(f"skipping {len(jobs) - len(todo)} image(s) whose outputs exist (--overwrite redoes them)")
    if not todo:
        return 0

    log(f"loading weights on {args.device}")
    segmenter = Segmenter(args.config, classes=classes, class_file=args.class_file, clip_path=args.clip_path,
                          vfm_path=args.vfm_path, sam_path=args.sam_path, mask_path=args.mask_path, device=args.device,
                          precision=args.precision, cfg_options=args.cfg_options, protocol=args.protocol)
    names = segmenter.class_names
    log(f"encoding text: {len(names)} classes, {len(segmenter.model.vocabulary.queries)} queries")
    segmenter.encode_text()
    log(f"segmenting {todo[0].name if len(todo) == 1 else f'{len(todo)} images'}")
    failures: dict[str, str] = {}
    entries = segment_jobs(segmenter, todo, args, failures, announce=not batch)
    if not batch and not failures:
        for entry in entries:
            print(f"{format_share(entry.share):>6}  {entry.name}")
        log(f"done in {time.perf_counter() - start:.1f} s: {todo[0].png}, {todo[0].png.with_suffix('.json')}")
        return 0
    for name, reason in failures.items():
        log(f"failed: {name}: {reason}")
    out = args.out_dir or Path("demo_out") if batch else todo[0].png.parent
    log(f"done in {time.perf_counter() - start:.1f} s: {len(todo) - len(failures)} of {len(todo)} image(s) "
        f"segmented" + (f", {len(failures)} failed" if failures else "") + f"; outputs in {out}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (WeightsError, VocabularyError, ConfigError, ValueError, OSError) as err:
        log(str(err).splitlines()[0] if str(err) else type(err).__name__)
        return 1
    except (MemoryError, torch.OutOfMemoryError):
        log(f"out of memory on {args.device}: try a smaller image, fewer classes or another --device")
        return 1


if __name__ == "__main__":
    sys.exit(main())
