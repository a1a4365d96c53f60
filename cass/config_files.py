"""Benchmark config files (``configs/cfg_<benchmark>.py``): reading them and splitting their keys.

One loader for every entry point (:class:`cass.api.Segmenter`, ``demo.py``,
``benchmark.py``, ``eval.py``): mmengine's config reader with mmseg-style
``--cfg-options`` (``{'model.prob_thd': 0.1}``) merged in. A config's
``model=dict(...)`` holds mmseg's own keys (:data:`MMSEG_KEYS`) beside the
keys of :func:`cass.build.build_model`; :func:`model_keys` gives the latter.
mmengine is pure Python; it is imported when a config is read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmengine.config import Config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cfg_ade20k.py"
# Keys of a segmentor config that are mmseg's, not the model's: the registry
# type, the pre-processor, the (unused) initialisation and the registry scope.
MMSEG_KEYS = ("type", "data_preprocessor", "init_cfg", "_scope_")
# The model key of the VFM's weights: its name, then the name that configs
# written before the rename use.
VFM_PATH_KEYS = ("vfm_path", "dino_path")


def load_config(config: str | os.PathLike | None = None, cfg_options: dict | None = None,
                import_custom_modules: bool = False) -> Config:
    """A benchmark config (default: ADE20K's) with mmseg-style ``--cfg-options``
    overrides (``{'model.prob_thd': 0.1}``) merged in.

    Args:
        config: path of the config file; None: ``configs/cfg_ade20k.py``.
        cfg_options: dotted keys and their values, merged last.
        import_custom_modules: import the config's ``custom_imports`` (the mmseg
            adapter, for mmseg's runner); off for the model alone.
    """
    from mmengine.config import Config

    path = Path(DEFAULT_CONFIG if config is None else config)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    cfg = Config.fromfile(str(path), import_custom_modules=import_custom_modules)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def model_keys(cfg: Config) -> dict[str, Any]:
    """The config's model keys for :func:`cass.build.build_model`: ``cfg.model`` without :data:`MMSEG_KEYS`."""
    return {key: value for key, value in cfg.model.to_dict().items() if key not in MMSEG_KEYS}


def with_vfm_path(keys: dict[str, Any], path: str | os.PathLike | None) -> dict[str, Any]:
    """``keys`` with the VFM's weights set to ``path`` (None: unchanged).

    The path goes under the key the config already has (:data:`VFM_PATH_KEYS`),
    ``vfm_path`` if it has neither; the other name is dropped.
    """
    if path is None:
        return dict(keys)
    name = next((key for key in VFM_PATH_KEYS if key in keys), VFM_PATH_KEYS[0])
    out = {key: value for key, value in keys.items() if key not in VFM_PATH_KEYS}
    out[name] = str(path)
    return out


def resize_scale(cfg: Config) -> tuple[int, int]:
    """The ``Resize(scale=..., keep_ratio=True)`` of the config's test pipeline.

    The pipeline ``eval.py`` runs: the test dataloader's (where a method's
    published protocol and ``--cfg-options`` set the resize,
    :data:`cass.benchmarks.RESIZE_KEY`), else the config's ``test_pipeline``.
    Only the steps :mod:`cass.api` computes itself are accepted (an image
    loader, one keep-ratio resize, annotation loading, packing); anything else
    is an error rather than a silent difference from ``eval.py``.
    """
    dataset = (cfg.get("test_dataloader") or {}).get("dataset") or {}
    pipeline = dataset.get("pipeline") or cfg.get("test_pipeline")
    if not pipeline:
        raise ValueError("the config has no test pipeline (test_dataloader.dataset.pipeline or test_pipeline)")
    scales = []
    for step in pipeline:
        kind = step["type"]
        if kind == "Resize":
            if not step.get("keep_ratio", False) or step.get("interpolation", "bilinear") != "bilinear":
                raise ValueError(f"unsupported Resize in the config's test pipeline: {dict(step)} "
                                 "(only keep_ratio=True, bilinear)")
            scales.append(tuple(step["scale"]))
        elif kind not in ("LoadImageFromFile", "LoadAnnotations", "PackSegInputs"):
            raise ValueError(f"unsupported step {kind!r} in the config's test pipeline")
    if len(scales) != 1:
        raise ValueError(f"the config's test pipeline must resize once, found {len(scales)} Resize steps")
    return scales[0]
