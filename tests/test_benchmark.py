"""benchmark.py and the released-structure baseline, with tiny random models."""
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from conftest import model_keys

from cass import build_model, stages
from cass.bench import reference_loop

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = load_benchmark()


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


def test_stage_timer_counts_exclusive_time():
    timer = benchmark.StageTimer(torch.device("cpu"))
    with timer.stage("outer"):
        time.sleep(0.02)
        with timer.stage("inner"):
            time.sleep(0.03)
        with timer.stage("inner"):
            time.sleep(0.01)
    assert 0.035 <= timer.times["inner"] < 0.1
    assert 0.015 <= timer.times["outer"] < 0.06


def test_stages_are_observed_without_patching(build):
    model = build()
    image = benchmark.random_images(1, (224, 224))[0]
    seen = []

    class Recorder:
        def stage(self, name):
            seen.append(name)
            return torch.autograd.profiler.record_function("noop")

    with stages.observe_stages(Recorder()):
        model([image])
    assert set(seen) == set(stages.STAGES)
    seen.clear()
    model([image])  # no observer any more
    assert seen == []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model([image])
    names = {event.key for event in prof.key_averages()}
    assert {f"cass.{name}" for name in stages.STAGES} <= names


def test_main_reports_sane_numbers(tmp_path, capsys):
    out = tmp_path / "result.json"
    argv = ["--tiny", "--mode", "both", "--size", "224", "336", "--num-classes", "6", "--repeats", "2",
            "--warmup", "0", "--breakdown-repeats", "1", "--check-agreement", "--precision", "bf16",
            "--agreement-images", "1",
            "--json", str(out)]
    assert benchmark.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("command: python benchmark.py --tiny --mode both")
    result = json.loads(out.read_text())
    setting = result["setting"]
    assert setting["crops"] == 2 and setting["classes"] == 6 and 1 <= setting["clusters"] <= 6
    for mode in ("fast", "reference-loop"):
        r = result[mode]
        assert len(r["seconds_per_run"]) == 2 and all(t > 0 for t in r["seconds_per_run"])
        assert r["median_s"] > 0 and r["images_per_s"] == pytest.approx(1 / r["median_s"])
        assert r["ms_per_image"] == pytest.approx(1000 * r["median_s"])
        assert r["peak_memory_mb"] > 0
        stages = r["stages_ms_per_image"]
        assert set(stages) == set(benchmark.STAGES)
        assert all(v >= 0 for v in stages.values())
        assert all(stages[k] > 0 for k in ("clip", "dino", "spectral", "text", "post"))
        assert sum(stages.values()) <= r["instrumented_ms_per_image"] * (1 + 1e-9)
        assert f"{mode}:" in printed
    assert result["speedup"] > 0
    agreement = result["agreement"]
    assert agreement["images"] == 1 and agreement["precision"] == "bf16"
    assert 0.95 <= agreement["pixel_agreement"] < 1.0  # bfloat16 moves a few labels, not many


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
            "--warmup", "0", "--breakdown-repeats", "1", "--json", str(out)]
    assert benchmark.main(argv) == 0
    assert f"method {method}, CLIP ViT-B/16 + dino_vitb8;" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["setting"]["method"] == method and result["setting"]["settings"]["method"] == method
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
