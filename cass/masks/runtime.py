"""Where and how a network-based mask generator runs, shared by ``sam2``, ``mask2former`` and ``eomt``.

* :func:`resolve_device` and :func:`runs_half`: the ``device`` and ``precision``
  settings (``'auto'``: float16 on CUDA, as the release runs every generator;
  float32 elsewhere), and :func:`half_autocast`, the context the model runs in;
* :func:`pretrained_identity` and :func:`load_pretrained`: a transformers model
  named by a hub id or a ``save_pretrained`` folder, as the disk cache's key sees
  it, and loaded with a one-line :class:`~cass.weights.WeightsError`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..config import ConfigError
from ..weights import WeightsError

PRECISIONS = ("auto", "float16", "float32")
T = TypeVar("T")


def resolve_device(generator: str, device: str | None, precision: str) -> str:
    """``device`` (None: CUDA when available), after checking ``precision`` against it; a bad one is a
    one-line :class:`ConfigError` naming ``generator``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"mask generator {generator!r}: precision {precision!r} is not one of "
                          f"{', '.join(PRECISIONS)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "float16" and torch.device(device).type != "cuda":
        raise ConfigError(f"mask generator {generator!r}: precision float16 needs a CUDA device, not {device!r}")
    return device


def runs_half(device: str, precision: str) -> bool:
    """Whether the model runs in float16: asked for, or ``'auto'`` on CUDA (the release's precision)."""
    return precision == "float16" or (precision == "auto" and torch.device(device).type == "cuda")


def half_autocast(half: bool) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA when ``half``, else nothing."""
    return torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()


def pretrained_identity(model: str) -> str | list:
    """A hub id as it is; a local folder as its path and its files' names, sizes and times (its weights)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return model
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
    return [str(folder.resolve()), files]


def load_pretrained(title: str, model: str, load: Callable[[], T]) -> T:
    """``load()`` (transformers' ``from_pretrained`` calls of ``model``); a model that cannot be read or
    reached is a one-line :class:`WeightsError` naming ``title`` and ``model``."""
    try:
        return load()
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WeightsError(f"cannot load {title} {model!r} ({type(err).__name__}: {first}); give a hub id that is "
                           "reachable or cached, or a folder written by save_pretrained") from None
