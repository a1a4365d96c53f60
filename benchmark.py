"""Time CASS (or a training-free baseline) with full-size random-weight models: throughput, memory, stages.

Builds the model through :func:`cass.build.build_model`, as every entry point
does, from CLIP ViT-B/16 (open_clip's ``ViT-B-16-quickgelu`` architecture,
random weights, loaded through :func:`cass.weights.clip_from_state_dict` like
an OpenAI checkpoint) and DINO ViT-B/8 (:mod:`cass.random_weights`), so
nothing is downloaded; ``--clip`` and ``--vfm`` choose other backbones
(``docs/backbones.md``), ``--clip-path``/``--vfm-path``/``--sam-path`` load real
checkpoints instead (deprecated names: ``--clip-weights``, ``--vfm-weights`` or
``--dino-weights``, ``--sam-weights``). Random weights cost the same time as
real ones; only label agreement depends on the weights.

Modes:

* ``fast`` -- :class:`cass.model.CASSModel` (batched crops);
* ``reference-loop`` -- :mod:`cass.bench.reference_loop`, the released
  code's structure (one crop at a time, whole image re-encoded per crop,
  DINO twice per crop, per-head N x N decompositions, per-cluster loops);
* ``both`` -- the two, timed runs taking turns, and the speed-up;
* ``text`` -- query embeddings of the vocabulary with the full text tower:
  cold, then from the on-disk cache, and the released design (full 77-token
  context, one class at a time) on a few classes, extrapolated.

Settings come from a benchmark config (default: ``configs/cfg_ade20k.py``),
read by :func:`cass.config_files.load_config` like in ``eval.py`` and
``demo.py``, with the same ``--cfg-options model.KEY=VALUE`` overrides;
``--precision`` (both towers) defaults to the config's and is reported
resolved for the device. ``--method`` times a baseline of :mod:`cass.methods`
(``sclip``, ``proxyclip``, ...) the same way, through the same stages (its
attention counts as ``spectral``, ProxyCLIP's VFM features as ``dino``).
Times are medians over ``--repeats`` after ``--warmup`` runs. The stage
breakdown comes from separate runs observed through the model's own named
stages (:mod:`cass.stages`), with ``torch.cuda.synchronize`` at every
boundary on CUDA; each stage counts its own time only, so the stages add up
to the total of that run.

Examples::

    python benchmark.py --mode both --config configs/cfg_ade20k.py --repeats 3
    python benchmark.py --config configs/cfg_voc21.py --size 336 500
    python benchmark.py --config configs/cfg_ade20k.py --random-text --num-classes 1000
    python benchmark.py --mode text --config configs/cfg_ade20k.py
    python benchmark.py --method naclip --config configs/cfg_ade20k.py --repeats 3
    python benchmark.py --config configs/cfg_ade20k.py --cfg-options model.slide_crop=0
    python benchmark.py --clip ViT-L/14 --vfm dinov2_vitl14_reg4 --config configs/cfg_ade20k.py
    python benchmark.py --device cuda --precision fp16 --config configs/cfg_ade20k.py \
        --batch-size 16 --warmup 3 --repeats 10 --check-agreement
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from mmengine.config import DictAction
from open_clip import OPENAI_IMAGENET_TEMPLATES
from torch import nn

from cass import stages
from cass import text as text_module
from cass.backbones import CLIP_SPECS, VFM_SPECS
from cass.bench import reference_loop
from cass.build import build_model
from cass.cli import add_weights_arguments
from cass.config import PRECISIONS, CASSConfig
from cass.config_files import DEFAULT_CONFIG, VFM_PATH_KEYS, load_config, model_keys, with_vfm_path
from cass.constants import CLIP_MEAN, CLIP_STD
from cass.benchmarks import BENCHMARKS, PROTOCOL_NAMES
from cass.protocols import cfg_options
from cass.methods import METHODS, requirements
from cass.merges import image_boxes
from cass.model import CASSModel
from cass.random_weights import TINY_SAM, TINY_VFM, random_clip, random_dino, random_sam
from cass.weights import clip_from_state_dict

# build_model's keys that benchmark.py sets itself: the towers (random modules, or the files of
# --clip-path, --vfm-path and --sam-path), the vocabulary and the text cache. With the config's mmseg keys
# (cass.config_files.MMSEG_KEYS, which model_keys leaves out) they are the config's keys that are not
# settings of the timed model.
BUILD_KEYS = ("clip_path", "clip_model", "vfm", *VFM_PATH_KEYS, "vfm_model", "vfm_overrides", "name_path", "classes",
              "text_cache_dir", "sam_path", "sam_ckpt", "sam_model", "sam_overrides", "mask_path", "mask_cache_dir",
              "mask_generator_model")
STAGES = {**stages.STAGES, "other": "other (batching, bookkeeping)"}
# benchmark.py's former spellings of the weights flags (old name -> new name), still accepted with a warning.
OLD_WEIGHTS_FLAGS = {"--clip-weights": "--clip-path", "--vfm-weights": "--vfm-path", "--dino-weights": "--vfm-path",
                     "--sam-weights": "--sam-path"}


# ---------------------------------------------------------------------------- models
def model_settings(keys: dict, precision: str | None, crop_batch_size: int) -> dict:
    """The settings of the timed model (:class:`~cass.config.CASSConfig` keys): the config's
    model keys without :data:`BUILD_KEYS`, with ``precision`` (None: the config's) for every tower (CLIP, the VFM, SAM).

    An unknown or invalid setting fails here, before any model is built.
    """
    settings = {key: value for key, value in keys.items() if key not in BUILD_KEYS}
    settings["crop_batch_size"] = crop_batch_size
    if precision is not None:
        settings["precision"] = precision
        for tower in ("vfm_precision", "sam_precision"):  # one precision for every tower
            settings.pop(tower, None)
    CASSConfig.from_keys(settings)
    return settings


def literal(value: str) -> object:
    """A ``key=value`` option's value as Python reads it (``336``, ``True``), else the string."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def random_openai_clip(tiny: bool, seed: int, arch: str) -> nn.Module:
    """:func:`cass.random_weights.random_clip` through the OpenAI-format loader, like a release
    (float32 LayerNorms when the tower runs in half precision)."""
    return clip_from_state_dict(random_clip(tiny, seed, arch).state_dict(), f"random-weight CLIP {arch}")


def tower_keys(args: argparse.Namespace, settings: dict) -> dict:
    """build_model's keys for the towers: random-weight modules, or ``--clip-path``,
    ``--vfm-path`` (under the config's key for it) and ``--sam-path`` read by build_model's
    loaders; SAM only where ``settings`` (:func:`model_settings`) use it; region masks from the configured
    mask generator (``--mask-path``), not cached, where they use them."""
    keys: dict = dict(vfm=args.vfm)
    if args.clip_path is not None:
        keys["clip_path"] = args.clip_path
    else:
        keys["clip_model"] = random_openai_clip(args.tiny, args.seed, args.clip)
    if args.vfm_path is not None:
        config_path = {key: value for key, value in args.model_keys.items() if key in VFM_PATH_KEYS}
        keys.update(with_vfm_path(config_path, args.vfm_path))
        keys["vfm_overrides"] = TINY_VFM if args.tiny else None
    else:  # built even where the method needs no VFM: build_model leaves it out then
        keys["vfm_model"] = random_dino(args.tiny, args.seed, args.vfm)
    config = CASSConfig.from_keys(settings)
    if requirements(config).sam:
        kind = config.sam.sam_model_type
        if args.sam_path is not None:
            keys.update(sam_path=args.sam_path, sam_overrides=TINY_SAM[kind] if args.tiny else None)
        else:
            keys["sam_model"] = random_sam(kind, args.tiny, args.seed)
    if requirements(config).masks:  # the configured generator (--mask-path: its weights), generating every run
        keys.update(mask_path=args.mask_path, mask_cache_dir=False)
    return keys


def timed_model(args: argparse.Namespace, classes: list[str]) -> CASSModel:
    """The model to time, on CPU, through :func:`cass.build.build_model`: the config's settings with
    ``--cfg-options`` and ``--precision``, the towers of :func:`tower_keys`, the vocabulary ``classes``."""
    settings = model_settings(args.model_keys, args.precision, args.crop_batch_size)  # checked before the towers
    return build_model(**settings, **tower_keys(args, settings), classes=classes,
                       text_cache_dir=args.text_cache_dir)


def vocabulary(num_classes: int | None, name_path: str | None) -> tuple[list[str], str]:
    """Class entries: ``num_classes`` names "class i", else the config's class file, else 150."""
    if num_classes is None and name_path is not None and Path(name_path).is_file():
        return _class_lines(name_path), name_path
    count = 150 if num_classes is None else num_classes
    return [f"class {i}" for i in range(count)], f"{count} names 'class i'"


def _class_lines(path: str) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def random_images(count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(B, 3, H, W) CLIP-normalised smooth random images (blobs of about 8 pixels)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    base = torch.rand(count, 3, h // 8 + 1, w // 8 + 1, generator=g) * 255
    pixels = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (pixels - mean) / std


def random_text_embeddings(count: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Random unit query embeddings (per-image cost only, no text tower).

    Random 512-d unit vectors are nearly orthogonal, so every query is its
    own cluster (the largest number of refinement steps).
    """
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(count, dim, generator=g), dim=-1)


# ---------------------------------------------------------------------------- timing
class StageTimer:
    """Exclusive wall time per stage: a stage entered inside another is not
    counted in the outer one. Synchronises CUDA at every boundary.

    Args:
        device: the device whose work is timed.
        clock: seconds, read at every boundary (default: ``time.perf_counter``).
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.sync: Callable[[], None] = (torch.cuda.synchronize if device.type == "cuda" else lambda: None)
        self.clock = clock
        self.times: dict[str, float] = defaultdict(float)
        self._nested: list[float] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.sync()
        start = self.clock()
        self._nested.append(0.0)
        try:
            yield
        finally:
            self.sync()
            elapsed = self.clock() - start
            self.times[name] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")


def _proc_status_bytes(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def peak_memory(device: torch.device) -> int:
    """Bytes: ``max_memory_allocated`` on CUDA, peak RSS since the last reset on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = _proc_status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status_bytes("VmRSS") or 0


def gemm_gflops(device: torch.device, size: int = 1024, repeats: int = 5) -> float:
    """Best float32 matmul throughput of a few ``size`` x ``size`` products: what the
    machine offers right now (on a shared CPU it drops with the load of others)."""
    a = torch.randn(size, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = math.inf
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - start)
    return round(2 * size**3 / best / 1e9, 1)


def machine_info(device: torch.device) -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = dict(cpu=cpu, logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version(),
                load_average=[round(x, 2) for x in os.getloadavg()], gemm_gflops=gemm_gflops(device))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


# ---------------------------------------------------------------------------- runs
def runner(model: CASSModel, args: argparse.Namespace, device: torch.device, mode: str) -> Callable[[], object]:
    """One call of ``mode`` on ``--batch-size`` random images."""
    inputs = list(random_images(args.batch_size, tuple(args.size), args.seed).to(device))
    sizes = [tuple(args.ori_size or args.size)] * len(inputs)
    if mode == "fast":
        return lambda: model(inputs, sizes)
    return lambda: reference_loop.predict(model, inputs, sizes)


def time_runs(runs: dict[str, Callable[[], object]], device: torch.device, warmup: int,
              repeats: int) -> dict[str, tuple[list[float], int]]:
    """Seconds of each timed run and the peak memory, per mode.

    The modes take turns (warm-up runs first, then one timed run of each mode
    per repeat), so a change of machine load affects them alike.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    peaks = dict.fromkeys(runs, 0)
    for _ in range(repeats):
        for mode, run in runs.items():
            reset_peak_memory(device)
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[mode].append(time.perf_counter() - start)
            peaks[mode] = max(peaks[mode], peak_memory(device))
    return {mode: (times[mode], peaks[mode]) for mode in runs}


def stage_breakdown(run: Callable[[], object], device: torch.device, repeats: int) -> dict:
    """Per-stage seconds of the observed run whose total is the median."""
    runs = []
    for _ in range(repeats):
        timer = StageTimer(device)
        with stages.observe_stages(timer), timer.stage("other"):
            run()
        runs.append(dict(timer.times))
    runs.sort(key=lambda r: sum(r.values()))
    chosen = runs[(len(runs) - 1) // 2]
    return {name: chosen.get(name, 0.0) for name in STAGES}


def image_benchmark(model: CASSModel, args: argparse.Namespace, device: torch.device,
                    modes: tuple[str, ...]) -> dict[str, dict]:
    """Throughput, memory and stage breakdown of each mode on random images."""
    runs = {mode: runner(model, args, device, mode) for mode in modes}
    memory_before = current_memory(device)
    measured = time_runs(runs, device, args.warmup, args.repeats)
    results = {}
    for mode, (times, peak) in measured.items():
        median = statistics.median(times)
        result = dict(mode=mode, seconds_per_run=times, median_s=median, images_per_run=args.batch_size,
                      images_per_s=args.batch_size / median, ms_per_image=1000 * median / args.batch_size,
                      peak_memory_mb=peak / 2**20, memory_before_mb=memory_before / 2**20)
        if args.breakdown_repeats > 0:
            times_s = stage_breakdown(runs[mode], device, args.breakdown_repeats)
            result["stages_ms_per_image"] = {k: 1000 * v / args.batch_size for k, v in times_s.items()}
            result["instrumented_ms_per_image"] = 1000 * sum(times_s.values()) / args.batch_size
        results[mode] = result
    return results


def resolved_precision(model: CASSModel) -> str:
    """The towers' precision on the model's device (``'auto'`` resolved): ``'fp32'``, or
    ``'CLIP fp16, VFM tf32'`` where they differ."""
    clip, vfm = model.precisions()
    return clip if vfm == clip or model.vfm is None else f"CLIP {clip}, VFM {vfm}"


def agreement(model: CASSModel, reference_model: CASSModel, args: argparse.Namespace, device: torch.device) -> dict:
    """Share of pixels whose label is the same in ``reference_model`` (float32 towers) and ``model``."""
    inputs = list(random_images(args.agreement_images, tuple(args.size), args.seed + 1).to(device))
    sizes = [tuple(args.ori_size or args.size)] * len(inputs)
    if args.random_text:
        reference_model.set_text_embeddings(model.text_state()[0])

    def labels(m: CASSModel) -> torch.Tensor:
        out = []
        for i in range(0, len(inputs), args.batch_size):
            out += [p.labels for p in m(inputs[i:i + args.batch_size], sizes[i:i + args.batch_size])]
        return torch.stack(out)

    reference, other = labels(reference_model), labels(model)
    per_image = (reference == other).flatten(1).float().mean(1)
    return dict(precision=resolved_precision(model), images=len(inputs), pixel_agreement=float(per_image.mean()),
                worst_image_agreement=float(per_image.min()))


def text_benchmark(clip: nn.Module, queries: list[str], reference_classes: int) -> dict:
    """Query embeddings of ``queries`` x 80 templates: cold, from the cache, and the released design."""
    templates = OPENAI_IMAGENET_TEMPLATES
    device = clip.token_embedding.weight.device
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        cold = text_module.query_embeddings(clip, queries, cache_dir=cache)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = text_module.query_embeddings(clip, queries, cache_dir=cache)
        warm_s = time.perf_counter() - start
    tokens = open_clip.tokenize([t(q) for q in queries for t in templates])
    result = dict(queries=len(queries), templates=len(templates), prompts=len(tokens),
                  longest_eot=int(tokens.argmax(-1).max()) + 1, cold_s=cold_s, cached_s=warm_s,
                  cache_identical=bool(torch.equal(cold, warm)))
    count = min(reference_classes, len(queries))
    if count > 0:  # released design: one class at a time, the full 77-token context
        start = time.perf_counter()
        feats = []
        with torch.no_grad():
            for q in queries[:count]:
                tokens = open_clip.tokenize([t(q) for t in templates]).to(device)
                f = F.normalize(clip.encode_text(tokens).float(), dim=-1)
                feats.append(F.normalize(f.mean(0), dim=-1))
        elapsed = time.perf_counter() - start
        result.update(released_classes_timed=count, released_s_per_class=elapsed / count,
                      released_estimate_s=elapsed / count * len(queries),
                      released_max_abs_diff=float((torch.stack(feats).cpu() - cold[:count].cpu()).abs().max()))
    return result


# ---------------------------------------------------------------------------- report
def _fmt_mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def format_report(results: dict) -> str:
    lines = [f"command: {results['command']}"]
    m = results["machine"]
    machine = f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} ({m['torch_threads']} threads)"
    if "gpu" in m:
        machine += f", GPU {m['gpu']} ({m['gpu_memory_gib']} GiB, CUDA {m['cuda']})"
    lines += [machine + f", load average {m['load_average']} at start"
              + (f", {m['load_average_end']} at end" if "load_average_end" in m else "")
              + f"; float32 matmul {m['gemm_gflops']} GFLOP/s at start"
              + (f", {m['gemm_gflops_end']} at end" if "gemm_gflops_end" in m else "")]
    if "setting" in results:
        s = results["setting"]
        lines.append(f"setting: {s['source']}, method {s['method']}, CLIP {s['clip']} + {s['vfm']}; "
                     f"image {s['size'][0]}x{s['size'][1]} -> "
                     f"{s['crops']} {s['crop_desc']}, output {s['ori_size'][0]}x{s['ori_size'][1]}; {s['classes']} classes "
                     f"({s['queries']} queries, {s['clusters']} clusters; vocabulary: {s['vocabulary']}); "
                     f"{s['precision']}, {s['batch_size']} image(s) per call, device {s['device']}")
    for key in ("fast", "reference-loop"):
        if key not in results:
            continue
        r = results[key]
        times = ", ".join(f"{t:.3f}" for t in r["seconds_per_run"])
        lines.append(f"{key}: {r['images_per_s']:.3f} images/s, {r['ms_per_image']:.1f} ms/image "
                     f"(median of {len(r['seconds_per_run'])} runs of {r['images_per_run']} image(s): {times} s), "
                     f"peak memory {_fmt_mb(r['peak_memory_mb'])} "
                     f"({'max_memory_allocated' if results['setting']['device'] == 'cuda' else 'peak RSS'}; "
                     f"{_fmt_mb(r['memory_before_mb'])} before the runs)")
        if "stages_ms_per_image" in r:
            lines.append(f"  stages, ms/image (instrumented run, total {r['instrumented_ms_per_image']:.1f}):")
            for name, ms in r["stages_ms_per_image"].items():
                share = ms / r["instrumented_ms_per_image"] if r["instrumented_ms_per_image"] else 0.0
                lines.append(f"    {STAGES[name]:<48} {ms:10.1f}  {100 * share:5.1f}%")
    if "speedup" in results:
        pairs = ", ".join(f"{x:.2f}" for x in results["speedup_per_repeat"])
        lines.append(f"speed-up fast / reference-loop: {results['speedup']:.2f}x (ratio of medians; "
                     f"per repeat, runs taken in turn: {pairs})")
    if "agreement" in results:
        a = results["agreement"]
        lines.append(f"agreement fp32 vs {a['precision']}: {100 * a['pixel_agreement']:.3f}% of pixels "
                     f"({a['images']} random images, worst image {100 * a['worst_image_agreement']:.3f}%)")
    if "text" in results:
        t = results["text"]
        lines.append(f"text: {t['queries']} queries x {t['templates']} templates ({t['prompts']} prompts, "
                     f"context cut at {t['longest_eot']} tokens, {t['precision']}): {t['cold_s']:.1f} s cold, "
                     f"{t['cached_s']:.3f} s from the cache (identical: {t['cache_identical']})")
        if "released_estimate_s" in t:
            lines.append(f"  released design (77 tokens, class by class): {t['released_s_per_class']:.2f} s/class "
                         f"on {t['released_classes_timed']} classes -> {t['released_estimate_s']:.0f} s estimated; "
                         f"max |difference| of the embeddings {t['released_max_abs_diff']:.1e}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmark.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] + "\nResults and the machine they came from: docs/benchmarks.md.")
    parser.add_argument("--mode", choices=("fast", "reference-loop", "both", "text"), default="fast",
                        help="what to time (default: fast)")
    parser.add_argument("--config", default=None,
                        help="benchmark config whose model settings to use (default: configs/cfg_ade20k.py)")
    parser.add_argument("--method", choices=tuple(METHODS), default=None,
                        help="last block to time: cass or a baseline (default: the config's, i.e. cass); "
                             "the same as --cfg-options model.method=NAME")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default=None, metavar="model.KEY=VALUE",
                        help="override the config's model settings, mmseg style as in eval.py and demo.py, "
                             "e.g. model.slide_crop=0 for whole-image inference")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default: cpu)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="precision of both towers (default: the config's, 'auto': on CUDA CLIP fp16 and the "
                             "VFM fp32 with TF32, like the released code; fp32 on the CPU); reported resolved")
    parser.add_argument("--size", type=int, nargs=2, default=(336, 448), metavar=("H", "W"),
                        help="resized image size (default: 336 448, the ADE20K setting)")
    parser.add_argument("--ori-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="output (original image) size of the label maps (default: --size)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="vocabulary of N names 'class i' (default: the config's class file, else 150)")
    parser.add_argument("--random-text", action="store_true",
                        help="skip the text tower: random unit query embeddings (every query its own "
                             "cluster); for per-image cost at large vocabularies")
    parser.add_argument("--text-cache-dir", default=None,
                        help="text-embedding cache (default: $CASS_CACHE_DIR/text or ~/.cache/cass/text)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per predict call (default: 1)")
    parser.add_argument("--crop-batch-size", type=int, default=32,
                        help="crops per tower forward in the fast path (default: 32)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported (default: 3)")
    parser.add_argument("--breakdown-repeats", type=int, default=None,
                        help="instrumented runs for the stage breakdown (default: --repeats; 0: none)")
    parser.add_argument("--check-agreement", action="store_true",
                        help="also compare the labels at --precision with float32 on random images")
    parser.add_argument("--agreement-images", type=int, default=8,
                        help="images for --check-agreement (default: 8)")
    parser.add_argument("--text-reference-classes", type=int, default=5,
                        help="--mode text: classes timed with the released design, extrapolated (default: 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clip", choices=tuple(CLIP_SPECS), default="ViT-B/16",
                        help="CLIP backbone (default: ViT-B/16)")
    parser.add_argument("--vfm", choices=tuple(VFM_SPECS), default=None,
                        help="VFM backbone (default: the config's vfm, else dino_vitb8; docs/backbones.md)")
    add_weights_arguments(parser, random_default=True, old_names=OLD_WEIGHTS_FLAGS)
    parser.add_argument("--protocol", choices=PROTOCOL_NAMES, default="cass",
                        help="'published': the method's published settings for the config's benchmark "
                             "(windows, thresholds, VFM, class file; cass.protocols.cfg_options) before --cfg-options; "
                             "the image size stays --size (default: cass, the config's settings)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (tests, smoke runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and images (default: 0)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.breakdown_repeats is None:
        args.breakdown_repeats = args.repeats
    for name in ("batch_size", "repeats", "agreement_images", "crop_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.breakdown_repeats < 0:
        parser.error("--warmup and --breakdown-repeats must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.config is not None and not Path(args.config).is_file():
        parser.error(f"--config: no such file: {args.config}")
    options = dict(args.cfg_options or {})
    for key in options:
        if "." not in key:
            parser.error(f"--cfg-options {key}=...: write model.{key}=... (mmseg's form, as in eval.py and demo.py)")
        if not key.startswith("model."):
            parser.error(f"--cfg-options {key}=...: benchmark.py takes the model's settings only, model.<key>=...")
    if args.method is not None:
        options["model.method"] = args.method
    if args.protocol == "published":
        benchmark = Path(args.config or DEFAULT_CONFIG).stem
        if benchmark not in BENCHMARKS:
            parser.error(f"--protocol published: {benchmark} is not a benchmark config ({', '.join(BENCHMARKS)})")
        method = options.get("model.method", model_keys(load_config(args.config)).get("method", "cass"))
        published = dict(option.split("=", 1) for option in cfg_options(method, benchmark, "published"))
        published = {key: literal(value) for key, value in published.items() if key.startswith("model.")}
        options = {**published, **options}
    args.model_keys = model_keys(load_config(args.config, options))
    method = args.model_keys.get("method", "cass")
    if method != "cass" and args.mode in ("reference-loop", "both"):
        parser.error(f"--mode {args.mode}: the released code's structure exists for CASS only, not {method!r}")
    if args.vfm is None:
        args.vfm = args.model_keys.get("vfm", "dino_vitb8")
    if args.vfm not in VFM_SPECS:
        parser.error(f"vfm {args.vfm!r}: choose one of {', '.join(VFM_SPECS)}")
    if args.mode in ("reference-loop", "both") and VFM_SPECS[args.vfm].num_prefix_tokens != 1:
        parser.error(f"--mode {args.mode}: the released code's structure exists for VFMs with a CLS token only "
                     f"(DINO, DINOv2 without registers), not {args.vfm!r}")
    return args


def run(args: argparse.Namespace, command: str) -> dict:
    """Run the benchmark described by ``args``; returns the results (also printed by :func:`main`)."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict = dict(command=command, machine=machine_info(device))
    keys = args.model_keys
    settings = model_settings(keys, args.precision, args.crop_batch_size)
    classes, vocab_source = vocabulary(args.num_classes, keys.get("name_path"))
    model = timed_model(args, classes).to(device)
    if args.mode == "text":  # the text tower of the same model
        queries = text_module.parse_vocabulary(classes)[0]
        results["text"] = dict(text_benchmark(model.clip, queries, args.text_reference_classes),
                               precision=model.precisions()[0])
        results["machine"].update(load_average_end=[round(x, 2) for x in os.getloadavg()],
                                  gemm_gflops_end=gemm_gflops(device))
        return results

    start = time.perf_counter()
    if args.random_text:
        vocab_source += ", random text embeddings"
        model.set_text_embeddings(random_text_embeddings(len(model.vocabulary.queries),
                                                         model.clip.text_projection.shape[1], args.seed))
    _, clusters = model.text_state()
    text_s = time.perf_counter() - start
    h, w = args.size
    window = model.config.window
    crops = len(image_boxes(h, w, model.config))
    crop_desc = ("whole-image pass" if window.whole_image else
                 f"crops of {window.slide_crop} (stride {window.slide_stride})")
    weights = {"CLIP": args.clip_path is not None, "VFM": args.vfm_path is not None}
    results["setting"] = dict(source=str(args.config or DEFAULT_CONFIG), method=model.config.method.name,
                              clip=args.clip, vfm=args.vfm, settings=settings, size=list(args.size),
                              ori_size=list(args.ori_size or args.size), crops=crops, crop_desc=crop_desc,
                              classes=model.num_classes, queries=len(model.vocabulary.queries),
                              clusters=int(clusters.max()) + 1,
                              vocabulary=vocab_source, text_setup_s=text_s, precision=resolved_precision(model),
                              batch_size=args.batch_size, device=args.device, tiny=args.tiny,
                              weights=", ".join(f"{tower} {'real' if real else 'random'}"
                                                for tower, real in weights.items()))
    modes = ("fast", "reference-loop") if args.mode == "both" else (args.mode,)
    results.update(image_benchmark(model, args, device, modes))
    if args.mode == "both":
        fast, slow = results["fast"], results["reference-loop"]
        results["speedup"] = fast["images_per_s"] / slow["images_per_s"]
        results["speedup_per_repeat"] = [r / f for f, r in zip(fast["seconds_per_run"], slow["seconds_per_run"])]
    if args.check_agreement:  # the same towers (copies) at float32
        reference = build_model(**model_settings(keys, "fp32", args.crop_batch_size), vfm=args.vfm,
                                clip_model=copy.deepcopy(model.clip), vfm_model=copy.deepcopy(model.vfm),
                                classes=classes, text_cache_dir=args.text_cache_dir).to(device)
        results["agreement"] = agreement(model, reference, args, device)
    results["machine"].update(load_average_end=[round(x, 2) for x in os.getloadavg()],
                              gemm_gflops_end=gemm_gflops(device))
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = "python benchmark.py " + shlex.join(argv)
    try:
        results = run(args, command)
    except (ValueError, OSError) as err:
        print(f"benchmark.py: error: {err}", file=sys.stderr)
        return 1
    print(format_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
