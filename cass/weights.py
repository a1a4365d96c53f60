"""Weight loading: OpenAI CLIP archives/state dicts and DINO release checkpoints.

Everything loads on the CPU and strictly. A wrong file gives a one-line
:class:`WeightsError` naming the file and the first mismatching keys; a public
model that is neither cached nor downloadable gives a one-line error naming
the file to download and the setting to pass. A local path never touches the
network.
"""
from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from open_clip.model import build_model_from_openai_state_dict
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from .constants import OPENAI_CLIP_URLS, VFM_URLS
from .dino_keys import VFM_SPECS


class WeightsError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model."""


def _cache_dir() -> Path:
    return Path(os.environ.get("CASS_WEIGHTS_DIR", Path(torch.hub.get_dir()) / "checkpoints"))


def _fetch_public(url: str, setting: str) -> Path:
    """Path of a public checkpoint in the cache, downloading it once if needed."""
    target = _cache_dir() / Path(url).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as err:  # noqa: BLE001 - any network failure means the same to the user
        raise WeightsError(f"{target.name} is not in {target.parent} and could not be downloaded "
                           f"({type(err).__name__}); download {url} and set {setting} to its path") from None
    return target


def _local_file(path: str | os.PathLike, what: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"{what} weights file not found: {file}")
    return file


def _torch_load(file: Path) -> dict:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - full training checkpoints pickle more than tensors
        pass
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise WeightsError(f"{file}: not a readable PyTorch checkpoint ({type(err).__name__})") from None


def _mismatch(file: Path, model: nn.Module, state_dict: dict) -> None:
    """Raise a one-line error unless keys and shapes match exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {missing[:3]}" + (f" (+{len(missing) - 3})" if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}" + (f" (+{len(unexpected) - 3})" if len(unexpected) > 3 else ""))
    if shapes:
        problems.append(f"shape {shapes[:2]}")
    if problems:
        raise WeightsError(f"{file}: does not fit the model: " + "; ".join(problems))


def read_clip_state_dict(file: Path) -> dict:
    """State dict from OpenAI's JIT archive or a state dict in OpenAI's key format."""
    try:
        state = torch.jit.load(str(file), map_location="cpu").state_dict()
    except Exception:  # noqa: BLE001 - not a TorchScript archive: try a plain state dict
        state = _torch_load(file)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict) or "visual.proj" not in state:
        raise WeightsError(f"{file}: not a CLIP ViT checkpoint in OpenAI's format (no 'visual.proj' key)")
    # the causal text mask is rebuilt from the context length; archives traced from
    # open_clip models carry it as a buffer
    return {k: v for k, v in state.items() if k != "attn_mask"}


def clip_from_state_dict(state_dict: dict, source: str = "state dict") -> nn.Module:
    """Build open_clip's CLIP from an OpenAI-format state dict, strictly; float32, eval.

    LayerNorms compute in float32 when the model is later cast to float16, as
    in OpenAI's code.
    """
    try:
        model = build_model_from_openai_state_dict(dict(state_dict), cast_dtype=torch.float16)
    except KeyError as err:
        raise WeightsError(f"{source}: not a CLIP checkpoint in OpenAI's format (missing {err})") from None
    except RuntimeError as err:  # strict load_state_dict: name the first keys that do not fit
        details = " ".join(line.strip() for line in str(err).splitlines()[1:])
        raise WeightsError(f"{source}: does not fit the CLIP architecture inferred from it: {details[:300]}") from None
    # the builder loads into float16 parameters; reload in float32 so that float32
    # checkpoints keep their precision (OpenAI's float16 release is unchanged)
    model.float().load_state_dict({k: v for k, v in state_dict.items()
                                   if k not in ("input_resolution", "context_length", "vocab_size")})
    return model.eval()


def load_clip(clip_path: str) -> nn.Module:
    """CLIP from ``'ViT-B/16'`` (public OpenAI weights, cached) or a local file."""
    if clip_path in OPENAI_CLIP_URLS and not Path(clip_path).is_file():
        file = _fetch_public(OPENAI_CLIP_URLS[clip_path], "clip_path (--clip-path)")
    else:
        file = _local_file(clip_path, "CLIP")
    return clip_from_state_dict(read_clip_state_dict(file), str(file))


def build_vfm(vfm: str = "dino_vitb8", **overrides) -> nn.Module:
    """Random-weight timm ViT of the given kind (``overrides`` shrink it for tests)."""
    if vfm not in VFM_SPECS:
        raise ValueError(f"unknown vfm '{vfm}'; choose one of {sorted(VFM_SPECS)}")
    return timm.create_model(VFM_SPECS[vfm].timm_name, pretrained=False, num_classes=0, **overrides).eval()


def dino_state_dict(checkpoint: dict) -> dict:
    """Key table for DINO/DINOv2 release checkpoints (plain or full training ones).

    Takes the ``teacher`` (else ``model``/``state_dict``) entry when present,
    strips ``module.`` and ``backbone.`` prefixes and drops the DINO head.
    """
    for key in ("teacher", "model", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    out = {}
    for key, value in checkpoint.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        if not key.startswith("head."):
            out[key] = value
    return out


def load_vfm(vfm: str = "dino_vitb8", path: str | None = None, model: nn.Module | None = None) -> nn.Module:
    """DINO (or DINOv2) with release weights, from ``path`` or the public URL.

    ``model`` is the (possibly resized) architecture to load into; default the
    full-size one of ``vfm``.
    """
    model = model if model is not None else build_vfm(vfm)
    file = _fetch_public(VFM_URLS[vfm], "dino_path (--dino-path)") if path is None else _local_file(path, "DINO")
    checkpoint = _torch_load(file)
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{file}: not a DINO checkpoint (a {type(checkpoint).__name__}, expected a dict)")
    state_dict = checkpoint_filter_fn(dino_state_dict(checkpoint), model)
    _mismatch(file, model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
