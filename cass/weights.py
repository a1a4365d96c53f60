"""Weight loading: OpenAI, OpenCLIP and MetaCLIP CLIP releases, DINO/DINOv2/DINOv3 and SAM release checkpoints.

Everything loads on the CPU and strictly; key remapping is timm's own
``checkpoint_filter_fn`` (``vision_transformer`` for DINO and DINOv2, ``eva``
for DINOv3), after checks that keep it from silently resampling a checkpoint
of another model. A wrong file gives a one-line
:class:`WeightsError` naming the file and the first mismatching keys; a public
model that is neither cached nor downloadable gives a one-line error naming
the file to download and the setting to pass. A local path never touches the
network.
"""
from __future__ import annotations

import os
from pathlib import Path

import open_clip
import timm
import torch
from open_clip.model import build_model_from_openai_state_dict
from timm.models import eva, vision_transformer
from torch import nn

from .backbones import CLIP_SPECS, FORMAT_NAMES, SAM_SPECS, VFM_SPECS, CLIPSpec, VFMSpec, vfms_with_heads


class WeightsError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model."""


def weights_cache_dir() -> Path:
    """Where public (and placed gated) checkpoints are cached: ``$CASS_WEIGHTS_DIR``, else torch hub's checkpoints."""
    return Path(os.environ.get("CASS_WEIGHTS_DIR", Path(torch.hub.get_dir()) / "checkpoints"))


def _fetch_public(url: str, setting: str) -> Path:
    """Path of a public checkpoint in the cache, downloading it once if needed."""
    target = weights_cache_dir() / Path(url).name
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


# prefixes of wrapped models in training checkpoints: DistributedDataParallel's, torch.compile's
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrap_keys(state: dict) -> dict:
    """Keys without the prefixes of wrapped models (as MetaCLIP's and open_clip's loaders strip them)."""
    for prefix in _WRAPPER_PREFIXES:
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_clip_state_dict(file: Path) -> dict:
    """State dict from OpenAI's JIT archive or a state dict in OpenAI's key layout.

    The state dict may be plain (OpenAI's state dicts, OpenCLIP's
    ``open_clip_pytorch_model.bin``) or a training checkpoint holding it under
    ``'state_dict'`` (MetaCLIP's release files, open_clip's checkpoints), its
    keys prefixed by a wrapper (``module.``, ``_orig_mod.``) or not.
    """
    try:
        state = torch.jit.load(str(file), map_location="cpu").state_dict()
    except Exception:  # noqa: BLE001 - not a TorchScript archive: try a plain state dict
        state = _torch_load(file)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if isinstance(state, dict):
        state = _unwrap_keys(state)
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
    """CLIP from a public name of :data:`CLIP_SPECS` (cached) or a local release file.

    Public names: ``'ViT-B/16'``, ``'ViT-L/14'``, ``'ViT-L/14@336px'`` (OpenAI's
    weights), ``'ViT-H-14/laion2b_s32b_b79k'`` (OpenCLIP's),
    ``'ViT-B-16-quickgelu/metaclip_fullcc'`` and
    ``'ViT-L-14-quickgelu/metaclip_fullcc'`` (MetaCLIP's). A local file is
    OpenAI's archive or state dict, a MetaCLIP checkpoint (or its plain state
    dict, e.g. the Hugging Face hub's ``open_clip_pytorch_model.bin``), or an
    OpenCLIP state dict of an architecture of :data:`CLIP_SPECS`; its
    architecture is read from its shapes (:func:`open_clip_arch`).

    OpenAI's and MetaCLIP's models are built by open_clip's OpenAI builder
    (QuickGELU); they compute what ``open_clip.create_model('ViT-B-16-quickgelu')``
    (``'ViT-L-14-quickgelu'``) computes with the same weights.
    """
    spec = CLIP_SPECS.get(clip_path)
    if spec is not None and not Path(clip_path).is_file():
        file = _fetch_public(spec.url, "clip_path (--clip-path)")
    else:
        spec, file = None, _local_file(clip_path, "CLIP")
    state_dict = read_clip_state_dict(file)
    if spec is not None:
        _check_public_arch(file, clip_path, spec, state_dict)
        arch = spec.open_clip_name if spec.release_format == "open_clip" else None
    else:
        arch = open_clip_arch(state_dict)
    if arch is not None:
        return open_clip_from_state_dict(state_dict, arch, str(file))
    return clip_from_state_dict(state_dict, str(file))


def _vision_shape(state_dict: dict) -> tuple[int, int, int] | None:
    """(width, patch size, blocks) of the vision tower of an OpenAI-layout state dict; None: no ViT."""
    conv = state_dict.get("visual.conv1.weight")
    if conv is None:
        return None
    layers = len({k.split(".")[3] for k in state_dict if k.startswith("visual.transformer.resblocks.")})
    return conv.shape[0], conv.shape[-1], layers


def _config_shape(open_clip_name: str) -> tuple[int, int, int]:
    vision = open_clip.get_model_config(open_clip_name)["vision_cfg"]
    return vision["width"], vision["patch_size"], vision["layers"]


def _check_public_arch(file: Path, name: str, spec: CLIPSpec, state_dict: dict) -> None:
    """The cached file of a public name holds that name's vision tower (one-line error otherwise)."""
    found, expected = _vision_shape(state_dict), _config_shape(spec.open_clip_name)
    if found != expected:
        described = "no ViT" if found is None else "width {}, patch {}, {} blocks".format(*found)
        raise WeightsError(f"{file}: a CLIP vision tower of {described}, but {name!r} is {spec.open_clip_name} "
                           "(width {}, patch {}, {} blocks): the file is another model's".format(*expected))


def open_clip_arch(state_dict: dict) -> str | None:
    """The open_clip architecture of an OpenCLIP release (:data:`CLIP_SPECS` with
    ``release_format='open_clip'``) whose vision tower has these shapes; None: OpenAI's layout.

    OpenCLIP's and OpenAI's state dicts share key names; the vision width,
    patch size and depth tell the releases apart (OpenAI has no model of an
    OpenCLIP release's shape). MetaCLIP's releases (``'metaclip'``) are read
    as OpenAI's: QuickGELU, the shapes of OpenAI's ViT-B/16 and ViT-L/14
    (MetaCLIP's ViT-H/14, not in the table, has the shapes of OpenCLIP's
    ViT-H-14 and would be taken for it, with GELU).
    """
    shape = _vision_shape(state_dict)
    if shape is None:
        return None
    for spec in CLIP_SPECS.values():
        if spec.release_format == "open_clip" and _config_shape(spec.open_clip_name) == shape:
            return spec.open_clip_name
    return None


def open_clip_from_state_dict(state_dict: dict, arch: str, source: str = "state dict") -> nn.Module:
    """open_clip's ``CLIP`` of ``arch`` (an OpenCLIP release's architecture) with these weights, strictly;
    float32, eval."""
    model = open_clip.create_model(arch, pretrained=None)
    _mismatch(Path(source), model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model.float().eval()


def clip_heads(arch: str) -> int:
    """Heads of the last block of OpenAI CLIP ``arch`` (open_clip's config: width / head width)."""
    vision = open_clip.get_model_config(CLIP_SPECS[arch].open_clip_name)["vision_cfg"]
    return vision["width"] // vision.get("head_width", 64)


def head_pairings() -> dict[str, list[str]]:
    """For each public CLIP, the VFMs with as many heads (CASS pairs heads one to one)."""
    return {arch: vfms_with_heads(clip_heads(arch)) for arch in CLIP_SPECS}


def _spec(vfm: str) -> VFMSpec:
    if vfm not in VFM_SPECS:
        raise ValueError(f"unknown vfm '{vfm}'; choose one of {sorted(VFM_SPECS)}")
    return VFM_SPECS[vfm]


def build_vfm(vfm: str = "dino_vitb8", **overrides) -> nn.Module:
    """Random-weight timm model of the given kind (``overrides`` shrink it for tests)."""
    return timm.create_model(_spec(vfm).timm_name, pretrained=False, num_classes=0, **overrides).eval()


def dino_state_dict(checkpoint: dict) -> dict:
    """Key table for DINO/DINOv2/DINOv3 release checkpoints (plain or full training ones).

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


def release_format(state_dict: dict) -> tuple[str, int]:
    """(format, register tokens) of a release state dict (after :func:`dino_state_dict`).

    DINOv3 files have ``storage_tokens``; DINOv2 files a ``mask_token`` (and
    ``register_tokens`` with registers); DINO files neither.
    """
    if "storage_tokens" in state_dict:
        return "dinov3", state_dict["storage_tokens"].shape[1]
    if "mask_token" in state_dict:
        return "dinov2", state_dict["register_tokens"].shape[1] if "register_tokens" in state_dict else 0
    return "dino", 0


def _check_release(file: Path, vfm: str, model: nn.Module, state_dict: dict) -> None:
    """The file is ``vfm``'s release format with the model's patch, registers and grid.

    timm's filters resample a patch embedding or positional grid that does not
    fit; for a release checkpoint that means the file belongs to another model,
    so it is an error here.
    """
    spec = VFM_SPECS[vfm]
    found, registers = release_format(state_dict)
    expected_registers = model.num_prefix_tokens - 1
    if (found, registers) != (spec.release_format, expected_registers):
        takes = sorted(name for name, s in VFM_SPECS.items()
                       if s.release_format == found and s.num_prefix_tokens - 1 == registers)
        raise WeightsError(f"{file}: a {FORMAT_NAMES[found]} checkpoint with {registers} register tokens, but vfm "
                           f"{vfm!r} takes {FORMAT_NAMES[spec.release_format]} with {expected_registers}; "
                           f"vfm for this file: {', '.join(takes) or 'none supported'}")
    patch = state_dict.get("patch_embed.proj.weight")
    if patch is not None and tuple(patch.shape[-2:]) != tuple(model.patch_embed.proj.weight.shape[-2:]):
        raise WeightsError(f"{file}: patch size {tuple(patch.shape[-2:])} but vfm {vfm!r} has "
                           f"{tuple(model.patch_embed.proj.weight.shape[-2:])}: the file is another model's")
    pos = state_dict.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape[1] - 1 != model.patch_embed.num_patches:
        # DINO and DINOv2 releases keep a CLS row in pos_embed (also with registers)
        raise WeightsError(f"{file}: positional embedding of {pos.shape[1] - 1} patches but vfm {vfm!r} has "
                           f"{model.patch_embed.num_patches}: the file is another model's")


def vfm_state_dict(file: Path, vfm: str, model: nn.Module, checkpoint: dict) -> dict:
    """A release checkpoint's state dict in the timm model's keys (timm's own filters)."""
    state_dict = dino_state_dict(checkpoint)
    _check_release(file, vfm, model, state_dict)
    if VFM_SPECS[vfm].release_format == "dinov3":
        # storage_tokens -> reg_token, ls{1,2}.gamma -> gamma_{1,2}, qkv.bias -> q_bias, v_bias (the
        # k part is masked to zero in Meta's model); drops mask_token, bias_mask and rope_embed.periods
        return eva.checkpoint_filter_fn(state_dict, model)
    # DINOv2: register_tokens -> reg_token, CLS position folded into cls_token; drops mask_token
    return vision_transformer.checkpoint_filter_fn(state_dict, model)


def _load_rope_periods(file: Path, model: nn.Module, state_dict: dict) -> None:
    """Meta's DINOv3 RoPE periods from the file into timm's (non-persistent) buffer.

    Meta's model loads the stored periods (rounded to bfloat16 in the release,
    according to timm); timm recomputes exact ones. Loading the stored values
    reproduces Meta's model. timm rebuilds them if the model is cast to 16 bits.
    """
    periods = state_dict.get("rope_embed.periods")
    if periods is None:
        return
    if periods.shape != model.rope.periods.shape:
        raise WeightsError(f"{file}: does not fit the model: shape ['rope_embed.periods {tuple(periods.shape)} "
                           f"vs {tuple(model.rope.periods.shape)}']")
    with torch.no_grad():
        model.rope.periods.copy_(periods.float())


def _vfm_file(vfm: str) -> Path:
    """The public release of ``vfm`` in the cache (downloaded once), or the gated one placed there."""
    setting = "vfm_path (--vfm-path)"
    spec = VFM_SPECS[vfm]
    if spec.url is not None:
        return _fetch_public(spec.url, setting)
    target = weights_cache_dir() / spec.release_file
    if not target.is_file():
        raise WeightsError(f"{spec.release_file} is not in {target.parent} and is not public: request it at "
                           f"{spec.download_page} (licence form), download it and set {setting} to its path")
    return target


def load_vfm(vfm: str = "dino_vitb8", path: str | None = None, model: nn.Module | None = None) -> nn.Module:
    """A VFM with release weights, from ``path`` or the public URL.

    ``model`` is the (possibly resized) architecture to load into; default the
    full-size one of ``vfm``.
    """
    _spec(vfm)
    model = model if model is not None else build_vfm(vfm)
    file = _vfm_file(vfm) if path is None else _local_file(path, "DINO")
    checkpoint = _torch_load(file)
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{file}: not a DINO checkpoint (a {type(checkpoint).__name__}, expected a dict)")
    state_dict = vfm_state_dict(file, vfm, model, checkpoint)
    _mismatch(file, model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    if VFM_SPECS[vfm].release_format == "dinov3":
        _load_rope_periods(file, model, dino_state_dict(checkpoint))
    return model.eval()


def build_sam(kind: str = "vit_b", **encoder: object) -> nn.Module:
    """Random-weight segment-anything ``Sam`` of ``kind`` (``'vit_b'``, ``'vit_l'``, ``'vit_h'``); eval, CPU.

    Built by ``sam_model_registry[kind]`` with ``checkpoint=None``. ``encoder``
    (all of ``embed_dim``, ``depth``, ``num_heads``, ``global_attn_indexes``)
    shrinks the image encoder for tests: the same builder the registry's
    entries call (``_build_sam``), prompt encoder and mask decoder as released.
    """
    from segment_anything import sam_model_registry  # only SAM's users need the package loaded
    from segment_anything.build_sam import _build_sam

    if kind not in SAM_SPECS:
        raise ValueError(f"unknown SAM '{kind}'; choose one of {sorted(SAM_SPECS)}")
    if not encoder:
        return sam_model_registry[kind](checkpoint=None).eval()
    return _build_sam(**{f"encoder_{name}": value for name, value in encoder.items()}, checkpoint=None).eval()


def load_sam(kind: str = "vit_b", path: str | None = None, model: nn.Module | None = None) -> nn.Module:
    """SAM with release weights, from ``path`` or the public URL (downloaded once into the cache).

    ``model`` is the architecture to load into (a tiny one in tests); default
    the full-size ``kind``. The release is a plain state dict of ``Sam``,
    loaded strictly on the CPU.
    """
    if kind not in SAM_SPECS:
        raise ValueError(f"unknown SAM '{kind}'; choose one of {sorted(SAM_SPECS)}")
    file = _fetch_public(SAM_SPECS[kind].url, "sam_path (--sam-path)") if path is None else _local_file(path, "SAM")
    state_dict = _torch_load(file)
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{file}: not a SAM checkpoint (a {type(state_dict).__name__}, expected a dict)")
    model = model if model is not None else build_sam(kind)
    _mismatch(file, model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
