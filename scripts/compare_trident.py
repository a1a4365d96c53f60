"""Compare this implementation of Trident with the authors' released code, on CPU in float32.

    python scripts/compare_trident.py --released /path/to/Trident --dino /path/to/dino \
        [--families voc21 cityscapes] [--photos astronaut chelsea] [--set prob_thd=0 coarse_thresh=0.03] \
        [--json report.json]

Trident (Shi et al., ICCV 2025): https://github.com/YuHengsss/Trident. Needs a
checkout of it and one of https://github.com/facebookresearch/dino (the
release loads DINO ViT-B/16 through ``torch.hub``); either may be a work tree
or a git directory (exported with ``git archive HEAD``). Needs the full
environment (mmseg and mmengine, which the released code imports). Nothing is
downloaded:

1. random full-size weights are written in the release formats: CLIP ViT-B/16
   (an OpenAI state dict), DINO ViT-B/16 (a plain state dict, in the
   ``torch.hub`` cache next to the DINO code, where the release's
   ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')`` finds both
   offline) and SAM ViT-B (the release's ``sam_ckpt``), its IoU head made to
   predict around ``--iou-center`` (default 0.8, the published threshold,
   :func:`cass.random_weights.lively_iou_head`) so that some masks are kept
   and others rejected, within one class too (``--plain-sam``: as random);
2. the released code runs in a subprocess, from a patched copy of the checkout
   (its vendored ``open_clip`` and ``segment_anything`` shadow the installed
   ones only there), on scikit-image's photos resized and normalised as the
   release's benchmark configs do, with the SAM refinement its evaluation runs
   (``dist_test.sh --sam_refine``);
3. this code runs on the same inputs with the same weights
   (``method='trident'``, the published settings of :func:`cass.protocols.cfg_options`);
4. per case it reports the share of pixels with the same label and the largest
   difference of the returned (refined) class scores, and, from every call of
   SAM's decoder recorded on both sides (one per class with regions), how many
   masks each side kept, whether the prompts are the same (points, boxes, mask
   prompt: their largest difference), and the largest differences of the
   predicted IoUs and of the low-resolution mask logits.

Random weights give near-uniform class scores (about 1 / number of queries),
under the published ``prob_thd`` and ``coarse_thresh`` of some benchmarks (VOC21:
all background, no SAM prompt): ``--set`` lowers them on both sides so that the
thresholding and the SAM refinement are compared too (``name_path=`` gives both
sides a shorter class file, e.g. ADE20K's first 20 classes: its 150 take about
20 minutes of text encoding per side on a CPU core).

Patches of the released copy (:data:`CPU_PATCHES`, literal replacements; a
pattern that is missing stops the run), all in ``trident.py``, all to run in
float32 on the CPU -- its ``.half()`` casts (CLIP, DINO, SAM, the crops) are
CUDA fp16 code:

* ``create_model(..., precision='fp16')`` -> ``precision='fp32'`` (CLIP);
* ``self.vfm = self.vfm.half()`` -> ``.float()`` (DINO);
* SAM's ``.eval().half()`` -> ``.eval().float()``;
* ``imgs_norm.half()`` and ``img_batch.half()`` (DINO's and CLIP's crops) -> ``.float()``.

Done in the subprocess without touching the copy's text:

* ``device=torch.device('cpu')`` is passed to ``Trident`` (its default is ``'cuda'``);
* the vendored open_clip's download of the OpenAI weights
  (``open_clip.openai.download_pretrained_from_url``) returns the random CLIP
  file, so ``create_model('ViT-B/16', pretrained='openai')`` loads it through
  the release's own OpenAI path;
* ``cv2.imread`` -- used by ``Trident.get_trident_seg`` and
  ``seg_utils.utils.sam_refinement`` to re-read the photo from
  ``data_sample.img_path`` -- returns the in-memory photo for the runner's
  ``memory:<photo>`` paths (BGR, as ``cv2.imread`` would; both convert it to RGB).

The families (the release's config files): ``ade20k`` (150 classes, short side
576), ``voc21`` (background synonyms, ``prob_thd`` 0.2, short side 448),
``voc20`` (stride 112, ``cos_fac`` 0, short side 336) and ``cityscapes``
(SAM on the two halves, short side 688). On a CPU core one case takes about a
minute (SAM's encoder alone ~30 s). Not part of CI: the released code is not a package.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cass.bench.released import (ReleasedCodeError, agreement, apply_patches, check_expected,  # noqa: F401 - its error
                                 export_folder, photo, prepare_dino_hub, released_env, run_comparison,
                                 run_release_process)

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {  # name -> benchmark config (ours and the release's share the file name)
    "ade20k": "cfg_ade20k",
    "voc21": "cfg_voc21",
    "voc20": "cfg_voc20",
    "cityscapes": "cfg_city_scapes",
}
DEFAULT_FAMILIES = ("voc21", "cityscapes")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
DEFAULT_PHOTOS = ("astronaut", "chelsea")
# float32 on the CPU instead of the release's CUDA fp16 casts (module docstring)
CPU_PATCHES = {
    "trident.py": [
        ("create_model(model_type, pretrained=clip_type, precision='fp16')",
         "create_model(model_type, pretrained=clip_type, precision='fp32')"),
        ("self.vfm = self.vfm.half()", "self.vfm = self.vfm.float()"),
        (".to(device=device).eval().half()", ".to(device=device).eval().float()"),
        ("imgs_norm = imgs_norm.half()", "imgs_norm = imgs_norm.float()"),
        ("self.clip.encode_image(img_batch.half(),", "self.clip.encode_image(img_batch.float(),"),
    ],
}
# What the runner replaces in the subprocess instead of patching text: it must still be there.
EXPECTED = {
    "trident.py": ["cv2.imread(img_path)", "torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')",
                   "def __init__(self, clip_type, model_type, vfm_model, name_path, device=torch.device('cuda'),"],
    "seg_utils/utils.py": ["img = cv2.imread(img)"],
    "open_clip/openai.py": ["download_pretrained_from_url(get_pretrained_url(name, 'openai')"],
}
def patch_released_copy(source: Path, target: Path) -> None:
    """Copy the released checkout to ``target`` with :data:`CPU_PATCHES` applied, after
    checking :data:`EXPECTED`; a pattern that is not found means the checkout is not
    the one this script knows."""
    export_folder(source, target, "", "trident.py")
    check_expected(source, target, EXPECTED)
    apply_patches(source, target, CPU_PATCHES)


def released_scale(checkout: Path, family: str) -> tuple[int, int]:
    """The ``Resize`` scale of the release's own config of ``family``."""
    from mmengine.config import Config

    from cass.config_files import resize_scale
    return resize_scale(Config.fromfile(str(checkout / "configs" / f"{FAMILIES[family]}.py")))


def model_input(image: np.ndarray, scale: tuple[int, int]) -> np.ndarray:
    """(3, h, w) float32 input of an RGB photo: mmseg's test pipeline (keep-ratio resize to
    ``scale``) and the release's data pre-processor (BGR -> RGB, CLIP mean and std)."""
    from cass.images import as_bgr_uint8, normalise, resize_keep_ratio
    return normalise(resize_keep_ratio(as_bgr_uint8(image), scale)).numpy()


def parse_options(options: Sequence[str]) -> dict:
    """``key=value`` strings (``eval.py --cfg-options``) as the dict mmengine merges."""
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    return parser.parse_args(["--cfg-options", *options] if options else []).cfg_options


# ---------------------------------------------------------------------------- the released side
RELEASED_RUNNER = r"""
import json, sys, time
import numpy as np, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
torch.set_grad_enabled(False)
sys.path.insert(0, ".")
import importlib.util, types
# imported at the top of the release's myutils.py (Excel result logs) and DINO's utils.py, unused by the models
for unused in ("openpyxl", "requests"):
    if importlib.util.find_spec(unused) is None:
        sys.modules[unused] = types.ModuleType(unused)
import open_clip.openai, segment_anything
for module in (open_clip, segment_anything):  # the release's vendored copies, not the installed ones
    assert module.__file__.startswith(spec["cwd"]), f"{module.__name__} imported from {module.__file__}"
# the release's OpenAI download returns the random CLIP file
open_clip.openai.download_pretrained_from_url = lambda url, cache_dir=None: spec["clip"]
# cv2.imread(img_path) of get_trident_seg and sam_refinement: the photo in memory for 'memory:<name>'
import cv2
IMAGES, _imread = {}, cv2.imread
cv2.imread = lambda path, *args: IMAGES[path].copy() if path in IMAGES else _imread(path, *args)
from mmengine.config import Config
from mmseg.structures import SegDataSample
import trident  # registers Trident
for family, config in spec["families"].items():
    cfg = Config.fromfile(f"./configs/{config}.py")
    keys = {k: v for k, v in cfg.model.items() if k != "type"}
    keys.update(device=torch.device("cpu"), sam_ckpt=spec["sam"], sam_refinement=True)
    keys.update(spec["settings"])
    start = time.perf_counter()
    model = trident.Trident(**keys).eval()
    print(f"released: {family} built in {time.perf_counter() - start:.0f} s", flush=True)
    calls = []
    _predict = model.sam_predictor.predict_torch
    def recording_predict(*args, **kwargs):
        out = _predict(*args, **kwargs)
        calls.append({**{k: v for k, v in kwargs.items() if torch.is_tensor(v)}, "iou": out[1], "low_res": out[2]})
        return out
    model.sam_predictor.predict_torch = recording_predict
    for name in spec["photos"]:
        data = np.load(f"{spec['out']}/input_{family}_{name}.npz")
        IMAGES[f"memory:{name}"] = data["bgr"]
        image = torch.from_numpy(data["input"])[None]
        meta = dict(ori_shape=tuple(data["bgr"].shape[:2]), img_shape=tuple(image.shape[-2:]),
                    img_path=f"memory:{name}")
        start = time.perf_counter()
        calls.clear()
        sample = model.predict(image, [SegDataSample(metainfo=meta)])[0]
        np.savez(f"{spec['out']}/released_{family}_{name}.npz", probs=sample.seg_logits.data.float().numpy(),
                 labels=sample.pred_sem_seg.data[0].numpy(),
                 **{f"prompt{i}_{k}": v.float().numpy() for i, call in enumerate(calls) for k, v in call.items()})
        print(f"released: {family} {name} done in {time.perf_counter() - start:.0f} s", flush=True)
"""


def prepare_hub(dino: Path, torch_home: Path, vfm_file: Path) -> None:
    """torch.hub's cache as the release's ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')``
    leaves it: the DINO code and its ViT-B/16 checkpoint (here ``vfm_file``)."""
    prepare_dino_hub(dino, torch_home, vfm_file, "dino_vitbase16_pretrain.pth")


def run_released(checkout: Path, work: Path, clip_file: Path, sam_file: Path, families: Sequence[str],
                 photos: Sequence[str], threads: int = 1, timeout: int = 7200, settings: dict | None = None,
                 log=print) -> float:
    """Run the patched released copy on the saved inputs (outputs land in ``work``); its wall time in seconds.
    ``settings``: model keys that replace the config's."""
    checkout, work = checkout.resolve(), work.resolve()
    spec = dict(families={f: FAMILIES[f] for f in families}, photos=list(photos), clip=str(clip_file.resolve()),
                sam=str(sam_file.resolve()), out=str(work), threads=threads, cwd=str(checkout),
                settings=settings or {})
    start = time.perf_counter()
    run_release_process([sys.executable, "-c", RELEASED_RUNNER, json.dumps(spec)], checkout,
                        released_env(work, threads), timeout, log, tail=15)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- this code
def run_ours(clip_file: Path, vfm_file: Path, sam_file: Path, family: str, photos: Sequence[str],
             work: Path, settings: dict | None = None) -> tuple[dict[str, dict[str, np.ndarray]], tuple[int, int]]:
    """This code's results on the saved inputs, and the resize scale its Segmenter would use.
    ``settings``: model keys that replace the published ones."""
    import torch

    from cass.api import Segmenter
    from cass.protocols import cfg_options

    config = FAMILIES[family]
    options = parse_options(cfg_options("trident", config))
    options.update({f"model.{key}": value for key, value in (settings or {}).items()})
    segmenter = Segmenter(config=REPO / "configs" / f"{config}.py", cfg_options=options,
                          clip_path=str(clip_file), vfm_path=str(vfm_file), sam_path=str(sam_file),
                          precision="fp32", vfm="dino_vitb16", text_cache_dir=False)
    calls = []
    predictor = segmenter.model.sam_guide.predictor
    predict = predictor.predict_torch

    def recording_predict(*args, **kwargs):  # the decoder's inputs and outputs, per class of regions
        result = predict(*args, **kwargs)
        calls.append({**{k: v for k, v in kwargs.items() if torch.is_tensor(v)}, "iou": result[1],
                      "low_res": result[2]})
        return result

    predictor.predict_torch = recording_predict
    out = {}
    for name in photos:
        data = np.load(work / f"input_{family}_{name}.npz")
        calls.clear()
        result = segmenter.segment_loaded([data["bgr"]], [torch.from_numpy(data["input"])])[0]
        out[name] = dict(probs=result.probs, labels=result.labels,
                         **{f"prompt{i}_{k}": v.float().cpu().numpy() for i, call in enumerate(calls)
                            for k, v in call.items()})
    return out, tuple(segmenter.scale)


def prompt_calls(saved: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The recorded ``predict_torch`` calls (one per class with regions) of a saved result, in order."""
    calls: dict[int, dict[str, np.ndarray]] = {}
    for key, value in saved.items():
        if key.startswith("prompt"):
            index, _, name = key.removeprefix("prompt").partition("_")
            calls.setdefault(int(index), {})[name] = value
    return [calls[i] for i in sorted(calls)]


def prompt_agreement(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], iou_thresh: float) -> dict:
    """Per SAM prompt, this code's decoder against the release's: the prompts (points, boxes, mask
    prompt), the predicted IoUs and the low-resolution mask logits, and how many masks each side kept."""
    mine, released = prompt_calls(ours), prompt_calls(theirs)
    row = dict(prompt_calls=len(released), prompts=int(sum(c["iou"].size for c in released)),
               kept=int(sum((c["iou"] > iou_thresh).sum() for c in released)),
               kept_here=int(sum((c["iou"] > iou_thresh).sum() for c in mine)))
    if [c["iou"].shape for c in mine] != [c["iou"].shape for c in released]:
        return dict(row, same_prompts=False)

    def largest(key: str) -> float:
        return max((float(np.abs(a[key] - b[key]).max()) for a, b in zip(mine, released) if a[key].size), default=0.0)

    return dict(row, same_prompts=True, max_prompt_diff=max(largest(k) for k in ("point_coords", "boxes", "mask_input")),
                max_iou_diff=largest("iou"), max_mask_logit_diff=largest("low_res"))


def compare(checkout: Path, dino: Path, families: Sequence[str], photos: Sequence[str], work: Path,
            threads: int = 1, released_only: bool = False, timeout: int = 7200, settings: dict | None = None,
            iou_center: float | None = None, log=print) -> list[dict]:
    """Every (family, photo) case: agreement of this code with the release (``released_only``:
    run the release alone, rows without agreement). ``settings``: model keys set on both
    sides (named alike on both: ``prob_thd``, ``coarse_thresh``, ``sam_iou_thresh``, ...).
    ``iou_center``: SAM's IoU head made to predict around it (:func:`lively_iou_head`)."""
    import torch

    from cass.backbones import CLIP_SPECS, SAM_SPECS, VFM_SPECS
    from cass.config import SAMConfig
    from cass.protocols import cfg_options
    from cass.images import as_bgr_uint8
    from cass.random_weights import lively_iou_head, random_sam, write_clip, write_dino

    torch.set_num_threads(threads)
    checkout, work = checkout.resolve(), work.resolve()  # the released code runs in another folder
    copy = work / "released"
    patch_released_copy(checkout, copy)
    clip_file = write_clip(work / CLIP_SPECS["ViT-B/16"].release_file)
    # hub's download of DINO ViT-B/16 is a plain state dict (hubconf loads it strictly into the backbone)
    vfm_file = write_dino(work / VFM_SPECS["dino_vitb16"].release_file, vfm="dino_vitb16")
    sam = random_sam("vit_b")
    if iou_center is not None:
        lively_iou_head(sam, photo(photos[0]), iou_center)
    sam_file = work / SAM_SPECS["vit_b"].release_file
    torch.save(sam.state_dict(), sam_file)  # the release's layout (cass.random_weights.write_sam)
    del sam
    prepare_hub(dino.resolve(), work / "torch_home", vfm_file)
    scales = {}
    for family in families:
        scales[family] = released_scale(copy, family)
        for name in photos:
            image = photo(name)
            np.savez(work / f"input_{family}_{name}.npz", input=model_input(image, scales[family]),
                     bgr=as_bgr_uint8(image))
    log(f"running the released code ({len(families)} configs x {len(photos)} photos, CPU float32)")
    seconds = run_released(copy, work, clip_file, sam_file, families, photos, threads, timeout, settings, log)
    log(f"released code: {seconds:.0f} s in all")
    rows = []
    for family in families:
        theirs = {name: dict(np.load(work / f"released_{family}_{name}.npz")) for name in photos}
        if released_only:
            rows += [dict(family=family, photo=name, labels=sorted(map(int, np.unique(t["labels"]))))
                     for name, t in theirs.items()]
            continue
        log(f"running this code: {family}")
        start = time.perf_counter()
        ours, our_scale = run_ours(clip_file, vfm_file, sam_file, family, photos, work, settings)
        log(f"this code: {family} in {time.perf_counter() - start:.0f} s")
        if tuple(our_scale) != tuple(scales[family]):
            log(f"note: {family}: this code's Segmenter would resize to {our_scale}, the release to "
                f"{scales[family]} (both got the release's input here)")
        published = {k.removeprefix("model."): v for k, v in parse_options(cfg_options("trident", FAMILIES[family])).items()}
        thresh = {**published, **(settings or {})}.get("sam_iou_thresh", SAMConfig.sam_iou_thresh)
        for name in photos:
            rows.append(dict(family=family, photo=name, **agreement(ours[name], theirs[name]),
                             **prompt_agreement(ours[name], theirs[name], thresh)))
    return rows


def format_table(rows: list[dict]) -> str:
    if rows and "label_agreement" not in rows[0]:
        lines = ["| config family | photo | released labels present |", "|---|---|---|"]
        lines += [f"| {r['family']} | {r['photo']} | {r['labels']} |" for r in rows]
        return "\n".join(lines)
    lines = ["| config family | photo | SAM masks kept / prompted (here) | same prompts | max IoU diff "
             "| max mask-logit diff | labels equal | max prob. diff | pixels with a prob. diff > 1e-3 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("same_prompts"):
            decoder = (f"yes ({r['max_prompt_diff']:.1e}) | {r['max_iou_diff']:.1e} "
                       f"| {r['max_mask_logit_diff']:.1e}")
        else:
            decoder = "no | — | —"
        lines.append(f"| {r['family']} | {r['photo']} | {r['kept']} / {r['prompts']} ({r['kept_here']}) "
                     f"| {decoder} | {100 * r['label_agreement']:.3f}% | {r['max_prob_diff']:.1e} "
                     f"| {100 * r['prob_diff_share']:.4f}% |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compare_trident.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--released", type=Path, required=True,
                        help="the authors' Trident code: a checkout or a git directory")
    parser.add_argument("--dino", type=Path, required=True,
                        help="facebookresearch/dino (for torch.hub): a checkout or a git directory")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(DEFAULT_FAMILIES),
                        help="release configs (default: %(default)s)")
    parser.add_argument("--photos", nargs="+", choices=PHOTOS, default=list(DEFAULT_PHOTOS),
                        help="scikit-image photos (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on each side (default: %(default)s)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="settings",
                        help="model keys set on both sides, e.g. prob_thd=0 coarse_thresh=0.03 (random weights "
                             "give near-uniform class scores, below the published thresholds)")
    parser.add_argument("--iou-center", type=float, default=0.8,
                        help="SAM's random IoU head rescaled to predict around this value, so that the published "
                             "threshold (0.8) keeps some masks and rejects others (default: %(default)s)")
    parser.add_argument("--plain-sam", action="store_true",
                        help="SAM's random weights as they are (every mask rejected at the published threshold)")
    parser.add_argument("--released-only", action="store_true", help="run the released code alone")
    parser.add_argument("--timeout", type=int, default=7200,
                        help="seconds for the released code (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--keep", type=Path, help="keep the work folder (weights, inputs, outputs) here")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if any("=" not in item for item in args.settings):
        parser.error("--set takes KEY=VALUE items")
    args.settings = parse_options(args.settings)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_comparison("compare_trident.py", lambda work: compare(
        args.released, args.dino, args.families, args.photos, work, threads=args.threads,
        released_only=args.released_only, timeout=args.timeout, settings=args.settings,
        iou_center=None if args.plain_sam else args.iou_center),
        format_table, args.keep, args.json, argv)

if __name__ == "__main__":
    sys.exit(main())
