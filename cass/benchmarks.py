"""The paper's benchmarks and the table helpers that method entries write their protocols with.

:data:`BENCHMARKS` is the one list of the paper's benchmark configs, in its
column order. Standard library only: ``eval_all.sh``, ``configs/methods.py
--benchmarks`` and :mod:`cass.cli` read it without torch. A method's protocol
as ``--cfg-options`` is :mod:`cass.protocols`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"

# Benchmark config -> column name, in the paper's column order (every table of the project reads this one).
BENCHMARKS: dict[str, str] = {
    "cfg_voc21": "VOC21",
    "cfg_context60": "PC60",
    "cfg_coco_object": "COCO-Obj",
    "cfg_voc20": "VOC20",
    "cfg_context59": "PC59",
    "cfg_coco_stuff164k": "COCO-Stuff",
    "cfg_city_scapes": "Cityscapes",
    "cfg_ade20k": "ADE20K",
}
# The Resize step of every benchmark's test pipeline (configs/_base_/datasets: step 1).
RESIZE_KEY = "test_dataloader.dataset.pipeline.1.scale"
PROTOCOL_NAMES = ("published", "cass")


def benchmark_table(base: Mapping[str, Any], **changes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{config: settings}``: ``base`` for every benchmark, updated by ``changes[short name]`` (``voc21=...``)."""
    unknown = set(changes) - {b.removeprefix("cfg_") for b in BENCHMARKS}
    if unknown:
        raise KeyError(f"unknown benchmarks {sorted(unknown)}")
    return {b: {**base, **changes.get(b.removeprefix("cfg_"), {})} for b in BENCHMARKS}


def benchmark_row(*values: float | None) -> dict[str, float | None]:
    """Published mIoU in :data:`BENCHMARKS` order."""
    return dict(zip(BENCHMARKS, values))


def with_settings(table: dict[str, dict[str, Any]], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``table`` with ``extra[short name]`` added to those benchmarks' settings."""
    return {b: {**settings, **extra.get(b.removeprefix("cfg_"), {})} for b, settings in table.items()}


# ClearCLIP's and ProxyCLIP's own class-name files where they differ from SCLIP's (configs/<method>/).
OWN_CLASS_FILES = ("voc21", "voc20", "coco_object")


def class_files(folder: str) -> dict[str, dict[str, str]]:
    """``class_file`` settings for a method's own VOC and COCO-Object class-name files (``configs/<folder>/``)."""
    return {b: dict(class_file=f"{folder}/cls_{b}.txt") for b in OWN_CLASS_FILES}
