"""Typed configuration of the CASS model.

Each part of the method has its own small frozen dataclass, and the functions
that implement that part take it whole, so a setting cannot be lost on the
way. Field names are the keys of the released configs (``slide_crop``,
``global_semantics_weight``, ...), so an mmseg ``model=dict(...)`` maps onto
:class:`CASSConfig` by name (:meth:`CASSConfig.from_keys`); the precision
keys are the only renamed ones (``precision`` -> ``precision.clip``,
``vfm_precision`` -> ``precision.vfm``, ``sam_precision`` -> ``precision.sam``).

Defaults reproduce the released code (``docs/method.md``); the per-benchmark
values live in ``configs/cfg_<benchmark>.py``. :class:`MethodConfig` picks a
method of the family registered in :mod:`cass.methods` (any name of
:data:`cass.methods.METHODS`, ``method='sclip'``, ``method='trident'``, ...;
``docs/methods.md``); its default is CASS. A method's own settings are its
entry's dataclass (:attr:`CASSConfig.settings`). What a configuration needs
of its towers is :func:`cass.methods.requirements` (checked on the modules by
:func:`cass.tower_checks.check_towers`). The registry is imported on first
use (it imports torch), so that :mod:`cass.cli` reads this module without it.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .backbones import SAM_SPECS
from .errors import ConfigError, check as _check

__all__ = ["CASSConfig", "ConfigError", "MethodConfig", "OutputConfig", "PrecisionConfig", "RegionConfig", "SAMConfig",
           "SpectralConfig", "TextConfig", "WindowConfig"]

STRATEGIES = ("spectral", "sequential", "vanilla")
DINO_INPUTS = ("reference", "plain")
PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16")


def _entry(name: str):
    """The method's registered entry (the registry imports torch: imported on first use, so that
    :mod:`cass.cli` reads this module without it)."""
    from .methods.registry import get_method

    return get_method(name)


def _method_names() -> tuple[str, ...]:
    from .methods.registry import method_names

    return method_names()


@dataclass(frozen=True)
class SpectralConfig:
    """Spectral object-level context distillation (spec sections 2-4).

    Attributes:
        attn_strategy: ``'spectral'`` (CASS), ``'sequential'`` (DINO head i
            with CLIP head i, no matching) or ``'vanilla'`` (ordinary q.k
            attention, no DINO, no Gaussian bias).
        top_eigen: eigenvalues per head spectrum in the matching cost.
        low_rank: rank r of the low-rank DINO graph (released code: 10 in
            effect); None uses the paper's energy rule.
        energy_threshold: share of the full spectrum kept by the energy rule.
        eigenscaling: dynamic eigenscaling of the kept eigenvalues (off in the
            VOC20 and Cityscapes configs).
        vfm_weight: the factor 10 of ``(10 w A~ + A_CLIP) / (10 w + 1)``.
        canonical_matching: lexicographically smallest optimal assignment
            among ties (deliberate change); False: plain
            ``linear_sum_assignment`` like the released code.
        swapped_pairing: the released code's row/column swap of the matched
            heads; False pairs them consistently.
        gaussian_std: sigma of the neighbourhood bias G, in patches.
        dino_input: ``'reference'`` (uint8 image rebuilt with the 0.255
            quirk, resized to a square) or ``'plain'`` (the true RGB crop).
        dino_keys_fp16: round the DINO keys to float16 (released code, every
            device).
    """

    attn_strategy: str = "spectral"
    top_eigen: int = 20
    low_rank: int | None = 10
    energy_threshold: float = 0.95
    eigenscaling: bool = True
    vfm_weight: float = 10.0
    canonical_matching: bool = True
    swapped_pairing: bool = True
    gaussian_std: float = 5.0
    dino_input: str = "reference"
    dino_keys_fp16: bool = True

    def __post_init__(self) -> None:
        _check(self.attn_strategy in STRATEGIES,
               f"attn_strategy must be one of {STRATEGIES}, got {self.attn_strategy!r}")
        _check(self.dino_input in DINO_INPUTS, f"dino_input must be one of {DINO_INPUTS}, got {self.dino_input!r}")
        _check(self.top_eigen >= 1, f"top_eigen must be >= 1, got {self.top_eigen}")
        _check(self.low_rank is None or self.low_rank >= 1, f"low_rank must be >= 1 or None, got {self.low_rank}")
        _check(0 < self.energy_threshold <= 1, f"energy_threshold must lie in (0, 1], got {self.energy_threshold}")
        _check(self.gaussian_std > 0, f"gaussian_std must be > 0, got {self.gaussian_std}")
        _check(self.vfm_weight >= 0, f"vfm_weight must be >= 0, got {self.vfm_weight}")


@dataclass(frozen=True)
class TextConfig:
    """Object-presence text refinement (spec section 5).

    Attributes:
        global_semantics_weight: gamma, weight of the presence prior P in
            ``S = (1 - gamma) F . t~ + gamma P``.
        mean_vector_weight: alpha, how far a cluster's best query moves
            towards the mean of its best-matching patch features.
        h_threshold: Ward-linkage cut (cosine distance) of the query clusters.
        top_patches: patch features averaged per cluster (released code: 2).
        prior_from_crop: take the presence prior from each crop instead of
            the whole image (Cityscapes config).
    """

    global_semantics_weight: float = 0.0
    mean_vector_weight: float = 0.0
    h_threshold: float = 0.0
    top_patches: int = 2
    prior_from_crop: bool = False

    def __post_init__(self) -> None:
        _check(0 <= self.global_semantics_weight <= 1,
               f"global_semantics_weight must lie in [0, 1], got {self.global_semantics_weight}")
        _check(0 <= self.mean_vector_weight <= 1,
               f"mean_vector_weight must lie in [0, 1], got {self.mean_vector_weight}")
        _check(self.h_threshold >= 0, f"h_threshold must be >= 0, got {self.h_threshold}")
        _check(self.top_patches >= 1, f"top_patches must be >= 1, got {self.top_patches}")


@dataclass(frozen=True)
class WindowConfig:
    """Sliding window (spec section 6).

    Attributes:
        slide_crop: crop side; 0 runs the whole resized image in one pass.
        slide_stride: step between crops (mmseg's scheme, last crop aligned
            to the border, overlaps averaged).
        crop_batch_size: most crops per tower forward (a memory bound, not a
            setting of the method).
    """

    slide_crop: int = 224
    slide_stride: int = 112
    crop_batch_size: int = 32

    def __post_init__(self) -> None:
        _check(self.slide_crop >= 0, f"slide_crop must be >= 0, got {self.slide_crop}")
        _check(self.slide_crop == 0 or self.slide_stride > 0, f"slide_stride must be > 0, got {self.slide_stride}")
        _check(self.crop_batch_size >= 1, f"crop_batch_size must be >= 1, got {self.crop_batch_size}")

    @property
    def whole_image(self) -> bool:
        return self.slide_crop <= 0


@dataclass(frozen=True)
class OutputConfig:
    """From query logits to class probabilities and labels (spec section 6).

    Attributes:
        prob_thd: pixels whose top class probability is below become class 0.
        logit_scale: logit multiplier before the softmax over queries (40).
        pamr_steps: PAMR iterations on the logits (0 = off, CASS's setting).
        pamr_dilations: PAMR's dilations.
        area_thd: SCLIP's small-region filter (its VOC21 config: 0.1): a
            non-background class predicted on at most this share of the
            non-background pixels is dropped (:func:`cass.methods.drop_small_classes`);
            0 = off.
    """

    prob_thd: float = 0.0
    logit_scale: float = 40.0
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    area_thd: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pamr_dilations", tuple(int(d) for d in self.pamr_dilations))
        _check(0 <= self.prob_thd <= 1, f"prob_thd must lie in [0, 1], got {self.prob_thd}")
        _check(0 <= self.area_thd < 1, f"area_thd must lie in [0, 1), got {self.area_thd}")
        _check(self.logit_scale > 0, f"logit_scale must be > 0, got {self.logit_scale}")
        _check(self.pamr_steps >= 0, f"pamr_steps must be >= 0, got {self.pamr_steps}")
        _check(all(d >= 1 for d in self.pamr_dilations), f"pamr_dilations must be >= 1, got {self.pamr_dilations}")


@dataclass(frozen=True)
class PrecisionConfig:
    """Storage and arithmetic of the two towers and of SAM's image encoder (spec section 7).

    ``'auto'`` mirrors what the released code computed: on CUDA the CLIP
    towers (image and text) in float16, DINO in float32 with TF32 matrix
    products, SAM's image encoder in float16; on the CPU everything in
    float32. ``'tf32'`` is float32 storage with TF32 matrix products on CUDA
    (plain float32 elsewhere). ``precision='fp16'`` (or ``'bf16'``), which the
    others follow, is the fast setting.

    Attributes:
        clip: precision of CLIP (the config key ``precision``).
        vfm: precision of the VFM (config key ``vfm_precision``); None
            follows ``clip`` (``'auto'`` stays ``'auto'``: float32/TF32).
        sam: precision of SAM's image encoder where a method uses SAM
            (config key ``sam_precision``); None follows ``clip`` (``'auto'``
            stays ``'auto'``: float16 on CUDA, as Trident's release runs it,
            float32 on the CPU). SAM's prompt encoder and mask decoder
            always compute in float32, as released.
    """

    clip: str = "auto"
    vfm: str | None = None
    sam: str | None = None

    def __post_init__(self) -> None:
        _check(self.clip in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.clip!r}")
        _check(self.vfm is None or self.vfm in PRECISIONS,
               f"vfm_precision must be one of {PRECISIONS} or None, got {self.vfm!r}")
        _check(self.sam is None or self.sam in PRECISIONS,
               f"sam_precision must be one of {PRECISIONS} or None, got {self.sam!r}")

    def resolve(self, device_type: str) -> tuple[str, str]:
        """Concrete (clip, vfm) precisions on a device type: each of fp32, tf32, fp16, bf16."""
        cuda = device_type == "cuda"
        vfm = self.clip if self.vfm is None else self.vfm
        clip = ("fp16" if cuda else "fp32") if self.clip == "auto" else self.clip
        vfm = ("tf32" if cuda else "fp32") if vfm == "auto" else vfm
        return clip, vfm

    def resolve_sam(self, device_type: str) -> str:
        """Concrete precision of SAM's image encoder on a device type: fp32, tf32, fp16 or bf16."""
        sam = self.clip if self.sam is None else self.sam
        return ("fp16" if device_type == "cuda" else "fp32") if sam == "auto" else sam


@dataclass(frozen=True)
class MethodConfig:
    """Which last block turns CLIP's patch tokens into dense features (``docs/methods.md``).

    Everything else (trunk, sliding windows, text embeddings, post-processing,
    PAMR) is the same code for every method; the CASS-specific settings
    (``attn_strategy``, ``low_rank``, ...) only act on ``method='cass'``.
    The published defaults come from the method's entry (:mod:`cass.methods`).

    Attributes:
        name: the config key ``method``: a name of :data:`cass.methods.METHODS`,
            the registry (the family's: ``'cass'``, ``'clip'``, ``'maskclip'``,
            ``'sclip'``, ``'clearclip'``, ``'naclip'``, ``'proxyclip'``,
            ``'trident'``; an unknown name is refused with the registered
            ones). NACLIP's sigma is ``gaussian_std``.
        residual: keep the last block's residual and feed-forward network;
            None: as the method was published (the entry's ``residual``: kept by
            clip, maskclip and sclip, dropped by clearclip and naclip). An entry
            with ``residual=None`` has no such variant: CASS, and ProxyCLIP and
            Trident, whose output lives on the VFM's grid.
        refine_text: CASS's object-presence text refinement (``global_semantics_weight``,
            ``mean_vector_weight``, ``h_threshold``); None: as published (the
            entry's ``refines_text``: CASS only; the baselines use the plain
            template-averaged text embeddings).

    A method's own settings (ProxyCLIP's ``proxy_beta``, ...) are its entry's
    ``settings`` dataclass, held by :attr:`CASSConfig.settings`.
    """

    name: str = "cass"
    residual: bool | None = None
    refine_text: bool | None = None

    def __post_init__(self) -> None:
        _check(self.name in _method_names(), f"method must be one of {_method_names()}, got {self.name!r}")
        _check(self.residual in (None, True, False), f"residual must be True, False or None, got {self.residual!r}")
        _check(self.refine_text in (None, True, False),
               f"refine_text must be True, False or None, got {self.refine_text!r}")
        _check(not (self.residual and _entry(self.name).residual is None),
               f"method {self.name!r} has no residual variant (residual=True)")
        _check(not (self.refine_text and _entry(self.name).merge != "logits"),
               f"method {self.name!r} merges its crops with {_entry(self.name).merge!r}, which CASS's text "
               "refinement (per crop) cannot refine (refine_text=True)")

    @property
    def keeps_residual(self) -> bool:
        """Whether the last block keeps its residual and feed-forward network."""
        published = bool(_entry(self.name).residual)
        return published if self.residual is None else self.residual

    @property
    def refines_text(self) -> bool:
        """Whether CASS's object-presence text refinement is applied."""
        return _entry(self.name).refines_text if self.refine_text is None else self.refine_text


SAM_MODELS = tuple(SAM_SPECS)  # vit_b, vit_l, vit_h


@dataclass(frozen=True)
class SAMConfig:
    """SAM's two helps (Trident, Shi et al., ICCV 2025; usable with every method, ``docs/methods.md``).

    Key names are those of Trident's released configs (``sam_refinement``,
    ``cos_fac``, ...); defaults are its ``configs/base_config.py``.

    Attributes:
        sam_aggregation: mix the image's features (Trident: its spliced crop
            features; a logit-merging method: its merged query logits) on SAM's
            token grid with the correlation of SAM's last global block
            (:func:`cass.sam_math.sam_correlation`); None: as published (the
            method entry's ``sam_aggregation``: Trident only).
        sam_refinement: refine the coarse prediction with SAM prompts (box,
            top point and mask of each connected region); None: as published
            (Trident: on, its evaluation script passes ``--sam_refine``).
        sam_model_type: ``'vit_b'``, ``'vit_l'`` or ``'vit_h'``.
        cos_fac: the correlation threshold's factor of the mean cosine.
        refine_neg_cos: keep a negative threshold (False: it becomes 0.6).
        sam_halves: SAM encodes the left and right halves of the image
            separately (Trident's Cityscapes setting).
        coarse_thresh: probabilities below it make no refinement region (and
            no mask prompt).
        minimal_area: fewest pixels of a region (at half resolution).
        sam_mask_coff: factor of the mask prompt's probabilities.
        sam_iou_thresh: a SAM mask replaces its region when its predicted IoU
            is above this (a negative value accepts every mask: an ablation,
            and how the comparison with the released code exercises merging
            with random SAM weights).
    """

    sam_aggregation: bool | None = None
    sam_refinement: bool | None = None
    sam_model_type: str = "vit_b"
    cos_fac: float = 1.2
    refine_neg_cos: bool = True
    sam_halves: bool = False
    coarse_thresh: float = 0.2
    minimal_area: int = 225
    sam_mask_coff: float = 0.005
    sam_iou_thresh: float = 0.8

    def __post_init__(self) -> None:
        for name in ("sam_aggregation", "sam_refinement"):
            _check(getattr(self, name) in (None, True, False),
                   f"{name} must be True, False or None, got {getattr(self, name)!r}")
        _check(self.sam_model_type in SAM_MODELS,
               f"sam_model_type must be one of {SAM_MODELS}, got {self.sam_model_type!r}")
        _check(self.cos_fac >= 0, f"cos_fac must be >= 0, got {self.cos_fac}")
        _check(0 <= self.coarse_thresh < 1, f"coarse_thresh must lie in [0, 1), got {self.coarse_thresh}")
        _check(self.minimal_area >= 1, f"minimal_area must be >= 1, got {self.minimal_area}")
        _check(self.sam_mask_coff > 0, f"sam_mask_coff must be > 0, got {self.sam_mask_coff}")
        _check(self.sam_iou_thresh <= 1, f"sam_iou_thresh must be <= 1 (a predicted IoU; below 0 every mask "
               f"is accepted), got {self.sam_iou_thresh}")


UNSEGMENTED_RULES = ("smallest", "nonpositive")
"""Which region labels read "unsegmented" (:attr:`RegionConfig.unsegmented`, :mod:`cass.regions`)."""


@dataclass(frozen=True)
class RegionConfig:
    """Region masks: a class-agnostic mask generator's regions (:mod:`cass.masks`), and the vote.

    CorrCLIP's pass needs them; voting each region to its majority class
    (:func:`cass.regions.vote_regions`) is an option of every method.

    Attributes:
        region_vote: each region (every mask label but the unsegmented ones,
            ``unsegmented``) takes its most frequent class after post-processing;
            None: as published (the method entry's ``region_vote``: CorrCLIP).
        unsegmented: which labels read "unsegmented" (never merged, attending
            beyond their region, never voted): ``'smallest'``, the release's rule,
            the smallest label of each map or window whatever it is, so that a
            window (or a map) covered by masks loses one real region;
            ``'nonpositive'``, the fix: labels <= 0 only, what the generators of
            :mod:`cass.masks` write where no mask covers a pixel.
        mask_generator: the generator that makes the masks when none are given
            (a name of :data:`cass.masks.MASK_GENERATORS`: ``'sam2'``,
            ``'files'``, ...); None: masks must be given with each image.
        mask_dir: the folder of mask files (``<image stem>.npz`` as released,
            ``.png`` or ``.npy``) for ``mask_generator='files'`` (the release's
            ``instance_mask_path``).
        mask_model: SAM2's model for ``'sam2'`` (``'sam2_hiera_large'`` as released).
        points_per_side: SAM2's point grid (the release: 8; its best row: 32).
        pred_iou_thresh: SAM2's predicted-IoU threshold (0.4).
        stability_score_thresh: SAM2's stability threshold (0.4).
    """

    region_vote: bool | None = None
    unsegmented: str = "smallest"
    mask_generator: str | None = None
    mask_dir: str | None = None
    mask_model: str = "sam2_hiera_large"
    points_per_side: int = 8
    pred_iou_thresh: float = 0.4
    stability_score_thresh: float = 0.4

    def __post_init__(self) -> None:
        _check(self.region_vote in (None, True, False), f"region_vote must be True, False or None, got {self.region_vote!r}")
        _check(self.unsegmented in UNSEGMENTED_RULES,
               f"unsegmented must be one of {', '.join(UNSEGMENTED_RULES)}, got {self.unsegmented!r}")
        _check(self.mask_generator is None or isinstance(self.mask_generator, str),
               f"mask_generator must be a name or None, got {self.mask_generator!r}")
        _check(self.points_per_side >= 1, f"points_per_side must be >= 1, got {self.points_per_side}")
        _check(0 <= self.pred_iou_thresh <= 1, f"pred_iou_thresh must lie in [0, 1], got {self.pred_iou_thresh}")
        _check(0 <= self.stability_score_thresh <= 1,
               f"stability_score_thresh must lie in [0, 1], got {self.stability_score_thresh}")


# config keys whose dataclass field has another name
_RENAMED = {"precision": ("precision", "clip"), "vfm_precision": ("precision", "vfm"),
            "sam_precision": ("precision", "sam"), "method": ("method", "name")}


@dataclass(frozen=True)
class CASSConfig:
    """Everything the model computes with, one dataclass per part.

    ``settings`` is the method's own settings (its entry's ``settings``
    dataclass, :class:`cass.methods.Method`; None for a method without any),
    made with the published defaults when not given and when the method
    changes to one with other settings. Their fields are config keys like
    every other setting (``replace(proxy_beta=1.0)``); a key of another
    method's settings is refused.
    """

    spectral: SpectralConfig = field(default_factory=SpectralConfig)
    text: TextConfig = field(default_factory=TextConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    sam: SAMConfig = field(default_factory=SAMConfig)
    regions: RegionConfig = field(default_factory=RegionConfig)
    settings: Any = None

    def __post_init__(self) -> None:
        # the method's own settings: its entry's dataclass (defaults where not given), None if it has none
        own = _entry(self.method.name).settings
        if own is None or not isinstance(self.settings, own):
            object.__setattr__(self, "settings", None if own is None else own())

    @property
    def sam_aggregates(self) -> bool:
        """Whether SAM's correlation aggregates the image (the setting, else the method's published default)."""
        published = _entry(self.method.name).sam_aggregation
        return published if self.sam.sam_aggregation is None else self.sam.sam_aggregation

    @property
    def region_votes(self) -> bool:
        """Whether each region of the masks is voted to its majority class (the setting, else the method's default)."""
        published = _entry(self.method.name).region_vote
        return published if self.regions.region_vote is None else self.regions.region_vote

    @property
    def sam_refines(self) -> bool:
        """Whether SAM refines the prediction (the setting, else the method's published default)."""
        published = _entry(self.method.name).sam_refinement
        return published if self.sam.sam_refinement is None else self.sam.sam_refinement

    @classmethod
    def key_table(cls) -> dict[str, tuple[str, str]]:
        """Config key -> (part, field) for every setting."""
        from .methods.registry import METHODS

        table = {}
        for part in fields(cls):
            if part.name != "settings":
                for f in fields(part.default_factory()):
                    table[f.name] = (part.name, f.name)
        for entry in METHODS.values():
            for name in entry.setting_names():
                if table.get(name, ("settings",))[0] != "settings":
                    raise ValueError(f"method {entry.name!r}: its setting {name!r} is already a model setting")
                table[name] = ("settings", name)
        for key, target in _RENAMED.items():
            table.pop(target[1], None)
            table[key] = target
        return table

    @classmethod
    def from_keys(cls, keys: dict[str, Any] | None = None) -> CASSConfig:
        """Build from flat config keys (an mmseg ``model`` dict without the
        model-building keys); an unknown key is a :class:`ConfigError`."""
        return cls().replace(**(keys or {}))

    def replace(self, **keys: Any) -> CASSConfig:
        """A copy with flat config keys changed (``replace(slide_crop=0)``)."""
        table = self.key_table()
        unknown = sorted(set(keys) - set(table))
        if unknown:
            hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, table, 1))
                     else repr(key) for key in unknown]
            raise ConfigError(f"unknown model setting {', '.join(hints)}; the settings are listed in cass/config.py")
        parts: dict[str, dict[str, Any]] = {}
        for key, value in keys.items():
            part, name = table[key]
            parts.setdefault(part, {})[name] = value
        own = parts.pop("settings", {})
        try:
            config = replace(self, **{part: replace(getattr(self, part), **changes) for part, changes in parts.items()})
            if own:
                entry = _entry(config.method.name)
                foreign = sorted(set(own) - set(entry.setting_names()))
                if foreign:
                    from .methods.registry import METHODS

                    owners = [m.name for m in METHODS.values() if foreign[0] in m.setting_names()]
                    raise ConfigError(f"{foreign[0]!r} is a setting of method {' and '.join(owners)}, "
                                      f"not of method {entry.name!r}")
                config = replace(config, settings=replace(config.settings, **own))
            return config
        except TypeError as err:  # e.g. a list where a number belongs
            raise ConfigError(f"invalid model setting: {err}") from None

    def to_keys(self) -> dict[str, Any]:
        """The flat config keys of this configuration (inverse of :meth:`from_keys`)."""
        keys = {key: getattr(getattr(self, part), name) for key, (part, name) in self.key_table().items()
                if part != "settings"}
        if self.settings is not None:
            keys.update({f.name: getattr(self.settings, f.name) for f in fields(self.settings)})
        return keys
