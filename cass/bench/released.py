"""What the comparisons with the authors' released code share.

``scripts/compare_released.py`` (CASS) and ``scripts/compare_trident.py``
(Trident) run a patched copy of a released checkout on scikit-image's photos
and compare its class scores and labels with this code's.
"""
from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np


class ReleasedCodeError(RuntimeError):
    """The released checkout is missing, changed, or failed to run."""


def apply_patches(source: Path, target: Path, patches: Mapping[str, Sequence[tuple[str, str]]]) -> None:
    """Replace, in the copy ``target`` of ``source``, each ``(old, new)`` literal of each file of ``patches``;
    a pattern that is not found means the checkout is not the one the script knows (one-line error)."""
    for name, replacements in patches.items():
        path = target / name
        text = path.read_text()
        for old, new in replacements:
            if old not in text:
                raise ReleasedCodeError(f"{source / name}: expected {old!r}; this released version is not supported")
            text = text.replace(old, new)
        path.write_text(text)


def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo shipped with scikit-image."""
    from skimage import data
    image = getattr(data, name)()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"scikit-image's {name!r} is not an RGB photo")
    return image


def agreement(ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Share of pixels with the same label, the largest class-probability difference, and the share of
    pixels where some class's probability differs by more than 1e-3 (with SAM refinement a pixel where a
    mask logit is within rounding of 0 can fall inside the mask on one side only)."""
    if ours["probs"].shape != theirs["probs"].shape:
        raise ValueError(f"probability maps differ in shape: {ours['probs'].shape} vs {theirs['probs'].shape}")
    if ours["labels"].shape != theirs["labels"].shape:
        raise ValueError(f"label maps differ in shape: {ours['labels'].shape} vs {theirs['labels'].shape}")
    diff = np.abs(ours["probs"].astype(np.float64) - theirs["probs"])
    return dict(label_agreement=float((ours["labels"] == theirs["labels"]).mean()), max_prob_diff=float(diff.max()),
                prob_diff_share=float((diff.max(axis=0) > 1e-3).mean()))


def run_comparison(script: str, compute: Callable[[Path], list[dict]], format_table: Callable[[list[dict]], str],
                   keep: Path | None = None, json_path: Path | None = None,
                   argv: Sequence[str] | None = None) -> int:
    """A comparison script's ``main``: ``compute(work)`` in ``keep`` (else a temporary folder), the
    table printed, the rows and the command written to ``json_path``; a failure is one line on
    stderr and exit status 1."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = keep or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            rows = compute(work)
    except (ReleasedCodeError, ValueError, OSError) as err:
        print(f"{script}: {err}", file=sys.stderr)
        return 1
    print(format_table(rows))
    if json_path:
        command = f"python scripts/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
        json_path.write_text(json.dumps(dict(command=command, rows=rows), indent=2) + "\n")
    return 0
