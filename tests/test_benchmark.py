"""benchmark.py and the released-structure baseline, with tiny random models."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_script, model_keys, stages_seen
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from cass import build_model, stages
from cass.bench import reference_loop
from cass.config import PRECISIONS
from cass.random_weights import random_dino

ROOT = Path(__file__).resolve().parents[1]


benchmark = load_script("benchmark.py", "benchmark")


@pytest.fixture()
def build(weights_dir, class_file):
    def make(**overrides):
        return build_model(**model_keys(weights_dir, class_file, **overrides))
    return make


def labels_and_logits(model, image, logits):
    return model.postprocess(logits.clone(), image, tuple(image.shape[-2:])).labels


@pytest.mark.parametrize("overrides, size", [
    (dict(), (224, 336)),
    (dict(slide_crop=0), (240, 352)),
    (dict(prior_from_crop=True, swapped_pairing=False, eigenscaling=False), (224, 336)),
    (dict(canonical_matching=False, dino_input="plain"), (224, 336)),
    (dict(attn_strategy="sequential"), (224, 336)),
])
def test_reference_loop_agrees_with_fast_path(build, overrides, size):
    seg = build(**overrides)
    image = benchmark.random_images(1, size, seed=3)[0]
    with torch.no_grad():
        fast = seg.query_logits([image])[0]
        slow = reference_loop.query_logits(seg, image, exact_low_rank=True)
    torch.testing.assert_close(slow, fast, atol=2e-4, rtol=1e-4)
    same = (labels_and_logits(seg, image, slow) == labels_and_logits(seg, image, fast)).float().mean()
    assert same >= 0.99


def test_reference_loop_randomised_svd_close_to_exact(build):
    # The release's torch.svd_lowrank(q=10) only approximates the top-10 eigenpairs.
    seg = build()
    image = benchmark.random_images(1, (224, 336), seed=4)[0]
    torch.manual_seed(0)
    with torch.no_grad():
        fast = seg.query_logits([image])[0]
        slow = reference_loop.query_logits(seg, image)
    same = (labels_and_logits(seg, image, slow) == labels_and_logits(seg, image, fast)).float().mean()
    assert same >= 0.9
    assert (slow - fast).abs().mean() < 0.02


def test_reference_loop_rejects_unsupported_settings(build):
    seg = build(low_rank=None)
    with pytest.raises(ValueError, match="low_rank"):
        reference_loop.query_logits(seg, benchmark.random_images(1, (224, 224))[0])


class FakeClock:
    """A clock that moves only when told to (seconds that are exact binary fractions)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_stage_timer_counts_exclusive_time():
    clock = FakeClock()
    timer = benchmark.StageTimer(torch.device("cpu"), clock=clock)
    with timer.stage("outer"):
        clock.advance(2.0)
        with timer.stage("inner"):
            clock.advance(3.0)
        with timer.stage("inner"):
            clock.advance(0.5)
            with timer.stage("deepest"):
                clock.advance(4.0)
        clock.advance(0.25)
    assert timer.times == {"outer": 2.25, "inner": 3.5, "deepest": 4.0}
    assert sum(timer.times.values()) == clock.now  # exclusive times add up to the whole run


def test_stages_are_observed_without_patching(build):
    model = build()
    image = benchmark.random_images(1, (224, 224))[0]
    seen = stages_seen(lambda: model([image]))
    sam_stages = {"sam", "aggregate", "refine", "masks", "regions"}  # SAM's: test_trident_method.py; regions:
    # test_corrclip_method.py
    assert set(seen) == set(stages.STAGES) - sam_stages
    observed = len(seen)
    model([image])  # no observer any more
    assert len(seen) == observed
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model([image])
    names = {event.key for event in prof.key_averages()}
    assert {f"cass.{name}" for name in set(stages.STAGES) - sam_stages} <= names


def slide_grids(side, crop=224, stride=112):
    """mmseg's slide inference: windows along one side."""
    return max(side - crop + stride - 1, 0) // stride + 1


def test_main_reports_numbers_that_match_a_recomputation(tmp_path, capsys):
    out = tmp_path / "result.json"
    size = (224, 336)
    argv = ["--tiny", "--mode", "both", "--size", "224", "336", "--num-classes", "6", "--repeats", "2",
            "--warmup", "0", "--breakdown-repeats", "1", "--check-agreement", "--precision", "bf16",
            "--agreement-images", "2", "--json", str(out)]
    assert benchmark.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("command: python benchmark.py --tiny --mode both")
    result = json.loads(out.read_text())
    setting = result["setting"]
    assert setting["crops"] == slide_grids(size[0]) * slide_grids(size[1]) == 2
    assert (setting["size"], setting["ori_size"]) == ([224, 336], [224, 336])
    assert (setting["classes"], setting["queries"], setting["vocabulary"]) == (6, 6, "6 names 'class i'")
    assert (setting["precision"], setting["settings"]["precision"]) == ("bf16", "bf16")
    for mode in ("fast", "reference-loop"):
        r = result[mode]
        assert len(r["seconds_per_run"]) == 2 and all(t > 0 for t in r["seconds_per_run"])
        assert r["median_s"] == pytest.approx(float(np.median(r["seconds_per_run"])))
        assert r["images_per_s"] == pytest.approx(1 / r["median_s"])
        assert r["ms_per_image"] == pytest.approx(1000 * r["median_s"])
        assert r["peak_memory_mb"] > 0
        stages = r["stages_ms_per_image"]
        assert set(stages) == set(benchmark.STAGES)
        assert all(v >= 0 for v in stages.values())
        assert all(stages[k] > 0 for k in ("clip", "dino", "spectral", "text", "post"))
        assert sum(stages.values()) == pytest.approx(r["instrumented_ms_per_image"])
        assert f"{mode}:" in printed
    assert result["speedup"] == pytest.approx(result["fast"]["images_per_s"] / result["reference-loop"]["images_per_s"])

    # The same model, rebuilt here from the reported settings and the seed-0 random towers.
    names = [f"class {i}" for i in range(6)]
    model = build_model(**setting["settings"], vfm="dino_vitb8", classes=names,
                        clip_model=benchmark.random_openai_clip(True, 0, "ViT-B/16"), vfm_model=random_dino(True, 0))
    embeddings = model.text_state()[0].double().numpy()
    tree = linkage(pdist(embeddings, "cosine"), method="ward")
    assert setting["clusters"] == fcluster(tree, t=setting["settings"]["h_threshold"], criterion="distance").max()
    # Agreement: labels of the float32 copy and of the bf16 model on the seed-1 images, one image per call.
    reference = build_model(**{**setting["settings"], "precision": "fp32"}, vfm="dino_vitb8", classes=names,
                            clip_model=copy.deepcopy(model.clip), vfm_model=copy.deepcopy(model.vfm))
    images = benchmark.random_images(2, size, seed=1)
    with torch.no_grad():
        same = [(reference([image], [size])[0].labels == model([image], [size])[0].labels).double().mean()
                for image in images]
    agreement = result["agreement"]
    assert (agreement["images"], agreement["precision"]) == (2, "bf16")
    pixel = 1 / (size[0] * size[1])  # reported as float32 shares: equal to well within one pixel
    assert agreement["pixel_agreement"] == pytest.approx(float(sum(same) / 2), abs=pixel / 100)
    assert agreement["worst_image_agreement"] == pytest.approx(float(min(same)), abs=pixel / 100)
    assert 0 <= agreement["worst_image_agreement"] <= agreement["pixel_agreement"] <= 1


def test_main_text_mode(tmp_path):
    out = tmp_path / "text.json"
    argv = ["--tiny", "--mode", "text", "--num-classes", "3", "--text-reference-classes", "2", "--json", str(out)]
    assert benchmark.main(argv) == 0
    text = json.loads(out.read_text())["text"]
    assert text["queries"] == 3 and text["prompts"] == 3 * 80
    assert text["cold_s"] > 0 and text["cached_s"] > 0 and text["cache_identical"]
    assert text["released_max_abs_diff"] < 1e-5  # truncating at the longest EOT changes nothing
    assert text["longest_eot"] < 77


def test_main_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--repeats", "0"])
    assert exit_info.value.code == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("method, stages", [("naclip", ("clip", "spectral", "text", "post")),
                                            ("proxyclip", ("clip", "dino", "spectral", "text", "post"))])
def test_main_times_a_baseline_through_the_same_stages(method, stages, tmp_path, capsys):
    out = tmp_path / "result.json"
    argv = ["--tiny", "--method", method, "--size", "224", "336", "--num-classes", "4", "--repeats", "1",
            "--warmup", "0", "--breakdown-repeats", "1", "--cfg-options", "model.slide_crop=0", "--json", str(out)]
    assert benchmark.main(argv) == 0
    assert f"method {method}, CLIP ViT-B/16 + dino_vitb8;" in capsys.readouterr().out
    result = json.loads(out.read_text())
    setting = result["setting"]
    assert setting["method"] == method and setting["settings"]["method"] == method
    assert (setting["crops"], setting["crop_desc"], setting["settings"]["slide_crop"]) == (1, "whole-image pass", 0)
    assert setting["precision"] == "fp32"  # the config's 'auto' on the CPU
    timed = result["fast"]["stages_ms_per_image"]
    assert all(timed[k] > 0 for k in stages)
    if method == "naclip":
        assert timed["dino"] == 0  # no VFM in a CLIP-only baseline
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--tiny", "--method", method, "--mode", "both"])
    assert exit_info.value.code == 2
    assert "the released code's structure exists for CASS only" in capsys.readouterr().err


def test_main_times_other_backbones(tmp_path, capsys):
    """--clip and --vfm: another pair through the same loader and stages; the released structure is refused
    for a VFM with register tokens."""
    out = tmp_path / "result.json"
    argv = ["--tiny", "--clip", "ViT-L/14", "--vfm", "dinov3_vitl16", "--size", "224", "336", "--num-classes", "4",
            "--repeats", "1", "--warmup", "0", "--breakdown-repeats", "1", "--json", str(out)]
    assert benchmark.main(argv) == 0
    assert "method cass, CLIP ViT-L/14 + dinov3_vitl16;" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (result["setting"]["clip"], result["setting"]["vfm"]) == ("ViT-L/14", "dinov3_vitl16")
    assert all(result["fast"]["stages_ms_per_image"][k] > 0 for k in ("clip", "dino", "spectral", "text", "post"))
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--tiny", "--vfm", "dinov2_vitb14_reg4", "--mode", "both"])
    assert exit_info.value.code == 2
    assert "for VFMs with a CLS token only" in capsys.readouterr().err


def test_cfg_options_take_the_model_form(capsys):
    """The same form as eval.py and demo.py; --method is model.method; a bare key is refused in one line."""
    args = benchmark.parse_args(["--cfg-options", "model.slide_crop=0", "model.vfm=dino_vitb16",
                                 "--method", "sclip"])
    assert (args.model_keys["slide_crop"], args.model_keys["method"], args.vfm) == (0, "sclip", "dino_vitb16")
    assert args.model_keys["global_semantics_weight"] == 0.3  # the rest from configs/cfg_ade20k.py
    for option, message in [
        ("slide_crop=0", "--cfg-options slide_crop=...: write model.slide_crop=... "
                         "(mmseg's form, as in eval.py and demo.py)"),
        ("test_dataloader.num_workers=0", "--cfg-options test_dataloader.num_workers=...: benchmark.py takes "
                                          "the model's settings only, model.<key>=..."),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(["--cfg-options", option])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"benchmark.py: error: {message}"


def test_published_protocol_takes_the_methods_settings_and_class_file():
    """--protocol published: the method's windows, VFM, mask settings and its own class file, as eval.py
    applies them; --cfg-options still win."""
    from cass.benchmarks import CONFIGS_DIR

    args = benchmark.parse_args(["--method", "corrclip", "--protocol", "published",
                                 "--cfg-options", "model.points_per_side=8"])
    keys = args.model_keys
    assert (keys["slide_crop"], keys["slide_stride"], keys["mask_generator"]) == (336, 112, "sam2")
    assert keys["points_per_side"] == 8 and args.vfm == "dino_vitb8"
    assert Path(keys["name_path"]) == CONFIGS_DIR / "corrclip" / "cls_ade20k.txt"
    assert benchmark.vocabulary(None, keys["name_path"])[1] == keys["name_path"]


def test_unknown_setting_fails_before_the_towers(monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "random_openai_clip", lambda *a: pytest.fail("a tower was built"))
    assert benchmark.main(["--tiny", "--cfg-options", "model.slide_crops=0"]) == 1
    assert "unknown model setting 'slide_crops' (did you mean 'slide_crop'?)" in capsys.readouterr().err


def test_precision_choices_and_default_are_the_configs(capsys):
    for precision in PRECISIONS:
        args = benchmark.parse_args(["--precision", precision])
        assert benchmark.model_settings(args.model_keys, args.precision, 32)["precision"] == precision
    args = benchmark.parse_args([])
    assert args.precision is None
    assert benchmark.model_settings(args.model_keys, None, 32)["precision"] == "auto"  # configs/_base_
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--precision", "fp64"])
    assert "invalid choice: 'fp64'" in capsys.readouterr().err


def test_real_weights_load_through_build_model_under_both_flag_names(weights_dir):
    """--clip-path/--vfm-path and their deprecated names --clip-weights/--dino-weights give the same model;
    the files (written from the seed-0 random towers, CLIP rounded to float16 like OpenAI's release) load
    to the random towers."""
    random_model = benchmark.timed_model(benchmark.parse_args(["--tiny"]), ["cat", "dog"])
    for clip_flag, vfm_flag in (("--clip-path", "--vfm-path"), ("--clip-weights", "--dino-weights")):
        files = [str(weights_dir / "tiny_clip.pt"), str(weights_dir / "tiny_dino.pth")]
        args = benchmark.parse_args(["--tiny", clip_flag, files[0], vfm_flag, files[1]])
        assert [args.clip_path, args.vfm_path] == files
        model = benchmark.timed_model(args, ["cat", "dog"])
        for name, value in random_model.vfm.state_dict().items():
            torch.testing.assert_close(model.vfm.state_dict()[name], value, rtol=0, atol=0)
        for name, value in random_model.clip.state_dict().items():
            expected = value.half().float() if value.is_floating_point() else value
            torch.testing.assert_close(model.clip.state_dict()[name], expected, rtol=0, atol=0)
