"""The training-free family, one module per method (``docs/methods.md``, ``docs/architecture.md``).

Each module holds everything that is only its method's: its registered entry
(:class:`Method`, in :data:`METHODS`), its own settings (a frozen dataclass
with the published defaults, stated once) and its pass through the towers.
Pieces several methods share are one function they import:
:mod:`cass.methods.common` (attention forms, the shared tail, the VFM's
features), :mod:`cass.methods.token_mixing` (the CLIP-only baselines' block),
:func:`cass.methods.proxyclip.proxy_mix` (ProxyCLIP and Trident).

A method outside the package registers its own entry (``register_method``)
and is then used by name everywhere (``docs/architecture.md``).
"""
from __future__ import annotations

from .registry import METHODS, Method, Requirements, always, get_method, method_names, register_method, requirements
from . import cass, clip, maskclip, sclip, clearclip, naclip, proxyclip, trident, corrclip  # noqa: E402,F401  (registers)

__all__ = ["METHODS", "Method", "Requirements", "always", "get_method", "method_names", "register_method",
           "requirements"]
