"""Table of reproduced vs published mIoU from ``eval.py``'s ``metrics.json`` files.

    python -m cass.summary work_dirs/ [--markdown work_dirs/summary.md] [--csv work_dirs/summary.csv]
    python cass/summary.py work_dirs/   # the same without importing torch (standard library only)

Reads ``<root>/*/metrics.json`` (one folder per benchmark, as ``eval_all.sh``
writes them) and prints a Markdown table in the paper's column order: each
benchmark's mIoU, the paper's, and the difference. Benchmarks without results
show as missing; the average row needs all eight.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# CASS, CLIP ViT-B/16 + DINO ViT-B/8, no PAMR (paper, Table 1), keyed by config name.
PAPER_MIOU = {
    "cfg_voc21": ("VOC21", 65.8),
    "cfg_context60": ("PC60", 36.7),
    "cfg_coco_object": ("COCO-Obj", 37.8),
    "cfg_voc20": ("VOC20", 87.8),
    "cfg_context59": ("PC59", 40.2),
    "cfg_coco_stuff164k": ("COCO-Stuff", 26.7),
    "cfg_city_scapes": ("Cityscapes", 39.4),
    "cfg_ade20k": ("ADE20K", 20.4),
}
COLUMNS = ("benchmark", "config", "mIoU", "paper", "diff")


def collect(root: str | Path) -> dict[str, dict]:
    """``{benchmark: report}`` from ``<root>/*/metrics.json``."""
    reports = {}
    for path in sorted(Path(root).glob("*/metrics.json")):
        report = json.loads(path.read_text())
        reports[report.get("benchmark", path.parent.name)] = report
    return reports


def rows(reports: dict[str, dict]) -> list[dict]:
    """One row per paper benchmark (then any other reported config), and the average."""
    table = []
    for config, (name, paper) in PAPER_MIOU.items():
        miou = reports.get(config, {}).get("mIoU")
        table.append(dict(benchmark=name, config=config, mIoU=miou, paper=paper,
                          diff=None if miou is None else miou - paper))
    for config in sorted(set(reports) - set(PAPER_MIOU)):
        table.append(dict(benchmark=config, config=config, mIoU=reports[config].get("mIoU"), paper=None, diff=None))
    paper_rows = table[:len(PAPER_MIOU)]
    paper_mean = sum(r["paper"] for r in paper_rows) / len(paper_rows)
    complete = all(r["mIoU"] is not None for r in paper_rows)
    mean = sum(r["mIoU"] for r in paper_rows) / len(paper_rows) if complete else None
    table.append(dict(benchmark="average", config="", mIoU=mean, paper=paper_mean,
                      diff=None if mean is None else mean - paper_mean))
    return table


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def to_markdown(table: list[dict]) -> str:
    lines = ["| benchmark | config | mIoU | paper | diff |", "|---|---|---:|---:|---:|"]
    for r in table:
        miou = _fmt(r["mIoU"]) or "missing"
        lines.append(f"| {r['benchmark']} | {r['config']} | {miou} | {_fmt(r['paper'])} | {_fmt(r['diff'], True)} |")
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
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"summary: not a folder: {args.root}", file=sys.stderr)
        return 1
    table = rows(collect(args.root))
    markdown = to_markdown(table)
    print(markdown, end="")
    if args.markdown is not None:
        args.markdown.write_text(markdown)
    if args.csv is not None:
        args.csv.write_text(to_csv(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
