"""Benchmark datasets, the COCO-Object converter and the dataset checker."""
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from fake_datasets import ade_layout, block_label, coco_layout, voc_layout, write_label
from mmengine.config import Config
from mmseg.datasets import COCOStuffDataset, PascalVOCDataset
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS
from PIL import Image

from cass.mmseg import check_data
from cass.mmseg.datasets import COCOObjectDataset, PascalVOC20Dataset

REPO = Path(__file__).resolve().parents[1]


def load_converter():
    return load_script("datasets/cvt_coco_object.py", "cvt_coco_object")


def voc_cfg(root, dataset_type="PascalVOCDataset"):
    return dict(type=dataset_type, data_root=str(root), ann_file="ImageSets/Segmentation/val.txt",
                data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"))


def coco_cfg(root, dataset_type="COCOObjectDataset"):
    return dict(type=dataset_type, data_root=str(root),
                data_prefix=dict(img_path="images/val2017", seg_map_path="annotations/val2017"))


def ade_cfg(root):
    return dict(type="ADE20KDataset", data_root=str(root),
                data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"))


def loaded_label(dataset_cfg):
    """The ground truth of the first sample after mmseg's LoadAnnotations."""
    dataset = DATASETS.build(dict(dataset_cfg, pipeline=[LoadAnnotations()]))
    return dataset[0]["gt_seg_map"], dataset


# ---------------------------------------------------------------- datasets
def test_dataset_classes():
    assert PascalVOC20Dataset.METAINFO["classes"] == PascalVOCDataset.METAINFO["classes"][1:]
    assert len(PascalVOC20Dataset.METAINFO["palette"]) == 20
    classes = COCOObjectDataset.METAINFO["classes"]
    assert len(classes) == len(COCOObjectDataset.METAINFO["palette"]) == 81
    assert classes[:3] == ("background", "person", "bicycle") and classes[-1] == "toothbrush"
    assert classes[1:] == COCOStuffDataset.METAINFO["classes"][:80]
    assert DATASETS.get("PascalVOC20Dataset") is PascalVOC20Dataset
    assert DATASETS.get("COCOObjectDataset") is COCOObjectDataset


def test_voc20_ignores_background(tmp_path):
    label = block_label([0, 1, 20, 7])
    voc_layout(tmp_path, names=["a"], labels=[label])
    gt, dataset = loaded_label(voc_cfg(tmp_path, "PascalVOC20Dataset"))
    expected = np.where(label == 0, 255, np.where(label == 255, 255, label.astype(int) - 1))
    np.testing.assert_array_equal(gt, expected)
    assert len(dataset) == 1 and dataset.metainfo["classes"][0] == "aeroplane"


def test_coco_object_reads_instance_train_ids(tmp_path):
    label = block_label([0, 1, 80], border=None)
    coco_layout(tmp_path, label=label)
    (tmp_path / "annotations" / "val2017" / "000000000139_labelTrainIds.png").write_bytes(b"not read")
    gt, dataset = loaded_label(coco_cfg(tmp_path))
    np.testing.assert_array_equal(gt, label)
    assert len(dataset) == 1
    assert dataset.get_data_info(0)["seg_map_path"].endswith("000000000139_instanceTrainIds.png")


# ---------------------------------------------------------------- converter
def test_converter_maps_stuff_to_background_and_things_to_their_index():
    cvt = load_converter()
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every COCO-Stuff value at once
    out, unknown = cvt.convert_label(values)
    out = out.reshape(-1)
    things = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
    assert len(things) == 80
    for index, category in enumerate(things, start=1):
        assert out[category - 1] == index, category
    assert (out[91:182] == 0).all()  # the 91 stuff categories 92..182
    assert out[255] == 0  # unlabeled is background in the protocol
    unused = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, *range(182, 255)]
    assert (out[unused] == 255).all() and unknown == len(unused)
    # the index follows COCOObjectDataset's class order
    classes = COCOObjectDataset.METAINFO["classes"]
    assert classes[out[0]] == "person" and classes[out[12]] == "stop sign"  # categories 1, 13
    assert classes[out[26]] == "backpack" and classes[out[89]] == "toothbrush"  # categories 27, 90


def test_converter_cli(tmp_path, capsys):
    cvt = load_converter()
    src = tmp_path / "annotations" / "val2017"
    stuff_map = np.array([[0, 91, 255], [89, 181, 12]], dtype=np.uint8)  # person, banner, unlabeled / ...
    write_label(src / "000000000139.png", stuff_map)
    write_label(src / "000000000139_labelTrainIds.png", np.zeros((2, 3), np.uint8))  # not an input
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    assert cvt.main([str(tmp_path), "--nproc", "1"]) == 0
    outputs = sorted(p.name for p in src.glob("*_instanceTrainIds.png"))
    assert outputs == ["000000000139_instanceTrainIds.png"]
    out = np.asarray(Image.open(src / outputs[0]))
    np.testing.assert_array_equal(out, [[1, 0, 0], [80, 0, 12]])

    other = tmp_path / "coco_object"
    assert cvt.main([str(tmp_path), "-o", str(other), "--nproc", "1"]) == 0
    assert (other / "annotations" / "val2017" / outputs[0]).is_file() and (other / "images").is_symlink()
    assert cvt.main([str(tmp_path / "nowhere"), "--nproc", "1"]) == 1
    assert "no COCO-Stuff label maps" in capsys.readouterr().err


# ---------------------------------------------------------------- checker
def problems(dataset_cfg, **kwargs):
    return check_data.check_dataset(dataset_cfg, **kwargs).problems


def test_checker_accepts_a_good_dataset(tmp_path):
    voc_layout(tmp_path)
    report = check_data.check_dataset(voc_cfg(tmp_path), label_samples=None, class_count=21)
    assert report.ok, report.problems
    assert report.images == 3 and report.labels_read == 3
    ade_layout(tmp_path / "ade")
    assert problems(ade_cfg(tmp_path / "ade")) == []


def test_checker_missing_folders(tmp_path):
    [line] = problems(voc_cfg(tmp_path / "nowhere"))
    assert line.startswith("data root not found: ") and "nowhere" in line
    voc_layout(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").unlink()
    for png in (tmp_path / "SegmentationClass").iterdir():
        png.unlink()
    (tmp_path / "SegmentationClass").rmdir()
    found = problems(voc_cfg(tmp_path))
    assert len(found) == 2
    assert found[0].startswith("label folder not found: ") and "SegmentationClass" in found[0]
    assert found[1].startswith("split file not found: ") and "val.txt" in found[1]


def test_checker_wrong_label_suffix(tmp_path):
    coco_layout(tmp_path, suffix="_labelTrainIds.png")  # COCO-Stuff labels, COCO-Object expected
    [line] = problems(coco_cfg(tmp_path))
    assert line.startswith("wrong label suffix: no '*_instanceTrainIds.png' labels")
    assert "'*_labelTrainIds.png' files are there" in line and "cvt_coco_object.py" in line


def test_checker_count_mismatch(tmp_path):
    ade_layout(tmp_path, names=["ADE_val_1", "ADE_val_2", "ADE_val_3"])
    (tmp_path / "annotations" / "validation" / "ADE_val_2.png").unlink()
    write_label(tmp_path / "annotations" / "validation" / "ADE_val_9.png", block_label([1]))
    [line] = problems(ade_cfg(tmp_path))
    assert line.startswith("image/label count mismatch: 3 '*.jpg' images")
    assert "3 '*.png' labels" in line
    assert "1 image without a label, e.g." in line and "ADE_val_2.jpg" in line
    assert "1 label without an image, e.g." in line and "ADE_val_9.png" in line

    voc_layout(tmp_path / "voc")  # with a split file: a listed image without its label
    (tmp_path / "voc" / "SegmentationClass" / f"{'2007_000039'}.png").unlink()
    [line] = problems(voc_cfg(tmp_path / "voc"))
    assert line.startswith("image/label count mismatch: 3 images listed in") and "2007_000039" in line


def test_checker_label_values_out_of_range(tmp_path):
    voc_layout(tmp_path, labels=[block_label([0, 5]), block_label([30, 21, 7]), block_label([1])])
    [line] = problems(voc_cfg(tmp_path), label_samples=None)
    assert line.startswith("label values outside the class range: 21, 30 in 1 of 3 checked labels")
    assert "2007_000039.png" in line and "0..20 or 255" in line
    # VOC20 reads the same files with reduce_zero_label: 21 is also out, 0 is fine
    [line] = problems(voc_cfg(tmp_path, "PascalVOC20Dataset"), label_samples=None)
    assert "21, 30" in line and "1..20 (0 = ignored) or 255" in line
    # ADE20K: 150 classes stored as 1..150
    ade_layout(tmp_path / "ade", label=block_label([0, 150, 151], border=None))
    [line] = problems(ade_cfg(tmp_path / "ade"))
    assert line.startswith("label values outside the class range: 151 in 2 of 2")


def test_checker_colour_labels_and_class_count(tmp_path):
    ade_layout(tmp_path)
    rgb = np.zeros((64, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "annotations" / "validation" / "ADE_val_00000002.png")
    found = problems(ade_cfg(tmp_path), class_count=149, class_source="class file x.txt")
    assert found[0] == "class file x.txt has 149 classes but ADE20KDataset declares 150"
    assert found[1].startswith("1 of 2 checked labels are not single-channel")


def test_checker_samples_labels(tmp_path):
    names = [f"img{i}" for i in range(10)]
    labels = [block_label([1]) for _ in names]
    labels[3] = block_label([99])
    voc_layout(tmp_path, names=names, labels=labels)
    assert check_data.check_dataset(voc_cfg(tmp_path), label_samples=2).labels_read == 2
    assert problems(voc_cfg(tmp_path), label_samples=2) == []  # img0 and img9 only
    assert len(problems(voc_cfg(tmp_path), label_samples=None)) == 1


def test_checker_cli(tmp_path, capsys):
    voc_layout(tmp_path)
    config = str(REPO / "configs" / "cfg_voc21.py")
    assert check_data.main(["--config", config, "--data-root", str(tmp_path), "--all"]) == 0
    assert "check_data: OK: PascalVOCDataset" in capsys.readouterr().out
    # the VOC20 config reads the same folder; its class file has 20 classes
    assert check_data.main(["--config", str(REPO / "configs" / "cfg_voc20.py"), "--data-root", str(tmp_path)]) == 0
    write_label(tmp_path / "SegmentationClass" / "2007_000063.png", block_label([40]), palette=True)
    assert check_data.main(["--config", config, "--data-root", str(tmp_path), "--all"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("check_data: label values outside the class range: 40")
    assert check_data.main(["--config", str(tmp_path / "missing.py")]) == 1
    assert capsys.readouterr().err.strip() == f"check_data: config not found: {tmp_path / 'missing.py'}"


def test_checker_class_file_of_a_config(tmp_path):
    voc_layout(tmp_path)
    cfg = Config.fromfile(str(REPO / "configs" / "cfg_voc21.py"))
    cfg.test_dataloader.dataset.data_root = str(tmp_path)
    cfg.model.name_path = str(REPO / "configs" / "cls_voc20.txt")
    [line] = check_data.check_config(cfg).problems
    assert line.startswith("class file ") and line.endswith("has 20 classes but PascalVOCDataset declares 21")


@pytest.mark.parametrize("suffix", ["_labelTrainIds.png", ".png"])
def test_checker_suffix_of_coco_stuff(tmp_path, suffix):
    """COCO-Stuff expects *_labelTrainIds.png; raw release maps alone are the wrong suffix."""
    coco_layout(tmp_path, suffix=suffix, label=block_label([0, 170], border=None))
    found = problems(coco_cfg(tmp_path, "COCOStuffDataset"))
    if suffix == "_labelTrainIds.png":
        assert found == []
    else:
        [line] = found
        assert "wrong label suffix: no '*_labelTrainIds.png'" in line and "'*.png' files" in line
        assert "coco_stuff164k.py" in line
