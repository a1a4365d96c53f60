"""The CASS segmentor, registered in mmseg's ``MODELS`` (spec sections 0-6).

It orchestrates: crops, batching, devices and post-processing. The math lives
in :mod:`cass.clip_vit`, :mod:`cass.dino_keys`, :mod:`cass.spectral`,
:mod:`cass.text` and :mod:`cass.pamr`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import stack_batch
from open_clip.model import convert_weights_to_lp
from torch import Tensor, nn

from . import clip_vit, spectral, text
from .dino_keys import CLIP_MEAN, CLIP_STD, VFM_SPECS, keys_on_clip_grid, last_block_keys, plain_dino_images, \
    reference_dino_images
from .pamr import pamr
from .weights import build_vfm, load_clip, load_vfm

STRATEGIES = ("spectral", "sequential", "vanilla")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@MODELS.register_module()
class CASSDataPreProcessor(SegDataPreProcessor):
    """mmseg's pre-processor, except that a test batch of different image sizes
    is zero-padded to the largest one (mmseg asserts equal sizes). The
    segmentor reads each image's own ``img_shape`` and ignores the padding."""

    def forward(self, data: dict, training: bool = False) -> dict:
        if training or self.test_cfg or len({tuple(i.shape[1:]) for i in data["inputs"]}) == 1:
            return super().forward(data, training)
        data = self.cast_data(data)
        inputs = [i[[2, 1, 0]] if self.channel_conversion and i.shape[0] == 3 else i for i in data["inputs"]]
        inputs = [(i.float() - self.mean) / self.std for i in inputs]
        batch, _ = stack_batch(inputs, size_divisor=1, pad_val=self.pad_val)
        return dict(inputs=batch, data_samples=data.get("data_samples"))


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding-window boxes (y1, x1, y2, x2): last window aligned to the border."""
    def starts(size: int) -> list[tuple[int, int]]:
        count = max(size - crop + stride - 1, 0) // stride + 1
        out = []
        for i in range(count):
            end = min(i * stride + crop, size)
            out.append((max(end - crop, 0), end))
        return out

    return [(y1, x1, y2, x2) for y1, y2 in starts(height) for x1, x2 in starts(width)]


@MODELS.register_module(name=["CASSSegmentor", "CASS_segmentor"])
class CASSSegmentor(BaseSegmentor):
    """Training-free open-vocabulary segmentor CASS (Kim et al., CVPR 2025).

    Defaults reproduce the released code (``../shared/cass_method.md``); each
    reference quirk has a switch.

    Args:
        clip_path: ``'ViT-B/16'`` (public OpenAI weights) or a local OpenAI
            ``.pt`` archive / state dict.
        name_path: class-name file (one class per line, synonyms ``", "``).
        classes: the vocabulary as a list instead of ``name_path``.
        vfm: ``'dino_vitb8'`` or ``'dinov2_vitb14_reg4'``.
        dino_path: local DINO release checkpoint; None downloads the public one.
        vfm_overrides: timm kwargs that shrink the VFM (tiny test models).
        global_semantics_weight: gamma, weight of the presence prior ``P``.
        mean_vector_weight: alpha of the text refinement.
        h_threshold: Ward-linkage cut for the query clusters.
        attn_strategy: ``'spectral'``, ``'sequential'`` or ``'vanilla'``.
        gaussian_std: sigma of the neighbourhood bias ``G``.
        top_eigen: eigenvalues per head spectrum.
        low_rank: rank of the VFM graph (reference: 10); None uses the paper's
            energy rule with ``energy_threshold``.
        eigenscaling: dynamic eigenscaling (off in the VOC20/Cityscapes configs).
        vfm_weight: the factor 10 of the fusion.
        canonical_matching: canonical tie-breaking of the Hungarian matching;
            False mimics the released code.
        swapped_pairing: the reference's row/column swap; False pairs
            consistently.
        dino_input: ``'reference'`` (rebuilt, squared crop) or ``'plain'``.
        dino_keys_fp16: round DINO keys to float16 (reference, every device).
        prior_from_crop: presence prior from each crop instead of the whole
            image (Cityscapes config).
        slide_crop, slide_stride: sliding window; ``slide_crop=0`` runs the
            whole image in one pass.
        prob_thd: pixels whose top probability is below become class 0.
        logit_scale: logit multiplier before the softmax (40).
        pamr_steps, pamr_dilations: PAMR post-processing (0 = off).
        precision: ``'auto'`` (fp32 on CPU, fp16 on CUDA), ``'fp32'``,
            ``'fp16'`` or ``'bf16'`` for the CLIP trunk.
        vfm_precision: the same for DINO; None follows ``precision``.
        crop_batch_size: most crops per forward (memory bound).
        text_cache_dir: where text embeddings are cached; False disables.
        clip_model, vfm_model: ready modules instead of loading weights.
    """

    def __init__(self, clip_path: str = "ViT-B/16", name_path: str | None = None,
                 classes: Sequence[str] | None = None, vfm: str = "dino_vitb8", dino_path: str | None = None,
                 vfm_overrides: dict | None = None, global_semantics_weight: float = 0.0,
                 mean_vector_weight: float = 0.0, h_threshold: float = 0.0, attn_strategy: str = "spectral",
                 gaussian_std: float = 5.0, top_eigen: int = 20, low_rank: int | None = 10,
                 energy_threshold: float = 0.95, eigenscaling: bool = True, vfm_weight: float = 10.0,
                 canonical_matching: bool = True, swapped_pairing: bool = True, dino_input: str = "reference",
                 dino_keys_fp16: bool = True, prior_from_crop: bool = False, slide_crop: int = 224,
                 slide_stride: int = 112, prob_thd: float = 0.0, logit_scale: float = 40.0,
                 pamr_steps: int = 0, pamr_dilations: Sequence[int] = (8, 16), precision: str = "auto",
                 vfm_precision: str | None = None, crop_batch_size: int = 32,
                 text_cache_dir: str | bool | None = None, clip_model: nn.Module | None = None,
                 vfm_model: nn.Module | None = None, data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = CASSDataPreProcessor(mean=list(CLIP_MEAN), std=list(CLIP_STD), bgr_to_rgb=True)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if attn_strategy not in STRATEGIES:
            raise ValueError(f"attn_strategy must be one of {STRATEGIES}, got '{attn_strategy}'")
        if vfm not in VFM_SPECS:
            raise ValueError(f"vfm must be one of {sorted(VFM_SPECS)}, got '{vfm}'")
        if dino_input not in ("reference", "plain"):
            raise ValueError(f"dino_input must be 'reference' or 'plain', got '{dino_input}'")
        for name, value in (("precision", precision), ("vfm_precision", vfm_precision)):
            if value not in (*PRECISIONS, "auto") and not (name == "vfm_precision" and value is None):
                raise ValueError(f"{name} must be one of {['auto', *PRECISIONS]}, got '{value}'")
        if slide_crop < 0 or (slide_crop > 0 and slide_stride <= 0):
            raise ValueError(f"slide_crop must be >= 0 and slide_stride > 0, got {slide_crop}, {slide_stride}")

        self.clip = clip_model if clip_model is not None else load_clip(clip_path)
        self.clip.eval().requires_grad_(False)
        self.vfm_spec = VFM_SPECS[vfm]
        if attn_strategy == "vanilla":
            self.vfm = None  # ordinary attention never looks at DINO
        elif vfm_model is not None:
            self.vfm = vfm_model
        else:
            self.vfm = load_vfm(vfm, dino_path, build_vfm(vfm, **(vfm_overrides or {})))
        if self.vfm is not None:
            self.vfm.eval().requires_grad_(False)
            if self.vfm.blocks[-1].attn.num_heads != self.clip.visual.transformer.resblocks[-1].attn.num_heads:
                raise ValueError("the VFM and CLIP's last blocks must have the same number of heads")

        self.gamma, self.alpha, self.h_threshold = global_semantics_weight, mean_vector_weight, h_threshold
        self.attn_strategy, self.gaussian_std = attn_strategy, gaussian_std
        self.top_eigen, self.low_rank, self.energy_threshold = top_eigen, low_rank, energy_threshold
        self.eigenscaling, self.vfm_weight = eigenscaling, vfm_weight
        self.canonical_matching, self.swapped_pairing = canonical_matching, swapped_pairing
        self.dino_input, self.dino_keys_fp16, self.prior_from_crop = dino_input, dino_keys_fp16, prior_from_crop
        self.slide_crop, self.slide_stride = slide_crop, slide_stride
        self.prob_thd, self.logit_scale = prob_thd, logit_scale
        self.pamr_steps, self.pamr_dilations = pamr_steps, tuple(pamr_dilations)
        self.precision, self.vfm_precision = precision, vfm_precision
        self.crop_batch_size, self.text_cache_dir = crop_batch_size, text_cache_dir

        if classes is not None:
            self.set_vocabulary(classes)
        elif name_path is not None:
            queries, index, names = text.read_class_file(name_path)
            self._set_queries(queries, index, names)
        else:
            raise ValueError("give the vocabulary: name_path (class-name file) or classes (list)")

    # ------------------------------------------------------------------ vocabulary
    def set_vocabulary(self, classes: Sequence[str]) -> None:
        """Replace the vocabulary: one entry per class, synonyms separated by ``", "``."""
        queries, index = text.parse_vocabulary(list(classes))
        self._set_queries(queries, index, [c.split(", ")[0].strip() for c in classes])

    def _set_queries(self, queries: list[str], index: list[int], names: list[str]) -> None:
        self.queries, self.class_names = queries, names
        self.query_class = torch.tensor(index, dtype=torch.long)
        self._text_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def text_state(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Query embeddings (Q, E) and cluster ids (Q,) on ``device``, computed once."""
        if device not in self._text_cache:
            if not self._text_cache:
                feats = text.query_embeddings(self.clip, self.queries, cache_dir=self.text_cache_dir)
            else:
                feats = next(iter(self._text_cache.values()))[0]
            clusters = torch.as_tensor(text.query_clusters(feats, self.h_threshold), device=device)
            self._text_cache[device] = (feats.to(device), clusters)
        return self._text_cache[device]

    # ------------------------------------------------------------------ precision
    def _dtype(self, precision: str | None, device: torch.device) -> torch.dtype:
        precision = self.precision if precision is None else precision
        if precision == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return PRECISIONS[precision]

    def _prepare(self, device: torch.device) -> None:
        """Cast the image towers to the precision chosen for ``device`` (once)."""
        visual = self.clip.visual
        dtype = self._dtype(None, device)
        if visual.conv1.weight.dtype != dtype:
            # like OpenAI's half-precision CLIP: matrices in low precision, LayerNorms
            # and embeddings in float32 (LayerNormFp32 computes in float32)
            visual.float()
            if dtype != torch.float32:
                convert_weights_to_lp(visual, dtype)
        if self.vfm is not None:
            vfm_dtype = self._dtype(self.vfm_precision, device)
            if self.vfm.patch_embed.proj.weight.dtype != vfm_dtype:
                self.vfm.to(vfm_dtype)

    # ------------------------------------------------------------------ forward
    def global_embeddings(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, E): the image embedding ``v`` of each whole image."""
        tokens, _ = clip_vit.clip_trunk(self.clip.visual, images)
        return clip_vit.global_embedding(self.clip.visual, tokens)

    def attention(self, tokens: Tensor, crops: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Attention of the reduced last block and the patch values.

        Returns:
            (B, H, N, N) row-stochastic attention and (B, H, N, d) values.
        """
        q, k, v = clip_vit.last_block_qkv(self.clip.visual, tokens)
        if self.attn_strategy == "vanilla":
            logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
            return logits.softmax(-1), v
        make_input = reference_dino_images if self.dino_input == "reference" else plain_dino_images
        dino_keys, dino_grid = last_block_keys(self.vfm, make_input(crops, self.vfm_spec))
        dino_keys = keys_on_clip_grid(dino_keys, dino_grid, grid, self.dino_keys_fp16)
        clip_keys = k.float()
        dino_keys = spectral.range_match(dino_keys, clip_keys, dims=(1, 2, 3))
        if self.attn_strategy == "spectral":
            logits = spectral.fuse_spectral(
                clip_keys, dino_keys, top_eigen=self.top_eigen, rank=self.low_rank,
                energy_threshold=self.energy_threshold, scale_eigenvalues=self.eigenscaling, canonical=self.canonical_matching,
                swapped_pairing=self.swapped_pairing, vfm_weight=self.vfm_weight)
        else:
            logits = spectral.fuse_sequential(clip_keys, dino_keys, rank=self.low_rank,
                                              energy_threshold=self.energy_threshold)
        bias = spectral.gaussian_bias(grid, self.gaussian_std, device=logits.device)
        return (logits + bias).softmax(-1), v

    def crop_logits(self, crops: Tensor, image_embeddings: Tensor | None) -> Tensor:
        """Query logits of a batch of equal-size crops, at crop resolution.

        Args:
            crops: (B, 3, Hc, Wc) CLIP-normalised crops.
            image_embeddings: (B, E) presence-prior embeddings ``v``; None takes
                them from the crops themselves.

        Returns:
            (B, Q, Hc, Wc) float32 logits ``S``.
        """
        text_feats, clusters = self.text_state(crops.device)
        tokens, grid = clip_vit.clip_trunk(self.clip.visual, crops)
        if image_embeddings is None:
            image_embeddings = clip_vit.global_embedding(self.clip.visual, tokens)
        attn, values = self.attention(tokens, crops, grid)
        feats = clip_vit.reduced_block_output(self.clip.visual, attn, values)
        presence = image_embeddings.float() @ text_feats.T
        refined = text.refine_text(feats, text_feats, presence, clusters, self.alpha)
        logits = text.class_logits(feats, refined, presence, self.gamma)  # (B, N, Q)
        logits = logits.transpose(1, 2).reshape(len(crops), -1, *grid)
        return F.interpolate(logits, size=crops.shape[-2:], mode="bilinear", align_corners=False)

    def query_logits(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Sliding-window (or whole-image) query logits for each image.

        All crops of all images go through the towers in batches of equal-size
        crops; the whole-image embedding ``v`` is computed once per image.

        Args:
            images: (3, H_i, W_i) CLIP-normalised resized images.

        Returns:
            (Q, H_i, W_i) float32 logits per image.
        """
        patch = self.clip.visual.conv1.kernel_size[0]
        for img in images:
            if min(img.shape[-2:]) < patch:
                raise ValueError(f"image of {tuple(img.shape[-2:])} px after resizing is smaller than one "
                                 f"CLIP patch ({patch} px); it is too thin to segment")
        whole = self.slide_crop <= 0
        boxes = [[(0, 0, *img.shape[-2:])] if whole else
                 slide_windows(*img.shape[-2:], self.slide_crop, self.slide_stride) for img in images]
        embeddings: list[Tensor | None] = [None] * len(images)
        if not whole and not self.prior_from_crop:
            by_shape = defaultdict(list)
            for i, img in enumerate(images):
                by_shape[tuple(img.shape)].append(i)
            for idx in by_shape.values():
                for chunk in _chunks(idx, self.crop_batch_size):
                    for i, v in zip(chunk, self.global_embeddings(torch.stack([images[i] for i in chunk]))):
                        embeddings[i] = v
        jobs = defaultdict(list)  # crop shape -> (image, box)
        for i, image_boxes in enumerate(boxes):
            for box in image_boxes:
                jobs[(box[2] - box[0], box[3] - box[1])].append((i, box))
        sums = [images[i].new_zeros(len(self.queries), *images[i].shape[-2:], dtype=torch.float32)
                for i in range(len(images))]
        counts = [images[i].new_zeros(1, *images[i].shape[-2:], dtype=torch.float32) for i in range(len(images))]
        for items in jobs.values():
            for chunk in _chunks(items, self.crop_batch_size):
                crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, x1, y2, x2) in chunk])
                prior = None if embeddings[chunk[0][0]] is None else torch.stack([embeddings[i] for i, _ in chunk])
                for (i, (y1, x1, y2, x2)), logits in zip(chunk, self.crop_logits(crops, prior)):
                    sums[i][:, y1:y2, x1:x2] += logits
                    counts[i][:, y1:y2, x1:x2] += 1
        return [s / c for s, c in zip(sums, counts)]

    def postprocess(self, logits: Tensor, image: Tensor, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Query logits -> class probabilities and label map at ``out_size``.

        Bilinear resize, optional PAMR, ``x logit_scale`` softmax over queries,
        max over each class's synonyms, argmax, ``prob_thd`` -> class 0.

        Args:
            logits: (Q, h, w); image: (3, h, w) the normalised input.

        Returns:
            (C, H, W) probabilities and (1, H, W) int64 labels.
        """
        logits = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)
        if self.pamr_steps > 0:
            guide = F.interpolate(image[None].float(), size=out_size, mode="bilinear", align_corners=False)
            logits = pamr(guide, logits, self.pamr_steps, self.pamr_dilations)
        # softmax in place: at the original size of a large image every copy counts
        probs = logits[0].mul_(self.logit_scale)
        probs.sub_(probs.amax(0, keepdim=True)).exp_()
        probs.div_(probs.sum(0, keepdim=True))
        if len(self.queries) != self.num_classes:
            merged = probs.new_zeros(self.num_classes, *out_size)
            for q, c in enumerate(self.query_class.tolist()):
                torch.maximum(merged[c], probs[q], out=merged[c])
            probs = merged
        top, labels = probs.max(0, keepdim=True)
        labels[top < self.prob_thd] = 0
        return probs, labels

    @torch.no_grad()
    def predict(self, inputs: Tensor, data_samples: list[SegDataSample] | None = None) -> list[SegDataSample]:
        """mmseg ``predict``: ``seg_logits`` (class probabilities) and ``pred_sem_seg``
        at each sample's ``ori_shape``.

        Args:
            inputs: (B, 3, H, W) CLIP-normalised images (padded to a common size).
            data_samples: samples whose metainfo gives ``img_shape`` (the
                resized size inside the padding) and ``ori_shape``.
        """
        if data_samples is None:
            size = tuple(inputs.shape[-2:])
            data_samples = [SegDataSample(metainfo=dict(img_shape=size, ori_shape=size)) for _ in inputs]
        self._prepare(inputs.device)
        images = []
        for img, sample in zip(inputs, data_samples):
            h, w = sample.metainfo.get("img_shape", img.shape[-2:])[:2]
            images.append(img[:, :h, :w])
        for img, sample, logits in zip(images, data_samples, self.query_logits(images)):
            ori = tuple(sample.metainfo.get("ori_shape", img.shape[-2:])[:2])
            probs, labels = self.postprocess(logits, img, ori)
            sample.set_data({"seg_logits": PixelData(data=probs), "pred_sem_seg": PixelData(data=labels)})
        return data_samples

    @torch.no_grad()
    def encode_decode(self, inputs: Tensor, batch_data_samples: list[SegDataSample] | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, Q, H, W) query logits at input resolution (no padding assumed)."""
        self._prepare(inputs.device)
        return torch.stack(self.query_logits(list(inputs)))

    def _forward(self, inputs: Tensor, data_samples: list[SegDataSample] | None = None) -> Tensor:
        return self.encode_decode(inputs, data_samples)

    def extract_feat(self, inputs: Tensor) -> Tensor:
        raise NotImplementedError("CASS has no single feature map; use predict() or crop_logits()")

    def loss(self, inputs: Tensor, data_samples: list[SegDataSample]) -> dict:
        raise NotImplementedError("CASS is training-free: it has no loss")


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
