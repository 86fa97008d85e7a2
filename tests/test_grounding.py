"""Grounding truth (Algorithm 1) and grounding losses (equations (4)-(6)) against
independent references written here: a union-find over explicit cosines, and loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from avvp_lightning.errors import DataError
from avvp_lightning.grounding import grounding_labels, grounding_labels_torch
from avvp_lightning.losses.grounding import grounding_loss, grounding_pairs, grounding_scores

# ----------------------------------------------------------------------------- references


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    nx_, ny_ = float(x @ x), float(y @ y)
    if nx_ == 0 or ny_ == 0:
        return 0.0
    return float(x @ y) / math.sqrt(nx_ * ny_)


def union_find_labels(audio, visual, a_t, v_t, silence=None) -> np.ndarray:
    """Algorithm 1, written plainly: pairwise loop, union-find, then same-root pairs."""
    audio = np.asarray(audio, dtype=np.float64)
    visual = np.asarray(visual, dtype=np.float64)
    num_videos, length = audio.shape[:2]
    out = np.zeros((num_videos, length, length), dtype=bool)
    for n in range(num_videos):
        parent = list(range(length))

        def find(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        def audio_ok(j: int) -> bool:
            norm = math.sqrt(float(audio[n, j] @ audio[n, j]))
            return norm > 0 and (silence is None or norm >= silence)

        def visual_ok(j: int) -> bool:
            return float(visual[n, j] @ visual[n, j]) > 0

        for j in range(length):
            for k in range(j + 1, length):
                joined_a = audio_ok(j) and audio_ok(k) and _cos(audio[n, j], audio[n, k]) >= a_t
                joined_v = visual_ok(j) and visual_ok(k) and _cos(visual[n, j], visual[n, k]) >= v_t
                if joined_a or joined_v:
                    parent[find(j)] = find(k)
        for j in range(length):
            for k in range(length):
                out[n, j, k] = find(j) == find(k)
    return out


def low_rank_videos(num_videos: int, length: int, seed: int, noise: float = 0.25):
    """Videos whose snippets are noisy copies of 1-5 prototypes: components vary."""
    rng = np.random.default_rng(seed)
    audio = np.empty((num_videos, length, 6))
    visual = np.empty((num_videos, length, 8))
    for n in range(num_videos):
        rank = rng.integers(1, 6)
        owner = rng.integers(0, rank, size=length)
        for feats in (audio, visual):
            protos = rng.standard_normal((rank, feats.shape[2]))
            feats[n] = protos[owner] + noise * rng.standard_normal((length, feats.shape[2]))
    return audio.astype(np.float32), visual.astype(np.float32)


def num_components(labels: torch.Tensor) -> list[int]:
    """Components per video: sum over snippets of 1 / (size of its component)."""
    return [round(float((1.0 / row.sum(-1).double()).sum())) for row in labels]


# ------------------------------------------------------------------------ grounding labels


@pytest.mark.parametrize("a_t, v_t", [(0.9, 0.9), (0.7, 0.95), (0.99, 0.5)])
def test_labels_equal_union_find_on_random_videos(a_t: float, v_t: float) -> None:
    audio, visual = low_rank_videos(60, 10, seed=int(a_t * 100 + v_t * 10))
    labels = grounding_labels(audio, visual, a_t, v_t)
    assert labels.dtype == torch.bool and labels.shape == (60, 10, 10)
    np.testing.assert_array_equal(labels.numpy(), union_find_labels(audio, visual, a_t, v_t))
    counts = num_components(labels)
    assert min(counts) < max(counts) and max(counts) > 1  # the structures do vary


def test_torch_twin_equals_networkx_on_many_videos() -> None:
    for seed, length in enumerate([1, 2, 3, 7, 10, 17]):
        audio, visual = low_rank_videos(80, length, seed=100 + seed)
        for a_t, v_t, silence in [(0.9, 0.9, None), (0.6, 0.97, None), (0.8, 0.8, 2.0), (2.0, 2.0, None)]:
            expected = grounding_labels(audio, visual, a_t, v_t, silence)
            got = grounding_labels_torch(torch.from_numpy(audio), torch.from_numpy(visual), a_t, v_t, silence)
            assert got.dtype == torch.bool and got.device.type == "cpu"
            assert torch.equal(got, expected), (length, a_t, v_t, silence)


def test_long_chain_needs_full_transitive_closure() -> None:
    # Unit vectors 10 degrees apart (over 160 degrees): only neighbours pass
    # cos >= cos(15 deg), so the one component of 17 snippets is a path of 16 edges.
    length = 17
    angles = np.deg2rad(10.0 * np.arange(length))
    audio = np.stack([np.cos(angles), np.sin(angles)], axis=-1)[None]  # (1, T, 2)
    visual = np.eye(length)[None]  # orthogonal: no visual edges
    threshold = math.cos(math.radians(15))
    edges = np.array([[_cos(x, y) >= threshold for y in audio[0]] for x in audio[0]])
    assert edges.sum() == length + 2 * (length - 1)  # only the neighbours are joined
    for fn in (grounding_labels, grounding_labels_torch):
        assert fn(audio, visual, threshold, 0.5).all()


def test_threshold_hit_exactly_is_inclusive() -> None:
    u, w = np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 1.0])  # 60 degrees apart
    assert u @ w / math.sqrt((u @ u) * (w @ w)) == 0.5  # exactly, in float64
    audio = np.stack([u, w, np.array([0.0, 0.0, 5.0])])[None]  # (1, 3, 3)
    visual = np.eye(3)[None]  # no visual edges
    above = np.nextafter(0.5, 1.0)
    for fn in (grounding_labels, grounding_labels_torch):
        for dtype in (torch.float32, torch.float64):
            a, v = torch.tensor(audio, dtype=dtype), torch.tensor(visual, dtype=dtype)
            assert fn(a, v, 0.5, 0.9)[0, 0, 1]  # cos == threshold: joined
            assert not fn(a, v, above, 0.9)[0, 0, 1]
            # The same through the visual modality.
            assert fn(v, a, 0.9, 0.5)[0, 0, 1] and not fn(v, a, 0.9, above)[0, 0, 1]


def test_isolated_snippets_and_single_component() -> None:
    eye = np.eye(10)[None]  # (1, 10, 10): orthogonal snippets
    same = np.ones((1, 10, 4))
    for fn in (grounding_labels, grounding_labels_torch):
        assert torch.equal(fn(eye, eye, 0.5, 0.5)[0], torch.eye(10, dtype=torch.bool))
        assert fn(same, eye, 0.99, 0.99).all()  # audio alone joins everything
        assert fn(eye, same, 0.99, 0.99).all()  # visual alone joins everything


def test_zero_vectors_get_no_edge() -> None:
    audio = np.ones((1, 4, 3))
    audio[0, 2] = 0.0  # zero audio at snippet 2
    visual = np.eye(4)[None].copy()
    for fn in (grounding_labels, grounding_labels_torch):
        labels = fn(audio, visual, -1.0, 0.5)[0]  # threshold -1: every nonzero pair joins
        expected = torch.ones(4, 4, dtype=torch.bool)
        expected[2, :] = expected[:, 2] = False
        expected[2, 2] = True
        assert torch.equal(labels, expected)
        # A zero-audio snippet can still join through its visual features.
        visual2 = visual.copy()
        visual2[0, 2] = visual2[0, 0]
        assert fn(audio, visual2, -1.0, 0.5)[0].all()
    np.testing.assert_array_equal(
        grounding_labels(audio, visual, -1.0, 0.5).numpy(), union_find_labels(audio, visual, -1.0, 0.5)
    )


def test_silence_threshold_drops_quiet_audio_edges() -> None:
    direction = np.array([3.0, 4.0])  # norm 5
    audio = np.stack([direction, 0.1 * direction, 0.1 * direction, direction])[None]  # norms 5, .5, .5, 5
    visual = np.eye(4)[None]
    for fn in (grounding_labels, grounding_labels_torch):
        assert fn(audio, visual, 0.99, 0.99).all()  # same direction: one component
        quiet = fn(audio, visual, 0.99, 0.99, silence_threshold=1.0)[0]
        expected = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
        assert torch.equal(quiet, expected)
        assert fn(audio, visual, 0.99, 0.99, silence_threshold=0.5).all()  # norm == limit: kept


def test_shape_errors() -> None:
    with pytest.raises(DataError, match="share N and T"):
        grounding_labels_torch(np.ones((2, 10, 3)), np.ones((2, 9, 3)), 0.9, 0.9)
    with pytest.raises(DataError, match=r"\(N, T, D\)"):
        grounding_labels(np.ones((10, 3)), np.ones((10, 3)), 0.9, 0.9)


# -------------------------------------------------------------------------------- losses


def loop_loss(audio, visual, positives, variant, p, n, anchor_sets) -> float:
    """Equations (4)-(6) by loops: per anchor, sum over j; mean over anchors and videos."""

    def cos(x, y):
        return float(x @ y / (x.norm() * y.norm()))

    def hinge(s, pos):
        return max(p - s, 0.0) if pos else max(s - n, 0.0)

    total, count = 0.0, 0
    for b, anchors in enumerate(anchor_sets):
        for i in anchors:
            value = 0.0
            for j in range(audio.shape[1]):
                pos = bool(positives[b, i, j])
                if variant in ("uni", "multi"):
                    value += hinge(cos(audio[b, i], audio[b, j]), pos)
                    value += hinge(cos(visual[b, i], visual[b, j]), pos)
                if variant in ("cross", "multi"):
                    value += hinge(cos(audio[b, i], visual[b, j]), pos)
                    value += hinge(cos(visual[b, i], audio[b, j]), pos)
            total, count = total + value, count + 1
    return total / count


@pytest.fixture
def tiny() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    audio = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    visual = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    positives = torch.tensor(
        [[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
         [[1, 0, 1, 1], [0, 1, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1]]], dtype=torch.bool
    )
    return audio, visual, positives


@pytest.mark.parametrize("variant", ["uni", "cross", "multi"])
def test_loss_matches_loop_reference(tiny, variant: str) -> None:
    audio, visual, positives = tiny
    for p, n in [(0.7, 0.7), (0.8, 0.2)]:
        got = grounding_loss(audio, visual, positives, variant=variant, pos_margin=p, neg_margin=n)
        want = loop_loss(audio, visual, positives, variant, p, n, [range(4), range(4)])
        assert got.item() == pytest.approx(want, rel=1e-10)
        fixed = torch.tensor([[2, 0], [3, 3]])
        got = grounding_loss(audio, visual, positives, variant=variant, pos_margin=p, neg_margin=n, anchors=fixed)
        want = loop_loss(audio, visual, positives, variant, p, n, [[2, 0], [3, 3]])
        assert got.item() == pytest.approx(want, rel=1e-10)


def test_multi_is_uni_plus_cross(tiny) -> None:
    audio, visual, positives = tiny
    kw = dict(pos_margin=0.6, neg_margin=0.3)
    parts = [grounding_loss(audio, visual, positives, variant=v, **kw) for v in ("uni", "cross", "multi")]
    assert parts[2].item() == pytest.approx(parts[0].item() + parts[1].item(), rel=1e-12)


def test_random_anchors_are_a_valid_draw(tiny) -> None:
    audio, visual, positives = tiny
    kw = dict(variant="multi", pos_margin=0.8, neg_margin=0.2)
    draws = {
        round(loop_loss(audio, visual, positives, "multi", 0.8, 0.2, [s0, s1]), 9)
        for s0 in itertools.combinations(range(4), 2) for s1 in itertools.combinations(range(4), 2)
    }
    seen = set()
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        value = grounding_loss(audio, visual, positives, anchors=2, generator=gen, **kw).item()
        again = grounding_loss(audio, visual, positives, anchors=2,
                               generator=torch.Generator().manual_seed(seed), **kw).item()
        assert value == again  # reproducible from the generator
        assert round(value, 9) in draws  # two distinct anchors per video
        seen.add(round(value, 9))
    assert len(seen) > 3  # and the draw does vary
    all_t = grounding_loss(audio, visual, positives, anchors=4, **kw)
    assert all_t.item() == pytest.approx(grounding_loss(audio, visual, positives, **kw).item(), rel=1e-12)
    with pytest.raises(ValueError, match="anchors"):
        grounding_loss(audio, visual, positives, anchors=5, **kw)


def test_zero_loss_when_margins_met_and_finite_gradients() -> None:
    # Components {0, 1} and {2, 3}: one-hot directions, identical across modalities.
    positives = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)[None]
    emb = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]])[None]  # (1, 4, 3)
    for variant in ("uni", "cross", "multi"):
        loss = grounding_loss(emb, emb.clone(), positives, variant=variant, pos_margin=0.7, neg_margin=0.3)
        assert loss.item() == 0.0
    # Exactly at the margins: cos(pos) == p = 1 and cos(neg) == n = 0 still costs nothing.
    assert grounding_loss(emb, emb, positives, variant="multi", pos_margin=1.0, neg_margin=0.0).item() == 0.0
    # A violated negative margin costs, and gradients stay finite even with a zero vector.
    audio = emb.clone()
    audio[0, 3] = 0.0
    audio.requires_grad_(True)
    visual = torch.randn(1, 4, 3, requires_grad=True)
    loss = grounding_loss(audio, visual, positives, variant="multi", pos_margin=0.7, neg_margin=-0.5)
    loss.backward()
    assert loss.item() > 0
    assert torch.isfinite(audio.grad).all() and torch.isfinite(visual.grad).all()


# -------------------------------------------------------------------------------- scores


def test_scores_match_pairwise_reference(tiny) -> None:
    audio, visual, positives = tiny  # uni lists (i, j) and (j, i): tied scores occur
    for variant in ("uni", "cross", "multi"):
        scores, labels = grounding_pairs(audio, visual, positives, variant=variant)
        size = {"uni": 2 * 2 * 4 * 3, "cross": 2 * 4 * 4, "multi": 2 * 2 * 4 * 3 + 2 * 4 * 4}[variant]
        assert scores.shape == labels.shape == (size,)
        out = grounding_scores(audio, visual, positives, variant=variant, threshold=0.1)
        pos, neg = scores[labels].tolist(), scores[~labels].tolist()
        wins = sum((x > y) + 0.5 * (x == y) for x in pos for y in neg)
        assert out["auc"].item() == pytest.approx(wins / (len(pos) * len(neg)), rel=1e-12)
        agree = sum(((s >= 0.1) == bool(lab)) for s, lab in zip(scores.tolist(), labels.tolist()))
        assert out["acc"].item() == pytest.approx(agree / size)


def test_auc_counts_ties_half_and_is_nan_without_both_classes() -> None:
    # Every embedding identical: all cosines tie at 1 -> AUC 0.5; accuracy = positive rate.
    emb = torch.ones(1, 4, 2)
    positives = torch.eye(4, dtype=torch.bool)[None]
    out = grounding_scores(emb, emb, positives, variant="cross", threshold=0.5)
    assert out["auc"].item() == 0.5 and out["acc"].item() == pytest.approx(4 / 16)
    all_pos = torch.ones(1, 4, 4, dtype=torch.bool)
    assert math.isnan(grounding_scores(emb, emb, all_pos, variant="cross", threshold=0.5)["auc"].item())
    # Perfectly separated embeddings score 1.
    separated = torch.tensor([[[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]]])
    comp = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)[None]
    out = grounding_scores(separated, separated, comp, variant="multi", threshold=0.5)
    assert out["auc"].item() == 1.0 and out["acc"].item() == 1.0
