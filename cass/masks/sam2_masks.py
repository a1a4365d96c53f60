"""SAM2's automatic masks, as CorrCLIP generates its regions (``set_mask_generator('sam2')``).

The release builds ``build_sam2("sam2_hiera_l.yaml", "sam2_hiera_large.pt",
apply_postprocessing=False)``, casts it to float16 and runs
``SAM2AutomaticMaskGenerator(points_per_side=8, pred_iou_thresh=0.4,
stability_score_thresh=0.4, multimask_output=False)`` under float16 autocast
on an RGB image read by PIL; the masks are sorted by area, ascending, and
painted with labels 1..n over zeros (``generate_mask``), so 0 marks the
unsegmented pixels. :class:`SAM2Masks` does the same through the ``sam2``
package (PyPI ``sam2`` 1.1.0, Meta's code), with those settings as defaults;
on the CPU it computes in float32.

Weights are Meta's release files (``{"model": state_dict}``), downloaded once
into the weights cache (:func:`cass.weights.weights_cache_dir`) or read from
``checkpoint``; they are loaded strictly, a wrong or corrupt file being a
one-line :class:`cass.weights.WeightsError` naming it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from ..weights import WeightsError, _fetch_public, _local_file, _mismatch
from .labels import _paint_by_area, check_image
from .runtime import half_autocast, resolve_device, runs_half


class SAM2Spec(NamedTuple):
    """A SAM2 release: its hydra config in the ``sam2`` package and its checkpoint file."""

    config: str
    release_file: str

    @property
    def url(self) -> str:
        return SAM2_URL + self.release_file


SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
SAM2_MODELS: dict[str, SAM2Spec] = {
    "sam2_hiera_large": SAM2Spec("sam2_hiera_l.yaml", "sam2_hiera_large.pt"),
    "sam2_hiera_base_plus": SAM2Spec("sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt"),
    "sam2_hiera_small": SAM2Spec("sam2_hiera_s.yaml", "sam2_hiera_small.pt"),
    "sam2_hiera_tiny": SAM2Spec("sam2_hiera_t.yaml", "sam2_hiera_tiny.pt"),
}
# CorrCLIP's SAM2AutomaticMaskGenerator arguments (the rest are sam2's defaults)
RELEASE_SETTINGS = dict(points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4, multimask_output=False)
INSTALL_HINT = ("SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2==1.1.0 && "
                "pip install hydra-core iopath (bash scripts/setup.sh does it)")


def _sam2_modules():
    """``(build_sam2, SAM2AutomaticMaskGenerator)``; without the package, a one-line ImportError."""
    try:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
    except ImportError as err:
        raise ImportError(f"the 'sam2' mask generator needs the sam2 package ({err}); install it with "
                          f"{INSTALL_HINT}") from None
    return build_sam2, SAM2AutomaticMaskGenerator


def _spec(model: str) -> SAM2Spec:
    if model not in SAM2_MODELS:
        raise ConfigError(f"unknown SAM2 model {model!r}; choose one of {', '.join(SAM2_MODELS)}")
    return SAM2_MODELS[model]


def build_sam2_model(model: str = "sam2_hiera_large", overrides: tuple[str, ...] | list[str] = ()) -> nn.Module:
    """SAM2's ``SAM2Base`` of ``model`` with random weights, built from the package's hydra config as
    the release does (``apply_postprocessing=False``); CPU, eval.

    ``overrides`` are extra hydra overrides (``"++model.image_encoder.trunk.embed_dim=8"``, e.g.
    :data:`cass.masks.random_sam2.TINY_SAM2_OVERRIDES` for tests).
    """
    spec = _spec(model)
    build_sam2, _ = _sam2_modules()
    try:
        return build_sam2(spec.config, None, device="cpu", apply_postprocessing=False,
                          hydra_overrides_extra=list(overrides))
    except Exception as err:  # noqa: BLE001 - hydra/omegaconf errors span lines: keep the first
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(f"cannot build SAM2 {model!r} with overrides {list(overrides)}: "
                          f"{type(err).__name__}: {first}") from None


def sam2_checkpoint_file(model: str = "sam2_hiera_large", checkpoint: str | os.PathLike | None = None) -> Path:
    """``checkpoint`` (a local file, never downloaded), else ``model``'s release file in the weights
    cache, downloaded once from Meta's public URL."""
    spec = _spec(model)
    if checkpoint is not None:
        return _local_file(checkpoint, "SAM2")
    return _fetch_public(spec.url, "the sam2 mask generator's checkpoint setting")


def read_sam2_state_dict(file: str | os.PathLike) -> dict:
    """The state dict of a SAM2 release file (``{"model": state_dict}``, read with ``weights_only``)."""
    file = Path(file)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated zip, a text file, a pickle of other objects
        raise WeightsError(f"{file}: not a readable SAM2 checkpoint ({type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        keys = list(checkpoint)[:3] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsError(f"{file}: not a SAM2 release checkpoint (expected {{'model': state_dict}}, found {keys})")
    return checkpoint["model"]


def load_sam2(model: str = "sam2_hiera_large", checkpoint: str | os.PathLike | None = None,
              overrides: tuple[str, ...] | list[str] = ()) -> nn.Module:
    """SAM2 ``model`` with release weights (``checkpoint`` or the public file), loaded strictly; CPU, eval."""
    file = sam2_checkpoint_file(model, checkpoint)
    state_dict = read_sam2_state_dict(file)
    sam2 = build_sam2_model(model, overrides)
    _mismatch(file, sam2, state_dict)
    sam2.load_state_dict(state_dict, strict=True)
    return sam2.eval()


@dataclass
class SAM2Masks:
    """The ``sam2`` generator: SAM2's automatic masks stacked by area (CorrCLIP's ``generate_mask``).

    Args:
        model: ``sam2_hiera_large`` (the release's), ``sam2_hiera_base_plus``,
            ``sam2_hiera_small`` or ``sam2_hiera_tiny``.
        checkpoint: the release file (``{"model": state_dict}``); None: Meta's,
            downloaded once into the weights cache.
        points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
        stability_score_offset, mask_threshold, box_nms_thresh, crop_n_layers,
        min_mask_region_area, use_m2m, multimask_output: ``SAM2AutomaticMaskGenerator``'s
            arguments; defaults: the release's (:data:`RELEASE_SETTINGS`), else sam2's.
        device: ``'cuda'``, ``'cpu'``, ...; None: CUDA when available.
        precision: ``'auto'`` (float16 on CUDA: the model cast to half and run
            under float16 autocast, as released; float32 elsewhere), ``'float16'``
            (CUDA only) or ``'float32'``.
        overrides: extra hydra overrides of the model's config (the tests' tiny model).

    The model is loaded on the first call (a cache that answers every image never loads it).
    """

    model: str = "sam2_hiera_large"
    checkpoint: str | None = None
    points_per_side: int = 8
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.4
    stability_score_thresh: float = 0.4
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    min_mask_region_area: int = 0
    use_m2m: bool = False
    multimask_output: bool = False
    device: str | None = None
    precision: str = "auto"
    overrides: tuple[str, ...] = ()
    _generator: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _spec(self.model)
        self.device = resolve_device("sam2", self.device, self.precision)
        self.overrides = tuple(self.overrides)
        if self.checkpoint is not None:
            self.checkpoint = str(_local_file(self.checkpoint, "SAM2"))  # a missing file fails here, not later

    @property
    def half(self) -> bool:
        """Whether the model runs in float16 (the release's precision on CUDA)."""
        return runs_half(self.device, self.precision)

    def generator_settings(self) -> dict:
        """The ``SAM2AutomaticMaskGenerator`` keyword arguments."""
        names = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                 "stability_score_offset", "mask_threshold", "box_nms_thresh", "crop_n_layers",
                 "min_mask_region_area", "use_m2m", "multimask_output")
        return {name: getattr(self, name) for name in names}

    def settings_key(self) -> str:
        if self.checkpoint is None:
            weights = f"release:{SAM2_MODELS[self.model].release_file}"
        else:
            stat = Path(self.checkpoint).stat()
            weights = f"{Path(self.checkpoint).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        settings = dict(self.generator_settings(), model=self.model, weights=weights, overrides=list(self.overrides),
                        precision="float16" if self.half else "float32")
        return "sam2 " + json.dumps(settings, sort_keys=True)

    def load(self):
        """The ``SAM2AutomaticMaskGenerator`` (the model loaded, moved and cast on first use)."""
        if self._generator is None:
            _, automatic = _sam2_modules()
            sam2 = load_sam2(self.model, self.checkpoint, self.overrides).to(self.device)
            if self.half:
                sam2 = sam2.half()
            self._generator = automatic(model=sam2, **self.generator_settings())
        return self._generator

    def masks(self, image: np.ndarray) -> list[dict]:
        """SAM2's records (``'segmentation'``, ``'area'``, ...) of an (H, W, 3) uint8 RGB image."""
        check_image(image)
        generator = self.load()
        with torch.inference_mode(), half_autocast(self.half):
            return generator.generate(np.array(image))  # a writable copy, as the release's np.array(PIL image)

    def __call__(self, image: np.ndarray, path: str | os.PathLike | None = None) -> np.ndarray:
        shape = check_image(image)
        records = self.masks(image)
        return _paint_by_area([r["segmentation"] for r in records], [r["area"] for r in records], shape)
