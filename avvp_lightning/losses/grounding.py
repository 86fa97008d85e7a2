"""Audio-visual grounding losses (the paper's equations (4)-(6)) and validation scores.

With ``<x, y>`` the cosine similarity, ``[x]+ = max(x, 0)``, margins ``p`` (positives)
and ``n`` (negatives), and an anchor snippet i of a video grounded against every snippet
j of the same video:

- uni   (4): sum_{j in Pos(i)} [p - <a_i,a_j>]+ + sum_{j in Neg(i)} [<a_i,a_j> - n]+
             + the same with <v_i,v_j>;
- cross (5): the same with <a_i,v_j> and with <v_i,a_j>;
- multi (6): uni + cross.

Pos(i) / Neg(i) come from the grounding truth (:mod:`avvp_lightning.grounding`).
Reduction: the sum over j (as in the equations), then the mean over anchors and videos.
The pair j == i is included: it is a positive pair; in the uni terms ``<a_i,a_i> = 1``
so it adds nothing for p <= 1, in the cross terms ``<a_i,v_i>`` is a real target
(the audio and visual of the same snippet belong together).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["Variant", "cosine_matrix", "grounding_loss", "grounding_pairs", "grounding_scores"]

Variant = Literal["uni", "cross", "multi"]
_VARIANTS = ("uni", "cross", "multi")


def cosine_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of every row of ``x`` with every row of ``y``, per video.

    Args:
        x: (B, K, H) embeddings.
        y: (B, T, H) embeddings.

    Returns:
        (B, K, T); a zero vector has cosine 0 with everything.
    """
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)


def _hinge(
    similarity: torch.Tensor, positive: torch.Tensor, pos_margin: float, neg_margin: float
) -> torch.Tensor:
    """Per-anchor hinge sum over j: (B, K, T) similarities and labels -> (B, K)."""
    pull = F.relu(pos_margin - similarity)  # (B, K, T), for positives
    push = F.relu(similarity - neg_margin)  # (B, K, T), for negatives
    return torch.where(positive, pull, push).sum(dim=-1)


def _check_variant(variant: str) -> None:
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")


def _anchor_index(
    batch: int,
    length: int,
    anchors: int | torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """(B, K) anchor snippet indices: all T, k distinct random ones per video, or given."""
    if anchors is None:
        return torch.arange(length, device=device).expand(batch, length)
    if isinstance(anchors, torch.Tensor):
        if anchors.ndim != 2 or anchors.shape[0] != batch:
            raise ValueError(f"anchor indices must have shape (B={batch}, K), got {tuple(anchors.shape)}")
        if anchors.numel() and not (0 <= int(anchors.min()) and int(anchors.max()) < length):
            raise ValueError(f"anchor indices must lie in [0, T={length})")
        return anchors.to(device=device, dtype=torch.long)
    if not 1 <= anchors <= length:
        raise ValueError(f"anchors must be in [1, T={length}] or None, got {anchors}")
    # Random permutation per video (drawn on the generator's device, CPU by default).
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(batch, length, generator=generator, device=gen_device)  # (B, T)
    return noise.argsort(dim=1)[:, :anchors].to(device)


def grounding_loss(
    audio_emb: torch.Tensor,
    visual_emb: torch.Tensor,
    positives: torch.Tensor,
    *,
    variant: Variant,
    pos_margin: float,
    neg_margin: float,
    anchors: int | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Grounding hinge loss of equations (4) (uni), (5) (cross) or (6) (multi).

    Args:
        audio_emb: (B, T, H) contextualized audio snippet embeddings.
        visual_emb: (B, T, H) contextualized visual snippet embeddings.
        positives: (B, T, T) bool grounding truth (True = same component).
        variant: ``"uni"``, ``"cross"`` or ``"multi"`` (= uni + cross).
        pos_margin: margin p; positives are pulled up to cosine >= p.
        neg_margin: margin n; negatives are pushed down to cosine <= n.
        anchors: ``None`` uses every snippet as the anchor i; an int k draws k distinct
            random anchors per video (the authors used 1); a (B, K) integer tensor gives
            the anchor indices explicitly.
        generator: random source for the anchors (``None``: the global one).

    Returns:
        Scalar: sum over j, mean over anchors and videos.
    """
    _check_variant(variant)
    batch, length, hidden = audio_emb.shape
    index = _anchor_index(batch, length, anchors, generator, audio_emb.device)  # (B, K)
    anchor_audio = audio_emb.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden))  # (B, K, H)
    anchor_visual = visual_emb.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden))
    anchor_pos = positives.gather(1, index.unsqueeze(-1).expand(-1, -1, length))  # (B, K, T)

    terms = []  # (anchor side, other side) of each <., .> in the equations
    if variant in ("uni", "multi"):
        terms += [(anchor_audio, audio_emb), (anchor_visual, visual_emb)]
    if variant in ("cross", "multi"):
        terms += [(anchor_audio, visual_emb), (anchor_visual, audio_emb)]
    per_anchor = sum(
        _hinge(cosine_matrix(anchor, other), anchor_pos, pos_margin, neg_margin)  # (B, K)
        for anchor, other in terms
    )
    return per_anchor.mean()


def grounding_pairs(
    audio_emb: torch.Tensor, visual_emb: torch.Tensor, positives: torch.Tensor, *, variant: Variant
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten the similarities a variant trains, with their labels, for scoring.

    ``cross`` scores the cross-modal cosines <a_i, v_j> over all (i, j), the diagonal
    included (<v_i, a_j> is the same set transposed). ``uni`` scores <a_i, a_j> and
    <v_i, v_j> over i != j (the diagonal is always 1 and always positive, so it would only
    inflate the scores). ``multi`` scores both sets.

    Args:
        audio_emb: (B, T, H) audio embeddings.
        visual_emb: (B, T, H) visual embeddings.
        positives: (B, T, T) bool grounding truth.
        variant: which similarities to score.

    Returns:
        ``(scores, labels)``: (M,) float cosines and (M,) bool labels.
    """
    _check_variant(variant)
    length = audio_emb.shape[1]
    scores, labels = [], []
    if variant in ("uni", "multi"):
        off_diag = ~torch.eye(length, dtype=torch.bool, device=audio_emb.device)  # (T, T)
        off_diag = off_diag.expand_as(positives)  # (B, T, T)
        for emb in (audio_emb, visual_emb):
            scores.append(cosine_matrix(emb, emb)[off_diag])
            labels.append(positives[off_diag])
    if variant in ("cross", "multi"):
        scores.append(cosine_matrix(audio_emb, visual_emb).flatten())
        labels.append(positives.flatten())
    return torch.cat(scores), torch.cat(labels)


def _roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank-based (Mann-Whitney) ROC AUC, ties counted half; NaN without both classes."""
    scores = scores.double()
    num_pos = labels.sum().double()
    num_neg = labels.numel() - num_pos
    if num_pos == 0 or num_neg == 0:
        return scores.new_tensor(float("nan"))
    sorted_scores, order = scores.sort()
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    last = counts.cumsum(0).double()  # 1-based rank of each tie group's last member
    mean_rank = last - (counts.double() - 1) / 2  # average 1-based rank in the group
    ranks = torch.empty_like(scores)
    ranks[order] = mean_rank[inverse]
    rank_sum = ranks[labels].sum()
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def grounding_scores(
    audio_emb: torch.Tensor,
    visual_emb: torch.Tensor,
    positives: torch.Tensor,
    *,
    variant: Variant = "cross",
    threshold: float,
) -> dict[str, torch.Tensor]:
    """Grounding accuracy and ROC AUC of the embeddings' cosines against the truth.

    Args:
        audio_emb: (B, T, H) audio embeddings.
        visual_emb: (B, T, H) visual embeddings.
        positives: (B, T, T) bool grounding truth.
        variant: which similarities to score (see :func:`grounding_pairs`).
        threshold: a pair is predicted positive when its cosine >= threshold; use the
            margins' midpoint ``(p + n) / 2``.

    Returns:
        ``{"acc": ..., "auc": ...}`` scalar tensors: the fraction of pairs where the
        thresholded cosine agrees with the label, and the rank-based ROC AUC (NaN when
        all pairs share one label).
    """
    scores, labels = grounding_pairs(audio_emb, visual_emb, positives, variant=variant)
    accuracy = ((scores >= threshold) == labels).double().mean()
    return {"acc": accuracy, "auc": _roc_auc(scores, labels)}
