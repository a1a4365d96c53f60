"""Vocabularies, text embeddings and their cache, clusters, the text refinement."""
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from cass import clip_vit, text
from cass.config import TextConfig
from cass.text import VocabularyError


def test_read_class_file_synonyms_and_trailing_blank(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("background, sky\ncat\ndog, puppy, hound\n\n\n")
    queries, index, names = text.read_class_file(path)
    assert queries == ["background", "sky", "cat", "dog", "puppy", "hound"]
    assert index == [0, 0, 1, 2, 2, 2]
    assert names == ["background", "cat", "dog"]


@pytest.mark.parametrize("content, message", [
    ("cat\n\ndog\n", "line 2 is blank"),
    ("cat\ndog, dog\n", "repeats a name"),
    ("cat\ndog\ncat\n", "are the same"),
    ("cat\ndog, \n", "empty name"),
    ("\n\n", "no classes"),
])
def test_malformed_class_files(tmp_path, content, message):
    path = tmp_path / "c.txt"
    path.write_text(content)
    with pytest.raises(VocabularyError, match=message):
        text.read_class_file(path)


def test_missing_class_file(tmp_path):
    with pytest.raises(VocabularyError, match="not found"):
        text.read_class_file(tmp_path / "nope.txt")


def test_name_shared_by_two_classes_is_kept():
    queries, index = text.parse_vocabulary(["sky, bed", "bed"])
    assert queries == ["sky", "bed", "bed"] and index == [0, 0, 1]


def test_truncated_text_tower_equals_open_clip():
    model = tiny_clip()
    tokens = open_clip.tokenize(["a photo of a cat.", "a bad photo of the hard to see dining table."])
    torch.testing.assert_close(clip_vit.encode_text(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)


def test_query_embeddings_template_average_and_cache(tmp_path, monkeypatch):
    model = tiny_clip()
    templates = open_clip.OPENAI_IMAGENET_TEMPLATES[:3]
    feats = text.query_embeddings(model, ["cat", "dog"], templates, cache_dir=tmp_path)
    for q, name in enumerate(["cat", "dog"]):
        each = F.normalize(model.encode_text(open_clip.tokenize([t(name) for t in templates])), dim=-1)
        torch.testing.assert_close(feats[q], F.normalize(each.mean(0), dim=0), atol=1e-5, rtol=1e-5)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(text, "encode_text", fail)
    assert torch.equal(text.query_embeddings(model, ["cat", "dog"], templates, cache_dir=tmp_path), feats)
    with pytest.raises(AssertionError, match="cache miss"):  # another vocabulary is a different key
        text.query_embeddings(model, ["cat", "bird"], templates, cache_dir=tmp_path)


def test_query_clusters_match_scipy():
    emb = F.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    a = emb.numpy().astype(np.float64)
    dist = 1 - a @ a.T
    np.fill_diagonal(dist, 0)
    expected = fcluster(linkage(squareform(dist, checks=False), "ward"), t=0.9, criterion="distance") - 1
    assert text.query_clusters(emb, 0.9).tolist() == expected.tolist()
    assert text.query_clusters(emb[:1], 0.9).tolist() == [0]


def slow_refine(feats, txt, presence, clusters, alpha):
    """The reference's per-cluster loop for one crop."""
    out = txt.clone()
    for c in range(int(clusters.max()) + 1):
        members = np.where(clusters.numpy() == c)[0]
        best = int(members[np.argmax(presence.numpy()[members])])
        top = (feats @ txt[best]).topk(2).indices
        mean = F.normalize(feats[top].mean(0), dim=0)
        out[best] = F.normalize((1 - alpha) * txt[best] + alpha * mean, dim=0)
    return out


def test_refine_text_against_loop():
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(3, 20, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    presence = torch.randn(3, 6, generator=g)
    clusters = torch.tensor([0, 1, 0, 2, 1, 0])
    fast = text.refine_text(feats, txt, presence, clusters, TextConfig(mean_vector_weight=0.3))
    for b in range(3):
        torch.testing.assert_close(fast[b], slow_refine(feats[b], txt, presence[b], clusters, 0.3))
    logits = text.class_logits(feats, fast, presence, TextConfig(global_semantics_weight=0.2))
    torch.testing.assert_close(logits[1], 0.8 * feats[1] @ fast[1].T + 0.2 * presence[1][None])


def test_refine_text_with_the_cluster_count_given():
    """The model passes the cluster count it keeps on the host; the result is the same as reading it."""
    g = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(2, 30, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(7, 8, generator=g), dim=-1)
    presence = torch.randn(2, 7, generator=g)
    clusters = torch.tensor([2, 0, 1, 0, 2, 3, 1])
    cfg = TextConfig(mean_vector_weight=0.3)
    assert torch.equal(text.refine_text(feats, txt, presence, clusters, cfg, num_clusters=4),
                       text.refine_text(feats, txt, presence, clusters, cfg))
