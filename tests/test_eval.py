"""eval.py end to end on a tiny VOC dataset, its errors, the summary and eval_all.sh."""
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VFM, load_script, write_clip_state_dict, write_dino_checkpoint
from fake_datasets import block_label, voc_layout
from mmengine.config import Config
from mmseg.datasets import PascalVOCDataset
from mmseg.registry import MODEL_WRAPPERS, MODELS
from mmseg.structures import SegDataSample
from PIL import Image

from cass import summary
from cass.config_files import VFM_PATH_KEYS
from cass.benchmarks import CONFIGS_DIR
from cass.protocols import cfg_options
from cass.methods import METHODS, get_method
from cass.mmseg.evaluation import SegResultWriter, colourise
from cass.random_weights import TINY_SAM, write_sam

REPO = Path(__file__).resolve().parents[1]
TINY_OPTIONS = [f"model.vfm_overrides.{key}={value}" for key, value in TINY_VFM.items()]


def load_eval_script():
    return load_script("eval.py", "eval_script")


def run_eval(args, tmp, timeout=300):
    env = dict(os.environ, CASS_CACHE_DIR=str(tmp / "cache"), CASS_WEIGHTS_DIR=str(tmp / "weights-cache"))
    return subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_eval_parallel(runs, tmp, timeout=300):
    """Several eval.py processes at once (each spends most of its time importing)."""
    env = dict(os.environ, CASS_CACHE_DIR=str(tmp / "cache"), CASS_WEIGHTS_DIR=str(tmp / "weights-cache"))
    procs = [subprocess.Popen([sys.executable, "eval.py", *map(str, args)], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in runs]
    results = []
    for proc, args in zip(procs, runs):
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def numpy_metrics(labels, preds, num_classes, ignore=255):
    """aAcc, mIoU, mAcc (percent) and per-class IoU from a confusion matrix."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for gt, pred in zip(labels, preds):
        keep = gt != ignore
        confusion += np.bincount(num_classes * gt[keep].astype(np.int64) + pred[keep],
                                 minlength=num_classes ** 2).reshape(num_classes, num_classes)
    hit = np.diag(confusion).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = hit / (confusion.sum(0) + confusion.sum(1) - hit)
        acc = hit / confusion.sum(1)
    return dict(aAcc=100 * hit.sum() / confusion.sum(), mIoU=100 * np.nanmean(iou), mAcc=100 * np.nanmean(acc)), iou


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    """eval.py on three 64x96 VOC images with tiny random CLIP and DINO weights."""
    tmp = tmp_path_factory.mktemp("voc_run")
    labels = [block_label([0, 15, 8, 12]), block_label([0, 7]), block_label([3, 0, 15])]
    data = voc_layout(tmp / "VOC2012", labels=labels)
    clip, dino = write_clip_state_dict(tmp / "clip.pt"), write_dino_checkpoint(tmp / "dino.pth")
    args = ["--config", "configs/cfg_voc21.py", "--data-root", data, "--clip-path", clip, "--vfm-path", dino,
            "--work-dir", tmp / "work", "--save-preds", tmp / "preds", "--show-dir", tmp / "vis",
            "--cfg-options", *TINY_OPTIONS, f"model.text_cache_dir={tmp / 'text'}", "test_dataloader.num_workers=0"]
    start = time.monotonic()
    result = run_eval(args, tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dict(tmp=tmp, data=data, result=result, seconds=time.monotonic() - start, args=[str(a) for a in args])


def test_eval_reports_the_miou_of_its_predictions(voc_run):
    tmp, data = voc_run["tmp"], voc_run["data"]
    report = json.loads((tmp / "work" / "metrics.json").read_text())
    names = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    labels = [np.asarray(Image.open(data / "SegmentationClass" / f"{n}.png")) for n in names]
    preds = [np.asarray(Image.open(tmp / "preds" / f"{n}.png")) for n in names]
    assert all(p.shape == g.shape == (64, 96) for p, g in zip(preds, labels))
    expected, iou = numpy_metrics(labels, preds, 21)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert report[key] == pytest.approx(expected[key], abs=0.006), key
    classes = PascalVOCDataset.METAINFO["classes"]
    for name, value in zip(classes, iou):
        got = report["per_class"][name]["IoU"]
        assert (got is None) if np.isnan(value) else got == pytest.approx(100 * value, abs=0.006), name
    assert report["benchmark"] == "cfg_voc21" and report["dataset"] == "PascalVOCDataset"
    assert report["images"] == 3 and report["pamr_steps"] == 0
    assert f"cfg_voc21 (PascalVOCDataset, 3 images, PAMR off): mIoU {report['mIoU']:.2f}" in voc_run["result"].stdout
    assert "per class results" in voc_run["result"].stdout  # mmseg's table


def test_eval_show_dir_is_image_prediction_ground_truth(voc_run):
    tmp, data = voc_run["tmp"], voc_run["data"]
    palette = np.array(PascalVOCDataset.METAINFO["palette"], dtype=np.uint8)
    name = "2007_000032"
    picture = np.asarray(Image.open(tmp / "vis" / f"{name}.png"))
    assert picture.shape == (64, 3 * 96 + 2 * 4, 3)
    image = np.asarray(Image.open(data / "JPEGImages" / f"{name}.jpg").convert("RGB"))
    pred = np.asarray(Image.open(tmp / "preds" / f"{name}.png"))
    gt = np.asarray(Image.open(data / "SegmentationClass" / f"{name}.png"))
    np.testing.assert_array_equal(picture[:, :96], image)
    np.testing.assert_array_equal(picture[:, 100:196], palette[pred])
    np.testing.assert_array_equal(picture[:, 200:], colourise(gt, palette))
    assert (picture[:, 200:][gt == 255] == 255).all()


def test_interrupted_and_resumed_run_reports_the_same_metrics(voc_run):
    tmp, first = voc_run["tmp"], json.loads((voc_run["tmp"] / "work" / "metrics.json").read_text())
    preds = tmp / "resumed"
    shutil.copytree(tmp / "preds", preds)
    (preds / "2007_000063.png").unlink()  # not reached before the interruption
    record = json.loads((preds / "cass_run.json").read_text())
    assert record["model"]["slide_crop"] == 0 and record["dataset"] == "PascalVOCDataset"
    altered = np.zeros((64, 96), np.uint8)  # a saved prediction is used as it is, not recomputed
    Image.fromarray(altered).save(preds / "2007_000039.png")
    base = [a for a in voc_run["args"] if a not in ("--show-dir", str(tmp / "vis"))]
    base[base.index("--save-preds") + 1] = str(preds)
    base[base.index("--work-dir") + 1] = str(tmp / "work_resumed")
    result = run_eval([*base[:base.index("--cfg-options")], "--resume", *base[base.index("--cfg-options"):]], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    recomputed = np.asarray(Image.open(preds / "2007_000063.png"))
    np.testing.assert_array_equal(recomputed, np.asarray(Image.open(tmp / "preds" / "2007_000063.png")))
    names = ["2007_000032", "2007_000039", "2007_000063"]
    labels = [np.asarray(Image.open(voc_run["data"] / "SegmentationClass" / f"{n}.png")) for n in names]
    report = json.loads((tmp / "work_resumed" / "metrics.json").read_text())
    expected, _ = numpy_metrics(labels, [np.asarray(Image.open(preds / f"{n}.png")) for n in names], 21)
    assert report["mIoU"] == pytest.approx(expected["mIoU"], abs=0.006) and report["images"] == 3
    # restore the altered file from the first run: resuming then gives exactly the first run's metrics
    shutil.copy(tmp / "preds" / "2007_000039.png", preds / "2007_000039.png")
    (preds / "2007_000032.png").unlink()
    result = run_eval([*base[:base.index("--cfg-options")], "--resume", *base[base.index("--cfg-options"):]], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp / "work_resumed" / "metrics.json").read_text())
    assert {k: again[k] for k in ("mIoU", "mAcc", "aAcc", "per_class")} == \
        {k: first[k] for k in ("mIoU", "mAcc", "aAcc", "per_class")}
    # other settings cannot resume from these predictions
    other = [*base[:base.index("--cfg-options")], "--resume", *base[base.index("--cfg-options"):],
             "model.slide_stride=56"]
    result = run_eval(other, tmp)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"eval.py: --resume: the predictions in {preds} come from other model settings ['slide_stride']")


def test_eval_errors_are_one_line(tmp_path):
    runs = [["--config", "configs/cfg_nope.py"],
            ["--config", "configs/cfg_voc21.py", "--data-root", tmp_path / "nowhere"]]
    bad_config, no_data = run_eval_parallel(runs, tmp_path)
    assert bad_config.returncode == 1
    assert bad_config.stderr.strip().splitlines()[-1] == "eval.py: config not found: configs/cfg_nope.py"
    assert no_data.returncode == 1
    lines = [line for line in no_data.stderr.strip().splitlines() if line.startswith("eval.py:")]
    assert lines == [no_data.stderr.strip().splitlines()[-1]]
    assert lines[0] == (f"eval.py: data root not found: {tmp_path / 'nowhere'}; "
                        "set --data-root or the config's data_root")


def test_eval_extra_imports_that_fail_are_one_line(capsys):
    """``--cfg-options custom_imports.imports=[...]`` (a method registered outside the package): a module that
    does not import, or the imports given another way, is a one-line error before any model is built."""
    eval_script = load_eval_script()
    config = str(REPO / "configs" / "cfg_voc21.py")
    assert eval_script.main(["--config", config, "--cfg-options", "custom_imports.imports=[no_such_module]"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "eval.py: --cfg-options custom_imports.imports: cannot import 'no_such_module' "
        "(No module named 'no_such_module')")
    assert eval_script.main(["--config", config, "--cfg-options", "custom_imports=dict(imports=['x'])"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "eval.py: give extra modules as --cfg-options custom_imports.imports=[module,...]")


def test_eval_missing_weights(tmp_path, voc_run, capsys):
    code = load_eval_script().main([
        "--config", str(REPO / "configs" / "cfg_voc21.py"), "--data-root", str(voc_run["data"]),
        "--clip-path", str(tmp_path / "missing.pt"), "--work-dir", str(tmp_path / "work"),
        "--cfg-options", "test_dataloader.num_workers=0"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("eval.py: ") and "missing.pt" in err[-1]


@pytest.mark.parametrize("vfm_flag", ["--vfm-path", "--dino-path"])  # the new name and the old one
def test_pamr_and_overrides_reach_the_config(tmp_path, vfm_flag):
    eval_script = load_eval_script()
    args = eval_script.parse_args(["--config", str(REPO / "configs" / "cfg_ade20k.py"), "--pamr", "on",
                                   "--data-root", "/data/ade", vfm_flag, "d.pth", "--show-dir", "vis",
                                   "--cfg-options", "model.slide_stride=56", "test_dataloader.num_workers=0"])
    cfg = eval_script.build_config(args)
    assert cfg.model.pamr_steps == 10 and cfg.model.slide_stride == 56
    # the VFM's weights go under the config's one key for them
    assert [cfg.model[key] for key in VFM_PATH_KEYS if key in cfg.model] == ["d.pth"]
    assert cfg.test_dataloader.dataset.data_root == "/data/ade"
    assert cfg.test_dataloader.persistent_workers is False
    assert cfg.work_dir == str(Path("work_dirs") / "cfg_ade20k") and cfg.launcher == "none"
    assert cfg.custom_hooks == [dict(type="SegResultWriter", show_dir="vis", pred_dir=None)]


def test_result_writer_uses_the_label_file_encoding(tmp_path):
    image = tmp_path / "img.jpg"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(image)
    sample = SegDataSample(metainfo=dict(img_path=str(image), reduce_zero_label=True))
    sample.set_data(dict(pred_sem_seg=_pixels(np.full((4, 6), 2)), gt_sem_seg=_pixels(np.full((4, 6), 255))))
    writer = SegResultWriter(show_dir=str(tmp_path / "vis"), pred_dir=str(tmp_path / "preds"))
    writer.palette = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3]], np.uint8)
    for folder in (writer.show_dir, writer.pred_dir):
        folder.mkdir()
    writer.write(sample)
    assert (np.asarray(Image.open(tmp_path / "preds" / "img.png")) == 3).all()  # class 2 is file value 3
    picture = np.asarray(Image.open(tmp_path / "vis" / "img.png"))
    assert picture.shape == (4, 3 * 6 + 8, 3)
    assert (picture[:, 10:16] == 3).all() and (picture[:, 20:] == 255).all()  # prediction, ignored GT


def _pixels(array):
    from mmengine.structures import PixelData
    return PixelData(data=torch.as_tensor(array)[None])


def test_distributed_wrapper_accepts_the_frozen_model(weights_dir):
    """Plain DDP refuses a model without trainable parameters; the configured wrapper runs it."""
    cfg = Config.fromfile(str(REPO / "configs" / "cfg_voc21.py"))
    cfg.model.update(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                     vfm_overrides=TINY_VFM, text_cache_dir=False, name_path=None, classes=["sky", "cat", "dog"])
    model = MODELS.build(cfg.model)
    assert not any(p.requires_grad for p in model.parameters())
    wrapped = MODEL_WRAPPERS.build(cfg.model_wrapper_cfg, default_args=dict(module=model, device_ids=[0]))
    meta = dict(img_shape=(32, 48), ori_shape=(32, 48))
    data = dict(inputs=[torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)],
                data_samples=[SegDataSample(metainfo=meta)])
    [out] = wrapped.test_step(data)
    assert out.pred_sem_seg.data.shape == (1, 32, 48)


# ---------------------------------------------------------------- summary
def write_metrics(root, values):
    for config, miou in values.items():
        (root / config).mkdir(parents=True)
        (root / config / "metrics.json").write_text(json.dumps(dict(benchmark=config, mIoU=miou)))


def test_summary_tables(tmp_path, capsys):
    write_metrics(tmp_path, {"cfg_voc21": 64.8, "cfg_ade20k": 21.0, "cfg_custom": 10.0})
    assert summary.main([str(tmp_path), "--markdown", str(tmp_path / "s.md"), "--csv", str(tmp_path / "s.csv")]) == 0
    markdown = (tmp_path / "s.md").read_text()
    assert capsys.readouterr().out == markdown
    assert "| VOC21 | cfg_voc21 | 64.80 | 65.80 | -1.00 |" in markdown
    assert "| ADE20K | cfg_ade20k | 21.00 | 20.40 | +0.60 |" in markdown
    assert "| PC60 | cfg_context60 | missing | 36.70 |  |" in markdown
    assert "| cfg_custom | cfg_custom | 10.00 |  |  |" in markdown
    assert "| average |  | missing | 44.35 |  |" in markdown
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["benchmark"] for r in rows][:8] == ["VOC21", "PC60", "COCO-Obj", "VOC20", "PC59", "COCO-Stuff",
                                                  "Cityscapes", "ADE20K"]
    assert rows[0] == dict(benchmark="VOC21", config="cfg_voc21", mIoU="64.80", paper="65.80", diff="-1.00")

    full = tmp_path / "full"
    write_metrics(full, {config: paper + 1 for config, paper in get_method("cass").published.items()})
    lines = summary.to_markdown(summary.rows(summary.collect(full))).strip().splitlines()
    assert lines[-3] == "| average |  | 45.35 | 44.35 | +1.00 |"
    assert lines[-1] == ("Published mIoU (cass): CASS paper (Kim et al., CVPR 2025), Table 1; "
                         "how it was checked: docs/methods.md.")


# ---------------------------------------------------------------- eval_all.sh
STUB = """#!/usr/bin/env bash
# Stands in for python: fakes eval.py runs, hands everything else to the real interpreter.
if [[ $1 != eval.py ]]; then exec "$REAL_PYTHON" "$@"; fi
shift
extra=()
while (( $# )); do
  case $1 in
    --config) config=$2; shift 2 ;;
    --work-dir) work=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
name=$(basename "$config" .py)
echo "$name gpu=$CUDA_VISIBLE_DEVICES${extra[*]:+ ${extra[*]}}" >> "$STUB_LOG"
if [[ $name == "${STUB_FAIL:-}" ]]; then echo "boom: $name" >&2; exit 3; fi
sleep "${STUB_SLEEP:-0}"
echo "{\\"benchmark\\": \\"$name\\", \\"mIoU\\": 50.0}" > "$work/metrics.json"
"""


@pytest.fixture()
def eval_all(tmp_path):
    stub = tmp_path / "python-stub"
    stub.write_text(STUB)
    stub.chmod(0o755)

    def run(*args, **env):
        full_env = {key: value for key, value in os.environ.items() if key != "GPUS"}
        full_env.update(PYTHON=str(stub), REAL_PYTHON=sys.executable, STUB_LOG=str(tmp_path / "calls"),
                        WORK_ROOT=str(tmp_path / "work"), **env)
        result = subprocess.run(["bash", "eval_all.sh", *args], cwd=REPO, env=full_env, capture_output=True,
                                text=True, timeout=120)
        calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
        return result, calls
    return run


def test_eval_all_runs_every_benchmark_and_summarises(eval_all, tmp_path):
    result, calls = eval_all("0,1", "--pamr", "off")
    assert result.returncode == 0, result.stderr
    order = ["cfg_voc21", "cfg_context60", "cfg_coco_object", "cfg_voc20", "cfg_context59", "cfg_coco_stuff164k",
             "cfg_city_scapes", "cfg_ade20k"]
    assert sorted(calls) == sorted(f"{name} gpu={i % 2} --pamr off" for i, name in enumerate(order))
    markdown = (tmp_path / "work" / "summary.md").read_text()
    assert "| VOC21 | cfg_voc21 | 50.00 | 65.80 | -15.80 |" in markdown
    assert "| average |  | 50.00 | 44.35 | +5.65 |" in markdown
    rows = list(csv.DictReader((tmp_path / "work" / "summary.csv").open()))
    assert len(rows) == 9 and rows[-1]["diff"] == "+5.65"


def test_eval_all_fails_fast(eval_all, tmp_path):
    result, calls = eval_all(STUB_FAIL="cfg_context60", GPUS="3")
    assert result.returncode == 1
    assert calls == ["cfg_voc21 gpu=3", "cfg_context60 gpu=3"]  # nothing after the failure
    assert "cfg_context60 failed on gpu 3" in result.stderr and "boom: cfg_context60" in result.stderr
    assert not (tmp_path / "work" / "summary.md").exists()


def test_eval_all_stops_the_other_gpus(eval_all, tmp_path):
    start = time.monotonic()
    result, calls = eval_all("0,1", STUB_FAIL="cfg_context60", STUB_SLEEP="30")
    assert result.returncode == 1 and time.monotonic() - start < 20
    assert "eval_all: stopped after a failure" in result.stderr
    assert not (tmp_path / "work" / "cfg_voc21" / "metrics.json").exists()  # killed while running


def test_summary_compares_with_the_methods_published_numbers(tmp_path, capsys):
    write_metrics(tmp_path, {"cfg_voc21": 60.1, "cfg_ade20k": 16.0})
    assert summary.main([str(tmp_path), "--method", "sclip"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("| benchmark | config | mIoU (sclip) | paper (sclip) | diff |")
    assert "| VOC21 | cfg_voc21 | 60.10 | 59.10 | +1.00 |" in markdown
    assert "| ADE20K | cfg_ade20k | 16.00 | 16.10 | -0.10 |" in markdown
    assert "| average |  | missing | 38.16 |  |" in markdown  # SCLIP's Table 1 average: 38.2
    assert "Published mIoU (sclip): SCLIP paper (Wang et al., ECCV 2024), Table 1;" in markdown
    full = tmp_path / "full"
    write_metrics(full, {config: 30.0 for config in summary.BENCHMARKS})
    table = summary.rows(summary.collect(full), "proxyclip")  # ProxyCLIP's per-benchmark numbers: not found
    assert table[-1] == dict(benchmark="average", config="", mIoU=30.0, paper=None, diff=None)
    assert "| VOC21 | cfg_voc21 | 30.00 | not found |  |" in summary.to_markdown(table, "proxyclip")
    for method, entry in METHODS.items():
        published = entry.published
        assert list(published) == list(summary.BENCHMARKS), method
        assert entry.source, method
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        summary.rows({}, "nope")


def test_eval_all_runs_a_method_with_its_published_settings(eval_all, tmp_path):
    result, calls = eval_all("--method", "sclip", "--pamr", "off", GPUS="2")
    assert result.returncode == 0, result.stderr
    assert len(calls) == 8
    voc21 = next(c for c in calls if c.startswith("cfg_voc21 "))
    assert voc21 == ("cfg_voc21 gpu=2 --cfg-options model.method=sclip model.slide_crop=224 model.slide_stride=112 "
                     "model.logit_scale=65 model.prob_thd=0.1 model.area_thd=0.1 "
                     "test_dataloader.dataset.pipeline.1.scale=(2048,336) --pamr off")
    markdown = (tmp_path / "work" / "sclip" / "summary.md").read_text()
    assert "| VOC21 | cfg_voc21 | 50.00 | 59.10 | -9.10 |" in markdown
    # CASS's settings for every method; METHOD from the environment
    result, calls = eval_all(METHOD="naclip", PROTOCOL="cass")
    assert result.returncode == 0, result.stderr
    assert "cfg_voc21 gpu=0 --cfg-options model.method=naclip" in calls
    result, _ = eval_all("--method", "segformer")
    assert result.returncode == 1
    assert "eval_all: no settings for method 'segformer' with protocol 'published'" in result.stderr


# ---------------------------------------------------------------- every method through eval.py
BASELINES = ["clip", "maskclip", "sclip", "clearclip", "naclip", "proxyclip"]


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    """eval.py with each baseline's published VOC21 settings (configs/methods.py), on one image, all at once."""
    tmp = tmp_path_factory.mktemp("method_runs")
    data = voc_layout(tmp / "VOC2012", names=["2007_000032"], labels=[block_label([0, 15, 8])])
    clip, dino = write_clip_state_dict(tmp / "clip.pt"), write_dino_checkpoint(tmp / "dino.pth")
    sam = write_sam(tmp / "sam_vit_b_01ec64.pth", tiny=True)
    # Trident: a tiny SAM (through --sam-path), and the tiny DINO ViT-B/8 file in place of its DINO ViT-B/16
    trident = ["model.vfm=dino_vitb8",
               *[f"model.sam_overrides.{key}={value}".replace(" ", "") for key, value in TINY_SAM["vit_b"].items()]]
    runs = []
    for method in (*BASELINES, "trident"):
        options = cfg_options(method, "cfg_voc21") + (trident if method == "trident" else [])
        sam_flag = ["--sam-path", sam] if method == "trident" else []
        runs.append(["--config", "configs/cfg_voc21.py", "--data-root", data, "--clip-path", clip, "--vfm-path", dino,
                     *sam_flag, "--work-dir", tmp / method, "--save-preds", tmp / method / "preds",
                     "--cfg-options", *options, *TINY_OPTIONS, "model.text_cache_dir=False",
                     "test_dataloader.num_workers=0"])
    results = run_eval_parallel(runs, tmp, timeout=600)
    return dict(tmp=tmp, data=data, sam=sam, results=dict(zip((*BASELINES, "trident"), results)))


@pytest.mark.parametrize("method", (*BASELINES, "trident"))
def test_eval_runs_every_method(method, method_runs):
    tmp, data, result = method_runs["tmp"], method_runs["data"], method_runs["results"][method]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    record = json.loads((tmp / method / "preds" / "cass_run.json").read_text())
    published = get_method(method).protocol["cfg_voc21"]
    assert record["model"]["method"] == method
    if method == "trident":  # read from --sam-path
        assert record["model"]["sam_path"] == str(method_runs["sam"])
    # ClearCLIP and ProxyCLIP ship their own VOC21 class names; the others use the benchmark config's
    class_file = CONFIGS_DIR / published.get("class_file", "cls_voc21.txt")
    assert Path(record["model"]["name_path"]).resolve() == class_file.resolve()
    assert record["model"]["slide_crop"] == published["slide_crop"]
    assert record["model"]["prob_thd"] == published["prob_thd"]
    assert record["pipeline"][1]["scale"] == [2048, published["short_side"]]
    label = np.asarray(Image.open(data / "SegmentationClass" / "2007_000032.png"))
    pred = np.asarray(Image.open(tmp / method / "preds" / "2007_000032.png"))
    assert pred.shape == label.shape == (64, 96)
    expected, _ = numpy_metrics([label], [pred], 21)
    report = json.loads((tmp / method / "metrics.json").read_text())
    assert report["images"] == 1 and report["mIoU"] == pytest.approx(expected["mIoU"], abs=0.006)


def test_eval_all_runs_trident_with_another_clip_and_its_published_row(eval_all, tmp_path):
    result, calls = eval_all("--method", "trident", "--clip", "ViT-H-14/laion2b_s32b_b79k", GPUS="0")
    assert result.returncode == 0, result.stderr
    city = next(c for c in calls if c.startswith("cfg_city_scapes "))
    for option in ("model.method=trident", "model.sam_halves=True", "model.cos_fac=3.0", "model.vfm=dino_vitb16",
                   "test_dataloader.dataset.pipeline.1.scale=(2048,688)",
                   "model.clip_path=ViT-H-14/laion2b_s32b_b79k"):
        assert option in city.split(), option
    markdown = (tmp_path / "work" / "trident" / "ViT-H-14_laion2b_s32b_b79k" / "summary.md").read_text()
    assert "| VOC21 | cfg_voc21 | 50.00 | 70.80 | -20.80 |" in markdown
    assert "| average |  | 50.00 | 48.63 | +1.37 |" in markdown  # 48.625 (the paper: 48.6)
    assert "Published mIoU (trident, CLIP ViT-H-14/laion2b_s32b_b79k): Trident paper" in markdown
    assert summary.rows({}, "trident")[0]["paper"] == 67.1  # CLIP ViT-B/16 by default
    assert summary.published_row("trident", "ViT-L/14") == {}  # no published row for that CLIP


# ---------------------------------------------------------------- --protocol
def test_eval_protocol_published_equals_the_methods_cfg_options(tmp_path, capsys):
    """--protocol published gives the config eval_all.sh's per-benchmark --cfg-options give (cass.protocols
    cfg_options), under the explicit --cfg-options; the default (cass) keeps the config's settings."""
    eval_script = load_eval_script()

    def config(*flags):
        return eval_script.build_config(eval_script.parse_args(
            ["--config", str(REPO / "configs" / "cfg_voc21.py"), *flags]))

    published = config("--protocol", "published", "--cfg-options", "model.method=trident", "model.coarse_thresh=0.3")
    spelled = config("--cfg-options", *cfg_options("trident", "cfg_voc21"), "model.coarse_thresh=0.3")
    assert published.model.to_dict() == spelled.model.to_dict()
    assert published.test_dataloader.dataset.pipeline == spelled.test_dataloader.dataset.pipeline
    settings = get_method("trident").protocol["cfg_voc21"]
    assert (published.model.slide_crop, published.model.slide_stride, published.model.prob_thd) == (336, 224, 0.2)
    assert published.model.coarse_thresh == 0.3 != settings["coarse_thresh"]  # the explicit option wins
    assert published.model.vfm == "dino_vitb16" and published.model.name_path == str(CONFIGS_DIR / settings["class_file"])
    assert published.test_dataloader.dataset.pipeline[1].scale == (2048, 448)

    default = config("--cfg-options", "model.method=trident")  # --protocol cass: the benchmark config's settings
    assert (default.model.method, default.model.slide_crop, default.model.prob_thd) == ("trident", 0, 0.1)
    assert default.test_dataloader.dataset.pipeline[1].scale == (2048, 336)
    assert Path(default.model.name_path).name == "cls_voc21.txt" and Path(default.model.name_path).parent == CONFIGS_DIR

    custom = tmp_path / "my_config.py"  # no benchmark's: no published settings, a one-line error
    custom.write_text(f"_base_ = [{str(REPO / 'configs' / 'cfg_voc21.py')!r}]\n")
    code = eval_script.main(["--config", str(custom), "--protocol", "published", "--cfg-options", "model.method=sclip"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "eval.py: protocol 'published': my_config is not a benchmark config")
