"""CASS and its training-free family: open-vocabulary semantic segmentation (Kim et al., CVPR 2025).

The model (:class:`CASSModel`, :func:`build_model`, :class:`Segmenter`) needs
torch, torchvision, open_clip, timm, scipy, scikit-learn and scikit-image;
mmseg sees it through :mod:`cass.mmseg` (registered by the benchmark configs'
``custom_imports``). The methods are one module each in :mod:`cass.methods`.

The names below are imported on first use, so that the standard-library-only
modules (:mod:`cass.protocols`, :mod:`cass.cli`) load without torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Segmentation": "api", "Segmenter": "api",
    "build_model": "build",
    "CASSConfig": "config", "ConfigError": "config", "OutputConfig": "config", "PrecisionConfig": "config",
    "SpectralConfig": "config", "TextConfig": "config", "WindowConfig": "config", "MethodConfig": "config",
    "Method": "methods", "register_method": "methods",
    "ImageError": "images",
    "CASSModel": "model", "Prediction": "model", "slide_windows": "windows",
    "Vocabulary": "text", "VocabularyError": "text", "parse_vocabulary": "text", "read_class_file": "text",
    "WeightsError": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # PEP 562: import the module that holds ``name`` on first use
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cass' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
