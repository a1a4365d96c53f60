"""The web app's model cache: built models kept for reuse, one request per model at a time.

* :class:`ModelSlot`: one model and the requests for it, served one at a
  time, first come, first served; a waiting request is told its place and
  may leave the line without holding up those behind it;
* :class:`ModelCache`: a slot per key (the web app's: method, CLIP, VFM),
  the least recently used idle models dropped beyond ``max_models``.

What a slot holds is built by its user (:class:`cass.webapp.Engine` puts a
:class:`~cass.api.Segmenter` there, or a mask generator in a cache of its own); this module builds nothing and imports
no Gradio.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .api import Segmenter

logger = logging.getLogger(__name__)


class ModelSlot:
    """One model of the cache and the requests for it: one at a time, first come, first served."""

    def __init__(self) -> None:
        self.model: Segmenter | Any | None = None  # what its user built: a Segmenter, a mask generator
        self.last_used = 0.0
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()  # tickets whose requests left the line

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._serving != self._next_ticket

    @contextmanager
    def turn(self, on_wait: Callable[[int], None] = lambda ahead: None, poll: float = 0.5) -> Iterator[None]:
        """Hold the model; while waiting, ``on_wait(requests ahead)`` is called each time that number changes.

        A request that fails while waiting (``on_wait`` raises) leaves the line
        without holding up those behind it.
        """
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
        try:
            told = None
            while True:
                with self._cond:
                    ahead = ticket - self._serving
                    if ahead > 0 and ahead == told:
                        self._cond.wait(poll)
                        continue
                if ahead == 0:
                    break
                on_wait(ahead)  # outside the lock: it may talk to the page
                told = ahead
        except BaseException:
            with self._cond:
                if ticket == self._serving:
                    self._advance()
                else:
                    self._abandoned.add(ticket)
            raise
        try:
            yield
        finally:
            with self._cond:
                self.last_used = time.monotonic()
                self._advance()

    def _advance(self) -> None:
        """Serve the next ticket still in line (called with the lock held)."""
        self._serving += 1
        while self._serving in self._abandoned:
            self._abandoned.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()


ModelKey = tuple[str, str, str | None]  # (method, CLIP, VFM or None when the method uses none)


class ModelCache:
    """Segmenters keyed by (method, CLIP, VFM), each behind its :class:`ModelSlot`.

    At most ``max_models`` stay built: after a request the least recently used
    idle ones beyond that are dropped (built again when next asked for).
    """

    def __init__(self, max_models: int = 3) -> None:
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        self.max_models = max_models
        self._slots: OrderedDict[ModelKey, ModelSlot] = OrderedDict()
        self._lock = threading.Lock()

    def slot(self, key: ModelKey) -> ModelSlot:
        with self._lock:
            slot = self._slots.setdefault(key, ModelSlot())
            self._slots.move_to_end(key)
            return slot

    def built(self) -> list[ModelKey]:
        """The keys of the models built now, least recently used first."""
        with self._lock:
            return [key for key, slot in self._slots.items() if slot.model is not None]

    def trim(self) -> None:
        """Drop the least recently used idle models beyond ``max_models``."""
        with self._lock:
            built = sorted((key for key, slot in self._slots.items() if slot.model is not None),
                           key=lambda key: self._slots[key].last_used)
            for key in built[:max(0, len(built) - self.max_models)]:
                slot = self._slots[key]
                if not slot.busy:
                    slot.model = None
                    logger.info("dropped the model %s (more than %d built)", "/".join(map(str, key)),
                                self.max_models)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
