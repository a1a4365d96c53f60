"""Whether the towers given to a configuration are what it needs, as one-line errors.

:func:`cass.methods.requirements` says what a configuration needs (a VFM, heads
paired with CLIP's, an absolute positional embedding); :func:`check_towers`
looks at the modules themselves (their architecture is enough: no weights need
to be read) and raises a :class:`~cass.config.ConfigError` naming what to
change. The builder (:func:`cass.build.build_model`) asks before it reads any
VFM weight, the model (:class:`cass.model.CASSModel`) when it is assembled.

The method registry is imported when the towers are checked (it imports the
methods, whose shared math imports :func:`check_absolute_positions` from here),
and the error listing the working head pairings reads
:func:`cass.weights.head_pairings` when it is raised.
"""
from __future__ import annotations

from typing import Any

from .backbones import vfms_with_heads
from .config import ConfigError


def check_absolute_positions(vfm: Any, what: str, called: str = "the VFM") -> None:
    """One-line :class:`~cass.config.ConfigError` if ``vfm`` has a rotary positional embedding.

    The methods whose entry says ``vfm_positions="absolute"`` (ProxyCLIP,
    Trident) resize the VFM's absolute positional embedding to each crop
    (:func:`cass.methods.common.vfm_last_features`); a RoPE VFM (DINOv3) has none.

    Args:
        vfm: timm ViT (DINO, DINOv2) or ``Eva`` (DINOv3).
        what: who needs it, for the message (``"method 'proxyclip'"``).
        called: the VFM, for the message.
    """
    if getattr(vfm, "rope", None) is not None:
        raise ConfigError(f"{what} needs a VFM with an absolute positional embedding "
                          f"(DINO, DINOv2), not a rotary one (DINOv3): {called}")


def check_towers(config: Any, clip: Any, vfm: Any | None, vfm_name: str | None = None) -> None:
    """One-line :class:`~cass.config.ConfigError` unless the towers are what ``config`` needs.

    Args:
        config: :class:`~cass.config.CASSConfig`.
        clip: open_clip ``CLIP``.
        vfm: timm ViT (its architecture is enough: no weights need to be read), or None.
        vfm_name: the VFM's name in :data:`cass.backbones.VFM_SPECS`, for the messages.
    """
    from .methods.registry import requirements  # noqa: PLC0415 - see the module's docstring

    need = requirements(config)
    method = config.method.name
    what = f"method {method!r}" if method != "cass" else f"attn_strategy {config.spectral.attn_strategy!r}"
    called = f"vfm {vfm_name!r}" if vfm_name else "the VFM"
    if not need.vfm:
        return
    if vfm is None:
        raise ConfigError(f"{what} needs a VFM (vfm is None)")
    if need.vfm_positions == "absolute":
        check_absolute_positions(vfm, f"method {method!r}", called)
    if need.paired_heads:
        clip_heads = clip.visual.transformer.resblocks[-1].attn.num_heads
        vfm_heads = vfm.blocks[-1].attn.num_heads
        if clip_heads != vfm_heads:
            from .weights import head_pairings  # torch, open_clip, timm: only on this error's path

            fits = ", ".join(vfms_with_heads(clip_heads)) or "none"
            works = "; ".join(f"CLIP {arch} with {', '.join(vfms)}" for arch, vfms in head_pairings().items())
            raise ConfigError(f"CLIP's last block has {clip_heads} heads and {called} {vfm_heads}: method "
                              f"{method!r} pairs heads one to one (public VFMs with {clip_heads} heads: {fits}; "
                              f"combinations that work: {works}; docs/backbones.md)")
