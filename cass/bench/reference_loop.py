"""CASS with the structure of the released code: the per-crop baseline.

Computes the same function as :class:`cass.model.CASSModel` (same models,
same settings, read from a built model; public attributes only), but organised the way
the authors' release is, so that ``benchmark.py`` can measure what the fast
path gains:

* crops go through the towers one at a time;
* for every crop the whole image goes through CLIP again (all 12 blocks) for
  the presence prior, and DINO runs a second time, on the crop rebuilt as a
  square of side ``min(H, W)`` of the *whole* image, its output unused;
* DINO runs every block with explicit attention matrices and normalises every
  block's output (the release asks its ViT for all intermediate features,
  attention maps and qkv, and keeps the last keys);
* each head graph is decomposed separately as an N x N matrix:
  ``torch.linalg.eigvalsh`` for the spectra, the cost matrix filled pair by
  pair, ``torch.svd_lowrank(q=rank)`` for the low-rank DINO graph;
* the object-presence refinement loops over the clusters in Python.

Only the reference behaviour of the segmentor's defaults is supported
(``low_rank`` an integer; "spectral" or "sequential" strategy). The
randomised SVD is not deterministic; ``exact_low_rank=True`` replaces it with
an N x N ``eigh`` (still per head) for the agreement tests.

Each part runs inside the same named stages as the fast path
(:mod:`cass.stages`), so ``benchmark.py`` times both alike.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .. import clip_vit, spectral
from ..backbones import VFMSpec
from ..constants import IMAGENET_MEAN, IMAGENET_STD, REFERENCE_INVERSE_STD
from ..dino_input import plain_dino_images
from ..model import CASSModel
from ..windows import slide_windows
from ..stages import stage
from ..vfm_keys import keys_on_clip_grid


def check_supported(model: CASSModel) -> None:
    """Raise ValueError for settings the per-crop baseline does not implement."""
    cfg = model.config.spectral
    if cfg.attn_strategy not in ("spectral", "sequential"):
        raise ValueError(f"reference loop: attn_strategy '{cfg.attn_strategy}' not supported")
    if cfg.low_rank is None:
        raise ValueError("reference loop: needs an integer low_rank (the released code's r = 10)")
    if model.vfm_spec.fixed_size is not None:
        raise ValueError("reference loop: only DINO ViT-B/8 (no fixed-size VFM input)")


def dino_input(crop: Tensor, side: int, mode: str, spec: VFMSpec) -> Tensor:
    """DINO image of one crop, as the release builds it for every call.

    Args:
        crop: (1, 3, Hc, Wc) CLIP-normalised crop.
        side: side of the square the rebuilt image is resized to (``min`` of
            the sides of the tensor the CLIP call runs on).
        mode: ``'reference'`` (uint8 image rebuilt with the 0.255 quirk, PIL
            bicubic resize) or ``'plain'`` (the crop itself; ``side`` unused).

    Returns:
        (1, 3, S, S') ImageNet-normalised image, sides multiples of the patch.
    """
    if mode == "plain":
        return plain_dino_images(crop, spec)
    pixels = TF.normalize(crop[0].detach().float().cpu(),
                          [-m / s for m, s in zip(IMAGENET_MEAN, REFERENCE_INVERSE_STD)],
                          [1 / s for s in REFERENCE_INVERSE_STD])
    image = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).resize((side, side))
    tensor = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
    size = side - side % spec.patch_size
    return tensor[None, :, :size, :size].to(crop.device)


def dino_forward(model: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Full DINO forward, as released: every block, every block's normalised
    output, and attention computed explicitly (the release's ViT returns each
    block's attention matrix, so it materialises it; timm's fused kernel is off).

    Returns:
        (1, H, n, d) keys of the last block (CLS dropped) and the patch grid.
    """
    dtype = model.patch_embed.proj.weight.dtype
    x = model.patch_embed.proj(images.to(dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = model.patch_embed.norm(x.flatten(2).transpose(1, 2))
    x = torch.cat([model.cls_token.to(dtype).expand(len(x), -1, -1), x], dim=1)
    x = x + clip_vit.resize_pos_embed(model.pos_embed[0], grid, model.num_prefix_tokens).to(dtype)
    x = model.norm_pre(x)
    attn = model.blocks[-1].attn
    captured = []
    handle = attn.qkv.register_forward_hook(lambda module, args, out: captured.append(out))
    fused = [block.attn.fused_attn for block in model.blocks]
    try:
        features = []
        for block in model.blocks:
            block.attn.fused_attn = False
            x = block(x)
            features.append(model.norm(x))
    finally:
        handle.remove()
        for block, flag in zip(model.blocks, fused):
            block.attn.fused_attn = flag
    qkv = captured[-1]
    b, n, _ = qkv.shape
    keys = qkv.reshape(b, n, 3, attn.num_heads, -1)[:, :, 1].transpose(1, 2)
    return attn.k_norm(keys)[:, :, model.num_prefix_tokens:], grid


def compute_spectrum(graphs: Tensor, top: int) -> Tensor:
    """Top eigenvalues of each (N, N) graph, one ``eigvalsh`` per head: (H, N, N) -> (H, top)."""
    out = []
    for graph in graphs:
        vals = torch.linalg.eigvalsh(graph.double())
        out.append(torch.sort(vals, descending=True).values[:top])
    return torch.stack(out)


def head_cost(dino_spectra: Tensor, clip_spectra: Tensor) -> Tensor:
    """Cost matrix filled pair by pair: ``1 - W1`` of the L2- then L1-normalised spectra."""
    dino_spectra = F.normalize(dino_spectra, p=2, dim=1)
    clip_spectra = F.normalize(clip_spectra, p=2, dim=1)
    heads = len(dino_spectra)
    cost = torch.zeros(heads, heads)
    for i in range(heads):
        u = F.normalize(dino_spectra[i], p=1, dim=-1)
        for j in range(heads):
            v = F.normalize(clip_spectra[j], p=1, dim=-1)
            cost[i, j] = 1 - (torch.sort(u).values - torch.sort(v).values).abs().sum()
    return cost


def low_rank(graph: Tensor, rank: int, exact: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``rank`` factors ``U, s, V`` of one (N, N) graph in float64.

    Randomised (``torch.svd_lowrank(q=rank)``, the release) or exact (``eigh``).
    """
    graph = graph.double()
    if not exact:
        return torch.svd_lowrank(graph, q=rank)
    vals, vecs = torch.linalg.eigh(graph)
    vals, vecs = vals.flip(-1)[:rank], vecs.flip(-1)[:, :rank]
    return vecs, vals, vecs


def _range_like(x: Tensor, ref: Tensor) -> Tensor:
    return (x - x.min()) / (x.max() - x.min()) * (ref.max() - ref.min()) + ref.min()


def spectral_attention(model: CASSModel, clip_keys: Tensor, dino_keys: Tensor, grid: tuple[int, int],
                       exact_low_rank: bool = False) -> Tensor:
    """Fused attention of one crop, head by head.

    Args:
        clip_keys, dino_keys: (H, N, d) keys (DINO keys on the CLIP grid).

    Returns:
        (H, N, N) row-stochastic attention.
    """
    cfg = model.config.spectral
    heads, _, d = clip_keys.shape
    clip_keys = clip_keys.float()
    dino_keys = _range_like(dino_keys, clip_keys)
    scale = d ** -0.5
    clip_graph = torch.bmm(clip_keys, clip_keys.transpose(1, 2)) * scale
    dino_graph = torch.bmm(dino_keys, dino_keys.transpose(1, 2)) * scale
    fused = torch.zeros_like(clip_graph)
    if cfg.attn_strategy == "spectral":
        cost = head_cost(compute_spectrum(dino_graph, cfg.top_eigen), compute_spectrum(clip_graph, cfg.top_eigen))
        cost_np = cost.numpy()
        cols = (spectral.canonical_assignment_exhaustive(cost_np) if cfg.canonical_matching
                else linear_sum_assignment(cost_np)[1])
        for i in range(heads):
            j = int(cols[i])
            clip_head, dino_head = (i, j) if cfg.swapped_pairing else (j, i)
            weight = float(1 - cost[i, j])
            u, s, v = low_rank(dino_graph[dino_head], cfg.low_rank, exact_low_rank)
            if cfg.eigenscaling:
                s = (s - s.min()) / (s.max() - s.min()) * (1.5 * s.max() - 0.5 * s.min()) + 0.5 * s.min()
            approx = (u @ torch.diag(s) @ v.T).float()
            approx.fill_diagonal_(0)
            approx = _range_like(approx, clip_graph[clip_head])
            w = cfg.vfm_weight * weight
            fused[clip_head] = (w * approx + clip_graph[clip_head]) / (w + 1)
    else:  # sequential
        for i in range(heads):
            u, s, v = low_rank(dino_graph[i], cfg.low_rank, exact_low_rank)
            approx = (u @ torch.diag(s) @ v.T).float()
            approx.fill_diagonal_(0)
            fused[i] = (_range_like(approx, clip_graph[i]) + clip_graph[i]) / 2
    bias = spectral.gaussian_bias(grid, cfg.gaussian_std, device=fused.device)
    return (fused + bias).softmax(-1)


def hierarchical_prompt(patch_feats: Tensor, text: Tensor, presence: Tensor, clusters: np.ndarray,
                        alpha: float) -> Tensor:
    """Object-presence refinement, one cluster at a time.

    Args:
        patch_feats: (N, E) L2-normalised patch features; text: (Q, E);
        presence: (Q,) ``P``; clusters: (Q,) cluster id per query.

    Returns:
        (Q, E) refined query embeddings.
    """
    presence_np = presence.detach().cpu().numpy()
    refined = text.clone()
    for cluster in range(int(clusters.max()) + 1):
        members = np.where(clusters == cluster)[0]
        best = int(members[np.argmax(presence_np[members])])
        t = F.normalize(text[best][None], dim=1)
        top = torch.topk((patch_feats @ t.T).squeeze(1), min(2, len(patch_feats))).indices
        mean = F.normalize(patch_feats[top].mean(0), dim=0)
        refined[best] = F.normalize((1 - alpha) * t[0] + alpha * mean, dim=0)
    return refined


def encode_image(model: CASSModel, x: Tensor, crop: Tensor, return_cls: bool,
                 exact_low_rank: bool = False) -> tuple[Tensor | None, Tensor]:
    """One call of the release's CLIP ``encode_image`` on ``x`` (a crop or the whole image).

    DINO runs first, on ``crop`` rebuilt as a square of side ``min`` of
    ``x``'s sides, whether or not its keys are used; then CLIP runs all its
    blocks (the last one unmodified, for ``v``) and, unless ``return_cls``,
    the reduced last block with the fused attention.

    Returns:
        (1, N, E) L2-normalised patch features (None if ``return_cls``) and
        (1, E) the L2-normalised image embedding ``v`` of ``x``.
    """
    visual = model.clip.visual
    cfg = model.config.spectral
    with stage("dino"):
        dino_keys, dino_grid = dino_forward(model.vfm, dino_input(crop, min(x.shape[-2:]), cfg.dino_input,
                                                                  model.vfm_spec))
    with stage("clip"):
        tokens, grid = clip_vit.clip_trunk(visual, x)
        v = clip_vit.global_embedding(visual, tokens)
    if return_cls:
        return None, v
    with stage("clip"):
        _, k, values = clip_vit.last_block_qkv(visual, tokens)
    with stage("dino"):
        dino_keys = keys_on_clip_grid(dino_keys, dino_grid, grid, cfg.dino_keys_fp16)
    with stage("spectral"):
        attn = spectral_attention(model, k[0], dino_keys[0], grid, exact_low_rank)
    with stage("clip"):
        return clip_vit.reduced_block_output(visual, attn[None], values), v


def forward_feature(model: CASSModel, crop: Tensor, whole: Tensor | None,
                    exact_low_rank: bool = False) -> Tensor:
    """Logits of one crop, at crop resolution: (1, 3, Hc, Wc) -> (Q, Hc, Wc).

    ``whole`` is the whole image for the presence prior (re-encoded here), or
    None to take the prior from the crop's own pass.
    """
    text_feats, clusters = model.text_state()
    feats, v = encode_image(model, crop, crop, return_cls=False, exact_low_rank=exact_low_rank)
    if whole is not None:
        _, v = encode_image(model, whole, crop, return_cls=True, exact_low_rank=exact_low_rank)
    cfg = model.config.text
    with stage("text"):
        presence = (v.float() @ text_feats.T)[0]
        refined = hierarchical_prompt(feats[0], text_feats, presence, clusters.cpu().numpy(), cfg.mean_vector_weight)
        gamma = cfg.global_semantics_weight
        logits = (feats[0] @ refined.T) * (1 - gamma) + presence[None] * gamma  # (N, Q)
    with stage("post"):
        patch = model.patch_size
        logits = logits.T.reshape(1, -1, crop.shape[-2] // patch, crop.shape[-1] // patch)
        return F.interpolate(logits, size=crop.shape[-2:], mode="bilinear", align_corners=False)[0]


def query_logits(model: CASSModel, image: Tensor, exact_low_rank: bool = False) -> Tensor:
    """Sliding-window (or whole-image) query logits of one image, crop by crop.

    Args:
        image: (3, H, W) CLIP-normalised resized image.

    Returns:
        (Q, H, W) float32 logits.
    """
    check_supported(model)
    window = model.config.window
    if window.whole_image:
        return forward_feature(model, image[None], None, exact_low_rank)
    height, width = image.shape[-2:]
    total = image.new_zeros(len(model.vocabulary.queries), height, width, dtype=torch.float32)
    count = image.new_zeros(1, height, width, dtype=torch.float32)
    for y1, x1, y2, x2 in slide_windows(height, width, window.slide_crop, window.slide_stride):
        crop = image[None, :, y1:y2, x1:x2]
        whole = None if model.config.text.prior_from_crop else image[None]
        logits = forward_feature(model, crop, whole, exact_low_rank)
        with stage("post"):
            total += F.pad(logits, (x1, width - x2, y1, height - y2))
            count[:, y1:y2, x1:x2] += 1
    with stage("post"):
        return total / count


@torch.no_grad()
def predict(model: CASSModel, images: Sequence[Tensor], out_sizes: Sequence[tuple[int, int]],
            exact_low_rank: bool = False) -> list[Tensor]:
    """Label maps of images processed one by one, crop by crop.

    Args:
        images: (3, H_i, W_i) CLIP-normalised resized images.
        out_sizes: output (original) size of each image.

    Returns:
        (H, W) int64 labels per image (the model's post-processing).
    """
    return [model.postprocess(query_logits(model, image, exact_low_rank), image, tuple(size)).labels
            for image, size in zip(images, out_sizes)]
