"""Each method's published protocol on the benchmarks, as ``--cfg-options``.

A method's entry (:class:`cass.methods.Method`) holds its published settings
per benchmark (``protocol``, written with the helpers of
:mod:`cass.benchmarks`); :func:`protocol_options` turns them into the
overrides that every entry point (``eval.py``, :class:`cass.api.Segmenter`,
``demo.py``, the web app) merges into a benchmark config.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .benchmarks import BENCHMARKS, CONFIGS_DIR, PROTOCOL_NAMES, RESIZE_KEY
from .methods.registry import get_method

def cfg_options(method: str, benchmark: str, protocol: str = "published") -> list[str]:
    """``key=value`` overrides for ``eval.py --cfg-options``.

    The method, and with ``protocol='published'`` its published settings on
    ``benchmark`` (a config name such as ``cfg_voc21``): model keys, the test
    resize and, where the method ships its own, the class-name file (an
    absolute path). ``protocol='cass'`` keeps the benchmark config's settings.
    :func:`protocol_options` gives the same overrides with their values.
    """
    get_method(method)
    if benchmark not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {benchmark!r}; benchmarks: {', '.join(BENCHMARKS)}")
    return [f"{key}={_option_text(value)}" for key, value in protocol_options(method, benchmark, protocol).items()]


def protocol_options(method: str, config: str | os.PathLike, protocol: str = "published") -> dict[str, Any]:
    """:func:`cfg_options` as a mapping with typed values, for a benchmark config file or name.

    What every entry point (``eval.py``, :class:`cass.api.Segmenter`,
    ``demo.py``, the web app) merges into the config before the user's
    explicit ``--cfg-options``, which win. The benchmark is the config's file
    name (``configs/cfg_voc21.py``: ``cfg_voc21``). A config that is none of
    :data:`BENCHMARKS` has no published settings: it takes ``protocol='cass'``,
    and ``'published'`` for a method that publishes none (CASS: its protocol
    is the config itself); otherwise a one-line ``KeyError``.
    """
    entry = get_method(method)
    if protocol not in PROTOCOL_NAMES:
        raise KeyError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOL_NAMES)}")
    options: dict[str, Any] = {} if method == "cass" else {"model.method": method}
    if protocol == "cass":
        return options
    benchmark = Path(config).stem
    if benchmark not in BENCHMARKS and any(entry.protocol.values()):
        raise KeyError(f"protocol 'published': {benchmark} is not a benchmark config ({', '.join(BENCHMARKS)}), "
                       f"so {method} has no published settings for it; use protocol 'cass' (the config's own)")
    settings = dict(entry.protocol.get(benchmark, {}))
    short_side = settings.pop("short_side", None)
    class_file = settings.pop("class_file", None)
    options.update({f"model.{key}": value for key, value in settings.items()})
    if class_file is not None:
        options["model.name_path"] = str(CONFIGS_DIR / class_file)
    if short_side is not None:
        options[RESIZE_KEY] = (2048, short_side)
    return options


def _option_text(value: Any) -> str:
    """A value as ``--cfg-options`` writes it (mmengine's ``DictAction`` reads it back): tuples ``(a,b)``."""
    return f"({','.join(map(str, value))})" if isinstance(value, tuple) else str(value)
