"""The web app's work, without the web page: ``app.py`` draws the page with Gradio.

One request is one call of a :class:`~cass.api.Segmenter`; this module adds
what a page serving many people needs around it, and imports no Gradio:

* :func:`catalogue`: which backbones have weights here (the flags of
  ``demo.py``, the weights cache, or the public release downloaded once) and
  which file each of the others needs;
* :func:`load_presets`: a method's settings for each benchmark -- its
  published ones (``--protocol published``, :func:`cass.protocols.protocol_options`,
  as ``eval.py`` and :class:`~cass.api.Segmenter` apply them) or the
  benchmark configs' (``cass``): test resize, windows, thresholds, class file;
* :class:`~cass.model_cache.ModelCache` (its own module): one Segmenter per
  (method, CLIP, VFM), built on first use and reused; one request per model
  at a time, the others wait first come, first served and are told their
  place; the least recently used models are dropped beyond ``max_models``;
* :func:`mask_menu`: the region-mask generators offered (:mod:`cass.masks`):
  none, SAM2's four models, Felzenszwalb superpixels, Mask2Former and EoMT
  where ``transformers`` provides them; CorrCLIP needs one, any other method votes
  each region to its majority class when one is chosen;
* :class:`Engine`: a request (image file, class text, method, backbones,
  benchmark preset, threshold, PAMR, region masks) in, the overlay, legend,
  region picture, files and timings out. The preset's settings, the
  threshold, PAMR and the vote are settings of the shared model, set for each
  request while it holds the model; masks are made before, by a generator
  kept like the models, and cached on disk by image and settings.
"""
from __future__ import annotations

import html
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .api import Segmentation, Segmenter
from .build import configured_mask_generator
from .backbones import CLIP_SPECS, VFM_SPECS
from .config import CASSConfig, ConfigError, RegionConfig
from .config_files import load_config, model_keys, resize_scale
from .methods import METHODS, get_method, requirements
from .benchmarks import BENCHMARKS, CONFIGS_DIR, PROTOCOL_NAMES
from .protocols import protocol_options
from .model_cache import ModelCache, ModelKey, ModelSlot  # noqa: F401 - ModelSlot: still importable from here
from .images import ImageError, read_image
from .masks import write_npz
from .text import Vocabulary, VocabularyError, class_list
from .visualize import LegendEntry, format_share, legend_record, render, render_regions
from .weights import WeightsError
from .weights import weights_cache_dir

logger = logging.getLogger(__name__)

PAMR_STEPS = 10  # eval.py --pamr on
# scikit-image's photos offered as examples, with classes that fit them
EXAMPLES = {"astronaut": "person, flag, rocket, wall", "chelsea": "cat, wall, floor",
            "coffee": "cup, saucer, spoon, table"}
# Errors a request can meet that are the user's to fix (the message says how);
# anything else is a bug, logged with its traceback and shown as one line.
USER_ERRORS = (ImageError, VocabularyError, ConfigError, WeightsError, ValueError, KeyError, OSError)

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


# ------------------------------------------------------------------ classes
def parse_classes(text: str) -> list[str]:
    """Class entries from the page's text box.

    One line: comma-separated classes (``"cat, dog, sky"``, as ``demo.py --classes``).
    Several lines: a class file, one class per line with its synonyms
    separated by ``", "`` (``"dog, puppy"``); blank lines are skipped.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return class_list(lines[0]) if len(lines) == 1 else lines


# ------------------------------------------------------------------ presets
# The model settings a preset sets on the shared model for each request: the windows and the threshold,
# and with a method's published protocol its other published settings, except those fixed when the model
# is built (its towers: SAM's size; the VFM is the page's choice).
WINDOW_KEYS = ("slide_crop", "slide_stride", "prob_thd")
BUILD_KEYS = ("sam_model_type",)


def request_keys(method: str, protocol: str) -> tuple[str, ...]:
    """The model settings every preset of ``method`` sets for each request under ``protocol``.

    The same keys for all its presets (those the method publishes for any
    benchmark), so that no preset leaves a setting behind for the next request.
    """
    keys = list(WINDOW_KEYS)
    if protocol == "published":
        table = CASSConfig.key_table()
        for settings in get_method(method).protocol.values():
            keys += [key for key in settings if key in table and key not in BUILD_KEYS and key not in keys]
    return tuple(keys)


@dataclass(frozen=True)
class Preset:
    """A benchmark's settings for one method: test resize, windows, threshold and vocabulary, and
    under the published protocol the method's other published settings on that benchmark.

    Attributes:
        name: the benchmark's column name (``'ADE20K'``) or the config's file name.
        class_file: its class-name file (the method's own where it ships one).
        scale: its test ``Resize`` scale, (long side bound, short side).
        settings: the model settings set for each request (:func:`request_keys`),
            ``slide_crop``, ``slide_stride`` and ``prob_thd`` (the page's default) among them.
        published: the settings are the method's published ones (False: the config's).
        own_class_file: ``class_file`` is the method's, not the benchmark config's.
        vfm: the VFM they name (the method's published one, else the config's).
    """

    name: str
    class_file: Path
    scale: tuple[int, int]
    settings: dict[str, Any] = field(default_factory=dict)
    published: bool = False
    own_class_file: bool = False
    vfm: str | None = None

    @property
    def slide_crop(self) -> int:
        """The window's side (0: the whole image)."""
        return int(self.settings["slide_crop"])

    @property
    def slide_stride(self) -> int:
        return int(self.settings["slide_stride"])

    @property
    def prob_thd(self) -> float:
        return float(self.settings["prob_thd"])

    @property
    def label(self) -> str:
        windows = "whole image" if self.slide_crop <= 0 else f"{self.slide_crop} px windows, stride {self.slide_stride}"
        label = f"{self.name}: short side {self.scale[1]}, {windows}, threshold {self.prob_thd:g}"
        if self.own_class_file:
            path = self.class_file
            label += f", classes {path.relative_to(CONFIGS_DIR) if path.is_relative_to(CONFIGS_DIR) else path}"
        return label

    def classes_text(self) -> str:
        """The vocabulary as the text box shows it: the class file, one class per line."""
        return self.class_file.read_text(encoding="utf-8").strip()


def load_preset(config: str | Path, name: str | None = None, method: str = "cass", protocol: str = "cass",
                cfg_options: dict[str, Any] | None = None) -> Preset:
    """The preset of a config for ``method``: under ``protocol='published'`` the config with the method's
    published settings for its benchmark (:func:`cass.protocols.protocol_options`), then ``cfg_options``
    (the app's ``--cfg-options``, which win), as :class:`~cass.api.Segmenter` reads them. A config that
    is no benchmark's has no published settings: its own are used."""
    own = protocol if Path(config).stem in BENCHMARKS else "cass"
    published = {key: value for key, value in protocol_options(method, config, own).items() if key != "model.method"}
    cfg = load_config(config, {**published, **(cfg_options or {})})
    keys = model_keys(cfg)
    table = CASSConfig.key_table()
    values = CASSConfig.from_keys({key: value for key, value in keys.items() if key in table}).to_keys()
    return Preset(name=name or Path(config).stem, class_file=Path(keys["name_path"]), scale=tuple(resize_scale(cfg)),
                  settings={key: values[key] for key in request_keys(method, protocol)}, published=bool(published),
                  own_class_file="model.name_path" in published, vfm=keys.get("vfm"))


def load_presets(extra: str | Path | None = None, method: str = "cass", protocol: str = "cass",
                 cfg_options: dict[str, Any] | None = None) -> dict[str, Preset]:
    """The eight benchmarks' presets (:data:`cass.benchmarks.BENCHMARKS`) for ``method``, and ``extra`` (a
    config) if it is another (:func:`load_preset`); the defaults give the benchmark configs' own settings."""
    presets = {title: load_preset(CONFIGS_DIR / f"{config}.py", title, method, protocol, cfg_options)
               for config, title in BENCHMARKS.items()}
    if extra is not None and Path(extra).stem not in BENCHMARKS:
        preset = load_preset(extra, None, method, protocol, cfg_options)
        presets[preset.name] = preset
    return presets


# ------------------------------------------------------------------ region masks
NO_MASKS = "none"
SAM2_TITLES = {"sam2_hiera_large": "Hiera-L", "sam2_hiera_base_plus": "Hiera-B+", "sam2_hiera_small": "Hiera-S",
               "sam2_hiera_tiny": "Hiera-T"}


def mask_menu() -> dict[str, str]:
    """The region-mask choices of the page, value -> label: none; each SAM2 model (its release file
    downloaded once into the weights cache, or ``--mask-path`` for the config's ``mask_model``);
    Felzenszwalb superpixels (no weights); Mask2Former and EoMT where ``transformers`` provides them; and any
    other registered generator but ``files``, which finds masks by an image's file name."""
    import importlib.util

    from .masks import MASK_GENERATORS
    from .masks.sam2_masks import SAM2_MODELS

    menu = {NO_MASKS: "none"}
    menu.update({model: f"SAM2 {SAM2_TITLES.get(model, model)}: automatic masks" for model in SAM2_MODELS})
    menu["felzenszwalb"] = "Felzenszwalb superpixels (scikit-image, no weights)"
    if importlib.util.find_spec("transformers") is not None:
        menu["mask2former"] = "Mask2Former Swin-L, COCO panoptic (transformers)"
        if importlib.util.find_spec("transformers.models.eomt") is not None:
            menu["eomt"] = "EoMT-L 640, COCO panoptic (transformers)"
    menu.update({name: name for name in MASK_GENERATORS if name not in ("sam2", "files", *menu)})
    return menu


def mask_key(choice: str, regions: RegionConfig) -> ModelKey:
    """The generator cache's key of a menu choice: the choice and the settings its masks depend on."""
    settings = (regions.points_per_side, regions.pred_iou_thresh, regions.stability_score_thresh)
    return "masks", choice, repr(settings) if regions.mask_generator == "sam2" else None


def regions_summary(regions: np.ndarray) -> str:
    """``'12 regions, 3.1% uncovered'``: the masks' labels above 0 and the share of pixels no mask covers."""
    values = np.unique(regions)
    uncovered = float((regions <= 0).mean())
    return f"{int((values > 0).sum())} regions" + (f", {format_share(100 * uncovered)} uncovered" if uncovered else "")


# ------------------------------------------------------------------ weights
@dataclass(frozen=True)
class Weights:
    """Where a backbone's weights come from.

    Attributes:
        name: a key of :data:`cass.backbones.CLIP_SPECS` or :data:`cass.backbones.VFM_SPECS`.
        path: a local file; None: the public release, downloaded once on first use.
        missing: None when usable; else what to do to make it usable (one line).
    """

    name: str
    path: str | None
    missing: str | None = None

    @property
    def available(self) -> bool:
        return self.missing is None


def catalogue(default_clip: str, default_vfm: str, clip_path: str | None = None, vfm_path: str | None = None,
              cache_dir: Path | None = None) -> tuple[dict[str, Weights], dict[str, Weights]]:
    """The CLIPs and VFMs and where their weights are, like ``demo.py`` finds them.

    The config's CLIP and VFM (``default_*``) take ``clip_path`` / ``vfm_path``
    (``--clip-path`` / ``--vfm-path``) or, without them, the public release,
    downloaded once into the weights cache (``$CASS_WEIGHTS_DIR`` or torch
    hub's checkpoints). Every other backbone is usable when its release file
    is in that cache; otherwise its ``missing`` says which file to put there.
    """
    cache = Path(cache_dir) if cache_dir is not None else weights_cache_dir()

    def entry(name: str, release_file: str, default: bool, flag_path: str | None, flag: str,
              gated_page: str | None = None) -> Weights:
        if default and flag_path is not None:
            return Weights(name, str(flag_path))
        if (cache / release_file).is_file():
            return Weights(name, str(cache / release_file))
        if default and gated_page is None:
            return Weights(name, None)
        where = f"request it at {gated_page}, then put " if gated_page else "put "
        return Weights(name, None, f"{where}{release_file} in {cache}" + (f" (or pass {flag})" if default else ""))

    clips = {name: entry(name, spec.release_file, name == default_clip, clip_path, "--clip-path")
             for name, spec in CLIP_SPECS.items()}
    if default_clip not in CLIP_SPECS:  # the config names a local file
        clips = {default_clip: Weights(default_clip, clip_path or default_clip), **clips}
    vfms = {name: entry(name, spec.release_file, name == default_vfm, vfm_path, "--vfm-path", spec.download_page)
            for name, spec in VFM_SPECS.items()}
    return clips, vfms


# ------------------------------------------------------------------ requests
@dataclass(frozen=True)
class Options:
    """How the app builds its models (``app.py``'s flags, like ``demo.py``'s).

    Attributes:
        config: a benchmark config for the model settings; None: ADE20K's.
        sam_path: local SAM weights for the methods that use SAM (Trident); None: the public file.
        mask_path: local weights of the mask generator (SAM2) for the methods that use region masks
            (CorrCLIP); None: the public file.
        clip_path, vfm_path: local weights of the config's CLIP and VFM; None:
            the public releases, downloaded once.
        device, precision: where and how the models run (:class:`~cass.api.Segmenter`).
        protocol: ``'published'``: a method's presets are its published settings
            for each benchmark (:func:`cass.protocols.protocol_options`); ``'cass'``:
            the benchmark configs' settings for every method.
        cfg_options: mmseg-style overrides of the config (``{'model.h_threshold': 0.1}``);
            they win over the presets' settings.
        max_models: models kept built at once.
        opacity: of the class colours in the overlay.
        keep_results: request folders (downloads, heat maps) kept; older ones are deleted.
    """

    config: str | None = None
    clip_path: str | None = None
    vfm_path: str | None = None
    sam_path: str | None = None
    mask_path: str | None = None
    device: str = "cpu"
    precision: str | None = None
    protocol: str = "published"
    cfg_options: dict[str, Any] = field(default_factory=dict)
    max_models: int = 3
    opacity: float = 0.5
    keep_results: int = 64


@dataclass(frozen=True)
class Request:
    """One segmentation asked for in the page."""

    image: Path
    image_name: str  # as the user called it (the upload's file name)
    classes: str  # the text box
    method: str
    clip: str
    vfm: str
    preset: str
    prob_thd: float
    pamr: bool
    masks: str = NO_MASKS  # a value of mask_menu()


@dataclass
class Outcome:
    """What the page shows for a request.

    Attributes:
        picture: the overlay with its legend panel (:func:`cass.visualize.render`).
        legend: the classes present, largest first.
        result: the Segmenter's output.
        files: the label PNG, the probabilities ``.npy``, the legend JSON and,
            with region masks, the masks (CorrCLIP's ``.npz`` format, which
            ``mask_generator='files'`` reads).
        summary: one line: what ran, on what, how long each stage took.
        regions: with region masks, the picture of the masks (:func:`cass.visualize.render_regions`).
        region_masks: with region masks, the (H, W) label map used.
    """

    picture: Image.Image
    legend: list[LegendEntry]
    result: Segmentation
    files: list[Path]
    summary: str
    regions: Image.Image | None = None
    region_masks: np.ndarray | None = None


class Engine:
    """Runs the page's requests on cached models.

    Args:
        options: how models are built.
        out_dir: where each request's files go (one folder per request).
    """

    def __init__(self, options: Options, out_dir: str | Path) -> None:
        if options.protocol not in PROTOCOL_NAMES:
            raise ValueError(f"unknown protocol {options.protocol!r}; protocols: {', '.join(PROTOCOL_NAMES)}")
        self.options = options
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cfg = load_config(options.config, options.cfg_options)
        keys = model_keys(cfg)
        self.default_method = keys.get("method", "cass")
        self.default_clip = str(keys.get("clip_path", "ViT-B/16"))
        self.default_vfm = keys.get("vfm", "dino_vitb8")
        self.settings = CASSConfig.from_keys({k: v for k, v in keys.items() if k in CASSConfig.key_table()})
        self.clips, self.vfms = catalogue(self.default_clip, self.default_vfm, options.clip_path, options.vfm_path)
        self.config_name = Path(options.config).stem if options.config is not None else "cfg_ade20k"
        self.default_preset = BENCHMARKS.get(self.config_name, self.config_name)
        self._presets: dict[str, dict[str, Preset]] = {}
        self._presets_lock = threading.Lock()
        self.presets_for(self.default_method)  # a bad --cfg-options fails at start
        self.models = ModelCache(options.max_models)
        self.mask_choices = mask_menu()
        self.mask_generators = ModelCache(options.max_models)  # built on first use, like the models
        self._requests = 0
        self._requests_lock = threading.Lock()

    # ---------------------------------------------------------------- what the page offers
    @property
    def methods(self) -> list[str]:
        return list(METHODS)

    @property
    def presets(self) -> dict[str, Preset]:
        """The presets of the default method (:meth:`presets_for`)."""
        return self.presets_for(self.default_method)

    def presets_for(self, method: str) -> dict[str, Preset]:
        """The presets the page offers with ``method``, by name (:func:`load_presets`): with the
        published protocol its own settings for each benchmark, else the benchmark configs'.
        Read on first use; an unknown method is a one-line ``KeyError``."""
        get_method(method)
        key = method if self.options.protocol == "published" else ""  # the 'cass' protocol: one set for all
        with self._presets_lock:
            if key not in self._presets:
                self._presets[key] = load_presets(self.options.config, method, self.options.protocol,
                                                  self.options.cfg_options)
            return self._presets[key]

    def preset(self, method: str, name: str) -> Preset:
        """The preset ``name`` of ``method``; an unknown one is a one-line ``KeyError``."""
        presets = self.presets_for(method)
        if name not in presets:
            raise KeyError(f"unknown preset {name!r}; presets: {', '.join(presets)}")
        return presets[name]

    def vfm_for(self, method: str, preset: str) -> str | None:
        """The VFM the preset names for ``method`` (its published one, else the config's) when its
        weights are here, else None: what the page selects with the method."""
        vfm = self.preset(method, preset).vfm
        return vfm if vfm in self.vfms and self.vfms[vfm].available else None

    def uses_vfm(self, method: str) -> bool:
        """Whether ``method`` uses a VFM with the app's settings (:func:`cass.methods.requirements`)."""
        return requirements(self.settings.replace(method=method)).vfm

    def request_settings(self, method: str, preset: str) -> CASSConfig:
        """The model settings of ``method`` with the preset ``preset`` (the app's, then the preset's)."""
        return self.settings.replace(method=method, **self.preset(method, preset).settings)

    def default_masks(self, method: str, preset: str) -> str:
        """The region-mask choice that goes with ``method``: where it uses masks (CorrCLIP, or
        ``region_vote`` in the app's settings) the generator its settings name (SAM2's model), else none."""
        settings = self.request_settings(method, preset)
        if not requirements(settings).masks:
            return NO_MASKS
        regions = settings.regions
        choice = regions.mask_model if regions.mask_generator in (None, "sam2") else regions.mask_generator
        return choice if choice in self.mask_choices else next(iter(SAM2_TITLES))

    def region_masks(self, choice: str, settings: CASSConfig, rgb: np.ndarray,
                     progress: Progress = _no_progress) -> np.ndarray:
        """The (H, W) region labels of ``rgb`` by the generator ``choice`` (a value of :attr:`mask_choices`)
        with ``settings``' SAM2 settings (points per side, thresholds), cached on disk by image and settings.
        A generator is built on first use and kept (:attr:`mask_generators`), one image at a time."""
        if choice not in self.mask_choices or choice == NO_MASKS:
            raise KeyError(f"unknown region masks {choice!r}; choose one of "
                           f"{', '.join(c for c in self.mask_choices if c != NO_MASKS)}")
        sam2 = choice in SAM2_TITLES
        regions = replace(settings.regions, mask_generator="sam2" if sam2 else choice,
                          mask_model=choice if sam2 else settings.regions.mask_model)
        mask_path = self.options.mask_path if sam2 and choice == self.settings.regions.mask_model else None
        slot = self.mask_generators.slot(mask_key(choice, regions))
        with slot.turn(lambda ahead: progress(0.05, f"waiting for the {choice} masks: {ahead} ahead")):
            if slot.model is None:
                progress(0.05, f"loading the {choice} mask generator")
                slot.model = configured_mask_generator(regions, mask_path)
            progress(0.1, f"region masks: {self.mask_choices[choice]}")
            masks = slot.model(rgb)
        self.mask_generators.trim()
        return masks

    def missing_weights(self) -> list[str]:
        """One line per backbone without weights here: its name and the file it needs."""
        return [f"{w.name}: {w.missing}" for w in (*self.clips.values(), *self.vfms.values()) if not w.available]

    def example_images(self) -> list[tuple[Path, str]]:
        """scikit-image's photos written once into the output folder, each with classes that fit it."""
        from skimage import data

        folder = self.out_dir / "examples"
        folder.mkdir(exist_ok=True)
        examples = []
        for name, classes in EXAMPLES.items():
            path = folder / f"{name}.png"
            if not path.is_file():
                Image.fromarray(getattr(data, name)()).save(path)
            examples.append((path, classes))
        return examples

    # ---------------------------------------------------------------- one request
    def model_key(self, request: Request) -> ModelKey:
        if request.method not in METHODS:
            raise KeyError(f"unknown method {request.method!r}; methods: {', '.join(METHODS)}")
        if request.clip not in self.clips or not self.clips[request.clip].available:
            raise WeightsError(self._unavailable("CLIP", request.clip, self.clips))
        if not self.uses_vfm(request.method):
            return request.method, request.clip, None
        if request.vfm not in self.vfms or not self.vfms[request.vfm].available:
            raise WeightsError(self._unavailable("VFM", request.vfm, self.vfms))
        return request.method, request.clip, request.vfm

    @staticmethod
    def _unavailable(kind: str, name: str, weights: dict[str, Weights]) -> str:
        if name not in weights:
            return f"unknown {kind} {name!r}; choose one of {', '.join(weights)}"
        return f"no weights for {kind} {name} here: {weights[name].missing}"

    def build(self, key: ModelKey, classes: list[str]) -> Segmenter:
        """The Segmenter of ``key``, as ``demo.py --protocol ... --cfg-options model.method=... model.vfm=...``
        builds it. A config that is no benchmark's has no published settings: the model is built from it
        as it is, and each request's preset brings the method's published settings."""
        method, clip, vfm = key
        # the region masks come with each request (Engine.region_masks): the model builds no generator
        cfg_options = {**self.options.cfg_options, "model.method": method, "model.mask_generator": None}
        vfm_path = None
        if vfm is not None:
            cfg_options["model.vfm"] = vfm
            vfm_path = self.vfms[vfm].path
        protocol = self.options.protocol if self.config_name in BENCHMARKS else "cass"
        return Segmenter(self.options.config, classes=classes, clip_path=self.clips[clip].path or clip,
                         vfm_path=vfm_path, sam_path=self.options.sam_path, mask_path=self.options.mask_path,
                         device=self.options.device,
                         precision=self.options.precision, cfg_options=cfg_options, protocol=protocol)

    def configure(self, segmenter: Segmenter, preset: Preset, prob_thd: float, pamr: bool, masks: bool) -> None:
        """Set a request's settings on the shared model: the preset's (:attr:`Preset.settings`,
        its resize), the threshold, PAMR and the region vote: a method that votes as published
        (CorrCLIP) keeps the app's setting, any other votes when region masks are chosen."""
        model = segmenter.model
        entry = get_method(model.config.method.name)
        vote = self.settings.regions.region_vote if entry.region_vote else masks
        model.config = model.config.replace(**{**preset.settings, "prob_thd": prob_thd,
                                               "pamr_steps": PAMR_STEPS if pamr else 0, "region_vote": vote})
        segmenter.scale = preset.scale

    def run(self, request: Request, progress: Progress = _no_progress) -> Outcome:
        """Segment one image. Raises one of :data:`USER_ERRORS` with a one-line message for bad input."""
        start = time.perf_counter()
        classes = parse_classes(request.classes)
        vocabulary = Vocabulary.from_classes(classes)  # a bad class list fails before any wait
        preset = self.preset(request.method, request.preset)
        if not 0 <= request.prob_thd <= 1:
            raise ConfigError(f"the probability threshold must lie in [0, 1], got {request.prob_thd}")
        image = read_image(request.image)  # (H, W, 3) uint8 BGR, as Segmenter.load reads a file
        key = self.model_key(request)
        if get_method(request.method).regions and request.masks == NO_MASKS:
            raise ConfigError(f"{request.method} works on region masks: choose a mask generator")
        name = " + ".join(part for part in key[1:] if part is not None)
        times: dict[str, float] = {}
        regions = None
        if request.masks != NO_MASKS:
            tick = time.perf_counter()
            settings = self.request_settings(request.method, request.preset)
            regions = self.region_masks(request.masks, settings, np.ascontiguousarray(image[..., ::-1]), progress)
            times["masks"] = time.perf_counter() - tick
        slot = self.models.slot(key)

        def waiting(ahead: int) -> None:
            progress(0.0, f"waiting for {key[0]} ({name}): {ahead} request{'s' if ahead > 1 else ''} ahead")

        tick = time.perf_counter()
        with slot.turn(waiting):
            times["waited"] = time.perf_counter() - tick
            tick = time.perf_counter()
            if slot.model is None:
                progress(0.1, f"loading {key[0]} with {name} on {self.options.device}")
                slot.model = self.build(key, classes)
                times["weights"] = time.perf_counter() - tick
            segmenter = slot.model
            model = segmenter.model
            if model.vocabulary != vocabulary:
                model.set_vocabulary(vocabulary)
            self.configure(segmenter, preset, request.prob_thd, request.pamr, regions is not None)
            tick = time.perf_counter()
            progress(0.3, f"encoding {len(classes)} classes ({len(vocabulary.queries)} names)")
            segmenter.encode_text()
            times["text"] = time.perf_counter() - tick
            tick = time.perf_counter()
            progress(0.5, f"segmenting with {key[0]}")
            result = segmenter.segment_loaded([image], region_masks=None if regions is None else [regions])[0]
            times["segmenting"] = time.perf_counter() - tick
        self.models.trim()
        progress(0.9, "writing the results")
        picture, legend = render(result.image, result.labels, result.class_names, self.options.opacity)
        info = dict(image=request.image_name, method=key[0], clip=key[1], vfm=key[2], preset=preset.name,
                    protocol=self.options.protocol, prob_thd=request.prob_thd, pamr=request.pamr,
                    masks=request.masks)
        files = self.write_files(result, legend, info, request.image_name, regions)
        height, width = result.labels.shape
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in times.items() if seconds >= 0.05)
        masks = "" if regions is None else f", {request.masks} masks ({regions_summary(regions)})"
        summary = (f"{key[0]} with {name} on {self.options.device}: {width}x{height}, {len(classes)} classes, "
                   f"{preset.name} windows{f' ({key[0]} as published)' if preset.published else ''}"
                   f"{', PAMR' if request.pamr else ''}{masks}; "
                   f"{time.perf_counter() - start:.1f} s" + (f" ({stages})" if stages else ""))
        shown = None if regions is None else render_regions(result.image, regions, self.options.opacity)
        return Outcome(picture, legend, result, files, summary, shown, regions)

    # ---------------------------------------------------------------- files
    def write_files(self, result: Segmentation, legend: list[LegendEntry], info: dict[str, Any],
                    image_name: str, regions: np.ndarray | None = None) -> list[Path]:
        """The label PNG (class index per pixel), the probabilities (C, H, W) float32 ``.npy``,
        the legend JSON (``demo.py``'s fields and the request's settings) and the region masks
        (``<stem>.npz`` as CorrCLIP's archives, :func:`cass.masks.write_npz`), in a new folder."""
        with self._requests_lock:
            self._requests += 1
            folder = self.out_dir / f"request-{self._requests:06d}"
        folder.mkdir(exist_ok=True)
        stem = re.sub(r"[^\w.-]+", "_", Path(image_name).stem).strip("._") or "image"
        labels = folder / f"{stem}_labels.png"
        dtype = np.uint8 if len(result.class_names) <= 256 else np.uint16
        Image.fromarray(result.labels.astype(dtype)).save(labels)
        probs = folder / f"{stem}_probs.npy"
        np.save(probs, result.probs)
        sidecar = folder / f"{stem}_legend.json"
        record = legend_record(result.labels, result.class_names, legend)
        sidecar.write_text(json.dumps(dict(info, **record), indent=2) + "\n")
        files = [labels, probs, sidecar]
        if regions is not None:
            files.append(write_npz(folder / f"{stem}_regions.npz", regions))
        self._prune()
        return files

    def _prune(self) -> None:
        folders = sorted(self.out_dir.glob("request-*"))
        for old in folders[:max(0, len(folders) - self.options.keep_results)]:
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------ pictures and messages
def heatmap(image: np.ndarray, probs: np.ndarray, opacity: float = 0.65) -> Image.Image:
    """(H, W, 3) uint8 RGB ``image`` in grey under (H, W) class probabilities
    coloured on matplotlib's ``inferno`` scale (black 0, yellow 1)."""
    from matplotlib import colormaps

    colours = (colormaps["inferno"](np.clip(probs, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)
    grey = Image.fromarray(image).convert("L").convert("RGB")
    return Image.blend(grey, Image.fromarray(colours), opacity)


def class_heatmap(probs_file: str | Path, image_file: str | Path, class_names: list[str],
                  name: str) -> tuple[Image.Image, str]:
    """The heat map of class ``name`` from a request's saved files, and a line about it."""
    if name not in class_names:
        raise VocabularyError(f"no class {name!r} in this result; classes: {', '.join(class_names)}")
    if not Path(probs_file).is_file():
        raise FileNotFoundError("this result's files were deleted to make room for newer ones: segment again")
    probs = np.load(probs_file, mmap_mode="r")[class_names.index(name)]
    image = read_image(image_file)[..., ::-1]
    return heatmap(np.ascontiguousarray(image), np.asarray(probs)), (
        f"p({name}): max {float(probs.max()):.2f}, mean {float(probs.mean()):.2f}")


def legend_html(legend: list[LegendEntry]) -> str:
    """The legend as HTML: a colour swatch, the class name and its pixel share per class present."""
    rows = "".join(
        f'<li><span class="swatch" style="background: rgb{e.color}"></span>'
        f'<span class="name">{html.escape(e.name)}</span> '
        f'<span class="share">{html.escape(format_share(e.share))}</span></li>'
        for e in legend)
    return f'<ul class="cass-legend">{rows}</ul>'


def user_message(err: BaseException, paths: dict[str, str] | None = None) -> str:
    """One line for the page: the error's first line, server paths replaced by
    the names the user knows (``paths``: server path -> name). An error that is
    not the user's to fix is logged with its traceback."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return "out of memory: try a smaller image, fewer classes or fewer models at once (--max-models)"
    if isinstance(err, USER_ERRORS):
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        text = str(text).splitlines()[0] if str(text) else type(err).__name__
    else:
        logger.error("request failed", exc_info=err)
        first = str(err).splitlines()[0] if str(err) else ""
        text = f"internal error ({type(err).__name__}{': ' + first if first else ''}); the server log has the details"
    for path, name in (paths or {}).items():
        text = text.replace(path, name)
    return text
