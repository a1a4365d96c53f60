"""Shared fixtures: tiny random CLIP/DINO models written in the release formats.

Tiny CLIP: ViT with patch 16, width 128 (2 heads of 64), 2 layers, 32-d output;
text tower width 64, 1 layer. Tiny DINO: timm ViT-B/8 layout with width 128,
2 heads, 2 layers. Both go through the same builders as the real models.
"""
from __future__ import annotations

import os

# Triton kernels (cass.eigh) run in Triton's interpreter on the CPU; the switch
# is read when Triton is imported, so it is set before anything imports it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from cass.random_weights import TINY_VFM, random_clip, random_dino, write_clip, write_dino  # noqa: E402

__all__ = ["REPO", "TINY_VFM", "bare_repository", "load_script", "model_keys", "one_line_error", "segmentor_cfg", "synthetic_photo", "tiny_clip",
           "tiny_dino", "write_clip_state_dict", "write_dino_checkpoint"]
REPO = Path(__file__).resolve().parents[1]


def bare_repository(source: Path, bare: Path) -> Path:
    """``source`` committed as a git work tree and cloned to the bare git directory ``bare`` (a mirror,
    as the comparisons with released code read them)."""
    import subprocess

    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(source), *args], check=True, env=env, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True, capture_output=True)
    return bare


def load_script(path: str, name: str) -> ModuleType:
    """A script of the repository (``"demo.py"``, ``"scripts/compare_released.py"``) imported as module
    ``name`` and registered in ``sys.modules`` (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def one_line_error(call, *fragments, error: type[Exception] | None = None) -> str:
    """The message of the ``error`` (default :class:`cass.weights.WeightsError`) that ``call()`` raises:
    one line, holding every fragment."""
    from cass.weights import WeightsError

    with pytest.raises(error or WeightsError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def stages_seen(call) -> list[str]:
    """The names of the stages (:mod:`cass.stages`) observed while ``call()`` runs, in order; the
    list keeps growing only if the observer outlived the call (it must not)."""
    from cass import stages

    seen: list[str] = []

    class Recorder:
        def stage(self, name):
            seen.append(name)
            return torch.autograd.profiler.record_function("noop")

    with stages.observe_stages(Recorder()):
        call()
    return seen


def synthetic_photo(h: int = 120, w: int = 160) -> np.ndarray:
    """(h, w, 3) uint8 RGB: sky, a grey object and grass (classes of very different areas), with noise."""
    rng = np.random.default_rng(0)
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 3] = (110, 160, 230)
    image[h // 3:] = (60, 150, 40)
    image[h // 3: h // 2, w // 3: w // 2] = (128, 128, 128)
    return (image + rng.integers(0, 20, image.shape)).astype(np.uint8)


def tiny_clip(seed: int = 0):
    return random_clip(tiny=True, seed=seed)


def tiny_dino(seed: int = 0) -> torch.nn.Module:
    return random_dino(tiny=True, seed=seed)


def write_clip_state_dict(path: Path, seed: int = 0) -> Path:
    """OpenAI key format, float16 like the released state dicts."""
    return write_clip(path, tiny=True, seed=seed)


def write_dino_checkpoint(path: Path, seed: int = 0, full: bool = False) -> Path:
    """DINO release layout: a plain state dict, or a training checkpoint with prefixes and a head."""
    return write_dino(path, tiny=True, seed=seed, full=full)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    write_clip_state_dict(root / "tiny_clip.pt")
    write_dino_checkpoint(root / "tiny_dino.pth")
    return root


@pytest.fixture()
def class_file(tmp_path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("background, sky, wall\ncat\ndog, puppy\ngrass\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """No test reads or writes the user's caches or reaches the network."""
    monkeypatch.setenv("CASS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CASS_WEIGHTS_DIR", str(tmp_path / "weights-cache"))

    def offline(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


def model_keys(weights_dir: Path, class_file: Path, **overrides) -> dict:
    """Config keys of a tiny model (cass.build.build_model)."""
    keys = dict(clip_path=str(weights_dir / "tiny_clip.pt"), vfm_path=str(weights_dir / "tiny_dino.pth"),
                vfm_overrides=TINY_VFM, name_path=str(class_file), global_semantics_weight=0.25,
                mean_vector_weight=0.04, h_threshold=0.5, prob_thd=0.0)
    if "classes" in overrides:
        keys.pop("name_path")
    keys.update(overrides)
    return keys


def segmentor_cfg(weights_dir: Path, class_file: Path, **overrides) -> dict:
    """mmseg model config of the same tiny model."""
    return dict(type="CASSSegmentor", **model_keys(weights_dir, class_file, **overrides))
