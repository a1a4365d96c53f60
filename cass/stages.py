"""Named stages of the model, for the profiler and for stage timers.

The model marks its parts with :func:`stage` (``'clip'``, ``'dino'``,
``'spectral'``, ``'text'``, ``'post'``). Each stage is a
``torch.profiler.record_function`` range named ``cass.<stage>``, so a
``torch.profiler`` trace shows them, and any observer registered with
:func:`observe_stages` (for example ``benchmark.py``'s timer) is told when a
stage starts and ends. Nothing is patched and, with no observer, a stage costs
one profiler range.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol

import torch

STAGES = {
    "clip": "CLIP trunk, global embedding, last block",
    "dino": "DINO input and keys",
    "spectral": "spectral matching and fusion, attention",
    "text": "text refinement and class logits",
    "post": "upsampling, window averaging, post-processing",
    "sam": "SAM image encoder",
    "aggregate": "SAM correlation and aggregation",
    "refine": "SAM refinement (prompts, masks)",
    "masks": "region masks from the mask generator (SAM2, files)",
    "regions": "region merging (DBSCAN) and region attention (CorrCLIP)",
}


class StageObserver(Protocol):
    def stage(self, name: str) -> contextlib.AbstractContextManager: ...


_observers: ContextVar[tuple[StageObserver, ...]] = ContextVar("cass_stage_observers", default=())


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark the enclosed work as stage ``name`` (one of :data:`STAGES`)."""
    with torch.profiler.record_function(f"cass.{name}"):
        observers = _observers.get()
        if not observers:
            yield
            return
        with contextlib.ExitStack() as stack:
            for observer in observers:
                stack.enter_context(observer.stage(name))
            yield


@contextlib.contextmanager
def observe_stages(observer: StageObserver) -> Iterator[None]:
    """Call ``observer.stage(name)`` around every stage run inside the block."""
    token = _observers.set((*_observers.get(), observer))
    try:
        yield
    finally:
        _observers.reset(token)
