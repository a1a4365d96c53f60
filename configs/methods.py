"""Published evaluation protocol of each method on each benchmark, as ``eval.py --cfg-options``.

    python configs/methods.py sclip cfg_voc21          # one override per line
    python configs/methods.py clearclip cfg_voc21 cass # CASS's settings: only the method changes
    python configs/methods.py sclip --all              # every benchmark's, each after a "[cfg_<name>]" line
    python configs/methods.py --benchmarks             # the eight benchmark configs, in the paper's order
    bash eval_all.sh --method sclip                    # applies them (--protocol cass: CASS's settings for all)

The settings are part of each method's entry, in its module of ``cass/methods/``
(windows, resize, logit scale, thresholds, and the class-name files of the
methods that ship their own, under ``configs/<method>/``). ``--benchmarks``
needs the standard library only; a protocol reads the method registry, which
imports torch.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cass.benchmarks import BENCHMARKS  # noqa: E402


def main(argv: list[str]) -> int:
    if argv == ["--benchmarks"]:
        print("\n".join(BENCHMARKS))
        return 0
    from cass.protocols import cfg_options  # the method registry: imports torch

    if len(argv) not in (2, 3):
        print("usage: python configs/methods.py METHOD (BENCHMARK | --all) [published|cass] | --benchmarks",
              file=sys.stderr)
        return 2
    try:
        if argv[1] == "--all":  # every benchmark: "[cfg_<name>]", then its overrides (eval_all.sh reads this)
            for benchmark in BENCHMARKS:
                print(f"[{benchmark}]")
                print("\n".join(cfg_options(argv[0], benchmark, *argv[2:])))
        else:
            print("\n".join(cfg_options(*argv)))
    except KeyError as err:
        print(f"methods.py: {err.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
