"""demo.py end to end: a subprocess with tiny weights, then error paths through main()."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_VFM, load_script, synthetic_photo
from PIL import Image

from cass.api import Segmenter
from cass.config import PRECISIONS
from cass.visualize import class_colors, overlay

REPO = Path(__file__).resolve().parents[1]
TINY_OPTIONS = ["--cfg-options"] + [f"model.vfm_overrides.{k}={v}" for k, v in TINY_VFM.items()]


@pytest.fixture(scope="module")
def demo():
    yield load_script("demo.py", "demo")
    sys.modules.pop("demo", None)


def weights_args(weights_dir):
    return ["--clip-path", str(weights_dir / "tiny_clip.pt"), "--vfm-path", str(weights_dir / "tiny_dino.pth")]


photo = synthetic_photo


def test_demo_subprocess_writes_png_legend_and_probs(weights_dir, tmp_path):
    image = photo()
    Image.fromarray(image).save(tmp_path / "photo.png")
    out, probs_file = tmp_path / "out" / "seg.png", tmp_path / "probs.npy"
    classes = "sky, grass, cat, dog, road"
    cmd = [sys.executable, str(REPO / "demo.py"), "--image", str(tmp_path / "photo.png"), "--classes", classes,
           "--out", str(out), "--save-probs", str(probs_file), "--device", "cpu", *weights_args(weights_dir),
           *TINY_OPTIONS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for stage in ("loading weights", "encoding text: 5 classes", "segmenting", "writing"):
        assert f"demo.py: {stage}" in proc.stderr

    probs = np.load(probs_file)
    assert probs.shape == (5, 120, 160) and probs.dtype == np.float32
    assert ((probs >= 0) & (probs <= 1)).all()
    labels = probs.argmax(0)
    present = set(np.unique(labels).tolist())
    assert 1 < len(present) < 5, "the check below needs classes both present and absent"

    # The same settings in-process give the same result.
    api = Segmenter(classes=[c.strip() for c in classes.split(",")], clip_path=str(weights_dir / "tiny_clip.pt"),
                    vfm_path=str(weights_dir / "tiny_dino.pth"), vfm_overrides=TINY_VFM)(image)
    np.testing.assert_allclose(probs, api.probs, atol=1e-6)
    np.testing.assert_array_equal(labels, api.labels)

    sidecar = json.loads(out.with_suffix(".json").read_text())
    names = ["sky", "grass", "cat", "dog", "road"]
    assert sidecar["classes"] == names and (sidecar["height"], sidecar["width"]) == (120, 160)
    counts = np.bincount(labels.ravel(), minlength=5)
    assert {e["name"]: e["share"] for e in sidecar["legend"]} == {
        names[c]: pytest.approx(100 * counts[c] / labels.size, abs=1e-3) for c in present}
    for entry in sidecar["legend"]:
        assert f"{entry['name']}" in proc.stdout

    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] >= 120 and picture.shape[1] > 160
    colors = class_colors(5)
    np.testing.assert_array_equal(picture[:120, :160], np.asarray(overlay(image, labels, colors)))
    panel = {tuple(p) for p in picture[:, 160:].reshape(-1, 3)}
    assert {c for c in range(5) if tuple(colors[c]) in panel} == present


def test_demo_subprocess_error_is_one_line(tmp_path):
    cmd = [sys.executable, str(REPO / "demo.py"), "--clip-path", str(tmp_path / "ViT-B-16.pt"),
           "--out", str(tmp_path / "x.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == f"demo.py: CLIP weights file not found: {tmp_path / 'ViT-B-16.pt'}"
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.png").exists()


def test_demo_defaults_to_a_bundled_photo(demo, weights_dir, tmp_path, capsys):
    out = tmp_path / "demo_out.png"
    assert demo.main(["--out", str(out), *weights_args(weights_dir), *TINY_OPTIONS]) == 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert (sidecar["height"], sidecar["width"]) == (512, 512)
    assert sidecar["classes"] == ["person", "flag", "rocket", "wall"]
    assert Image.open(out).size[1] >= 512
    assert sum(e["share"] for e in sidecar["legend"]) == pytest.approx(100, abs=0.01)


@pytest.mark.parametrize("args, message", [
    (["--image", "missing.jpg"], "demo.py: image not found: missing.jpg"),
    (["--image", "garbage.jpg"], "demo.py: cannot read image garbage.jpg: not an image format OpenCV can decode"),
    (["--classes", ""], "demo.py: class list: no classes"),
    (["--classes", "cat, dog, cat"], "demo.py: class list: classes 1 and 3 are the same: 'cat'"),
    (["--class-file", "none.txt"], "demo.py: class-name file not found: none.txt"),
    (["--config", "none.py"], "demo.py: config not found: none.py"),
    (["--cfg-options", "model.precision=fp64"], "demo.py: precision must be one of"),
    (["--cfg-options", "model.bogus=1"], "demo.py: unknown model setting "),
    (["--device", "gpu"], "demo.py: unknown device 'gpu'"),
])
def test_demo_errors_are_one_line(demo, weights_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    Path("garbage.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(photo(20, 20)).save("ok.png")
    argv = ["--image", "ok.png", *weights_args(weights_dir), *args]
    if "--cfg-options" not in args:
        argv += TINY_OPTIONS
    assert demo.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(message) and "Traceback" not in "\n".join(err)
    assert not Path("demo_out.png").exists()


def test_demo_offline_names_the_file_and_flag(demo, tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "x.png")]) == 1
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith("demo.py: ViT-B-16.pt is not in") and "--clip-path" in line


def test_demo_usage_errors_exit_2(demo, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--classes", "cat", "--class-file", "classes.txt"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_demo_folder_run_reports_a_bad_image_and_goes_on(demo, weights_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(11):
        Image.fromarray(photo(40 + i, 50)).save(folder / ("sub" if i % 4 == 0 else ".") / f"img{i:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(photo(2, 3000)).save(folder / "sliver.png")  # resized to less than a patch
    (folder / "notes.txt").write_text("not an image: ignored by suffix")
    out = tmp_path / "results"
    argv = ["--image", str(folder), "--out-dir", str(out), "--classes", "sky, grass", "--batch-size", "5",
            "--save-probs", *weights_args(weights_dir), *TINY_OPTIONS]
    assert demo.main(argv) == 1
    err = capsys.readouterr().err
    assert f"failed: {folder / 'broken.jpg'}: cannot read image" in err
    assert f"failed: {folder / 'sliver.png'}: a 3000x2 image is resized to" in err
    assert "11 of 13 image(s) segmented, 2 failed" in err
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(pngs) == 11 and "sub/img00.png" in pngs and "img01.png" in pngs
    for png in out.rglob("*.png"):
        legend = json.loads(png.with_suffix(".json").read_text())
        probs = np.load(png.with_suffix(".npy"))
        assert probs.shape == (2, legend["height"], legend["width"])
    # a second run skips what exists and retries only the bad image
    before = (out / "img01.png").stat().st_mtime_ns
    assert demo.main(argv) == 1
    err = capsys.readouterr().err
    assert "skipping 11 image(s)" in err and "0 of 2 image(s) segmented, 2 failed" in err
    assert (out / "img01.png").stat().st_mtime_ns == before
    # --overwrite redoes them; a glob selects files
    (folder / "broken.jpg").unlink()
    (folder / "sliver.png").unlink()
    assert demo.main([*argv, "--overwrite"]) == 0
    assert "11 of 11 image(s) segmented" in capsys.readouterr().err
    assert (out / "img01.png").stat().st_mtime_ns != before
    globbed = tmp_path / "globbed"
    assert demo.main(["--image", str(folder / "img0[1-3].png"), "--out-dir", str(globbed), "--classes", "sky",
                      *weights_args(weights_dir), *TINY_OPTIONS]) == 0
    assert sorted(p.name for p in globbed.glob("*.png")) == ["img01.png", "img02.png", "img03.png"]


def test_demo_batch_usage_errors(demo, weights_dir, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for folder in (a, b):
        Image.fromarray(photo(20, 20)).save(folder / "same.png")
    cases = [
        (["--image", str(a / "same.png"), str(b / "same.png")], "would both write"),
        (["--image", str(a), "--out", str(tmp_path / "x.png")], "--out names one output"),
        (["--image", str(tmp_path / "none" / "*.png")], "no file matches"),
        (["--image", str(tmp_path / "empty")], "image not found"),
    ]
    (tmp_path / "empty").mkdir()
    cases[-1] = (["--image", str(tmp_path / "empty")], "no image files")
    for args, message in cases:
        assert demo.main([*args, *weights_args(weights_dir), *TINY_OPTIONS]) == 1
        line = capsys.readouterr().err.splitlines()[-1]
        assert message in line, line


def test_demo_old_flag_names_are_aliases(demo, weights_dir, tmp_path, capsys):
    """--save-logits (it always wrote probabilities) and --dino-path: the same results as --save-probs and
    --vfm-path; the old save flag's help says it is the old name."""
    Image.fromarray(photo(40, 56)).save(tmp_path / "photo.png")
    weights = dict(clip=str(weights_dir / "tiny_clip.pt"), vfm=str(weights_dir / "tiny_dino.pth"))
    outputs = {}
    for save, vfm in (("--save-probs", "--vfm-path"), ("--save-logits", "--dino-path")):
        npy = tmp_path / f"{save[2:]}.npy"
        argv = ["--image", str(tmp_path / "photo.png"), "--classes", "sky, grass", "--out", str(tmp_path / "o.png"),
                save, str(npy), "--clip-path", weights["clip"], vfm, weights["vfm"], *TINY_OPTIONS]
        args = demo.parse_args(argv)
        assert (args.save_probs, args.vfm_path) == (str(npy), weights["vfm"])
        assert demo.main(argv) == 0
        outputs[save] = np.load(npy)
    np.testing.assert_array_equal(outputs["--save-logits"], outputs["--save-probs"])
    assert outputs["--save-probs"].shape == (2, 40, 56)
    assert "demo.py: warning: --save-logits is deprecated; use --save-probs" in capsys.readouterr().err
    assert demo.parse_args(["--save-logits"]).save_probs is True  # one .npy beside each PNG, as --save-probs
    assert demo.parse_args([]).save_probs is None
    with pytest.raises(SystemExit):
        demo.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--save-logits [NPY] deprecated: the old name of --save-probs" in help_text


def test_demo_precision_choices_are_the_configs(demo, capsys):
    for precision in PRECISIONS:
        assert demo.parse_args(["--precision", precision]).precision == precision
    assert demo.parse_args([]).precision is None  # the config's
    with pytest.raises(SystemExit):
        demo.parse_args(["--precision", "fp64"])
    assert "invalid choice: 'fp64'" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["published", "cass"])
def test_demo_and_eval_apply_the_same_protocol(demo, weights_dir, tmp_path, monkeypatch, protocol):
    """The same --config, --protocol and --cfg-options give demo.py's Segmenter and eval.py's config the
    same settings: ClearCLIP's published VOC21 windows, resize and class file, or the config's (cass), and
    the explicit option over either."""
    from cass.config import CASSConfig
    from cass.config_files import resize_scale
    from cass.benchmarks import CONFIGS_DIR
    from cass.text import read_class_file

    flags = ["--config", str(CONFIGS_DIR / "cfg_voc21.py"), "--protocol", protocol,
             "--clip-path", str(weights_dir / "tiny_clip.pt"),
             "--cfg-options", "model.method=clearclip", "model.area_thd=0.05"]
    built = []

    class Built(Exception):
        pass

    class Recording(Segmenter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
            raise Built  # the settings are all that is compared

    monkeypatch.setattr(demo, "Segmenter", Recording)
    with pytest.raises(Built):
        demo.main([*flags, "--device", "cpu", "--out", str(tmp_path / "out.png")])
    segmenter = built[0]
    eval_script = load_script("eval.py", "eval_script")
    cfg = eval_script.build_config(eval_script.parse_args(flags))
    table = CASSConfig.key_table()
    assert segmenter.model.config == CASSConfig.from_keys({k: v for k, v in cfg.model.items() if k in table})
    assert segmenter.scale == resize_scale(cfg)
    assert list(segmenter.model.vocabulary.queries) == read_class_file(cfg.model.name_path)[0]
    window = segmenter.model.config.window
    assert segmenter.model.config.output.area_thd == 0.05  # the explicit option, over the protocol's 0.0
    if protocol == "published":  # clearclip's own: 448 windows, short side 448, its VOC21 class names
        assert (window.slide_crop, window.slide_stride, segmenter.scale) == (448, 224, (2048, 448))
        assert (segmenter.model.config.output.prob_thd, segmenter.model.config.output.logit_scale) == (0.5, 50)
        assert Path(cfg.model.name_path) == CONFIGS_DIR / "clearclip" / "cls_voc21.txt"
    else:  # the config's: the whole image, short side 336, the benchmark's class names
        assert (window.slide_crop, segmenter.scale, segmenter.model.config.output.prob_thd) == (0, (2048, 336), 0.1)
        assert Path(cfg.model.name_path).resolve() == (CONFIGS_DIR / "cls_voc21.txt").resolve()
