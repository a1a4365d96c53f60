"""The web app's work, without the web page: ``app.py`` draws the page with Gradio.

One request is one call of a :class:`~cass.api.Segmenter`; this module adds
what a page serving many people needs around it, and imports no Gradio:

* :func:`catalogue`: which backbones have weights here (the flags of
  ``demo.py``, the weights cache, or the public release downloaded once) and
  which file each of the others needs;
* :class:`ModelCache`: one Segmenter per (method, CLIP, VFM), built on first
  use and reused; one request per model at a time, the others wait first come,
  first served and are told their place; the least recently used models are
  dropped beyond ``max_models``;
* :class:`Engine`: a request (image file, class text, method, backbones,
  benchmark preset, threshold, PAMR) in, the overlay, legend, files and
  timings out. The preset's windows, the threshold and PAMR are settings of
  the shared model, set for each request while it holds the model.
"""
from __future__ import annotations

import html
import json
import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .api import Segmentation, Segmenter
from .backbones import CLIP_SPECS, VFM_SPECS
from .config import CASSConfig, ConfigError
from .config_files import load_config, model_keys, resize_scale
from .family import BENCHMARKS, CONFIGS_DIR, METHODS, requirements
from .images import ImageError, read_image
from .text import Vocabulary, VocabularyError, class_list
from .visualize import LegendEntry, format_share, legend_record, render
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
@dataclass(frozen=True)
class Preset:
    """The window settings and vocabulary of a benchmark config.

    Attributes:
        name: the benchmark's column name (``'ADE20K'``) or the config's file name.
        class_file: its class-name file.
        slide_crop, slide_stride: the sliding window (crop 0: the whole image).
        prob_thd: its probability threshold (the page's default).
        scale: its test ``Resize`` scale, (long side bound, short side).
    """

    name: str
    class_file: Path
    slide_crop: int
    slide_stride: int
    prob_thd: float
    scale: tuple[int, int]

    @property
    def label(self) -> str:
        windows = "whole image" if self.slide_crop <= 0 else f"{self.slide_crop} px windows, stride {self.slide_stride}"
        return f"{self.name}: short side {self.scale[1]}, {windows}"

    def classes_text(self) -> str:
        """The vocabulary as the text box shows it: the class file, one class per line."""
        return self.class_file.read_text(encoding="utf-8").strip()


def load_preset(config: str | Path, name: str | None = None) -> Preset:
    cfg = load_config(config)
    keys = model_keys(cfg)
    window, output = CASSConfig().window, CASSConfig().output
    return Preset(name=name or Path(config).stem, class_file=Path(keys["name_path"]),
                  slide_crop=int(keys.get("slide_crop", window.slide_crop)),
                  slide_stride=int(keys.get("slide_stride", window.slide_stride)),
                  prob_thd=float(keys.get("prob_thd", output.prob_thd)), scale=tuple(resize_scale(cfg)))


def load_presets(extra: str | Path | None = None) -> dict[str, Preset]:
    """The eight benchmarks' presets (:data:`cass.family.BENCHMARKS`), and ``extra`` (a config) if it is another."""
    presets = {title: load_preset(CONFIGS_DIR / f"{config}.py", title) for config, title in BENCHMARKS.items()}
    if extra is not None and Path(extra).stem not in BENCHMARKS:
        preset = load_preset(extra)
        presets[preset.name] = preset
    return presets


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


# ------------------------------------------------------------------ the model cache
class ModelSlot:
    """One model of the cache and the requests for it: one at a time, first come, first served."""

    def __init__(self) -> None:
        self.segmenter: Segmenter | None = None
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
            return [key for key, slot in self._slots.items() if slot.segmenter is not None]

    def trim(self) -> None:
        """Drop the least recently used idle models beyond ``max_models``."""
        with self._lock:
            built = sorted((key for key, slot in self._slots.items() if slot.segmenter is not None),
                           key=lambda key: self._slots[key].last_used)
            for key in built[:max(0, len(built) - self.max_models)]:
                slot = self._slots[key]
                if not slot.busy:
                    slot.segmenter = None
                    logger.info("dropped the model %s (more than %d built)", "/".join(map(str, key)),
                                self.max_models)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ------------------------------------------------------------------ requests
@dataclass(frozen=True)
class Options:
    """How the app builds its models (``app.py``'s flags, like ``demo.py``'s).

    Attributes:
        config: a benchmark config for the model settings; None: ADE20K's.
        sam_path: local SAM weights for the methods that use SAM (Trident); None: the public file.
        clip_path, vfm_path: local weights of the config's CLIP and VFM; None:
            the public releases, downloaded once.
        device, precision: where and how the models run (:class:`~cass.api.Segmenter`).
        cfg_options: mmseg-style overrides of the config (``{'model.h_threshold': 0.1}``).
        max_models: models kept built at once.
        opacity: of the class colours in the overlay.
        keep_results: request folders (downloads, heat maps) kept; older ones are deleted.
    """

    config: str | None = None
    clip_path: str | None = None
    vfm_path: str | None = None
    sam_path: str | None = None
    device: str = "cpu"
    precision: str | None = None
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


@dataclass
class Outcome:
    """What the page shows for a request.

    Attributes:
        picture: the overlay with its legend panel (:func:`cass.visualize.render`).
        legend: the classes present, largest first.
        result: the Segmenter's output.
        files: the label PNG, the probabilities ``.npy`` and the legend JSON.
        summary: one line: what ran, on what, how long each stage took.
    """

    picture: Image.Image
    legend: list[LegendEntry]
    result: Segmentation
    files: list[Path]
    summary: str


class Engine:
    """Runs the page's requests on cached models.

    Args:
        options: how models are built.
        out_dir: where each request's files go (one folder per request).
    """

    def __init__(self, options: Options, out_dir: str | Path) -> None:
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
        self.presets = load_presets(options.config)
        config_name = Path(options.config).stem if options.config is not None else "cfg_ade20k"
        self.default_preset = BENCHMARKS.get(config_name, config_name)
        self.models = ModelCache(options.max_models)
        self._requests = 0
        self._requests_lock = threading.Lock()

    # ---------------------------------------------------------------- what the page offers
    @property
    def methods(self) -> list[str]:
        return list(METHODS)

    def uses_vfm(self, method: str) -> bool:
        """Whether ``method`` uses a VFM with the app's settings (:func:`cass.family.requirements`)."""
        return requirements(self.settings.replace(method=method)).vfm

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
        """The Segmenter of ``key``, as ``demo.py --cfg-options model.method=... model.vfm=...`` builds it."""
        method, clip, vfm = key
        cfg_options = {**self.options.cfg_options, "model.method": method}
        vfm_path = None
        if vfm is not None:
            cfg_options["model.vfm"] = vfm
            vfm_path = self.vfms[vfm].path
        return Segmenter(self.options.config, classes=classes, clip_path=self.clips[clip].path or clip,
                         vfm_path=vfm_path, sam_path=self.options.sam_path, device=self.options.device,
                         precision=self.options.precision, cfg_options=cfg_options)

    def run(self, request: Request, progress: Progress = _no_progress) -> Outcome:
        """Segment one image. Raises one of :data:`USER_ERRORS` with a one-line message for bad input."""
        start = time.perf_counter()
        classes = parse_classes(request.classes)
        vocabulary = Vocabulary.from_classes(classes)  # a bad class list fails before any wait
        if request.preset not in self.presets:
            raise KeyError(f"unknown preset {request.preset!r}; presets: {', '.join(self.presets)}")
        preset = self.presets[request.preset]
        if not 0 <= request.prob_thd <= 1:
            raise ConfigError(f"the probability threshold must lie in [0, 1], got {request.prob_thd}")
        image = read_image(request.image)  # (H, W, 3) uint8 BGR, as Segmenter.load reads a file
        key = self.model_key(request)
        name = " + ".join(part for part in key[1:] if part is not None)
        slot = self.models.slot(key)
        times: dict[str, float] = {}

        def waiting(ahead: int) -> None:
            progress(0.0, f"waiting for {key[0]} ({name}): {ahead} request{'s' if ahead > 1 else ''} ahead")

        tick = time.perf_counter()
        with slot.turn(waiting):
            times["waited"] = time.perf_counter() - tick
            tick = time.perf_counter()
            if slot.segmenter is None:
                progress(0.1, f"loading {key[0]} with {name} on {self.options.device}")
                slot.segmenter = self.build(key, classes)
                times["weights"] = time.perf_counter() - tick
            segmenter = slot.segmenter
            model = segmenter.model
            if model.vocabulary != vocabulary:
                model.set_vocabulary(vocabulary)
            model.config = model.config.replace(prob_thd=request.prob_thd, pamr_steps=PAMR_STEPS if request.pamr else 0,
                                                slide_crop=preset.slide_crop, slide_stride=preset.slide_stride)
            segmenter.scale = preset.scale
            tick = time.perf_counter()
            progress(0.3, f"encoding {len(classes)} classes ({len(vocabulary.queries)} names)")
            segmenter.encode_text()
            times["text"] = time.perf_counter() - tick
            tick = time.perf_counter()
            progress(0.5, f"segmenting with {key[0]}")
            result = segmenter.segment_loaded([image])[0]
            times["segmenting"] = time.perf_counter() - tick
        self.models.trim()
        progress(0.9, "writing the results")
        picture, legend = render(result.image, result.labels, result.class_names, self.options.opacity)
        info = dict(image=request.image_name, method=key[0], clip=key[1], vfm=key[2], preset=preset.name,
                    prob_thd=request.prob_thd, pamr=request.pamr)
        files = self.write_files(result, legend, info, request.image_name)
        height, width = result.labels.shape
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in times.items() if seconds >= 0.05)
        summary = (f"{key[0]} with {name} on {self.options.device}: {width}x{height}, {len(classes)} classes, "
                   f"{preset.name} windows{', PAMR' if request.pamr else ''}; "
                   f"{time.perf_counter() - start:.1f} s" + (f" ({stages})" if stages else ""))
        return Outcome(picture, legend, result, files, summary)

    # ---------------------------------------------------------------- files
    def write_files(self, result: Segmentation, legend: list[LegendEntry], info: dict[str, Any],
                    image_name: str) -> list[Path]:
        """The label PNG (class index per pixel), the probabilities (C, H, W) float32 ``.npy``
        and the legend JSON (``demo.py``'s fields and the request's settings), in a new folder."""
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
        self._prune()
        return [labels, probs, sidecar]

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
