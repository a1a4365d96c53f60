"""Evaluate CASS on a segmentation benchmark with mmseg's test loop.

One benchmark, one GPU (the paper's protocol, no PAMR):

    python eval.py --config configs/cfg_voc21.py --pamr off

Another method of the family, with the config's settings or with its own
published ones for the benchmark (``--protocol published``; ``eval_all.sh
--method`` does the latter):

    python eval.py --config configs/cfg_voc21.py --cfg-options model.method=sclip --protocol published

Several GPUs for one benchmark (mmengine's distributed runner; each GPU takes
a share of the images, the metric is computed over all of them):

    torchrun --nproc_per_node=4 eval.py --config configs/cfg_ade20k.py --launcher pytorch

The dataset is checked first (folders, label suffixes, image/label counts,
label values on a sample; ``python -m cass.mmseg.check_data`` checks all of them).
Prints mIoU, mAcc and aAcc (the per-class table is logged by mmseg's
IoUMetric) and writes them, per class too, to ``<work-dir>/metrics.json``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mmengine.config import DictAction

from cass.cli import add_protocol_argument, add_weights_arguments  # no torch: a bad command line is answered quickly

if TYPE_CHECKING:
    from mmengine.config import Config

PAMR_STEPS = {"off": 0, "on": 10}
LAUNCHERS = ("none", "pytorch", "slurm", "mpi")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="eval.py", description="Evaluate CASS on a benchmark config (mIoU, mAcc, aAcc).",
        epilog="Multi-GPU: torchrun --nproc_per_node=N eval.py --config ... --launcher pytorch")
    parser.add_argument("--config", type=Path, required=True,
                        help="benchmark config, e.g. configs/cfg_voc21.py")
    parser.add_argument("--pamr", choices=sorted(PAMR_STEPS), default="off",
                        help="PAMR post-processing (10 steps); the paper's numbers use off (default)")
    parser.add_argument("--work-dir", type=Path,
                        help="logs and metrics.json go here (default: work_dirs/<config name>)")
    parser.add_argument("--show-dir", type=Path,
                        help="write one picture per image: image | prediction | ground truth, "
                             "in the dataset's palette")
    parser.add_argument("--save-preds", type=Path,
                        help="write each raw prediction as a label PNG, encoded like the dataset's label files")
    parser.add_argument("--resume", action="store_true",
                        help="go on with an interrupted run: images whose prediction is in the --save-preds "
                             "folder (default with --resume: <work-dir>/preds) are not segmented again; the "
                             "metrics cover every image, as in an uninterrupted run")
    parser.add_argument("--data-root", type=Path, help="dataset root, replacing the config's data_root")
    add_weights_arguments(parser)
    add_protocol_argument(parser)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="config overrides key=value, mmseg style, applied last, e.g. model.slide_stride=56 "
                             "test_dataloader.num_workers=0")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none",
                        help="job launcher for multi-GPU runs (pytorch for torchrun)")
    parser.add_argument("--skip-data-check", action="store_true",
                        help="do not check the dataset's files before building the model")
    # torch.distributed.launch (deprecated) passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def split_imports(cfg_options: dict) -> tuple[dict, list[str]]:
    """``--cfg-options`` without ``custom_imports.imports=[...]``, and those modules.

    mmengine imports the ``custom_imports`` of the config file when it reads it,
    not those given on the command line; here they are imported first (a
    method registered by a module outside the package, ``docs/architecture.md``)
    and added to the config's own (its mmseg adapter stays).
    """
    from cass.config import ConfigError

    options = dict(cfg_options)
    imports = options.pop("custom_imports.imports", [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    if "custom_imports" in options:
        raise ConfigError("give extra modules as --cfg-options custom_imports.imports=[module,...]")
    return options, imports


def build_config(args: argparse.Namespace) -> Config:
    """Load the benchmark config (importing cass's mmseg adapter through its
    custom_imports) and apply the command-line settings; ``--protocol``'s come
    with ``--cfg-options``, under them (:func:`cass.api.protocol_cfg_options`,
    as :class:`cass.api.Segmenter` applies them)."""
    from cass.api import protocol_cfg_options
    from cass.config import ConfigError
    from cass.config_files import load_config, with_vfm_path

    options, imports = split_imports(args.cfg_options)
    for module in imports:  # before anything looks the method up: a method registered outside the package
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(f"--cfg-options custom_imports.imports: cannot import {module!r} ({err})") from None
    options = protocol_cfg_options(args.config, options, args.protocol)
    cfg = load_config(args.config, import_custom_modules=True)
    if imports:
        cfg.custom_imports = dict(cfg.get("custom_imports", {}),
                                  imports=[*cfg.get("custom_imports", {}).get("imports", []), *imports])
    cfg.model.pamr_steps = PAMR_STEPS[args.pamr]
    if args.clip_path is not None:
        cfg.model.clip_path = args.clip_path
    if args.vfm_path is not None:  # under the config's key for it (vfm_path, or dino_path in older configs)
        cfg.model = with_vfm_path(cfg.model.to_dict(), args.vfm_path)
    if args.sam_path is not None:  # replaces sam_ckpt (Trident's key for the same file), as cass.api does
        cfg.model.pop("sam_ckpt", None)
        cfg.model.sam_path = args.sam_path
    if args.mask_path is not None:
        cfg.model.mask_path = args.mask_path
    if args.data_root is not None:
        cfg.test_dataloader.dataset.data_root = str(args.data_root)
    cfg.merge_from_dict(options)
    cfg.launcher = args.launcher
    cfg.work_dir = str(args.work_dir or Path("work_dirs") / args.config.stem)
    if args.resume and args.save_preds is None:
        args.save_preds = Path(cfg.work_dir) / "preds"
    if cfg.test_dataloader.get("num_workers", 0) == 0:
        cfg.test_dataloader.persistent_workers = False  # torch refuses persistent workers without workers
    if args.show_dir is not None or args.save_preds is not None:
        writer = dict(type="SegResultWriter", show_dir=args.show_dir and str(args.show_dir),
                      pred_dir=args.save_preds and str(args.save_preds))
        cfg.custom_hooks = [*cfg.get("custom_hooks", []), writer]
    return cfg


RUN_FILE = "cass_run.json"  # what produced the predictions in a --save-preds folder


def run_identity(cfg: Config) -> dict:
    """The settings that determine the predictions (the model keys and the dataset)."""
    dataset = cfg.test_dataloader.dataset
    return dict(model=cfg.model.to_dict(), dataset=dataset.type, data_root=str(dataset.get("data_root")),
                pipeline=[dict(step) for step in dataset.pipeline])


def prepare_predictions(cfg: Config, pred_dir: Path, resume: bool) -> None:
    """Record what makes the predictions in ``pred_dir``; with ``resume``, check
    that the saved ones come from the same settings and reuse them."""
    from cass.config import ConfigError

    identity = json.loads(json.dumps(run_identity(cfg), default=str))
    record = pred_dir / RUN_FILE
    if resume and record.is_file():
        saved = json.loads(record.read_text())
        if saved != identity:
            changed = sorted(k for k in set(saved.get("model", {})) | set(identity["model"])
                             if saved.get("model", {}).get(k) != identity["model"].get(k))
            what = f"model settings {changed}" if changed else "dataset or pipeline"
            raise ConfigError(f"--resume: the predictions in {pred_dir} come from other {what}; "
                             "resume with the same settings or use another --save-preds folder")
    if resume:
        cfg.model.saved_predictions = str(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(identity, indent=2) + "\n")


def evaluate(cfg: Config, benchmark: str) -> dict | None:
    """Run the test loop; the report (main process only, else None)."""
    from mmengine.dist import is_main_process
    from mmengine.runner import Runner

    from cass.mmseg.evaluation import PerClassIoUMetric, write_metrics_json

    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    if not is_main_process():
        return None
    table = next((m for m in runner.test_loop.evaluator.metrics if isinstance(m, PerClassIoUMetric)), None)
    dataset = cfg.test_dataloader.dataset
    report = dict(
        benchmark=benchmark,
        dataset=dataset.type,
        data_root=dataset.get("data_root"),
        images=table.num_images if table else len(runner.test_loop.dataloader.dataset),
        pamr_steps=cfg.model.pamr_steps,
        **{key: round(float(value), 2) for key, value in metrics.items()},  # IoUMetric rounds to 0.01
        per_class=table.per_class if table else {},
    )
    write_metrics_json(Path(cfg.work_dir) / "metrics.json", report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not args.config.is_file():  # answered before torch and mmseg are imported
        print(f"eval.py: config not found: {args.config}", file=sys.stderr)
        return 1
    from cass import ConfigError, VocabularyError, WeightsError
    from cass.masks import MaskError
    from cass.mmseg.check_data import check_config

    try:
        cfg = build_config(args)
        if args.save_preds is not None:
            prepare_predictions(cfg, args.save_preds, args.resume)
        problems = [] if args.skip_data_check else check_config(cfg, label_samples=4).problems
        for problem in problems:
            print(f"eval.py: {problem}", file=sys.stderr)
        if problems:
            return 1
        report = evaluate(cfg, args.config.stem)
    except (FileNotFoundError, VocabularyError, WeightsError, ConfigError, MaskError) as err:  # anything else: a bug, with its traceback
        print(f"eval.py: {err}", file=sys.stderr)
        return 1
    if report is not None:
        scores = "  ".join(f"{key} {report[key]:.2f}" for key in ("mIoU", "mAcc", "aAcc") if key in report)
        print(f"\n{report['benchmark']} ({report['dataset']}, {report['images']} images, "
              f"PAMR {args.pamr}): {scores}")
        print(f"per-class table above; metrics written to {Path(cfg.work_dir) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
