"""The eight benchmark configs: settings of the paper, class files, model builds."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config
from mmseg.registry import DATASETS

from cass import read_class_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# config: dataset type, data root, class file, gamma, alpha, h_threshold, prob_thd, resize short side,
#         and the flags that differ from the model base
BENCHMARKS = {
    "voc21": ("PascalVOCDataset", "data/VOCdevkit/VOC2012", "cls_voc21.txt", 0.10, 0.03, 0.10, 0.1, 336,
              dict(slide_crop=0)),
    "voc20": ("PascalVOC20Dataset", "data/VOCdevkit/VOC2012", "cls_voc20.txt", 0.40, 0.02, 0.10, 0.0, 336,
              dict(eigenscaling=False)),
    "context60": ("PascalContextDataset", "data/VOCdevkit/VOC2010", "cls_context60.txt", 0.25, 0.04, 0.09, 0.1,
                  336, {}),
    "context59": ("PascalContextDataset59", "data/VOCdevkit/VOC2010", "cls_context59.txt", 0.25, 0.04, 0.09, 0.0,
                  336, {}),
    "coco_object": ("COCOObjectDataset", "data/coco_stuff164k", "cls_coco_object.txt", 0.25, 0.01, 0.10, 0.1,
                    336, {}),
    "coco_stuff164k": ("COCOStuffDataset", "data/coco_stuff164k", "cls_coco_stuff.txt", 0.20, 0.02, 0.02, 0.0,
                       336, {}),
    "city_scapes": ("CityscapesDataset", "data/cityscapes", "cls_city_scapes.txt", 0.10, 0.03, 0.14, 0.0, 560,
                    dict(eigenscaling=False, prior_from_crop=True)),
    "ade20k": ("ADE20KDataset", "data/ade/ADEChallengeData2016", "cls_ade20k.txt", 0.30, 0.05, 0.06, 0.0, 336, {}),
}
BASE_FLAGS = dict(slide_crop=224, slide_stride=112, eigenscaling=True, prior_from_crop=False, pamr_steps=0,
                  logit_scale=40, clip_path="ViT-B/16", vfm_path=None, vfm="dino_vitb8")

# The published vocabularies (SCLIP/CASS naming) are benchmark definitions: a
# changed byte changes the numbers. sha256 of each file as shipped.
CLASS_FILE_SHA256 = {
    "cls_voc21.txt": "80a999b72db06a0167e2c998638cf6438a733e941704aa95d73e665df6ecb77b",
    "cls_voc20.txt": "3991e59b82d509928dcddd21120c80fbf027f1fbadd3a9559adc754057794d54",
    "cls_context60.txt": "c8278f9257ab2ed0d7499b99bd6c69485d15881768e26c64b01ee6cefad39eac",
    "cls_context59.txt": "6a45bee9f3acb41f923ebd9474ba5bca699eff3e1b67fc790e4e530d35ac2253",
    "cls_coco_object.txt": "9def7b4053370e367136d241faf6213f537775d4caa23a3c1762903c7a613155",
    "cls_coco_stuff.txt": "30c967b5149e46d74aae7762754abd5154b27ad804ee5b828ba37345e9462985",
    "cls_city_scapes.txt": "1e04fab22c8f884c3790855ebdb3c9cb43e0bd1e92a9ab2816378bf14f08dca2",
    "cls_ade20k.txt": "ff67f87ee44175aaa2190ba401d89ab2d7212cc70454da5a7bde51ce724965a7",
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_config_settings(name, tmp_path, monkeypatch):
    dataset_type, data_root, class_file, gamma, alpha, h, prob, short_side, flags = BENCHMARKS[name]
    monkeypatch.chdir(tmp_path)  # class files resolve next to the config, not here
    cfg = Config.fromfile(str(CONFIGS / f"cfg_{name}.py"))
    model = cfg.model
    assert model.type == "CASSSegmentor"
    assert Path(model.name_path) == CONFIGS / class_file and Path(model.name_path).is_absolute()
    assert (model.global_semantics_weight, model.mean_vector_weight, model.h_threshold, model.prob_thd) == \
        (gamma, alpha, h, prob)
    for key, value in {**BASE_FLAGS, **flags}.items():
        assert model[key] == value, key
    assert cfg.custom_imports.imports == ["cass.mmseg"] and cfg.custom_imports.allow_failed_imports is False

    loader = cfg.test_dataloader
    assert loader.batch_size == 1 and loader.sampler.shuffle is False
    assert loader.dataset.type == dataset_type and loader.dataset.data_root == data_root
    steps = [step.type for step in loader.dataset.pipeline]
    assert steps == ["LoadImageFromFile", "Resize", "LoadAnnotations", "PackSegInputs"]
    resize = loader.dataset.pipeline[1]
    assert tuple(resize.scale) == (2048, short_side) and resize.keep_ratio is True
    assert cfg.test_evaluator.iou_metrics == ["mIoU"] and cfg.test_cfg.type == "TestLoop"
    assert cfg.default_scope == "mmseg"

    # the class file has one class per dataset class
    queries, index, names = read_class_file(model.name_path)
    assert len(names) == len(DATASETS.get(dataset_type).METAINFO["classes"])


def test_class_files_are_the_published_vocabularies():
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(CONFIGS.glob("cls_*.txt"))}
    assert digests == CLASS_FILE_SHA256
    # spot checks of the protocol's naming
    background = read_class_file(CONFIGS / "cls_voc21.txt")[0][:3]
    assert background == ["sky", "wall", "tree"]
    queries, index, _ = read_class_file(CONFIGS / "cls_coco_object.txt")
    assert sorted(index[i] for i, q in enumerate(queries) if q == "bed") == [0, 60]  # background synonym and class


def test_configs_build_the_model_from_any_directory(tmp_path, weights_dir):
    """A config alone (custom_imports) registers and builds everything, from a foreign working directory."""
    script = f"""
import json, sys
from mmengine.config import Config
from mmseg.registry import MODELS
built = {{}}
for name in {sorted(BENCHMARKS)!r}:
    cfg = Config.fromfile({str(CONFIGS)!r} + f"/cfg_{{name}}.py")
    cfg.model.update(clip_path={str(weights_dir / "tiny_clip.pt")!r}, vfm_path={str(weights_dir / "tiny_dino.pth")!r},
                     vfm_overrides=dict(embed_dim=128, depth=2, num_heads=2), text_cache_dir=False)
    model = MODELS.build(cfg.model)
    config = model.model.config
    built[name] = [type(model).__name__, model.num_classes, config.window.slide_crop, config.spectral.eigenscaling]
print(json.dumps(built))
assert 'cass.mmseg' in sys.modules
"""
    env = dict(os.environ, PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    built = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (dataset_type, *_, flags) in BENCHMARKS.items():
        classes = len(DATASETS.get(dataset_type).METAINFO["classes"])
        assert built[name] == ["CASSSegmentor", classes, flags.get("slide_crop", 224), flags.get("eigenscaling", True)]


def test_method_protocols_merge_into_every_benchmark_config():
    """Each method's published settings are valid overrides of every benchmark config."""
    from mmengine.config import DictAction

    from cass.config import CASSConfig
    from cass.config_files import model_keys
    from cass.benchmarks import BENCHMARKS as BENCHMARK_CONFIGS
    from cass.methods import METHODS
    from cass.protocols import cfg_options

    assert tuple(BENCHMARK_CONFIGS) == tuple(f"cfg_{name}" for name in
                                             ("voc21", "context60", "coco_object", "voc20", "context59",
                                              "coco_stuff164k", "city_scapes", "ade20k"))
    assert set(BENCHMARK_CONFIGS) == {f"cfg_{name}" for name in BENCHMARKS}
    for name in BENCHMARKS:
        assert cfg_options("cass", f"cfg_{name}") == []  # the benchmark configs are CASS's protocol
    for method in list(METHODS)[1:]:
        for name in ("voc21", "coco_object", "city_scapes"):
            cfg = Config.fromfile(str(CONFIGS / f"cfg_{name}.py"))
            options = cfg_options(method, f"cfg_{name}")
            cfg.merge_from_dict({k: DictAction._parse_iterable(v) for k, v in (o.split("=", 1) for o in options)})
            published = METHODS[method].protocol[f"cfg_{name}"]
            assert cfg.model.method == method
            assert tuple(cfg.test_dataloader.dataset.pipeline[1].scale) == (2048, published["short_side"])
            assert cfg.test_dataloader.dataset.pipeline[1].type == "Resize"
            keys = {k: v for k, v in model_keys(cfg).items() if k not in ("clip_path", "vfm", "vfm_path", "name_path")}
            config = CASSConfig.from_keys(keys)  # every override is a model setting
            assert config.window.slide_crop == published["slide_crop"]
            assert config.output.prob_thd == published["prob_thd"]
            assert config.output.logit_scale == published["logit_scale"]
            # the class-name file: the method's own where it ships one, else the benchmark config's
            own = published.get("class_file")
            want = CONFIGS / own if own else CONFIGS / Path(Config.fromfile(str(CONFIGS / f"cfg_{name}.py")).model.name_path).name
            assert Path(cfg.model.name_path).resolve() == want.resolve()
        assert cfg_options(method, "cfg_voc21", "cass") == [f"model.method={method}"]
    sclip = METHODS["sclip"].protocol
    assert (sclip["cfg_voc21"]["area_thd"], sclip["cfg_voc21"]["logit_scale"]) == (0.1, 65)
    assert sclip["cfg_coco_stuff164k"]["short_side"] == 448
    assert METHODS["naclip"].protocol["cfg_voc20"]["slide_crop"] == 0
    assert METHODS["clearclip"].protocol["cfg_ade20k"]["slide_crop"] == 448
    with pytest.raises(KeyError, match="unknown method"):
        cfg_options("segformer", "cfg_voc21")
    result = subprocess.run([sys.executable, str(CONFIGS / "methods.py"), "naclip", "cfg_voc20"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "model.slide_crop=0" in result.stdout.splitlines()
