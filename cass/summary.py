"""Table of reproduced vs published mIoU from ``eval.py``'s ``metrics.json`` files.

    python -m cass.summary work_dirs/ [--method sclip] [--markdown work_dirs/summary.md] [--csv work_dirs/summary.csv]
    python cass/summary.py work_dirs/   # the same without importing torch (standard library only)

Reads ``<root>/*/metrics.json`` (one folder per benchmark, as ``eval_all.sh``
writes them) and prints a Markdown table in the paper's column order: each
benchmark's mIoU, the published one of ``--method`` (default CASS), and the
difference. Benchmarks without results show as missing; the average row needs
all eight. A benchmark whose published number was not found shows none and
keeps the average empty.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# Benchmark config -> column name, in the paper's column order.
BENCHMARKS = {
    "cfg_voc21": "VOC21",
    "cfg_context60": "PC60",
    "cfg_coco_object": "COCO-Obj",
    "cfg_voc20": "VOC20",
    "cfg_context59": "PC59",
    "cfg_coco_stuff164k": "COCO-Stuff",
    "cfg_city_scapes": "Cityscapes",
    "cfg_ade20k": "ADE20K",
}


def _row(*values: float | None) -> dict[str, float | None]:
    return dict(zip(BENCHMARKS, values))


# Published mIoU with CLIP ViT-B/16, no PAMR, per method (None: not found). Sources in
# docs/methods.md; the baselines' rows are those the CASS paper's Table 1 compares with.
PUBLISHED_MIOU: dict[str, dict[str, float | None]] = {
    # CASS (Kim et al., CVPR 2025), Table 1, DINO ViT-B/8.
    "cass": _row(65.8, 36.7, 37.8, 87.8, 40.2, 26.7, 39.4, 20.4),
    # SCLIP (Wang et al., ECCV 2024), Table 1: its re-runs of CLIP and MaskCLIP, and SCLIP.
    "clip": _row(18.8, 9.9, 8.1, 49.4, 11.1, 5.7, 6.5, 3.1),
    "maskclip": _row(43.4, 23.2, 20.6, 74.9, 26.4, 16.7, 24.9, 11.9),
    "sclip": _row(59.1, 30.4, 30.5, 80.4, 34.2, 22.4, 32.2, 16.1),
    # ClearCLIP (Lan et al., ECCV 2024), Table 1.
    "clearclip": _row(51.8, 32.6, 33.0, 80.9, 35.9, 23.9, 30.0, 16.7),
    # NACLIP (Hajimiri et al., WACV 2025), main table, without post-processing.
    "naclip": _row(58.9, 32.2, 33.2, 79.7, 35.2, 23.3, 35.5, 17.4),
    # ProxyCLIP (Lan et al., ECCV 2024) as listed in CASS's Table 1 (DINO); per benchmark not verified.
    "proxyclip": _row(None, None, None, None, None, None, None, None),
}
# Where each method's published row comes from (printed under the table).
PUBLISHED_SOURCE: dict[str, str] = {
    "cass": "CASS paper (Kim et al., CVPR 2025), Table 1",
    "clip": "SCLIP paper (Wang et al., ECCV 2024), Table 1, its re-run of CLIP",
    "maskclip": "SCLIP paper (Wang et al., ECCV 2024), Table 1, its re-run of MaskCLIP",
    "sclip": "SCLIP paper (Wang et al., ECCV 2024), Table 1",
    "clearclip": "ClearCLIP paper (Lan et al., ECCV 2024), Table 1, ViT-B/16",
    "naclip": "NACLIP paper (Hajimiri et al., WACV 2025), main table, without post-processing",
    "proxyclip": "not found per benchmark (two sources disagree; CASS's Table 1 gives the average, 41.4)",
}
PAPER_MIOU = {config: (name, PUBLISHED_MIOU["cass"][config]) for config, name in BENCHMARKS.items()}
COLUMNS = ("benchmark", "config", "mIoU", "paper", "diff")


def collect(root: str | Path) -> dict[str, dict]:
    """``{benchmark: report}`` from ``<root>/*/metrics.json``."""
    reports = {}
    for path in sorted(Path(root).glob("*/metrics.json")):
        report = json.loads(path.read_text())
        reports[report.get("benchmark", path.parent.name)] = report
    return reports


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def rows(reports: dict[str, dict], method: str = "cass") -> list[dict]:
    """One row per paper benchmark (then any other reported config), and the
    average; ``paper`` is ``method``'s published mIoU."""
    if method not in PUBLISHED_MIOU:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(PUBLISHED_MIOU)}")
    published = PUBLISHED_MIOU[method]
    table = []
    for config, name in BENCHMARKS.items():
        miou = reports.get(config, {}).get("mIoU")
        table.append(dict(benchmark=name, config=config, mIoU=miou, paper=published[config],
                          diff=_diff(miou, published[config])))
    for config in sorted(set(reports) - set(BENCHMARKS)):
        table.append(dict(benchmark=config, config=config, mIoU=reports[config].get("mIoU"), paper=None, diff=None))
    paper_rows = table[:len(BENCHMARKS)]
    mean, paper_mean = _mean([r["mIoU"] for r in paper_rows]), _mean([r["paper"] for r in paper_rows])
    table.append(dict(benchmark="average", config="", mIoU=mean, paper=paper_mean, diff=_diff(mean, paper_mean)))
    return table


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def to_markdown(table: list[dict], method: str = "cass") -> str:
    lines = [f"| benchmark | config | mIoU | paper | diff |" if method == "cass" else
             f"| benchmark | config | mIoU ({method}) | paper ({method}) | diff |", "|---|---|---:|---:|---:|"]
    for r in table:
        miou = _fmt(r["mIoU"]) or "missing"
        paper = _fmt(r["paper"]) or ("not found" if r["config"] in BENCHMARKS or r["benchmark"] == "average" else "")
        lines.append(f"| {r['benchmark']} | {r['config']} | {miou} | {paper} | {_fmt(r['diff'], True)} |")
    lines += ["", f"Published mIoU ({method}): {PUBLISHED_SOURCE[method]}; how it was checked: docs/methods.md."]
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({**r, "mIoU": _fmt(r["mIoU"]), "paper": _fmt(r["paper"]), "diff": _fmt(r["diff"], True)})
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cass.summary",
                                     description="Reproduced vs published mIoU from eval.py's metrics.json files.")
    parser.add_argument("root", type=Path, help="folder holding one work dir per benchmark (<name>/metrics.json)")
    parser.add_argument("--method", choices=sorted(PUBLISHED_MIOU), default="cass",
                        help="whose published numbers to compare with (default: cass)")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"summary: not a folder: {args.root}", file=sys.stderr)
        return 1
    table = rows(collect(args.root), args.method)
    markdown = to_markdown(table, args.method)
    print(markdown, end="")
    if args.markdown is not None:
        args.markdown.write_text(markdown)
    if args.csv is not None:
        args.csv.write_text(to_csv(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
