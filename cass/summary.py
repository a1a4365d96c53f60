"""Table of reproduced vs published mIoU from ``eval.py``'s ``metrics.json`` files.

    python -m cass.summary work_dirs/ [--method sclip] [--clip ViT-H-14/laion2b_s32b_b79k] [--markdown work_dirs/summary.md] [--csv work_dirs/summary.csv]
    python cass/summary.py work_dirs/   # the same, run as a script

Reads ``<root>/*/metrics.json`` (one folder per benchmark, as ``eval_all.sh``
writes them) and prints a Markdown table in the paper's column order: each
benchmark's mIoU, the published one of ``--method`` (default CASS), and the
difference; ``--clip`` picks the published row of another CLIP backbone
(Trident's ViT-H/14). Benchmarks without results show as missing; the average row needs
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

if __package__ in (None, ""):  # run as a script: the repository root holds the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cass.methods import METHODS, get_method  # noqa: E402
from cass.benchmarks import BENCHMARKS  # noqa: E402

# Published mIoU (CLIP ViT-B/16, no PAMR) and their source: each method's entry (cass/methods/).
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


def published_row(method: str, clip: str | None = None) -> dict[str, float | None]:
    """``method``'s published mIoU with CLIP ``clip`` (None or ``'ViT-B/16'``: the main row); empty
    where that CLIP's row was not published."""
    try:
        entry = get_method(method)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    if clip in (None, "ViT-B/16"):
        return dict(entry.published)
    return dict(entry.published_with.get(clip, {}))


def rows(reports: dict[str, dict], method: str = "cass", clip: str | None = None) -> list[dict]:
    """One row per paper benchmark (then any other reported config), and the
    average; ``paper`` is ``method``'s published mIoU (with ``clip``, :func:`published_row`)."""
    published = published_row(method, clip)
    table = []
    for config, name in BENCHMARKS.items():
        miou = reports.get(config, {}).get("mIoU")
        paper = published.get(config)
        table.append(dict(benchmark=name, config=config, mIoU=miou, paper=paper, diff=_diff(miou, paper)))
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


def to_markdown(table: list[dict], method: str = "cass", clip: str | None = None) -> str:
    lines = [f"| benchmark | config | mIoU | paper | diff |" if method == "cass" else
             f"| benchmark | config | mIoU ({method}) | paper ({method}) | diff |", "|---|---|---:|---:|---:|"]
    for r in table:
        miou = _fmt(r["mIoU"]) or "missing"
        paper = _fmt(r["paper"]) or ("not found" if r["config"] in BENCHMARKS or r["benchmark"] == "average" else "")
        lines.append(f"| {r['benchmark']} | {r['config']} | {miou} | {paper} | {_fmt(r['diff'], True)} |")
    backbone = f", CLIP {clip}" if clip else ""
    lines += ["", f"Published mIoU ({method}{backbone}): {get_method(method).source}; "
                  "how it was checked: docs/methods.md."]
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
    parser.add_argument("--method", choices=tuple(METHODS), default="cass",
                        help="whose published numbers to compare with (default: cass)")
    parser.add_argument("--clip", default=None,
                        help="the CLIP backbone of the run, for its published row (default: ViT-B/16)")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"summary: not a folder: {args.root}", file=sys.stderr)
        return 1
    table = rows(collect(args.root), args.method, args.clip)
    markdown = to_markdown(table, args.method, args.clip)
    print(markdown, end="")
    if args.markdown is not None:
        args.markdown.write_text(markdown)
    if args.csv is not None:
        args.csv.write_text(to_csv(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
