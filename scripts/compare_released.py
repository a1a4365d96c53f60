"""Compare this implementation with the authors' released CASS code, on CPU in float32.

    python scripts/compare_released.py --released /path/to/CASS [--photos astronaut chelsea coffee] \
        [--families ade20k_slide voc21_whole cityscapes_crop_prior voc20] [--json report.json]

Needs a checkout of https://github.com/MICV-yonsei/CASS and the full
environment (mmseg, which the released code imports). Nothing is downloaded:

1. random full-size CLIP ViT-B/16 and DINO ViT-B/8 weights are written in the
   release formats (an OpenAI state dict; DINO's checkpoint, placed where the
   released code's ``torch.hub`` download would have put it);
2. the released code runs in a subprocess on a patched copy of the checkout
   (its two hard-coded ``'cuda'`` devices become ``'cpu'``; with ``--exact-svd``,
   the default, its randomised ``torch.svd_lowrank`` is replaced by the exact
   decomposition it approximates) on scikit-image's photos, each resized and
   normalised as the benchmark configs do;
3. this code runs on the same inputs with the same weights, with its default
   tie-breaking (``canonical``) and with the released one (``released-ties``,
   ``canonical_matching=False``);
4. per case it reports the share of pixels with the same label and the
   largest class-probability difference.

The four config families: ADE20K (sliding window), VOC21 (whole image),
Cityscapes (short side 560, prior from the crop, no eigenscaling) and VOC20
(no eigenscaling). Not part of CI: the released code is not a package.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cass.bench.released import ReleasedCodeError, agreement, apply_patches, photo, run_comparison

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {  # name -> benchmark config (ours and the release's share the file name)
    "ade20k_slide": "cfg_ade20k",
    "voc21_whole": "cfg_voc21",
    "cityscapes_crop_prior": "cfg_city_scapes",
    "voc20": "cfg_voc20",
}
PHOTOS = ("astronaut", "chelsea", "coffee")
# The released code's hard-coded CUDA devices, and what they become on a CPU run.
CPU_PATCHES = {
    "cass_segmentor.py": [("device=torch.device('cuda')", "device=torch.device('cpu')"),
                          (".to('cuda')", ".to('cpu')")],
}


def patch_released_copy(source: Path, target: Path) -> None:
    """Copy the released checkout to ``target`` with :data:`CPU_PATCHES` applied;
    a pattern that is not found means the checkout is not the one this script knows."""
    if not (source / "cass_segmentor.py").is_file():
        raise ReleasedCodeError(f"{source} is not a checkout of the released CASS code (no cass_segmentor.py)")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git"))
    apply_patches(source, target, CPU_PATCHES)


def model_inputs(family: str, photos: Sequence[str]) -> dict[str, np.ndarray]:
    """The normalised (3, h, w) float32 input of each photo under the family's
    config (its ``Resize``), computed like mmseg's test pipeline."""
    from cass.api import load_config, resize_scale
    from cass.images import as_bgr_uint8, normalise, resize_keep_ratio
    scale = resize_scale(load_config(REPO / "configs" / f"{FAMILIES[family]}.py"))
    return {name: normalise(resize_keep_ratio(as_bgr_uint8(photo(name)), scale)).numpy() for name in photos}


# ---------------------------------------------------------------------------- the released side
RELEASED_RUNNER = r"""
import json, sys
import numpy as np, torch
spec = json.loads(sys.argv[1])
torch.set_grad_enabled(False)
if spec["exact_svd"]:
    def exact_svd_lowrank(a, q=6, niter=2, M=None):
        # what torch.svd_lowrank approximates, for a symmetric PSD graph: its top-q eigenpairs
        vals, vecs = torch.linalg.eigh(a)
        vals, vecs = vals.flip(-1)[..., :q], vecs.flip(-1)[..., :q]
        return vecs, vals, vecs
    torch.svd_lowrank = exact_svd_lowrank
try:
    import pkg_resources  # noqa: F401 - the release's clip.py imports packaging from it
except ImportError:  # setuptools >= 81 has no pkg_resources: give it the same packaging module
    import types, packaging.version
    sys.modules["pkg_resources"] = types.SimpleNamespace(packaging=packaging)
try:
    import requests  # noqa: F401 - imported by the release's DINO wrapper, used only to fetch images by URL
except ImportError:
    import types
    sys.modules["requests"] = types.ModuleType("requests")
sys.path.insert(0, ".")
from mmengine.config import Config
from mmseg.structures import SegDataSample
import cass_segmentor  # registers CASS_segmentor
for family, config in spec["families"].items():
    cfg = Config.fromfile(f"./configs/{config}.py")
    keys = {k: v for k, v in cfg.model.items() if k != "type"}
    keys.update(clip_path=spec["clip"], device=torch.device("cpu"), dataset=f"./configs/{config}.py", pamr_steps=0)
    model = cass_segmentor.CASS_segmentor(**keys).eval()
    for name in spec["photos"]:
        data = np.load(f"{spec['out']}/input_{family}_{name}.npz")
        image = torch.from_numpy(data["input"])[None]
        meta = dict(ori_shape=tuple(data["ori_shape"]), img_shape=tuple(image.shape[-2:]))
        sample = model.predict(image, [SegDataSample(metainfo=meta)])[0]
        np.savez(f"{spec['out']}/released_{family}_{name}.npz", probs=sample.seg_logits.data.float().numpy(),
                 labels=sample.pred_sem_seg.data[0].numpy())
        print(f"released: {family} {name} done", flush=True)
"""


def run_released(checkout: Path, work: Path, clip_file: Path, families: Sequence[str], photos: Sequence[str],
                 exact_svd: bool, timeout: int) -> None:
    """Run the released code on the saved inputs; its outputs land in ``work``."""
    spec = dict(families={f: FAMILIES[f] for f in families}, photos=list(photos), clip=str(clip_file),
                out=str(work), exact_svd=exact_svd)
    env = dict(os.environ, TORCH_HOME=str(work / "torch_home"), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", RELEASED_RUNNER, json.dumps(spec)], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ReleasedCodeError(f"the released code failed:\n{tail}")


# ---------------------------------------------------------------------------- this code
def run_ours(clip_file: Path, dino_file: Path, family: str, photos: Sequence[str], work: Path,
             canonical: bool) -> dict[str, dict[str, np.ndarray]]:
    import torch

    from cass import build_model
    from cass.config_files import load_config, model_keys

    cfg = load_config(REPO / "configs" / f"{FAMILIES[family]}.py")
    keys = model_keys(cfg)
    keys.update(clip_path=str(clip_file), vfm_path=str(dino_file), precision="fp32", canonical_matching=canonical,
                text_cache_dir=str(work / "text_cache"))
    model = build_model(**keys)
    out = {}
    for name in photos:
        data = np.load(work / f"input_{family}_{name}.npz")
        pred = model([torch.from_numpy(data["input"])], [tuple(data["ori_shape"])])[0]
        out[name] = dict(probs=pred.probs.numpy(), labels=pred.labels.numpy())
    return out


def compare(checkout: Path, families: Sequence[str], photos: Sequence[str], work: Path, exact_svd: bool = True,
            timeout: int = 7200, log=print) -> list[dict]:
    """Every (family, photo) case: agreement of this code (both tie rules) with the release."""
    from cass.backbones import CLIP_SPECS, VFM_SPECS
    from cass.random_weights import write_clip, write_dino

    clip_file = write_clip(work / CLIP_SPECS["ViT-B/16"].release_file)
    hub = work / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    # where the release's torch.hub download would put it
    dino_file = write_dino(hub / VFM_SPECS["dino_vitb8"].release_file)
    for family in families:
        for name, array in model_inputs(family, photos).items():
            np.savez(work / f"input_{family}_{name}.npz", input=array, ori_shape=np.array(photo(name).shape[:2]))
    copy = work / "released"
    patch_released_copy(checkout, copy)
    log(f"running the released code ({len(families)} configs x {len(photos)} photos, CPU float32)")
    run_released(copy, work, clip_file, families, photos, exact_svd, timeout)
    rows = []
    for family in families:
        for variant, canonical in (("canonical", True), ("released-ties", False)):
            log(f"running this code: {family}, {variant}")
            ours = run_ours(clip_file, dino_file, family, photos, work, canonical)
            for name in photos:
                theirs = dict(np.load(work / f"released_{family}_{name}.npz"))
                rows.append(dict(family=family, photo=name, variant=variant, **agreement(ours[name], theirs)))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| config family | photo | tie rule | labels equal | max prob. diff |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['photo']} | {r['variant']} | {100 * r['label_agreement']:.2f}% "
                     f"| {r['max_prob_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compare_released.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--released", type=Path, required=True, help="checkout of the authors' CASS code")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS), help="scikit-image photos (default: %(default)s)")
    parser.add_argument("--randomised-svd", action="store_true",
                        help="keep the released code's torch.svd_lowrank (nondeterministic) instead of the exact one")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--keep", type=Path, help="keep the work folder (weights, inputs, outputs) here")
    args = parser.parse_args(argv)
    return run_comparison("compare_released.py", lambda work: compare(
        args.released.resolve(), args.families, args.photos, work, exact_svd=not args.randomised_svd),
        format_table, args.keep, args.json, argv)

if __name__ == "__main__":
    sys.exit(main())
