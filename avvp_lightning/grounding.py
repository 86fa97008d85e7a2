"""Grounding truth for audio-visual grounding pretraining (the paper's Algorithm 1).

For every video a graph is built over its T one-second snippets: snippets j and k are
joined when the cosine similarity of their visual inputs is >= ``visual_threshold`` OR
that of their audio inputs is >= ``audio_threshold``. Every pair of snippets inside one
connected component is a positive pair (label True), every other pair a negative one.
A snippet is always in its own component, so the diagonal is True.

Two implementations give the same answer:

- :func:`grounding_labels` builds one ``networkx`` graph per video and reads its
  connected components (the reference, a Python loop over videos);
- :func:`grounding_labels_torch` works on a whole batch on the input's device with no
  Python loop over videos (boolean adjacency, then transitive closure by repeated boolean
  matrix squaring), cheap enough to run on the fly inside a training step.

Conventions shared by both (they use the same edge computation, :func:`grounding_edges`):

- Cosines are computed in float64 as ``<x_j, x_k> / sqrt(|x_j|^2 |x_k|^2)`` and compared
  with ``>=`` (inclusive). This form is exact for vectors with small integer entries, so a
  pair whose cosine equals the threshold exactly (e.g. 0.5 for two 60-degree vectors such
  as (1, 1, 0) and (0, 1, 1)) is joined, whatever the input dtype.
- The cosine of a zero vector is defined as 0 and, whatever the threshold, a zero vector
  gets no edge in that modality (it can still be joined through the other modality).
- ``silence_threshold``: audio snippets whose L2 norm is strictly below it count as
  near-silent and get no audio edges (the authors' code dropped near-silent audio: two
  silent snippets are not "the same sound"). They can still be joined visually.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import torch

from avvp_lightning.errors import DataError

__all__ = ["grounding_edges", "grounding_labels", "grounding_labels_torch"]


def _as_float64(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """Return ``x`` as a float64 tensor of shape (N, T, D) on its own device."""
    x = torch.as_tensor(x)
    if x.ndim != 3:
        raise DataError(f"{name} must have shape (N, T, D), got {tuple(x.shape)}")
    return x.to(torch.float64)


def _modality_edges(
    x: torch.Tensor, threshold: float, min_norm: float | None = None
) -> torch.Tensor:
    """Pairs of snippets whose cosine similarity reaches ``threshold``.

    Args:
        x: (N, T, D) float64 snippet features.
        threshold: inclusive cosine threshold.
        min_norm: snippets with an L2 norm below it get no edge (``None``: no limit).

    Returns:
        (N, T, T) bool, symmetric; zero vectors (and those below ``min_norm``) have no edge.
    """
    gram = x @ x.transpose(1, 2)  # (N, T, T)
    sq_norm = gram.diagonal(dim1=1, dim2=2)  # (N, T)
    valid = sq_norm > 0  # (N, T)
    if min_norm is not None:
        valid = valid & (sq_norm.sqrt() >= min_norm)
    pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)  # (N, T, T)
    denom = (sq_norm.unsqueeze(2) * sq_norm.unsqueeze(1)).sqrt()  # (N, T, T)
    cosine = torch.where(pair_valid, gram / torch.where(pair_valid, denom, 1.0), 0.0)
    return pair_valid & (cosine >= threshold)


def grounding_edges(
    audio: np.ndarray | torch.Tensor,
    visual: np.ndarray | torch.Tensor,
    audio_threshold: float,
    visual_threshold: float,
    silence_threshold: float | None = None,
) -> torch.Tensor:
    """Adjacency of the per-video snippet graphs of Algorithm 1 (before closure).

    Args:
        audio: (N, T, Da) audio features per snippet (numpy or torch).
        visual: (N, T, Dv) visual features per snippet, already pooled to T snippets.
        audio_threshold: audio cosine threshold ``a_t`` (inclusive).
        visual_threshold: visual cosine threshold ``v_t`` (inclusive).
        silence_threshold: audio snippets with an L2 norm below it get no audio edges;
            ``None`` keeps every audio snippet.

    Returns:
        (N, T, T) bool on the input's device: True where j and k are joined. The diagonal
        is True (every snippet is in its own component).

    Raises:
        DataError: when the shapes are not (N, T, D) with matching N and T.
    """
    audio = _as_float64(audio, "audio")
    visual = _as_float64(visual, "visual")
    if audio.shape[:2] != visual.shape[:2]:
        raise DataError(
            f"audio (N, T, Da) and visual (N, T, Dv) must share N and T, got "
            f"{tuple(audio.shape)} and {tuple(visual.shape)}"
        )
    visual = visual.to(audio.device)
    edges = _modality_edges(audio, audio_threshold, silence_threshold)  # (N, T, T)
    edges |= _modality_edges(visual, visual_threshold)
    eye = torch.eye(audio.shape[1], dtype=torch.bool, device=audio.device)  # (T, T)
    return edges | eye


def grounding_labels(
    audio: np.ndarray | torch.Tensor,
    visual: np.ndarray | torch.Tensor,
    audio_threshold: float,
    visual_threshold: float,
    silence_threshold: float | None = None,
) -> torch.Tensor:
    """Grounding truth of Algorithm 1 via ``networkx`` connected components.

    The reference implementation: one graph per video, a Python loop over videos. Use it
    to precompute labels offline or to check :func:`grounding_labels_torch`.

    Args:
        audio: (N, T, Da) audio features per snippet (numpy or torch).
        visual: (N, T, Dv) visual features per snippet, already pooled to T snippets.
        audio_threshold: audio cosine threshold ``a_t`` (inclusive; the authors used 0.99
            on VGGish features).
        visual_threshold: visual cosine threshold ``v_t`` (inclusive; the authors used 0.96
            on ResNet152 features).
        silence_threshold: audio snippets with an L2 norm below it get no audio edges;
            ``None`` keeps every audio snippet.

    Returns:
        (N, T, T) bool CPU tensor: ``labels[n, j, k]`` is True when snippets j and k of
        video n lie in the same connected component (positives), False otherwise.
    """
    edges = grounding_edges(audio, visual, audio_threshold, visual_threshold, silence_threshold)
    edges = edges.cpu().numpy()  # (N, T, T)
    num_videos, num_snippets = edges.shape[:2]
    labels = np.zeros_like(edges)
    for n in range(num_videos):
        graph = nx.Graph()
        graph.add_nodes_from(range(num_snippets))
        rows, cols = np.nonzero(np.triu(edges[n], k=1))
        graph.add_edges_from(zip(rows.tolist(), cols.tolist()))
        for component in nx.connected_components(graph):
            members = np.fromiter(component, dtype=np.int64)
            labels[n, members[:, None], members[None, :]] = True
    return torch.from_numpy(labels)


def grounding_labels_torch(
    audio: np.ndarray | torch.Tensor,
    visual: np.ndarray | torch.Tensor,
    audio_threshold: float,
    visual_threshold: float,
    silence_threshold: float | None = None,
) -> torch.Tensor:
    """Batched twin of :func:`grounding_labels`, on the input's device.

    Same arguments, same result. No Python loop over videos: the adjacency (with its True
    diagonal) is squared as a boolean matrix ``ceil(log2(T - 1))`` times; after k squarings
    every pair joined by a path of at most 2^k edges is connected, and a path inside a
    component of T snippets has at most T - 1 edges, so the result is the transitive
    closure, i.e. the "same connected component" relation.

    Returns:
        (N, T, T) bool tensor on the input's device (CPU for numpy inputs).
    """
    reach = grounding_edges(audio, visual, audio_threshold, visual_threshold, silence_threshold)
    num_snippets = reach.shape[1]
    steps = math.ceil(math.log2(num_snippets - 1)) if num_snippets > 2 else 1
    for _ in range(steps):
        # Path counts are at most T, exact in float32 (and in TF32 accumulation).
        hops = reach.float()  # (N, T, T)
        reach = (hops @ hops) > 0
    return reach
