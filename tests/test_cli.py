"""The weights flags of every entry point (cass.cli): one spelling each, the old ones as deprecated aliases."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_FLAGS = {"--clip-path": "clip_path", "--vfm-path": "vfm_path", "--sam-path": "sam_path",
                 "--mask-path": "mask_path"}
# Each entry point: the arguments it needs besides the weights flags, and its old flag names (old -> new).
DINO_PATH = {"--dino-path": "--vfm-path"}
ENTRY_POINTS = {
    "eval.py": (["--config", "configs/cfg_voc21.py"], DINO_PATH),
    "demo.py": ([], DINO_PATH),
    "app.py": ([], DINO_PATH),
    "benchmark.py": ([], {"--clip-weights": "--clip-path", "--vfm-weights": "--vfm-path",
                          "--dino-weights": "--vfm-path", "--sam-weights": "--sam-path"}),
}
OLD_NAMES = [(script, old, new) for script, (_, old_names) in ENTRY_POINTS.items() for old, new in old_names.items()]


@pytest.fixture(scope="module")
def scripts():
    """``scripts(name)``: the entry point ``name`` ("eval.py", ...) imported once, as module ``cli_<stem>``."""
    loaded = {}

    def load(script: str):
        if script not in loaded:
            if script == "app.py":
                pytest.importorskip("gradio", reason="the app needs gradio: pip install -e .[app]")
            loaded[script] = load_script(script, f"cli_{script[:-3]}")
        return loaded[script]

    yield load
    for script in loaded:
        sys.modules.pop(f"cli_{script[:-3]}", None)


@pytest.fixture(scope="module")
def parse(scripts):
    """``parse(script, argv)``: the entry point's ``parse_args`` on its required arguments and ``argv``."""
    return lambda script, argv: scripts(script).parse_args([*ENTRY_POINTS[script][0], *argv])


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_every_entry_point_takes_the_weights_flags(parse, script, capsys):
    args = parse(script, [])
    assert [getattr(args, dest) for dest in WEIGHTS_FLAGS.values()] == [None] * len(WEIGHTS_FLAGS)
    argv = [part for flag in WEIGHTS_FLAGS for part in (flag, f"{flag[2:]}.pth")]
    args = parse(script, argv)
    assert {dest: getattr(args, dest) for dest in WEIGHTS_FLAGS.values()} == {
        "clip_path": "clip-path.pth", "vfm_path": "vfm-path.pth", "sam_path": "sam-path.pth",
        "mask_path": "mask-path.pth"}
    assert capsys.readouterr().err == ""  # the current names do not warn


@pytest.mark.parametrize("script, old, new", OLD_NAMES)
def test_old_names_are_deprecated_aliases_that_warn(parse, script, old, new, capsys):
    args = parse(script, [old, "w.pth"])
    assert getattr(args, WEIGHTS_FLAGS[new]) == "w.pth"
    assert [getattr(args, dest) for flag, dest in WEIGHTS_FLAGS.items() if flag != new] == [None] * (len(WEIGHTS_FLAGS) - 1)
    assert capsys.readouterr().err == f"{script}: warning: {old} is deprecated; use {new}\n"


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_names_the_defaults_and_the_old_names(parse, script, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps at hyphens too: keep each help on one line
    with pytest.raises(SystemExit):
        parse(script, ["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    # benchmark.py times random weights without the flags; the others download the public ones
    default = "default: random weights" if script == "benchmark.py" else "default: the public weights, downloaded once"
    assert help_text.count(default) == len(WEIGHTS_FLAGS)
    for old, new in ENTRY_POINTS[script][1].items():
        assert f"{old} {WEIGHTS_FLAGS[new].upper()} deprecated: the old name of {new}" in help_text


def test_cli_module_imports_no_torch():
    """eval.py defines its flags through cass.cli and answers a bad command line before importing torch."""
    code = "import sys, cass.cli; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_eval_sam_path_reaches_the_model(scripts, tmp_path, monkeypatch):
    """eval.py --sam-path sets the model's sam_path, in place of the config's sam_ckpt (Trident's key),
    and the mmseg segmentor hands it to build_model."""
    pytest.importorskip("mmseg", reason="eval.py needs mmseg")
    from mmseg.registry import MODELS

    from cass.mmseg import segmentor

    config = tmp_path / "cfg_trident.py"
    config.write_text(f"_base_ = [{str(REPO / 'configs' / 'cfg_voc21.py')!r}]\n"
                      "model = dict(method='trident', sam_ckpt='release.pth')\n")
    eval_script = scripts("eval.py")
    cfg = eval_script.build_config(eval_script.parse_args(["--config", str(config)]))
    assert cfg.model.sam_ckpt == "release.pth" and "sam_path" not in cfg.model  # without the flag: the config's
    cfg = eval_script.build_config(eval_script.parse_args(["--config", str(config), "--sam-path", "s.pth"]))
    assert cfg.model.sam_path == "s.pth" and "sam_ckpt" not in cfg.model
    seen = {}
    monkeypatch.setattr(segmentor, "build_model", lambda **keys: seen.update(keys) or torch.nn.Identity())
    MODELS.build(cfg.model)
    assert seen["sam_path"] == "s.pth" and "sam_ckpt" not in seen
