"""Text side of CASS (spec section 5): vocabularies, query embeddings and their
disk cache, query clusters and the object-presence refinement."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip import OPENAI_IMAGENET_TEMPLATES
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics.pairwise import cosine_distances
from torch import Tensor, nn

from .clip_vit import encode_text
from .config import TextConfig

Template = Callable[[str], str]
logger = logging.getLogger(__name__)


class VocabularyError(ValueError):
    """A class list or class-name file is malformed."""


def class_list(text: str) -> list[str]:
    """``"cat, dog, sky"`` -> ``["cat", "dog", "sky"]`` (a one-line class list, as ``demo.py --classes``);
    an empty string is no class."""
    names = [name.strip() for name in text.split(",")]
    return [] if names == [""] else names


def parse_vocabulary(classes: Sequence[str], source: str = "class list") -> tuple[list[str], list[int]]:
    """Queries and their class index from one entry per class.

    Each entry holds the class's names separated by ``", "`` (synonyms are
    separate queries, merged by max at the end). Errors: no classes, an empty
    name, a name repeated inside one class, two classes with the same names.
    A name shared by two different classes is kept (the published COCO-Object
    vocabulary lists "bed" both as a background synonym and as a class) and
    logged, since the first class then wins its refinement.

    Returns:
        queries (Q,) and class index of each query (Q,).
    """
    if len(classes) == 0:
        raise VocabularyError(f"{source}: no classes")
    queries, index, first_class, entries = [], [], {}, {}
    for cls, entry in enumerate(classes):
        names = [n.strip() for n in entry.split(", ")]
        if not entry.strip() or any(not n for n in names):
            raise VocabularyError(f"{source}: class {cls + 1} has an empty name: {entry!r}")
        if len(set(names)) != len(names):
            raise VocabularyError(f"{source}: class {cls + 1} repeats a name: {entry!r}")
        if tuple(names) in entries:
            raise VocabularyError(f"{source}: classes {entries[tuple(names)] + 1} and {cls + 1} are the same: {entry!r}")
        entries[tuple(names)] = cls
        for name in names:
            if name in first_class:
                logger.warning("%s: name '%s' belongs to classes %d and %d", source, name, first_class[name] + 1, cls + 1)
            first_class.setdefault(name, cls)
            queries.append(name)
            index.append(cls)
    return queries, index


def read_class_file(path: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """Read a class-name file: one class per line, synonyms separated by ``", "``.

    Trailing blank lines are ignored; a blank line between classes is an error
    (it would shift every later class index).

    Returns:
        queries, class index per query, and one display name per class (its
        first name).
    """
    file = Path(path)
    if not file.is_file():
        raise VocabularyError(f"class-name file not found: {file}")
    lines = file.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise VocabularyError(f"{file}: line {number} is blank (one class per line)")
    queries, index = parse_vocabulary(lines, str(file))
    return queries, index, [line.split(", ")[0].strip() for line in lines]


@dataclass(frozen=True)
class Vocabulary:
    """The classes to segment: each class has one or more names (synonyms).

    Every name is a separate text query; a class's score is the max over its
    queries.

    Attributes:
        queries: every name of every class, in order (Q).
        query_class: class index of each query (Q).
        class_names: one display name per class, its first name (C).
    """

    queries: tuple[str, ...]
    query_class: tuple[int, ...]
    class_names: tuple[str, ...]

    @classmethod
    def from_classes(cls, classes: Sequence[str]) -> Vocabulary:
        """One entry per class, synonyms separated by ``", "`` (``["sky", "dog, puppy"]``)."""
        if isinstance(classes, str):
            raise VocabularyError(f"classes must be a list of class names, got the string {classes!r}")
        classes = list(classes)
        queries, index = parse_vocabulary(classes)
        return cls(tuple(queries), tuple(index), tuple(c.split(", ")[0].strip() for c in classes))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Vocabulary:
        """A class-name file: one class per line, synonyms separated by ``", "``."""
        queries, index, names = read_class_file(path)
        return cls(tuple(queries), tuple(index), tuple(names))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_synonyms(self) -> bool:
        return len(self.queries) != len(self.class_names)


def _fingerprint(model: nn.Module) -> str:
    """Cheap identity of the text tower's weights: shapes and a strided sample of every tensor."""
    digest = hashlib.sha256()
    modules = [model.token_embedding, model.transformer, model.ln_final]
    tensors = [("positional_embedding", model.positional_embedding), ("text_projection", model.text_projection)]
    for prefix, module in zip(("tok", "tf", "lnf"), modules):
        tensors += [(f"{prefix}.{k}", v) for k, v in module.state_dict().items()]
    for name, tensor in tensors:
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("CASS_CACHE_DIR", Path.home() / ".cache" / "cass")) / "text"


@torch.no_grad()
def query_embeddings(model: nn.Module, queries: Sequence[str],
                     templates: Sequence[Template] = OPENAI_IMAGENET_TEMPLATES,
                     cache_dir: str | os.PathLike | None = None, batch_size: int = 2048) -> Tensor:
    """Template-averaged text embedding ``t_c`` of every query.

    Each template embedding is L2-normalised, averaged over the templates and
    re-normalised. Cached on disk under a key of the weights' fingerprint, the
    queries and the template strings (pass ``cache_dir=False`` to disable).

    Returns:
        (Q, E) float32 on the model's device.
    """
    device = model.token_embedding.weight.device
    prompts = [[t(q) for t in templates] for q in queries]
    path = None
    if cache_dir is not False:
        key = hashlib.sha256(repr((_fingerprint(model), prompts)).encode()).hexdigest()[:32]
        path = Path(cache_dir or default_cache_dir()) / f"{key}.pt"
        if path.is_file():
            return torch.load(path, map_location=device, weights_only=True)
    tokens = open_clip.tokenize([p for group in prompts for p in group])
    feats = torch.cat([encode_text(model, tokens[i:i + batch_size].to(device))
                       for i in range(0, len(tokens), batch_size)])
    feats = F.normalize(feats, dim=-1).reshape(len(queries), len(templates), -1)
    feats = F.normalize(feats.mean(dim=1), dim=-1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(feats.cpu(), tmp)
        tmp.replace(path)
    return feats


def query_clusters(text_embeddings: Tensor, threshold: float) -> np.ndarray:
    """Ward clusters of the queries, cut at ``threshold`` (cosine distance).

    Returns:
        (Q,) zero-based cluster id per query (one cluster for a single query).
    """
    if len(text_embeddings) == 1:
        return np.zeros(1, dtype=np.int64)
    distances = cosine_distances(text_embeddings.detach().float().cpu().numpy())
    tree = linkage(squareform(distances, checks=False), method="ward")
    return fcluster(tree, t=threshold, criterion="distance").astype(np.int64) - 1


def refine_text(patch_feats: Tensor, text: Tensor, presence: Tensor, clusters: Tensor, cfg: TextConfig,
                num_clusters: int | None = None) -> Tensor:
    """Object-presence refinement of the query embeddings, per crop.

    For each cluster, the query ``c*`` with the highest presence ``P`` is
    moved towards the mean of the ``cfg.top_patches`` patch features most
    similar to it: ``t_c* <- normalise((1 - alpha) t_c* + alpha mu)`` with
    ``alpha = cfg.mean_vector_weight``; others keep ``t_c``.

    Args:
        patch_feats: (B, N, E) L2-normalised patch features ``F``.
        text: (Q, E) L2-normalised query embeddings.
        presence: (B, Q) ``P = t_c . v``.
        clusters: (Q,) int64 cluster id per query, ids 0..K-1.
        num_clusters: K when known (reading it from ``clusters`` on a GPU
            waits for the GPU).

    Returns:
        (B, Q, E) refined embeddings.
    """
    b, q = presence.shape
    alpha = cfg.mean_vector_weight
    if num_clusters is None:
        num_clusters = int(clusters.max()) + 1
    member = clusters[None, :] == torch.arange(num_clusters, device=clusters.device)[:, None]  # (K, Q)
    masked = presence[:, None, :].masked_fill(~member, -torch.inf)  # (B, K, Q)
    best = masked.argmax(dim=-1)  # (B, K): first maximum, like numpy
    sims = patch_feats @ text.T  # (B, N, Q)
    best_sims = sims.gather(2, best[:, None, :].expand(-1, sims.shape[1], -1))  # (B, N, K)
    top = best_sims.topk(min(cfg.top_patches, sims.shape[1]), dim=1).indices  # (B, k, K)
    picked = patch_feats.gather(1, top.flatten(1)[..., None].expand(-1, -1, patch_feats.shape[-1]))
    mean = F.normalize(picked.reshape(b, -1, num_clusters, patch_feats.shape[-1]).mean(1), dim=-1)  # (B, K, E)
    moved = F.normalize((1 - alpha) * text[best] + alpha * mean, dim=-1)
    refined = text.expand(b, -1, -1).clone()
    refined.scatter_(1, best[..., None].expand_as(moved), moved)
    return refined


def class_logits(patch_feats: Tensor, refined_text: Tensor, presence: Tensor, cfg: TextConfig) -> Tensor:
    """``S = (1 - gamma) F . t~ + gamma P`` with ``gamma = cfg.global_semantics_weight``:
    (B, N, E), (B, Q, E), (B, Q) -> (B, N, Q)."""
    gamma = cfg.global_semantics_weight
    return (1 - gamma) * (patch_feats @ refined_text.transpose(1, 2)) + gamma * presence[:, None, :]
