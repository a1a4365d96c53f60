"""Run the authors' released CorrCLIP (``CorrCLIPv1``) on one photo, on the CPU in float32.

    python -m cass.bench.corrclip_release --release /work/.mirror/zdk258+CorrCLIP/repo --work /tmp/corrclip \
        --clip ViT-B-16.pt --dino dino_vitbase8_pretrain.pth --class-names "sky; wall" person horse \
        --image photo.png --mask mask.npy [--scale 2048 336] [--slide-crop 336 --slide-stride 112 \
        --logit-scale 40 --prob-thd 0 --model-type ViT-B-16-quickgelu] --out released.npz

    python -m cass.bench.corrclip_release --release ... --write-random-sam2 sam2_hiera_large.pt

CorrCLIP (Zhang et al., CVPR 2025): https://github.com/zdk258/CorrCLIP. This is
the release side of a comparison of this project's CorrCLIP with the authors'
code on the same (random) weights and photos, as ``scripts/compare_trident.py``
does for Trident. :func:`run_release` (the ``-m`` command calls it):

1. exports the folder ``CorrCLIPv1`` of the release -- a checkout or a git
   directory such as the bare mirror, whose ``HEAD`` is exported with ``git
   archive`` (blobs a partial mirror lacks are skipped) -- to ``work/release``
   and patches it (below);
2. sets up a ``torch.hub`` cache in ``work/torch_home`` holding the DINO code
   (``facebookresearch/dino``, also a checkout or a git directory, exported)
   and the given DINO ViT-B/8 file as the hub's download of it, so that the
   release's ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')``
   runs offline;
3. writes the photo (RGB uint8) as a lossless BGR PNG, the instance mask as the
   release's pre-generated mask file (``<instance_mask_path>/<stem>.npz`` with
   key ``instance_mask``, which the release loads when ``mask_generator`` is
   None) and the class names in the release's class-file format (one line per
   class, synonyms separated by ``'; '``);
4. runs, in a subprocess whose ``sys.path`` starts with the exported
   ``CorrCLIPv1`` folder (so that its vendored ``open_clip`` and ``sam2``, not
   the installed packages, are imported -- checked), the release's
   ``CorrCLIPSegmentation`` exactly as its ``eval.py`` runs it for one image:
   the mmseg test pipeline ``LoadImageFromFile`` (BGR) -> [``Resize(scale,
   keep_ratio=True)`` when ``scale`` is given, as the release's configs do,
   e.g. ``(2048, 336)`` for VOC and ``(2048, 448)`` for ADE20K] ->
   ``PackSegInputs``, then ``model.test_step`` (the release's own
   ``SegDataPreProcessor``: BGR -> RGB, CLIP's mean and std in 0-255, then
   ``predict``). Without ``scale`` the photo is the model input as it is and
   ``ori_shape`` is its size (the simplest for a comparison: resize the photo
   beforehand and give the mask at that size); with ``scale`` the mask must be
   at the photo's (original) size, as the release's masks are;
5. saves the results to an ``.npz`` (:data:`OUTPUT_KEYS`) and returns them.

Patches of the exported copy (:data:`CPU_PATCHES`, literal replacements, all in
``corrclip_segmentor.py``; a pattern that is missing stops the run with
:class:`~cass.bench.released.ReleasedCodeError`):

* ``from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation``
  -> the two names set to None: ``transformers`` is not installed here and is
  used only by the ``mask_generator='mask2former'`` option (not run);
* ``create_model(model_type, pretrained=clip_type, precision='fp16')`` ->
  ``precision='fp32'`` (CLIP in float32: its fp16 is CUDA code);
* ``self.dino = self.dino.half()`` -> ``.float()`` (DINO);
* ``imgs_norm = imgs_norm.half()`` -> ``.float()`` (DINO's input);
* ``self.clip.encode_image(img.half(),`` -> ``img.float(),`` (CLIP's input);
* ``sam2 = sam2.half()`` -> ``.float()`` (SAM2, live mask generation only; its
  ``torch.autocast("cuda", ...)`` disables itself on a machine without CUDA).

Done without touching the copy's text (each relies on release text that is
checked to be there, :data:`EXPECTED`):

* ``device=torch.device('cpu')`` is passed to ``CorrCLIPSegmentation`` (its
  default is ``'cuda'``);
* CLIP: ``clip_type`` is the path of the given CLIP file: the vendored
  ``open_clip.create_model`` loads an existing path as a checkpoint (its
  ``elif os.path.exists(pretrained)`` branch; an OpenAI-layout state dict has
  open_clip's ``CLIP`` key names) into ``model_type``'s architecture, strictly;
* DINO: the ``torch.hub`` cache of step 2 (``TORCH_HOME``);
* SAM2 (``mask_generator='sam2'``): the release builds it with the relative
  checkpoint path ``"sam2_hiera_large.pt"``: the given checkpoint is linked
  there in the copy (the subprocess runs in the copy);
* ``openpyxl`` (imported at the top of the release's ``myutils.py`` for its
  Excel logs) and ``requests`` become empty modules in the subprocess when
  they are not installed (as in ``scripts/compare_trident.py``).

Recorded on the way (instance attributes and a module attribute replaced in
the subprocess, the release's code unchanged): ``forward_slide``'s output (the
per-query cosine similarities at ``ori_shape``, before ``logit_scale``); per
sliding window, its box and padding (read from ``forward_slide``'s frame), the
window's instance masks as given to ``forward_feature`` and the masks after
the release's DBSCAN mask merging, on DINO's grid (the tensor the release
merges in place, taken from ``VisionTransformer.forward``'s frame when its
``DBSCAN.fit_predict`` is called; a window with at most two mask values is not
merged by the release: its masks on DINO's grid are then computed with the
release's own ``F.interpolate(..., mode='nearest')`` call); the labels before
the voting (the release's ``postprocess_result`` run a second time on the same
logits with ``self.instance_masks`` set to zeros, which turns the voting off:
it votes on ``torch.unique(instance_masks)[1:]``, none then).

Quirks of the release (as run here, not changed):

* every sliding window is zero-padded (in normalised space: the mean colour)
  to multiples of 56 (``compute_padsize``, split evenly between the sides) and
  its instance masks padded with the label 10000: the padding is one more
  region for DBSCAN, the scope reconstruction and the semantic branch (an
  instance label of 10000 or more would mix with it: refused here); DBSCAN
  relabels every merged region ``cluster + 10000`` (``min_samples=1``: no noise);
* in each window (and in the voting) the smallest mask value present is the
  "unsegmented" region, whether or not it is 0;
* the voting uses ``torch.mode`` on the pre-vote labels of each region (ties:
  ``torch.mode``'s choice) and the mask at the mask file's resolution, so the
  mask must have ``ori_shape``;
* ``postprocess_result`` merges the first ``num_queries - num_classes + 1``
  queries into class 0 by their maximum probability: right only when class 0
  alone has synonyms (as in the release's ``cls_voc21.txt`` and ``cls_coco_object.txt``);
  the returned class scores are these merged probabilities (class 0's is a
  maximum: they do not sum to 1 then), stored under ``seg_logit`` (mmseg's name
  is ``seg_logits``);
* batch size 1: the semantic branch takes ``masks[0]``, ``forward_slide``
  ``img_metas[0]['ori_shape']``, ``forward_feature`` ``img[0]`` of a list;
* on GPU the release runs CLIP and DINO in fp16 (patched out here: float32).

Needs mmseg and mmengine (the release imports them), scikit-learn (DBSCAN) and,
for SAM2, ``hydra-core``, ``omegaconf`` and ``iopath`` (the vendored ``sam2``
imports them; not in this project's requirements). The CLIP file: an OpenAI
layout state dict (:func:`cass.random_weights.write_clip`); the DINO file: DINO's
release layout, a plain state dict (:func:`cass.random_weights.write_dino`); a
SAM2 checkpoint: Meta's ``{"model": state_dict}`` (:func:`write_random_sam2`
writes a random Hiera-L one with the vendored builder; as initialised its masks
are all rejected by the release's generator, ``lively=True`` keeps some).

Cost on a CPU: the release encodes every query with its 80 prompt templates
(full ViT-B/16 text tower: about 10 s of CPU time per query), DINO ViT-B/8 and
CLIP run once per sliding window; live SAM2 adds Hiera-L at 1024 px (about a
minute of CPU time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cass.bench.released import (ReleasedCodeError, apply_patches, check_expected, export_folder, link_or_copy,
                                 prepare_dino_hub, released_env, run_release_process)

DEFAULT_MIRROR = Path("/work/.mirror/zdk258+CorrCLIP/repo")
DEFAULT_DINO_MIRROR = Path("/work/.mirror/facebookresearch+dino/repo")
FOLDER = "CorrCLIPv1"  # the release's folder (the repository also holds CorrCLIPv2)
SEGMENTOR = "corrclip_segmentor.py"
DINO_HUB_FILES = {"dino_vitb8": "dino_vitbase8_pretrain.pth", "dino_vits8": "dino_deitsmall8_pretrain.pth",
                  "dino_vitb16": "dino_vitbase16_pretrain.pth", "dino_vits16": "dino_deitsmall16_pretrain.pth"}
SAM2_CHECKPOINT = "sam2_hiera_large.pt"  # the relative path the release's set_mask_generator('sam2') loads
SAM2_CONFIG = "sam2_hiera_l.yaml"
MASK_PAD_LABEL = 10000  # the release's label of padded mask pixels (and DBSCAN's cluster offset)
SAM2_GENERATOR_END = "multimask_output=False,"  # the last argument of the release's SAM2AutomaticMaskGenerator(...)

# float32 on the CPU without transformers (module docstring)
CPU_PATCHES = {
    SEGMENTOR: [
        ("from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation\n",
         "AutoImageProcessor = Mask2FormerForUniversalSegmentation = None  # patched: transformers is not needed\n"),
        ("self.clip = create_model(model_type, pretrained=clip_type, precision='fp16')",
         "self.clip = create_model(model_type, pretrained=clip_type, precision='fp32')"),
        ("self.dino = self.dino.half()", "self.dino = self.dino.float()"),
        ("imgs_norm = imgs_norm.half()", "imgs_norm = imgs_norm.float()"),
        ("self.clip.encode_image(img.half(),", "self.clip.encode_image(img.float(),"),
        ("sam2 = sam2.half()", "sam2 = sam2.float()"),
    ],
}
# What the runner relies on or replaces in the subprocess instead of patching text: it must be there.
EXPECTED = {
    SEGMENTOR: [
        "def __init__(self, clip_type, model_type, dino_type, name_path, device=torch.device('cuda'),",
        "prob_thd=0.0, logit_scale=40, slide_stride=112, slide_crop=336, instance_mask_path=None, mask_generator=None)",
        "self.dino = torch.hub.load('facebookresearch/dino:main', dino_type)",
        "np.load(os.path.join(self.instance_mask_path, Path(img_path).stem + '.npz'))['instance_mask']",
        f'build_sam2("{SAM2_CONFIG}", "{SAM2_CHECKPOINT}", device=self.device, apply_postprocessing=False)',
        "crop_seg_logit = self.forward_feature(crop_img, crop_instance_masks).detach()",
        "crop_instance_masks = nn.functional.pad(crop_instance_masks, pad, value=10000)",
        "mask_values = torch.unique(self.instance_masks[i])",
        "'seg_logit':",
    ],
    "open_clip/factory.py": ["elif os.path.exists(pretrained):\n                checkpoint_path = pretrained"],
    "open_clip/transformer.py": [
        "from sklearn.cluster import DBSCAN",
        "cluster = dbscan.fit_predict(((instance_sim.max() - instance_sim).cpu().numpy()))",
        "masks = F.interpolate(masks.float(), size=feat_shape, mode='nearest').int().squeeze(1)",
        "masks[batch_idx][region_masks[idx]] = cluster_v + 10000",
    ],
}
# The saved .npz (and the returned dict); crop<k>_* for each sliding window k.
OUTPUT_KEYS = {
    "probs": "(C, H, W) float32: the released seg_logit, softmax(logit_scale * logits) over the queries, "
             "class 0's synonyms merged by their maximum",
    "labels": "(H, W) int64: pred_sem_seg, after prob_thd and the voting in instance-mask regions",
    "labels_prevote": "(H, W) int64: the same without the voting",
    "logits": "(Q, H, W) float32: forward_slide's per-query cosine similarities at ori_shape",
    "instance_mask": "(h, w) int32: the instance mask the release used (its self.instance_masks[0])",
    "input": "(3, h, w) float32: the model input after the release's data pre-processor",
    "query_idx": "(Q,) int64: the class of each query (line of the class file)",
    "crop_boxes": "(K, 4) int64: y1, y2, x1, x2 of each sliding window",
    "crop_pads": "(K, 4) int64: the window's padding, left, right, top, bottom",
    "crop<k>_masks": "(h_k, w_k) int32: window k's instance masks, padded, as forward_feature got them",
    "crop<k>_merged": "(fh, fw) int32: window k's masks on DINO's grid after the DBSCAN merging",
    "crop<k>_clusters": "(n,) int64: DBSCAN's labels of window k's regions but the smallest (absent: not run)",
    "meta": "str: JSON with the settings, the release commit, the queries and the timings",
}


# ---------------------------------------------------------------------------- the released copy
def prepare_release(source: Path, target: Path, sam2_settings: Mapping[str, object] | None = None) -> str:
    """``source``'s ``CorrCLIPv1`` exported to ``target`` with :data:`CPU_PATCHES` applied, after
    checking :data:`EXPECTED`; returns the commit ('' when unknown). ``sam2_settings``: extra
    ``SAM2AutomaticMaskGenerator`` arguments the release's call does not set, added to it (a
    comparison's stress setting, e.g. ``box_nms_thresh=1.0``, given to both sides; not the release's)."""
    commit = export_folder(Path(source), Path(target), FOLDER, SEGMENTOR)
    check_expected(Path(source), Path(target), EXPECTED, FOLDER)
    patches = {name: list(replacements) for name, replacements in CPU_PATCHES.items()}
    if sam2_settings:
        extra = "".join(f" {key}={value!r}," for key, value in sam2_settings.items())
        patches[SEGMENTOR].append((SAM2_GENERATOR_END, SAM2_GENERATOR_END + extra))
    apply_patches(Path(source) / FOLDER, Path(target), patches)
    return commit


def prepare_hub(dino_repo: Path, torch_home: Path, dino_file: Path, dino_type: str = "dino_vitb8") -> None:
    """torch.hub's cache as the release's ``torch.hub.load('facebookresearch/dino:main', dino_type)``
    leaves it: the DINO code and the checkpoint (here ``dino_file``, linked)."""
    if dino_type not in DINO_HUB_FILES:
        raise ValueError(f"dino_type {dino_type!r}: one of {sorted(DINO_HUB_FILES)}")
    prepare_dino_hub(Path(dino_repo), Path(torch_home), Path(dino_file), DINO_HUB_FILES[dino_type])


def class_file_text(classes: Sequence[str | Sequence[str]]) -> str:
    """The release's class-file format: one line per class, synonyms joined by ``'; '``."""
    lines = []
    for entry in classes:
        names = [entry] if isinstance(entry, str) else list(entry)
        names = [n.strip() for name in names for n in name.split(";")]
        if not names or any(not n or "\n" in n for n in names):
            raise ValueError(f"bad class entry {entry!r}")
        lines.append("; ".join(names))
    if not lines:
        raise ValueError("no classes")
    return "\n".join(lines) + "\n"


def release_scale(release_copy: Path, config: str) -> tuple[int, int]:
    """The ``Resize`` scale of the test pipeline of the release's config ``config`` (e.g. ``'cfg_voc21'``)."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(Path(release_copy) / "configs" / f"{config}.py"))
    for step in cfg.test_pipeline:
        if step["type"] == "Resize":
            return tuple(step["scale"])
    raise ValueError(f"{config}: no Resize in its test pipeline")


# ---------------------------------------------------------------------------- the subprocess
RUNNER = r'''
import importlib.util, json, os, sys, time, types
spec = json.loads(open(sys.argv[1]).read())
release = spec["release"]
sys.path.insert(0, release)
import numpy as np, torch
import torch.nn.functional as F
torch.set_num_threads(spec["threads"])
torch.set_grad_enabled(False)  # mmengine's test loop runs under no_grad
# imported at the top of the release's myutils.py (Excel result logs) and of DINO's code, unused by the model
for unused in ("openpyxl", "requests"):
    if importlib.util.find_spec(unused) is None:
        sys.modules[unused] = types.ModuleType(unused)
import open_clip, open_clip.transformer as vendored_transformer
assert open_clip.__file__.startswith(release), f"open_clip imported from {open_clip.__file__}"
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from mmseg.utils import register_all_modules
register_all_modules(init_default_scope=False)
init_default_scope("mmseg")  # the release's base_config: default_scope = 'mmseg'
start = time.perf_counter()
import corrclip_segmentor
if spec["mask_generator"] == "sam2":
    import sam2
    assert sam2.__file__.startswith(release), f"sam2 imported from {sam2.__file__}"
    assert hasattr(corrclip_segmentor, "build_sam2"), "the release's sam2 did not import"
timings = {}
records = []  # one per sliding window


def recording_dbscan(*args, **kwargs):  # the release's DBSCAN, its labels and the masks it merges recorded
    estimator = _DBSCAN(*args, **kwargs)
    fit_predict = estimator.fit_predict

    def recording_fit_predict(X, *a, **k):
        labels = fit_predict(X, *a, **k)
        caller = sys._getframe(1).f_locals  # VisionTransformer.forward: merges its `masks` in place next
        records[-1]["clusters"] = np.asarray(labels).copy()
        records[-1]["merging"] = caller["masks"][caller["batch_idx"]]
        return labels

    estimator.fit_predict = recording_fit_predict
    return estimator


_DBSCAN = vendored_transformer.DBSCAN
vendored_transformer.DBSCAN = recording_dbscan
keys = dict(clip_type=spec["clip"], model_type=spec["model_type"], dino_type=spec["dino_type"],
            name_path=spec["name_path"], device=torch.device("cpu"), prob_thd=spec["prob_thd"],
            logit_scale=spec["logit_scale"], slide_stride=spec["slide_stride"], slide_crop=spec["slide_crop"],
            instance_mask_path=spec["instance_mask_path"], mask_generator=spec["mask_generator"])
model = corrclip_segmentor.CorrCLIPSegmentation(**keys).eval()
timings["build_s"] = time.perf_counter() - start
print(f"released: built in {timings['build_s']:.1f} s", flush=True)
forward_feature, forward_slide = model.forward_feature, model.forward_slide
captured = {}


def recording_forward_feature(img, masks):
    window = sys._getframe(1).f_locals  # forward_slide's window
    record = dict(box=[int(window[k]) for k in ("y1", "y2", "x1", "x2")], pad=[int(p) for p in window["pad"]],
                  masks=masks[0, 0].clone())
    records.append(record)
    out = forward_feature(img, masks)
    if "merging" in record:
        record["merged"] = record.pop("merging").clone()
    else:  # not merged by the release (at most two mask values): its masks on DINO's grid
        patch = model.dino.patch_embed.patch_size
        record["merged"] = F.interpolate(masks.float(), size=(img.shape[-2] // patch, img.shape[-1] // patch),
                                         mode="nearest").int()[0, 0]
    return out


def recording_forward_slide(*args, **kwargs):
    captured["logits"] = forward_slide(*args, **kwargs)
    return captured["logits"]


model.forward_feature, model.forward_slide = recording_forward_feature, recording_forward_slide
steps = [dict(type="LoadImageFromFile")]
if spec["scale"]:
    steps.append(dict(type="Resize", scale=tuple(spec["scale"]), keep_ratio=True))
steps.append(dict(type="PackSegInputs"))
data = Compose(steps)(dict(img_path=spec["image"]))
batch = dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]])
start = time.perf_counter()
sample = model.test_step(batch)[0]  # as mmengine's test loop: the data pre-processor, then predict
timings["predict_s"] = time.perf_counter() - start
preprocessed = model.data_preprocessor(batch, False)  # the input it got, for the record
print(f"released: predicted in {timings['predict_s']:.1f} s", flush=True)
used_masks = model.instance_masks
from mmseg.structures import SegDataSample
model.instance_masks = torch.zeros_like(used_masks)  # torch.unique(...)[1:] is empty: no voting
prevote = model.postprocess_result(captured["logits"].clone(), [SegDataSample(metainfo=sample.metainfo)])[0]
model.instance_masks = used_masks
crops = {}
for k, record in enumerate(records):
    crops[f"crop{k}_masks"] = record["masks"].numpy().astype(np.int32)
    crops[f"crop{k}_merged"] = record["merged"].numpy().astype(np.int32)
    if "clusters" in record:
        crops[f"crop{k}_clusters"] = record["clusters"].astype(np.int64)
query_words, _ = corrclip_segmentor.get_cls_idx(spec["name_path"])
meta = dict(spec=spec, commit=spec.get("commit", ""), queries=query_words, metainfo={
    k: (list(v) if isinstance(v, tuple) else v) for k, v in sample.metainfo.items()}, timings=timings)
np.savez(spec["out"], probs=sample.seg_logit.data.float().numpy(),
         labels=sample.pred_sem_seg.data[0].numpy().astype(np.int64),
         labels_prevote=prevote.pred_sem_seg.data[0].numpy().astype(np.int64),
         logits=captured["logits"][0].float().numpy(), instance_mask=used_masks[0].numpy().astype(np.int32),
         input=preprocessed["inputs"][0].float().numpy(), query_idx=model.query_idx.numpy().astype(np.int64),
         crop_boxes=np.array([r["box"] for r in records], dtype=np.int64).reshape(-1, 4),
         crop_pads=np.array([r["pad"] for r in records], dtype=np.int64).reshape(-1, 4),
         meta=np.array(json.dumps(meta, default=str)), **crops)
print("released: saved", flush=True)
'''

SAM2_WRITER = r'''
import json, sys
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["release"])
import torch
torch.manual_seed(spec["seed"])
import sam2
assert sam2.__file__.startswith(spec["release"]), f"sam2 imported from {sam2.__file__}"
from sam2.build_sam import build_sam2
model = build_sam2(spec["config"], None, device="cpu", apply_postprocessing=False)
if spec["lively"]:  # predicted IoUs near 0.98 (sigmoid), mask logits far from 0 (stable): some masks are kept
    decoder = model.sam_mask_decoder
    with torch.no_grad():
        decoder.iou_prediction_head.layers[-1].bias.fill_(4.0)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(500.0)
            mlp.layers[-1].bias.mul_(500.0)
torch.save({"model": model.state_dict()}, spec["out"])
print(f"released: random SAM2 ({sum(p.numel() for p in model.parameters())} parameters) written", flush=True)
'''


def _env(work: Path, threads: int) -> dict:
    return released_env(work, threads, HYDRA_FULL_ERROR="1")


def write_random_sam2(release: Path, path: Path, work: Path | None = None, seed: int = 0, lively: bool = False,
                      config: str = SAM2_CONFIG, timeout: float = 1800) -> Path:
    """A full-size random SAM2 checkpoint in Meta's format (``{"model": state_dict}``), built by the
    release's vendored ``sam2`` (``build_sam2(config, None)``: its own initialisation; Hiera-L: 224 M
    parameters, 0.9 GB). Needs hydra-core, omegaconf and iopath. ``release``: the mirror or checkout.

    As initialised, the release's automatic mask generator (``pred_iou_thresh`` and
    ``stability_score_thresh`` 0.4) keeps no mask of it: the instance mask is all 0. ``lively``: the
    IoU head's last bias set to 4 (IoUs near 0.98) and the mask hypernetworks' last layers scaled by
    500 (stable mask logits), so that some masks are kept (one, on astronaut: the box NMS removes
    the others, alike)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(work) if work else Path(tmp)
        copy = base / "release_sam2"
        prepare_release(Path(release), copy)
        spec = dict(release=str(copy.resolve()), seed=seed, config=config, out=str(Path(path).resolve()),
                    lively=lively)
        run_release_process([sys.executable, "-c", SAM2_WRITER, json.dumps(spec)], copy, _env(base, 1), timeout)
    return Path(path)


def run_release(release: Path, work: Path, clip_weights: Path, dino_weights: Path,
                classes: Sequence[str | Sequence[str]] | Path, image: np.ndarray, mask: np.ndarray | None = None, *,
                sam2_checkpoint: Path | None = None, sam2_settings: Mapping[str, object] | None = None,
                dino_repo: Path = DEFAULT_DINO_MIRROR,
                model_type: str = "ViT-B-16-quickgelu", dino_type: str = "dino_vitb8", slide_crop: int = 336,
                slide_stride: int = 112, logit_scale: float = 40, prob_thd: float = 0.0,
                scale: tuple[int, int] | None = None, name: str = "photo", out: Path | None = None,
                threads: int | None = None, timeout: float = 3600,
                log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """Run the released ``CorrCLIPSegmentation`` on one photo on the CPU (float32) and return
    its outputs (:data:`OUTPUT_KEYS`), also saved to ``out`` (default ``work/released_<name>.npz``).

    ``release``: the CorrCLIP repository (a checkout or a git directory, e.g. the bare mirror);
    ``dino_repo``: facebookresearch/dino's (for ``torch.hub``). ``clip_weights``: an OpenAI-layout
    state dict of ``model_type``'s architecture; ``dino_weights``: DINO's release layout of
    ``dino_type``. ``classes``: class names (a string may hold synonyms separated by ``';'``, a
    sequence of strings is a class's synonyms) or a class file in the release's format.
    ``image``: (H, W, 3) uint8 RGB. ``mask``: (H, W) integer instance mask (the smallest value is
    the unsegmented region; values below 10000), or None with ``sam2_checkpoint`` (a SAM2 Hiera-L
    checkpoint, Meta's format) for the release's live SAM2 masks (``mask_generator='sam2'``), with
    ``sam2_settings`` added to its generator's arguments (:func:`prepare_release`).
    ``scale``: the release config's ``Resize`` scale (keep ratio) applied by the mmseg pipeline;
    None: the photo is the input as it is. The other settings are ``CorrCLIPSegmentation``'s.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: (H, W, 3) uint8 RGB expected, got {image.shape} {image.dtype}")
    if (mask is None) == (sam2_checkpoint is None):
        raise ValueError("give either an instance mask or a SAM2 checkpoint (live masks)")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2] or not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(f"mask: an integer array of the photo's size {image.shape[:2]} expected, got "
                             f"{mask.shape} {mask.dtype}")
        if mask.max() >= MASK_PAD_LABEL:
            raise ValueError(f"mask: values from {MASK_PAD_LABEL} on mix with the release's padding label")
    if not name or Path(name).name != name or "." in name:
        raise ValueError(f"name {name!r}: a plain file stem expected")
    threads = threads or max(1, os.cpu_count() or 1)
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "release"
    commit = prepare_release(Path(release), copy, sam2_settings if mask is None else None)
    prepare_hub(Path(dino_repo), work / "torch_home", Path(dino_weights), dino_type)

    import cv2
    (work / "images").mkdir(exist_ok=True)
    image_path = work / "images" / f"{name}.png"
    if not cv2.imwrite(str(image_path), np.ascontiguousarray(image[:, :, ::-1])):  # lossless, BGR on disk
        raise OSError(f"could not write {image_path}")
    masks_dir = work / "masks"
    masks_dir.mkdir(exist_ok=True)
    if mask is not None:
        np.savez(masks_dir / f"{name}.npz", instance_mask=mask)
    else:
        link_or_copy(Path(sam2_checkpoint), copy / SAM2_CHECKPOINT)
    if isinstance(classes, (str, os.PathLike)) and Path(classes).is_file():
        name_path = Path(classes).resolve()
    else:
        if isinstance(classes, (str, os.PathLike)):
            raise ValueError(f"classes: {classes} is not a file (give a list of class names)")
        name_path = work / "classes.txt"
        name_path.write_text(class_file_text(classes))
    out = Path(out).resolve() if out else work / f"released_{name}.npz"
    spec = dict(release=str(copy), commit=commit, clip=str(Path(clip_weights).resolve()), model_type=model_type,
                dino_type=dino_type, name_path=str(name_path), prob_thd=float(prob_thd),
                logit_scale=float(logit_scale), slide_stride=int(slide_stride), slide_crop=int(slide_crop),
                instance_mask_path=str(masks_dir), mask_generator=None if mask is not None else "sam2",
                sam2_settings=dict(sam2_settings or {}) if mask is None else {},
                image=str(image_path), scale=list(scale) if scale else None, threads=threads, out=str(out))
    (work / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    (work / "run_release.py").write_text(RUNNER)
    start = time.perf_counter()
    run_release_process([sys.executable, str(work / "run_release.py"), str(work / "spec.json")], copy,
                        _env(work, threads), timeout, log)
    if log:
        log(f"released code: {time.perf_counter() - start:.1f} s in all")
    with np.load(out) as saved:
        return {key: saved[key] for key in saved.files}


def meta(result: dict[str, np.ndarray]) -> dict:
    """The ``meta`` entry of a result, decoded."""
    return json.loads(str(result["meta"]))


# ---------------------------------------------------------------------------- command line
def _read_image(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    import cv2
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not an image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _read_mask(path: Path) -> np.ndarray:
    if path.suffix == ".npz":
        with np.load(path) as data:
            return data["instance_mask"] if "instance_mask" in data.files else data[data.files[0]]
    return np.load(path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cass.bench.corrclip_release",
                                     description="Run the authors' released CorrCLIP on one photo on the CPU "
                                                 "(float32) and save its outputs to an .npz.")
    parser.add_argument("--release", type=Path, default=DEFAULT_MIRROR,
                        help="the CorrCLIP repository: a checkout or a git directory (default: %(default)s)")
    parser.add_argument("--dino-repo", type=Path, default=DEFAULT_DINO_MIRROR,
                        help="facebookresearch/dino for torch.hub: a checkout or a git directory "
                             "(default: %(default)s)")
    parser.add_argument("--write-random-sam2", type=Path, metavar="PATH",
                        help="only write a random SAM2 Hiera-L checkpoint built by the release's sam2 to PATH")
    parser.add_argument("--lively", action="store_true",
                        help="with --write-random-sam2: weights whose masks the release's generator keeps")
    parser.add_argument("--work", type=Path, help="work folder (the patched copy, the hub cache, the inputs)")
    parser.add_argument("--clip", type=Path, help="CLIP weights: an OpenAI-layout state dict")
    parser.add_argument("--dino", type=Path, help="DINO weights in DINO's release layout")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--classes", type=Path, help="class file: one line per class, synonyms separated by '; '")
    group.add_argument("--class-names", nargs="+", help="class names; 'a; b' gives a class synonyms")
    parser.add_argument("--image", type=Path, help="RGB photo: an image file or a (H, W, 3) uint8 .npy")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--mask", type=Path, help="(H, W) integer instance mask: .npy, or .npz (key instance_mask)")
    masks.add_argument("--sam2", type=Path, help="SAM2 Hiera-L checkpoint: the release's live SAM2 masks")
    parser.add_argument("--scale", type=int, nargs=2, metavar=("LONG", "SHORT"),
                        help="the config's Resize scale, e.g. 2048 336 (default: the photo as it is)")
    parser.add_argument("--model-type", default="ViT-B-16-quickgelu", help="open_clip model (default: %(default)s)")
    parser.add_argument("--dino-type", default="dino_vitb8", choices=sorted(DINO_HUB_FILES))
    parser.add_argument("--slide-crop", type=int, default=336)
    parser.add_argument("--slide-stride", type=int, default=112)
    parser.add_argument("--logit-scale", type=float, default=40)
    parser.add_argument("--prob-thd", type=float, default=0.0)
    parser.add_argument("--name", default="photo", help="the photo's file stem in the work folder")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", type=Path, help="the .npz (default: WORK/released_NAME.npz)")
    args = parser.parse_args(argv)
    if args.write_random_sam2 is None:
        missing = [flag for flag, value in (("--work", args.work), ("--clip", args.clip), ("--dino", args.dino),
                                            ("--image", args.image)) if value is None]
        if args.classes is None and args.class_names is None:
            missing.append("--classes or --class-names")
        if args.mask is None and args.sam2 is None:
            missing.append("--mask or --sam2")
        if missing:
            parser.error("needs " + ", ".join(missing))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.write_random_sam2 is not None:
            print(write_random_sam2(args.release, args.write_random_sam2, args.work, lively=args.lively))
            return 0
        result = run_release(
            args.release, args.work, args.clip, args.dino, args.classes or args.class_names, _read_image(args.image),
            None if args.mask is None else _read_mask(args.mask), sam2_checkpoint=args.sam2,
            dino_repo=args.dino_repo, model_type=args.model_type, dino_type=args.dino_type,
            slide_crop=args.slide_crop, slide_stride=args.slide_stride, logit_scale=args.logit_scale,
            prob_thd=args.prob_thd, scale=tuple(args.scale) if args.scale else None, name=args.name, out=args.out,
            threads=args.threads, timeout=args.timeout, log=log)
    except (ReleasedCodeError, ValueError, OSError) as err:
        print(f"corrclip_release: {err}", file=sys.stderr)
        return 1
    info = meta(result)
    print(json.dumps(dict(out=info["spec"]["out"], probs=list(result["probs"].shape),
                          labels=sorted(map(int, np.unique(result["labels"]))), timings=info["timings"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
