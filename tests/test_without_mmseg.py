"""The model, the image API and demo.py in a process where mmcv and mmseg cannot be imported."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY_VFM

REPO = Path(__file__).resolve().parents[1]

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('mmcv', 'mmseg'):
            raise ImportError(f'blocked for this test: {name}')
sys.meta_path.insert(0, Block())
"""


def run_blocked(code, tmp_path):
    env = {"PYTHONPATH": str(REPO), "CASS_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_model_api_and_demo_run_without_mmcv_or_mmseg(weights_dir, tmp_path):
    clip, dino = weights_dir / "tiny_clip.pt", weights_dir / "tiny_dino.pth"
    code = f"""
import json, sys
import numpy as np, torch
import cass
from cass import Segmenter, build_model
from cass.images import normalise
try:
    import mmseg
except ImportError:
    pass
else:
    raise SystemExit('mmseg was importable')
model = build_model(clip_path={str(clip)!r}, vfm_path={str(dino)!r}, vfm_overrides={TINY_VFM!r},
                    classes=['sky', 'cat, kitten'], global_semantics_weight=0.3)
pred = model([torch.randn(3, 224, 336)])[0]
segmenter = Segmenter(classes=['sky', 'cat'], clip_path={str(clip)!r}, vfm_path={str(dino)!r},
                      vfm_overrides={TINY_VFM!r})
result = segmenter(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
sys.path.insert(0, {str(REPO)!r})
import demo
code = demo.main(['--classes', 'person, rocket', '--out', 'out.png', '--clip-path', {str(clip)!r},
                  '--vfm-path', {str(dino)!r}, '--cfg-options'] + [f'model.vfm_overrides.{{k}}={{v}}' for k, v in {TINY_VFM!r}.items()])
try:
    import cass.mmseg
except ImportError as err:
    adapter_error = str(err)
blocked = sorted(m for m in sys.modules if m.split('.')[0] in ('mmcv', 'mmseg'))
print(json.dumps(dict(labels=list(pred.labels.shape), probs=list(result.probs.shape), demo=code,
                      adapter_error=adapter_error, blocked=blocked)))
"""
    result = run_blocked(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["labels"] == [224, 336] and report["probs"] == [2, 60, 80]
    assert report["demo"] == 0 and (tmp_path / "out.png").is_file() and (tmp_path / "out.json").is_file()
    assert report["blocked"] == []
    message = report["adapter_error"]
    assert "cass.mmseg needs mmcv" in message and "setup.sh" in message and "\n" not in message
