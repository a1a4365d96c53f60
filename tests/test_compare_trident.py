"""scripts/compare_trident.py's own helpers, without the released code.

The comparison itself runs only when ``TRIDENT_RELEASED`` (a checkout or git
directory of https://github.com/YuHengsss/Trident) and ``TRIDENT_DINO`` (one of
https://github.com/facebookresearch/dino) are set: it takes minutes per case.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from cass.bench.released import export_folder
from conftest import bare_repository, load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    yield load_script("scripts/compare_trident.py", "compare_trident")
    sys.modules.pop("compare_trident", None)


TRIDENT_PY = """\
class Trident(BaseSegmentor):
    def __init__(self, clip_type, model_type, vfm_model, name_path, device=torch.device('cuda'),
                 prob_thd=0.0):
        self.clip = create_model(model_type, pretrained=clip_type, precision='fp16')
        self.vfm = torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')
        self.vfm = self.vfm.half()
        self.sam = sam_model_registry[sam_model_type](checkpoint=sam_ckpt).to(device=device).eval().half()

    def get_trident_seg(self, src_img, img_path, img_metas):
        tmp_img = cv2.imread(img_path)
        imgs_norm = imgs_norm.half()
        clip_features = self.clip.encode_image(img_batch.half(),external_feats=vfm_feats)
"""


def fake_checkout(root):
    (root / "seg_utils").mkdir(parents=True)
    (root / "open_clip").mkdir()
    (root / "configs").mkdir()
    (root / ".git").mkdir()
    (root / "trident.py").write_text(TRIDENT_PY)
    (root / "seg_utils" / "utils.py").write_text("    if type(img) == str:\n        img = cv2.imread(img)\n")
    (root / "open_clip" / "openai.py").write_text(
        "        model_path = download_pretrained_from_url(get_pretrained_url(name, 'openai'), cache_dir=cache_dir)\n")
    (root / "configs" / "cfg_voc21.py").write_text("model = dict()\n")
    return root


def test_patched_copy_runs_in_float32(compare, tmp_path):
    copy = tmp_path / "copy"
    compare.patch_released_copy(fake_checkout(tmp_path / "released"), copy)
    text = (copy / "trident.py").read_text()
    assert ".half()" not in text and "precision='fp16'" not in text
    assert "precision='fp32'" in text and "self.vfm.float()" in text and "eval().float()" in text
    assert "imgs_norm.float()" in text and "encode_image(img_batch.float()," in text
    # what the runner replaces in the subprocess stays as released
    assert "device=torch.device('cuda')" in text and "cv2.imread(img_path)" in text
    assert (copy / "configs" / "cfg_voc21.py").is_file() and not (copy / ".git").exists()
    compare.patch_released_copy(tmp_path / "released", copy)  # a kept work folder is replaced


@pytest.mark.parametrize("name, pattern", [
    ("trident.py", "imgs_norm = imgs_norm.half()"),  # a patch
    ("trident.py", "cv2.imread(img_path)"),  # replaced in the subprocess
    ("seg_utils/utils.py", "img = cv2.imread(img)"),
    ("open_clip/openai.py", "download_pretrained_from_url(get_pretrained_url(name, 'openai')"),
])
def test_a_missing_pattern_is_refused(compare, tmp_path, name, pattern):
    source = fake_checkout(tmp_path / "released")
    path = source / name
    path.write_text(path.read_text().replace(pattern, "something else"))
    with pytest.raises(compare.ReleasedCodeError, match="not supported") as err:
        compare.patch_released_copy(source, tmp_path / "copy")
    assert name in str(err.value) and pattern in str(err.value)


def test_unknown_checkouts_are_refused(compare, tmp_path):
    with pytest.raises(compare.ReleasedCodeError, match="neither a checkout"):
        compare.patch_released_copy(tmp_path, tmp_path / "copy")


def test_git_directories_are_exported(compare, tmp_path):
    """A git directory's HEAD is exported, as with the mirrors the comparison reads."""
    source = fake_checkout(tmp_path / "work")
    (source / ".git").rmdir()
    bare = bare_repository(source, tmp_path / "bare.git")
    compare.patch_released_copy(bare, tmp_path / "copy")
    assert "precision='fp32'" in (tmp_path / "copy" / "trident.py").read_text()
    with pytest.raises(compare.ReleasedCodeError, match="no hubconf.py"):
        export_folder(bare, tmp_path / "dino", "", "hubconf.py")


def test_agreement_and_table(compare):
    probs = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    labels = probs.argmax(0)
    other_labels = labels.copy()
    other_labels[0, :2] = (labels[0, :2] + 1) % 3
    result = compare.agreement(dict(probs=probs, labels=labels), dict(probs=probs + 0.25, labels=other_labels))
    assert result["label_agreement"] == pytest.approx(18 / 20) and result["max_prob_diff"] == pytest.approx(0.25)
    assert result["prob_diff_share"] == 1.0
    shifted = probs.copy()
    shifted[1, 2, 3] += 0.5  # one pixel differs
    assert compare.agreement(dict(probs=probs, labels=labels),
                             dict(probs=shifted, labels=labels))["prob_diff_share"] == pytest.approx(1 / 20)
    with pytest.raises(ValueError, match="probability maps differ"):
        compare.agreement(dict(probs=probs, labels=labels), dict(probs=probs[:2], labels=labels))
    with pytest.raises(ValueError, match="label maps differ"):
        compare.agreement(dict(probs=probs, labels=labels), dict(probs=probs, labels=labels[None]))
    prompts = dict(kept=3, prompts=5, kept_here=3, same_prompts=True, max_prompt_diff=0.0, max_iou_diff=1e-7,
                   max_mask_logit_diff=2e-4)
    table = compare.format_table([dict(family="voc20", photo="coffee", **result, **prompts)])
    assert "| voc20 | coffee | 3 / 5 (3) | yes (0.0e+00) | 1.0e-07 | 2.0e-04 | 90.000% | 2.5e-01 | 100.0000% |" in table
    table = compare.format_table([dict(family="voc20", photo="coffee", **result, kept=0, prompts=2, kept_here=1,
                                       same_prompts=False)])
    assert "| voc20 | coffee | 0 / 2 (1) | no | — | — | 90.000% |" in table
    released_only = compare.format_table([dict(family="voc21", photo="chelsea", labels=[0, 3])])
    assert "| voc21 | chelsea | [0, 3] |" in released_only


def _calls(*calls):
    """A saved result's recorded decoder calls (``prompt<i>_<name>`` arrays)."""
    return {f"prompt{i}_{k}": np.asarray(v, dtype=np.float32) for i, call in enumerate(calls) for k, v in call.items()}


def test_prompt_agreement(compare):
    call = dict(point_coords=[[[10, 20]], [[30, 40]]], boxes=[[0, 0, 5, 5], [1, 1, 9, 9]],
                mask_input=np.zeros((1, 4, 4)), iou=[[0.9], [0.7]], low_res=np.zeros((2, 1, 4, 4)))
    one = dict(point_coords=[[[5, 5]]], boxes=[[0, 0, 2, 2]], mask_input=np.ones((1, 4, 4)), iou=[[0.85]],
               low_res=np.ones((1, 1, 4, 4)))
    ours = _calls(call, one)
    theirs = _calls({**call, "point_coords": [[[10, 20]], [[30, 44]]], "iou": [[0.9], [0.81]],
                     "low_res": np.full((2, 1, 4, 4), 0.5)}, one)
    theirs.update(probs=np.zeros(1), labels=np.zeros(1))  # other keys are not calls
    row = compare.prompt_agreement(ours, theirs, 0.8)
    assert row == dict(prompt_calls=2, prompts=3, kept=3, kept_here=2, same_prompts=True, max_prompt_diff=4.0,
                       max_iou_diff=pytest.approx(0.11), max_mask_logit_diff=0.5)
    fewer = _calls(call, {**one, "iou": [[0.85], [0.1]], "point_coords": [[[5, 5]], [[1, 1]]]})
    assert compare.prompt_agreement(ours, fewer, 0.8)["same_prompts"] is False


def test_lively_iou_head_predicts_around_the_threshold():
    import torch
    from segment_anything import SamPredictor

    from cass.random_weights import lively_iou_head, random_sam
    from conftest import synthetic_photo

    sam = random_sam("vit_b", tiny=True, seed=0)
    rgb = synthetic_photo(120, 160)
    decoder = {k: v.clone() for k, v in sam.mask_decoder.state_dict().items()}
    lively_iou_head(sam, rgb, center=0.8, spread=0.05, prompts=32)
    changed = {k for k, v in sam.mask_decoder.state_dict().items() if not torch.equal(v, decoder[k])}
    assert changed == {"iou_prediction_head.layers.2.weight", "iou_prediction_head.layers.2.bias"}
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    g = torch.Generator().manual_seed(5)
    corners = torch.rand(200, 2, 2, generator=g) * torch.tensor([160, 120])
    boxes = torch.cat([corners.amin(1), corners.amax(1)], dim=1)
    iou = predictor.predict_torch(predictor.transform.apply_coords_torch(boxes[:, None, :2], (120, 160)),
                                  torch.ones(200, 1), predictor.transform.apply_boxes_torch(boxes, (120, 160)),
                                  0.005 * torch.rand(1, 256, 256, generator=g), multimask_output=False)[1]
    kept = (iou > 0.8).float().mean()
    assert 0.2 < kept < 0.8  # the published threshold splits other prompts' masks too
    assert 0.7 < iou.median() < 0.9


def test_arguments(compare, tmp_path):
    args = compare.parse_args(["--released", "r", "--dino", "d"])
    assert args.families == list(compare.DEFAULT_FAMILIES) and args.photos == list(compare.DEFAULT_PHOTOS)
    assert args.threads == 1 and not args.released_only and args.json is None and args.settings == {}
    args = compare.parse_args(["--released", "r", "--dino", "d", "--set", "prob_thd=0", "coarse_thresh=0.03"])
    assert args.settings == {"prob_thd": 0, "coarse_thresh": 0.03}
    args = compare.parse_args(["--released", "r", "--dino", "d", "--families", "ade20k", "voc20", "--photos", "coffee",
                               "--threads", "2", "--released-only", "--json", str(tmp_path / "r.json")])
    assert args.families == ["ade20k", "voc20"] and args.photos == ["coffee"] and args.threads == 2
    assert args.released_only and args.json == tmp_path / "r.json"
    for bad in (["--families", "coco"], ["--photos", "camera"], ["--threads", "0"], ["--set", "prob_thd"], []):
        with pytest.raises(SystemExit):
            compare.parse_args((["--released", "r", "--dino", "d"] if bad else []) + bad)
    assert set(compare.FAMILIES) == {"ade20k", "voc21", "voc20", "cityscapes"}
    assert all((REPO / "configs" / f"{config}.py").is_file() for config in compare.FAMILIES.values())


def test_main_reports_a_bad_checkout_in_one_line(compare, tmp_path, capsys):
    assert compare.main(["--released", str(tmp_path / "none"), "--dino", str(tmp_path)]) == 1
    assert "compare_trident.py:" in capsys.readouterr().err


def test_cfg_options_are_parsed_like_eval_py(compare):
    options = compare.parse_options(["model.method=trident", "model.prob_thd=0.2",
                                     "test_dataloader.dataset.pipeline.1.scale=(2048,448)"])
    assert options == {"model.method": "trident", "model.prob_thd": 0.2,
                       "test_dataloader.dataset.pipeline.1.scale": (2048, 448)}
    assert compare.parse_options([]) == {}


def test_inputs_follow_the_scale(compare):
    from cass.images import as_bgr_uint8, normalise, resize_keep_ratio
    image = compare.photo("chelsea")
    assert image.shape == (300, 451, 3)
    array = compare.model_input(image, (2048, 448))
    assert array.shape == (3, 448, 673) and array.dtype == np.float32
    np.testing.assert_array_equal(array, normalise(resize_keep_ratio(as_bgr_uint8(image), (2048, 448))).numpy())


@pytest.mark.skipif(not (os.environ.get("TRIDENT_RELEASED") and os.environ.get("TRIDENT_DINO")),
                    reason="set TRIDENT_RELEASED and TRIDENT_DINO to checkouts of the released Trident and DINO code")
def test_released_trident_agrees(compare, tmp_path):  # pragma: no cover - minutes, opt-in
    rows = compare.compare(Path(os.environ["TRIDENT_RELEASED"]), Path(os.environ["TRIDENT_DINO"]), ["voc20"],
                           ["chelsea"], tmp_path, log=lambda *a: None)
    assert rows and all(row["label_agreement"] > 0.99 for row in rows)
