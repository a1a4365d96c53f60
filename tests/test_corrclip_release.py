"""cass.bench.corrclip_release: the authors' released CorrCLIP, run on the CPU in float32.

The release runs need the CorrCLIP repository and DINO's (for ``torch.hub``),
each a checkout or a git directory: ``CORRCLIP_RELEASED`` and ``CORRCLIP_DINO``,
by default the mirrors ``/work/.mirror/zdk258+CorrCLIP/repo`` and
``/work/.mirror/facebookresearch+dino/repo``; without them (a fresh CI machine)
those tests are skipped, as the released Trident comparison is without its
checkouts (tests/test_compare_trident.py). They also need mmseg (the release
imports it). The live SAM2 masks run only with ``CORRCLIP_SAM2=1`` (minutes: SAM2
Hiera-L at 1024 px on the CPU) and hydra-core, omegaconf and iopath (the
release's vendored sam2 imports them).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from cass.bench import corrclip_release as cr
from cass.bench.released import ReleasedCodeError, export_folder
from conftest import bare_repository

RELEASED = Path(os.environ.get("CORRCLIP_RELEASED", str(cr.DEFAULT_MIRROR)))
DINO = Path(os.environ.get("CORRCLIP_DINO", str(cr.DEFAULT_DINO_MIRROR)))
needs_release = pytest.mark.skipif(
    not (RELEASED.exists() and DINO.exists()),
    reason=f"the released CorrCLIP code and DINO's are absent: set CORRCLIP_RELEASED and CORRCLIP_DINO to checkouts "
           f"or git directories of zdk258/CorrCLIP and facebookresearch/dino (defaults {cr.DEFAULT_MIRROR}, "
           f"{cr.DEFAULT_DINO_MIRROR})")
needs_mmseg = pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="the released code imports mmseg (pip install -e .[mmseg])")

# The release's CLIP mean and std (0-255, RGB) of its SegDataPreProcessor
MEAN = np.array([122.771, 116.746, 104.094], dtype=np.float32)
STD = np.array([68.501, 66.632, 70.323], dtype=np.float32)
CLASSES = ["sky; wall", "person", "flag"]  # VOC-like: class 0 (background) has synonyms
H, W = 200, 300  # with slide_crop 224: two windows, each padded 12 + 12 rows to a multiple of 56
PROB_THD = 0.28  # within the random weights' class scores: some pixels fall back to class 0


# ---------------------------------------------------------------------------- without the release
def test_class_file_text():
    assert cr.class_file_text(["sky; wall", ["person", "man"], "horse"]) == "sky; wall\nperson; man\nhorse\n"
    assert cr.class_file_text(["sky;wall "]) == "sky; wall\n"
    for bad in ([], ["a;"], [["a", ""]], ["a\nb"]):
        with pytest.raises(ValueError):
            cr.class_file_text(bad)


def _expected_text() -> dict[str, str]:
    """Files holding every pattern the module patches or relies on."""
    texts: dict[str, list[str]] = {}
    for name, patterns in cr.EXPECTED.items():
        texts.setdefault(name, []).extend(patterns)
    for name, replacements in cr.CPU_PATCHES.items():
        texts.setdefault(name, []).extend(old for old, _ in replacements)
    return {name: "\n".join(parts) + "\n" for name, parts in texts.items()}


def fake_release(root: Path) -> Path:
    for name, text in _expected_text().items():
        path = root / cr.FOLDER / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "CorrCLIPv2").mkdir()
    (root / "CorrCLIPv2" / "other.py").write_text("x = 1\n")
    return root


def test_patched_copy_runs_in_float32(tmp_path):
    copy = tmp_path / "copy"
    cr.prepare_release(fake_release(tmp_path / "released"), copy)
    text = (copy / cr.SEGMENTOR).read_text()
    assert ".half()" not in text and "precision='fp16'" not in text and "from transformers" not in text
    assert "precision='fp32'" in text and "self.dino.float()" in text and "imgs_norm.float()" in text
    assert "encode_image(img.float()," in text and "sam2.float()" in text
    assert "device=torch.device('cuda')" in text  # replaced in the subprocess, not in the text
    assert not (copy / "CorrCLIPv2").exists() and (copy / "open_clip" / "transformer.py").is_file()
    cr.prepare_release(tmp_path / "released", copy)  # a kept work folder is replaced


@pytest.mark.parametrize("name, pattern", [
    (cr.SEGMENTOR, "imgs_norm = imgs_norm.half()"),  # a patch
    (cr.SEGMENTOR, "self.dino = torch.hub.load('facebookresearch/dino:main', dino_type)"),  # relied on
    ("open_clip/transformer.py", "masks[batch_idx][region_masks[idx]] = cluster_v + 10000"),
    ("open_clip/factory.py", "elif os.path.exists(pretrained):\n                checkpoint_path = pretrained"),
])
def test_a_missing_pattern_is_refused(tmp_path, name, pattern):
    source = fake_release(tmp_path / "released")
    path = source / cr.FOLDER / name
    path.write_text(path.read_text().replace(pattern, "something else"))
    with pytest.raises(ReleasedCodeError, match="not supported") as err:
        cr.prepare_release(source, tmp_path / "copy")
    assert name in str(err.value) and repr(pattern) in str(err.value)


def test_git_directories_are_exported(tmp_path):
    source = fake_release(tmp_path / "work")
    bare = bare_repository(source, tmp_path / "bare.git")
    commit = cr.prepare_release(bare, tmp_path / "copy")
    assert len(commit) == 40 and "precision='fp32'" in (tmp_path / "copy" / cr.SEGMENTOR).read_text()
    assert not (tmp_path / "copy" / "CorrCLIPv2").exists()
    with pytest.raises(ReleasedCodeError, match="no hubconf.py"):
        export_folder(bare, tmp_path / "dino", "", "hubconf.py")
    with pytest.raises(ReleasedCodeError, match="neither a checkout"):
        cr.prepare_release(tmp_path / "nothing", tmp_path / "copy2")


def test_inputs_are_checked_before_anything_runs(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), np.int64)
    call = lambda **kw: cr.run_release(**{**dict(release=tmp_path / "none", work=tmp_path / "w",  # noqa: E731
                                                 clip_weights="c", dino_weights="d", classes=["a"], image=image,
                                                 mask=mask), **kw})
    for kwargs, message in [(dict(image=image[..., 0]), "uint8 RGB"), (dict(image=image.astype(float)), "uint8 RGB"),
                            (dict(mask=mask[1:]), "photo's size"), (dict(mask=mask.astype(float)), "integer"),
                            (dict(mask=mask + 10000), "padding label"), (dict(mask=None), "either"),
                            (dict(sam2_checkpoint="s"), "either"), (dict(name="a.b"), "file stem")]:
        with pytest.raises(ValueError, match=message):
            call(**kwargs)
    assert not (tmp_path / "w").exists()


def test_command_line_arguments(tmp_path):
    args = cr.parse_args(["--work", "w", "--clip", "c", "--dino", "d", "--class-names", "sky; wall", "person",
                          "--image", "i.png", "--mask", "m.npy", "--scale", "2048", "336", "--slide-crop", "224"])
    assert args.class_names == ["sky; wall", "person"] and args.scale == [2048, 336] and args.slide_crop == 224
    assert args.model_type == "ViT-B-16-quickgelu" and args.slide_stride == 112 and args.logit_scale == 40
    assert args.release == cr.DEFAULT_MIRROR
    assert cr.parse_args(["--write-random-sam2", "s.pt"]).write_random_sam2 == Path("s.pt")
    for bad in ([], ["--work", "w", "--clip", "c", "--dino", "d", "--image", "i", "--mask", "m"],
                ["--work", "w", "--clip", "c", "--dino", "d", "--image", "i", "--classes", "f"],
                ["--classes", "f", "--class-names", "a"], ["--mask", "m", "--sam2", "s"]):
        with pytest.raises(SystemExit):
            cr.parse_args(bad)
    assert cr.main(["--release", str(tmp_path / "none"), "--work", str(tmp_path / "w"), "--clip", "c", "--dino", "d",
                    "--class-names", "a", "--image", str(tmp_path / "i.npy"), "--mask", "m.npy"]) == 1


# ---------------------------------------------------------------------------- the release
@needs_release
def test_the_release_is_the_known_version(tmp_path):
    commit = cr.prepare_release(RELEASED, tmp_path / "copy")
    assert commit == "" or len(commit) == 40
    text = (tmp_path / "copy" / cr.SEGMENTOR).read_text()
    assert ".half()" not in text and "import transformers" not in text and "from transformers" not in text
    assert (tmp_path / "copy" / "sam2" / cr.SAM2_CONFIG).is_file()
    assert cr.release_scale(tmp_path / "copy", "cfg_voc21") == (2048, 336)
    assert cr.release_scale(tmp_path / "copy", "cfg_ade20k") == (2048, 448)


@needs_release
def test_sam2_stress_settings_reach_the_releases_generator(tmp_path):
    """compare_corrclip.py --sam2-set: an argument the release's SAM2AutomaticMaskGenerator call does not set is
    added to it, once, and the patched module still compiles."""
    cr.prepare_release(RELEASED, tmp_path / "copy", {"box_nms_thresh": 1.0})
    text = (tmp_path / "copy" / cr.SEGMENTOR).read_text()
    assert text.count("box_nms_thresh") == 1 and "multimask_output=False, box_nms_thresh=1.0," in text
    compile(text, cr.SEGMENTOR, "exec")


def photo() -> np.ndarray:
    import cv2
    from skimage import data
    return cv2.resize(data.astronaut(), (W, H), interpolation=cv2.INTER_AREA)


def instance_mask() -> np.ndarray:
    """Rectangles labelled 1..4 over the unsegmented region 0 (4 drawn over 1 in part)."""
    mask = np.zeros((H, W), np.int64)
    mask[20:120, 30:130] = 1
    mask[100:190, 150:290] = 2
    mask[10:60, 200:280] = 3
    mask[90:195, 10:100] = 4
    return mask


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from cass.random_weights import write_clip, write_dino
    folder = tmp_path_factory.mktemp("corrclip_weights")
    return write_clip(folder / "ViT-B-16.pt"), write_dino(folder / "dino_vitbase8_pretrain.pth")


@pytest.fixture(scope="module")
def released(weights, tmp_path_factory):
    clip, dino = weights
    return cr.run_release(RELEASED, tmp_path_factory.mktemp("corrclip_release"), clip, dino, CLASSES, photo(),
                          instance_mask(), dino_repo=DINO, slide_crop=224, slide_stride=112, prob_thd=PROB_THD,
                          threads=min(2, os.cpu_count() or 1))


@needs_release
@needs_mmseg
def test_release_outputs(released):
    import torch
    info = cr.meta(released)
    assert info["queries"] == ["sky", "wall", "person", "flag"]
    np.testing.assert_array_equal(released["query_idx"], [0, 0, 1, 2])
    assert released["probs"].shape == (3, H, W) and released["probs"].dtype == np.float32
    assert released["logits"].shape == (4, H, W)
    assert released["labels"].shape == released["labels_prevote"].shape == (H, W)
    np.testing.assert_array_equal(released["instance_mask"], instance_mask())
    assert info["metainfo"]["ori_shape"] == [H, W] and info["metainfo"]["img_shape"] == [H, W]
    # the release's data pre-processor: the PNG read back as BGR, turned to RGB, CLIP's mean and std
    expected = ((photo().astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(released["input"], expected, rtol=0, atol=1e-5)

    # class scores: softmax(logit_scale * logits) over the queries (they sum to 1); class 0 is the maximum of
    # its synonyms' (then the class scores do not sum to 1), the other classes their query's
    queries = torch.from_numpy(released["logits"] * 40).softmax(0).numpy()
    np.testing.assert_allclose(queries.sum(0), 1, atol=1e-5)
    probs = released["probs"]
    np.testing.assert_allclose(probs[0], queries[:2].max(0), atol=1e-6)
    np.testing.assert_allclose(probs[1:], queries[2:], atol=1e-6)
    np.testing.assert_allclose(probs.sum(0) - probs[0] + queries[:2].sum(0), 1, atol=1e-5)
    assert (probs >= 0).all() and (probs <= 1).all()

    # pre-vote labels: the argmax, class 0 below prob_thd
    low = probs.max(0) < PROB_THD
    np.testing.assert_array_equal(released["labels_prevote"], np.where(low, 0, probs.argmax(0)))
    assert 0.02 < low.mean() < 0.98, low.mean()  # the threshold is exercised


@needs_release
@needs_mmseg
def test_release_votes_in_each_region(released):
    labels, prevote, mask = released["labels"], released["labels_prevote"], released["instance_mask"]
    assert (mask == 0).any()
    np.testing.assert_array_equal(labels[mask == 0], prevote[mask == 0])  # the unsegmented region: no vote
    changed = 0
    for value in np.unique(mask)[1:]:
        region = mask == value
        assert len(np.unique(labels[region])) == 1, value
        counts = np.bincount(prevote[region], minlength=3)
        assert counts[labels[region][0]] == counts.max(), (value, counts)  # a mode (torch.mode's on ties)
        changed += int((labels[region] != prevote[region]).sum())
    assert changed > 0  # the voting changed something


@needs_release
@needs_mmseg
def test_release_windows_and_mask_merging(released):
    np.testing.assert_array_equal(released["crop_boxes"], [[0, H, 0, 224], [0, H, W - 224, W]])
    np.testing.assert_array_equal(released["crop_pads"], [[0, 0, 12, 12]] * 2)  # 200 rows -> 224
    mask = instance_mask()
    for k, (y1, y2, x1, x2) in enumerate(released["crop_boxes"]):
        crop = released[f"crop{k}_masks"]
        assert crop.shape == (224, 224)
        assert (crop[:12] == cr.MASK_PAD_LABEL).all() and (crop[-12:] == cr.MASK_PAD_LABEL).all()
        np.testing.assert_array_equal(crop[12:-12], mask[y1:y2, x1:x2])
        merged = released[f"crop{k}_merged"]
        assert merged.shape == (28, 28)  # DINO ViT-B/8's grid of the padded window
        clusters = released[f"crop{k}_clusters"]  # the window's regions but the smallest (0), padding included
        assert len(clusters) == len(np.unique(crop)) - 1 and (clusters >= 0).all()  # min_samples=1: no noise
        assert set(np.unique(merged)) <= {0} | {cr.MASK_PAD_LABEL + int(c) for c in clusters}
        assert (merged[0] >= cr.MASK_PAD_LABEL).all()  # the padded rows: a region, relabelled like the others


@needs_release
@needs_mmseg
@pytest.mark.skipif(os.environ.get("CORRCLIP_SAM2") != "1", reason="minutes on a CPU: set CORRCLIP_SAM2=1")
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("hydra", "omegaconf", "iopath")),
                    reason="the release's vendored sam2 needs hydra-core, omegaconf and iopath")
def test_release_with_live_sam2_masks(weights, tmp_path):  # pragma: no cover - opt-in
    clip, dino = weights
    sam2 = cr.write_random_sam2(RELEASED, tmp_path / cr.SAM2_CHECKPOINT, tmp_path, lively=True)
    out = cr.run_release(RELEASED, tmp_path / "work", clip, dino, CLASSES, photo(), sam2_checkpoint=sam2,
                         dino_repo=DINO, slide_crop=224, slide_stride=112)
    mask, labels, prevote = out["instance_mask"], out["labels"], out["labels_prevote"]
    assert mask.shape == (H, W) and labels.shape == (H, W) and out["probs"].shape == (3, H, W)
    assert len(np.unique(mask)) > 1  # the lively random weights keep some masks
    for value in np.unique(mask)[1:]:
        region = mask == value
        counts = np.bincount(prevote[region], minlength=3)
        assert len(np.unique(labels[region])) == 1 and counts[labels[region][0]] == counts.max()


def test_compare_script_sam2_stress_flags(capsys):
    from conftest import load_script

    script = load_script("scripts/compare_corrclip.py", "compare_corrclip")
    args = script.parse_args(["--sam2", "--sam2-set", "box_nms_thresh=1.0"])
    assert args.sam2_settings == {"box_nms_thresh": 1.0}
    for argv, message in [(["--sam2-set", "box_nms_thresh=1.0"], "--sam2-set needs --sam2"),
                          (["--sam2", "--sam2-set", "points_per_side=32"], "KEY one of box_nms_thresh")]:
        with pytest.raises(SystemExit):
            script.parse_args(argv)
        assert message in capsys.readouterr().err
