"""Write region masks for every test image of a benchmark, as CorrCLIP's pre-generated archives.

One ``<image stem>.npz`` per image (``np.savez_compressed``, key
``instance_mask``: an (H, W) int32 label map, 0 = unsegmented for SAM2), what
the release's ``instance_mask_path`` folders hold and the ``files`` mask
generator reads:

    python scripts/make_masks.py --config configs/cfg_ade20k.py --out data/region_masks/ade
    python scripts/make_masks.py --images photos/ --out masks/ --generator sam2 --set model=sam2_hiera_tiny

The images are the test split of the config's dataset (mmseg's dataset
class, as ``eval.py`` reads them; ``--data-root`` and ``--cfg-options`` as
there), or every image file of ``--images DIR``. The generator is
``--generator`` (default ``sam2``: SAM2 hiera-large with CorrCLIP's settings)
with ``--set KEY=VALUE`` settings (``cass.masks``; values are Python literals
or strings). A second run skips the images whose file exists and fits its
image (size, readable), so an interrupted run resumes; the folder's
``make_masks.json`` records the generator's settings and a run with other
settings is refused (``--overwrite`` regenerates everything).

Several GPUs: each process takes every N-th image (no communication):

    torchrun --nproc_per_node=4 scripts/make_masks.py --config ... --out ... --launcher pytorch
    python scripts/make_masks.py ... --shard 2/4      # or one job per shard, by hand
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from mmengine.config import DictAction  # noqa: E402

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")
# (rank, world size, local rank) environment variables of each launcher
LAUNCHER_ENV = {"pytorch": ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
                "slurm": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
                "mpi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
RECORD = "make_masks.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make_masks.py", description=__doc__.split("\n\n")[0],
                                     epilog="Multi-GPU: torchrun --nproc_per_node=N scripts/make_masks.py ... "
                                            "--launcher pytorch")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="benchmark config whose test images get masks, "
                                                    "e.g. configs/cfg_ade20k.py")
    source.add_argument("--images", type=Path, help="a folder of images instead (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the <image stem>.npz files")
    parser.add_argument("--generator", default="sam2", help="mask generator of cass.masks (default sam2)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="settings",
                        help="generator settings, e.g. model=sam2_hiera_tiny checkpoint=PATH points_per_side=16")
    parser.add_argument("--data-root", type=Path, help="dataset root, replacing the config's data_root")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="config overrides key=value, mmseg style")
    parser.add_argument("--overwrite", action="store_true", help="regenerate every file, whatever made them")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none",
                        help="job launcher of a multi-process run (pytorch for torchrun); each process takes "
                             "every N-th image")
    parser.add_argument("--shard", help="K/N: this process takes images K, K+N, K+2N, ... (0 <= K < N)")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_settings(pairs: Sequence[str]) -> dict:
    """``["points_per_side=16", "model=sam2_hiera_tiny"]`` -> settings; values are Python literals, else strings."""
    from cass.config import ConfigError

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    return settings


def shard(args: argparse.Namespace) -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process, from ``--shard`` or the launcher's environment."""
    from cass.config import ConfigError

    if args.shard is not None:
        if args.launcher != "none":
            raise ConfigError("give either --shard or --launcher, not both")
        try:
            rank, world = (int(x) for x in args.shard.split("/"))
        except ValueError:
            raise ConfigError(f"--shard takes K/N, e.g. 0/4; got {args.shard!r}") from None
        if not 0 <= rank < world:
            raise ConfigError(f"--shard {args.shard}: K must be in 0..N-1")
        return rank, world, 0
    if args.launcher == "none":
        return 0, 1, 0 if args.local_rank is None else args.local_rank
    names = LAUNCHER_ENV[args.launcher]
    missing = [name for name in names[:2] if name not in os.environ]
    if missing:
        raise ConfigError(f"--launcher {args.launcher}: {', '.join(missing)} not set; start the processes with "
                          f"{'torchrun' if args.launcher == 'pytorch' else args.launcher}")
    local = os.environ.get(names[2], args.local_rank or 0)
    return int(os.environ[names[0]]), int(os.environ[names[1]]), int(local)


def config_images(config: Path, data_root: Path | None, cfg_options: dict) -> list[Path]:
    """The test images of a benchmark config, as mmseg's dataset lists them."""
    from cass.config_files import load_config

    cfg = load_config(config, cfg_options, import_custom_modules=True)
    dataset_cfg = cfg.test_dataloader.dataset
    if data_root is not None:
        dataset_cfg.data_root = str(data_root)
    root = dataset_cfg.get("data_root")
    if root and not os.path.isdir(root):
        raise FileNotFoundError(f"data root not found: {root}; set --data-root or the config's data_root")
    from mmseg.registry import DATASETS

    dataset = DATASETS.build(dict(dataset_cfg, pipeline=[], lazy_init=True))
    return [Path(item["img_path"]) for item in dataset.load_data_list()]


def folder_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_unique_stems(images: Sequence[Path]) -> None:
    from cass.config import ConfigError

    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise ConfigError(f"two images share the stem {image.stem!r} ({seen[image.stem]}, {image}); "
                              "their masks would have the same file name")
        seen[image.stem] = image


def check_record(out: Path, record: dict, overwrite: bool, write: bool = True) -> None:
    """Refuse to add to a folder made with other settings (unless ``overwrite``); then (``write``: one
    process of a multi-process run) record these."""
    from cass.config import ConfigError

    file = out / RECORD
    if file.is_file() and not overwrite:
        try:
            saved = json.loads(file.read_text())
        except (OSError, ValueError):
            saved = None
        if saved != record:
            raise ConfigError(f"the masks in {out} were made with other settings ({file}); use another --out, "
                              "or --overwrite to regenerate them all")
    out.mkdir(parents=True, exist_ok=True)
    if not write:
        return
    tmp = file.with_name(f".{RECORD}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(file)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image's header, as PIL opens it (no decoding)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def read_rgb(path: Path):
    """(H, W, 3) uint8 RGB, read as the release does (``np.array(Image.open(path).convert('RGB'))``)."""
    import numpy as np
    from PIL import Image

    from cass.images import ImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ImageError(f"cannot read image {path}: {err}") from None


def make_masks(images: Sequence[Path], out: Path, generator, overwrite: bool = False,
               progress: bool = True, desc: str = "masks") -> dict[str, int]:
    """Write ``out/<stem>.npz`` for each image; existing valid files are skipped (unless ``overwrite``).

    Returns counts: ``written`` (new), ``replaced`` (an unreadable or wrong-size
    file made again), ``skipped`` (kept).
    """
    from tqdm import tqdm

    from cass.masks import MaskError, read_mask_file, write_npz

    counts = dict(written=0, replaced=0, skipped=0)
    for path in tqdm(images, desc=desc, unit="img", disable=not progress):
        target = out / f"{path.stem}.npz"
        existed = target.is_file()
        if existed and not overwrite:
            try:
                read_mask_file(target, image_size(path))
            except MaskError:
                pass
            else:
                counts["skipped"] += 1
                continue
        write_npz(target, generator(read_rgb(path), str(path)))
        counts["replaced" if existed else "written"] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.config is not None and not args.config.is_file():
        print(f"make_masks.py: config not found: {args.config}", file=sys.stderr)
        return 1
    from cass.config import ConfigError
    from cass.images import ImageError
    from cass.masks import MaskError, build_mask_generator, mask_generator_factory
    from cass.weights import WeightsError

    start = time.perf_counter()
    try:
        rank, world, local_rank = shard(args)
        settings = parse_settings(args.settings)
        images = (config_images(args.config, args.data_root, args.cfg_options) if args.config is not None
                  else folder_images(args.images))
        check_unique_stems(images)
        if "device" not in settings and "device" in getattr(mask_generator_factory(args.generator),
                                                            "__dataclass_fields__", {}):
            import torch

            if torch.cuda.is_available():
                settings["device"] = f"cuda:{local_rank}"
        generator = build_mask_generator(args.generator, **settings)
        record = dict(generator=args.generator, settings=generator.settings_key())
        check_record(args.out, record, args.overwrite, write=rank == 0)
        mine = images[rank::world]
        where = f" (shard {rank}/{world})" if world > 1 else ""
        counts = make_masks(mine, args.out, generator, args.overwrite, desc=f"masks{where}")
    except (FileNotFoundError, ImportError, ConfigError, WeightsError, MaskError, ImageError) as err:
        print(f"make_masks.py: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"make_masks.py{where}: {len(mine)} images: {counts['written']} written, {counts['skipped']} skipped "
          f"(already there), {counts['replaced']} replaced (unreadable or wrong size) in {seconds:.1f} s -> "
          f"{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
