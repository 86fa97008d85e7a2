"""Exact, vectorized AVVP evaluation (segment- and event-level F-scores of HAN / LLP).

The numbers equal the standard per-video, per-class evaluation loop of HAN
(Tian et al., ECCV 2020) to floating-point rounding, on any 0/1 input:

* per video and class, count TP / FP / FN, either over segments (segment level) or over
  events, i.e. maximal runs of 1s matched at IoU >= 0.5 (event level);
* per video, average ``F = 2TP / (2TP + FP + FN)`` over the classes that have a prediction
  or a truth in that video (1.0 when no class has either), then average over videos;
* ``type`` is the mean of the audio, visual and audio-visual per-video scores; ``event``
  is the per-video F of the summed audio and visual counts.

For short rows (T <= :data:`TABLE_MAX_SEGMENTS`; LLP has T = 10) every row becomes a
T-bit code and all counts come from one lookup table over the 2^T x 2^T (prediction,
truth) code pairs, built once per device. Longer rows use a vectorized interval-matching
path that gives the same counts. Nothing loops over videos or classes in Python.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from avvp_lightning.errors import DataError

__all__ = [
    "METRIC_KEYS",
    "TABLE_MAX_SEGMENTS",
    "avvp_counts",
    "avvp_scores",
    "decide",
    "event_counts",
    "pair_table",
    "per_video_scores",
    "scores_from_counts",
    "segment_counts",
]

LEVELS: tuple[str, ...] = ("segment", "event")
MODALITIES: tuple[str, ...] = ("audio", "visual", "av")
#: The ten reported numbers, in the order of the paper's tables (segment, then event level).
METRIC_KEYS: tuple[str, ...] = tuple(
    f"{level}/{name}" for level in LEVELS for name in (*MODALITIES, "type", "event")
)
#: Rows up to this length are scored through the (4^T, 8) uint8 pair table
#: (T = 10: 8 MiB, built in ~0.1 s; T = 11: 32 MiB); longer rows use interval matching.
TABLE_MAX_SEGMENTS: int = 11
_ROWS_PER_CHUNK = 1 << 18  # bounds the (rows, K, K) match tensor of the general path


# ----------------------------------------------------------------------------- input checks


def _check_binary(x: Tensor, name: str) -> None:
    """A DataError unless ``x`` (bool, integer or float) holds only 0 and 1.

    Floats: ``x - x * x`` is exactly 0 for 0 and 1 only (rounded, it stays > 0 inside
    (0, 1) and < 0 outside; NaN stays NaN), so one fused op and one min/max check it all.
    """
    if x.dtype == torch.bool or x.numel() == 0:
        return
    if x.is_floating_point():
        lo, hi = torch.aminmax(torch.addcmul(x, x, x, value=-1))  # x - x * x
        ok = (lo == 0) & (hi == 0)
    else:
        lo, hi = torch.aminmax(x)
        ok = (lo >= 0) & (hi <= 1)
    if not ok:
        raise DataError(
            f"{name} must hold only 0 and 1 (threshold probabilities first, see decide())"
        )


def _as_bool(x: Tensor, name: str) -> Tensor:
    """A 0/1 tensor (bool, integer or float) as bool; anything else is a DataError."""
    _check_binary(x, name)
    return x if x.dtype == torch.bool else x != 0


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise DataError(
            f"pred and target must have the same shape (..., T), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.dim() == 0:
        raise DataError("pred and target must have at least one dimension (..., T), got scalars")


def _check_videos(**tensors: Tensor) -> None:
    """All tensors must be (N, T, C) and share one shape; the message names every shape."""
    shapes = {name: tuple(x.shape) for name, x in tensors.items()}
    if any(len(s) != 3 for s in shapes.values()) or len(set(shapes.values())) != 1:
        got = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise DataError(f"{', '.join(shapes)} must all have one shape (N, T, C); got {got}")


# ----------------------------------------------------------------------------- general T


def segment_counts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Segment-level TP, FP and FN of each row.

    Args:
        pred: (..., T) 0/1 predictions (bool, integer or float).
        target: (..., T) 0/1 ground truth, same shape.

    Returns:
        ``(tp, fp, fn)``, int64 tensors of shape ``(...)``: segments predicted and true,
        predicted but not true, true but not predicted.
    """
    _check_pair(pred, target)
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    return (p & t).sum(-1), (p & ~t).sum(-1), (~p & t).sum(-1)


def _events(rows: Tensor, max_events: int) -> tuple[Tensor, Tensor, Tensor]:
    """Maximal runs of 1s of each row as half-open intervals, padded to ``max_events``.

    Args:
        rows: (M, T) bool.
        max_events: K, at least the largest number of runs in a row.

    Returns:
        ``(start, end, valid)``, each (M, K): run k of a row is ``[start, end)`` where
        ``valid``; padding entries have ``start == end == T + 1`` and ``valid`` False.
    """
    m, t = rows.shape
    x = rows.to(torch.int8)
    edge = torch.zeros(m, 1, dtype=torch.int8, device=rows.device)
    step = torch.diff(x, dim=-1, prepend=edge, append=edge)  # (M, T+1): +1 start, -1 end
    dtype = torch.int16 if t < 2**14 else torch.int32  # 2 * intersection must not overflow
    pos = torch.arange(t + 1, dtype=dtype, device=rows.device)
    pad = pos.new_tensor(t + 1)
    start = torch.where(step == 1, pos, pad).sort(-1).values[:, :max_events]  # (M, K)
    end = torch.where(step == -1, pos, pad).sort(-1).values[:, :max_events]  # (M, K)
    return start, end, start <= t


def _match_counts(
    pred: tuple[Tensor, Tensor, Tensor], true: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Event-level TP, FP, FN from padded event lists (see :func:`_events`).

    ``pred`` and ``true`` are ``(start, end, valid)`` triples of shape (..., K) whose
    leading dimensions broadcast. Returns int64 counts of the broadcast shape (...).
    """
    ps, pe, pv = (x.unsqueeze(-1) for x in pred)  # (..., K, 1): predicted event i
    ts, te, tv = (x.unsqueeze(-2) for x in true)  # (..., 1, K): true event j
    inter = (torch.minimum(pe, te) - torch.maximum(ps, ts)).clamp(min=0)  # (..., K, K)
    union = (pe - ps) + (te - ts) - inter
    match = (2 * inter >= union) & pv & tv  # IoU >= 0.5, exactly, in integers
    tp = match.any(-1).sum(-1)  # predicted events that match some true event
    fp = pv.sum((-2, -1)) - tp
    fn = tv.sum((-2, -1)) - match.any(-2).sum(-1)  # true events matched by no prediction
    return tp, fp, fn


def _num_runs(rows: Tensor) -> Tensor:
    """(M, T) bool -> (M,) number of maximal runs of 1s."""
    return rows[:, 0].long() + (rows[:, 1:] & ~rows[:, :-1]).sum(-1)


def _event_counts_by_matching(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """General-T event counts of (M, T) bool rows, vectorized over rows (chunked)."""
    m, t = pred.shape
    if m == 0 or t == 0:
        zeros = torch.zeros(m, dtype=torch.int64, device=pred.device)
        return zeros, zeros, zeros
    k = max(int(_num_runs(pred).max()), int(_num_runs(target).max()), 1)  # K events at most
    chunks = [
        _match_counts(_events(p, k), _events(g, k))
        for p, g in zip(pred.split(_ROWS_PER_CHUNK), target.split(_ROWS_PER_CHUNK))
    ]
    tp, fp, fn = (torch.cat(c) for c in zip(*chunks))
    return tp, fp, fn


# ----------------------------------------------------------------------------- lookup table


@lru_cache(maxsize=None)
def _cpu_pair_table(num_segments: int) -> Tensor:
    """(4^T, 8) uint8 counts of every (prediction, truth) pair of T-segment rows.

    Columns: segment TP, FP, FN, event TP, FP, FN, then two zero bytes. Row code ``c``
    has segment ``s`` set when bit ``s`` of ``c`` is; the pair (prediction ``p``, truth
    ``g``) sits at index ``(p << T) | g``.

    Events come from the I = T(T+1)/2 possible intervals and two small matrix products:
    ``has[c, i]`` says row ``c`` has interval ``i`` as an event, ``hit[c, i]`` that some
    event of row ``c`` has IoU >= 0.5 with interval ``i``. Then event TP[p, g] =
    has[p] . hit[g] and, IoU being symmetric, the true events of ``g`` that some
    prediction matches number has[g] . hit[p].
    """
    t = num_segments
    start, end = torch.triu_indices(t + 1, t + 1, offset=1)  # (I,) each: interval [s, e)
    length = end - start
    inter = (torch.minimum(end[:, None], end) - torch.maximum(start[:, None], start)).clamp(min=0)
    match = 2 * inter >= length[:, None] + length - inter  # (I, I) IoU >= 0.5

    # Row c has the event [s, e) when bits s..e-1 are set and bits s-1 and e (if any) clear.
    inside = ((1 << end) - 1) ^ ((1 << start) - 1)  # (I,) bit masks
    border = ((1 << start) >> 1) | ((1 << end) & ((1 << t) - 1))  # (I,)
    codes = torch.arange(1 << t).unsqueeze(1)  # (2^T, 1)
    has = (((codes & inside) == inside) & ((codes & border) == 0)).double()  # (2^T, I)
    hit = (has @ match.double() > 0).double()  # (2^T, I); float64 products are exact
    events = has.sum(1).to(torch.uint8)  # (2^T,) events per row
    event_tp = (has @ hit.T).to(torch.uint8)  # (2^T pred, 2^T truth)
    found = (hit @ has.T).to(torch.uint8)  # [p, g]: true events of g matched by p

    ones = ((codes >> torch.arange(t)) & 1).sum(1).to(torch.uint8)  # (2^T,) segments set
    segment_tp = ones[codes & codes.T]  # (2^T, 2^T) popcount(p & g)
    counts = [
        segment_tp, ones[:, None] - segment_tp, ones[None, :] - segment_tp,
        event_tp, events[:, None] - event_tp, events[None, :] - found,
    ]
    padding = [torch.zeros_like(segment_tp)] * 2  # 8 bytes a row: gathered as one int64
    return torch.stack(counts + padding, dim=-1).reshape(-1, 8)  # (4^T, 8)


@lru_cache(maxsize=None)
def _pair_table_on(num_segments: int, device: torch.device) -> Tensor:
    return _cpu_pair_table(num_segments).to(device)


def pair_table(num_segments: int = 10, device: torch.device | str = "cpu") -> Tensor:
    """The cached (4^T, 8) uint8 table of counts of every (prediction, truth) row pair.

    Columns: segment TP, FP, FN, event TP, FP, FN (then two zero bytes); index
    ``(pred_code << T) | true_code``, where a row's code has bit ``s`` set when segment
    ``s`` is 1. Building it is a one-time cost per (T, device), paid by the first call.
    """
    if not 1 <= num_segments <= TABLE_MAX_SEGMENTS:
        raise DataError(
            f"the pair table covers 1 <= T <= {TABLE_MAX_SEGMENTS}, got T={num_segments}"
        )
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _pair_table_on(num_segments, device)


def _lookup(pred: Tensor, true: Tensor, num_segments: int) -> Tensor:
    """Row codes (...) of predictions and truth -> (M, 8) uint8 table rows, M = numel."""
    table = pair_table(num_segments, pred.device).view(torch.int64).squeeze(1)  # (4^T,)
    index = ((pred << num_segments) | true).flatten().long()  # (M,)
    return table.index_select(0, index).view(torch.uint8).view(-1, 8)  # one 8-byte load a pair


@lru_cache(maxsize=None)
def _spread(t: int, c: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(T*C, C) matrix with 2^s at [s*C + k, k]: maps a flattened (T, C) matrix to row codes."""
    weights = 2.0 ** torch.arange(t, dtype=dtype, device=device)  # (T,)
    return torch.kron(weights.unsqueeze(1), torch.eye(c, dtype=dtype, device=device))


def _codes(x: Tensor) -> Tensor:
    """(..., T, C) 0/1 -> (..., C) int32 row codes: bit ``s`` set when segment ``s`` is 1.

    One float matrix product with powers of two; the codes stay below
    2^TABLE_MAX_SEGMENTS, so it is exact under TF32 matmul precision. Autocast is switched
    off around it: a bfloat16 product cannot hold codes such as 1023 exactly.
    """
    *lead, t, c = x.shape
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        return (x.reshape(*lead, t * c) @ _spread(t, c, x.dtype, x.device)).int()


def event_counts(
    pred: Tensor, target: Tensor, *, use_table: bool | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Event-level TP, FP and FN of each row (events = maximal runs of 1s).

    A predicted event is a TP when some true event has IoU >= 0.5 with it, else an FP;
    a true event that no predicted event reaches IoU >= 0.5 with is an FN. TP counts
    predicted events, so two predictions matching one true event give TP = 2.

    Args:
        pred: (..., T) 0/1 predictions (bool, integer or float).
        target: (..., T) 0/1 ground truth, same shape.
        use_table: force (True) or avoid (False) the lookup table; by default it is used
            when T <= :data:`TABLE_MAX_SEGMENTS`.

    Returns:
        ``(tp, fp, fn)``, int64 tensors of shape ``(...)``.
    """
    _check_pair(pred, target)
    lead, t = pred.shape[:-1], pred.shape[-1]
    if use_table is None:
        use_table = 1 <= t <= TABLE_MAX_SEGMENTS
    if use_table:
        _check_binary(pred, "pred")
        _check_binary(target, "target")
        code_p, code_g = _codes(pred.unsqueeze(-1)), _codes(target.unsqueeze(-1))  # (..., 1)
        tp, fp, fn = _lookup(code_p, code_g, t)[:, 3:6].long().unbind(-1)  # each (M,)
    else:
        p, g = _as_bool(pred, "pred"), _as_bool(target, "target")
        rows = lead.numel()
        tp, fp, fn = _event_counts_by_matching(p.reshape(rows, t), g.reshape(rows, t))
    return tp.reshape(lead), fp.reshape(lead), fn.reshape(lead)


# ----------------------------------------------------------------------------- scores


def avvp_counts(
    pred_audio: Tensor,
    pred_visual: Tensor,
    target_audio: Tensor,
    target_visual: Tensor,
    *,
    use_table: bool | None = None,
) -> Tensor:
    """Per-video, per-class TP/FP/FN at both levels for audio, visual and audio-visual.

    Args:
        pred_audio: (N, T, C) 0/1 audio predictions.
        pred_visual: (N, T, C) 0/1 visual predictions.
        target_audio: (N, T, C) 0/1 audio ground truth.
        target_visual: (N, T, C) 0/1 visual ground truth.
        use_table: use the pair table (default: when T <= :data:`TABLE_MAX_SEGMENTS`) or
            the general path; both give the same counts.

    Returns:
        (2, 3, 3, N, C) integer counts (uint8 from the table, else int64):
        [level (segment, event), count (TP, FP, FN), modality (audio, visual, av), video,
        class]. ``av`` is ``audio * visual``, for predictions and truth alike.
    """
    named = {"pred_audio": pred_audio, "pred_visual": pred_visual,
             "target_audio": target_audio, "target_visual": target_visual}
    _check_videos(**named)
    n, t, c = pred_audio.shape
    if use_table is None:
        use_table = 1 <= t <= TABLE_MAX_SEGMENTS
    if not use_table:
        pa, pv, ta, tv = (_as_bool(x, name) for name, x in named.items())
        pred = torch.stack([pa, pv, pa & pv]).transpose(-1, -2)  # (3, N, C, T)
        true = torch.stack([ta, tv, ta & tv]).transpose(-1, -2)  # (3, N, C, T)
        segment = torch.stack(segment_counts(pred, true))  # (3 counts, 3 modalities, N, C)
        event = torch.stack(event_counts(pred, true, use_table=False))  # (3, 3, N, C)
        return torch.stack([segment, event])

    for name, x in named.items():
        _check_binary(x, name)
    pa, pv, ta, tv = (_codes(x) for x in named.values())  # each (N, C) row codes
    pred = torch.stack([pa, pv, pa & pv])  # (3, N, C): audio, visual, av = audio AND visual
    true = torch.stack([ta, tv, ta & tv])  # (3, N, C)
    counts = _lookup(pred, true, t)[:, :6]  # (3*N*C, 6)
    return counts.view(3, n, c, 2, 3).permute(3, 4, 0, 1, 2)  # (2, 3, 3, N, C) view


def _video_f(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """(..., C) counts -> (...) float64: mean F over classes with a prediction or truth, else 1."""
    num = 2 * tp
    den = num + fp + fn  # 0 exactly when the class has neither prediction nor truth
    f = num.double() / den  # (..., C) F per class; 0 / 0 = NaN for the skipped classes
    n = torch.count_nonzero(den, dim=-1)  # (...) classes that count
    return torch.where(n > 0, f.nansum(-1) / n, 1.0)


def scores_from_counts(counts: Tensor) -> dict[str, Tensor]:
    """The ten per-video scores from :func:`avvp_counts` output (2, 3, 3, N, C).

    Returns:
        ``{key: (N,) float64}`` for every key of :data:`METRIC_KEYS`, in that order.
    """
    scores: dict[str, Tensor] = {}
    for level, (tp, fp, fn) in zip(LEVELS, counts):  # each (3 modalities, N, C)
        per_modality = _video_f(tp, fp, fn)  # (3, N)
        scores.update({f"{level}/{m}": f for m, f in zip(MODALITIES, per_modality)})
        scores[f"{level}/type"] = per_modality.mean(0)
        scores[f"{level}/event"] = _video_f(tp[0] + tp[1], fp[0] + fp[1], fn[0] + fn[1])
    return {key: scores[key] for key in METRIC_KEYS}


def per_video_scores(
    pred_audio: Tensor, pred_visual: Tensor, target_audio: Tensor, target_visual: Tensor
) -> dict[str, Tensor]:
    """Each video's ten AVVP F-scores (fractions; the reported numbers are their means).

    Args:
        pred_audio: (N, T, C) 0/1 audio predictions.
        pred_visual: (N, T, C) 0/1 visual predictions.
        target_audio: (N, T, C) 0/1 audio ground truth.
        target_visual: (N, T, C) 0/1 visual ground truth.

    Returns:
        ``{key: (N,) float64}`` for every key of :data:`METRIC_KEYS`.
    """
    return scores_from_counts(avvp_counts(pred_audio, pred_visual, target_audio, target_visual))


def avvp_scores(
    pred_audio: Tensor, pred_visual: Tensor, target_audio: Tensor, target_visual: Tensor
) -> dict[str, float]:
    """The ten LLP numbers (segment / event level x audio, visual, av, type, event).

    Args:
        pred_audio: (N, T, C) 0/1 audio predictions (e.g. from :func:`decide`).
        pred_visual: (N, T, C) 0/1 visual predictions.
        target_audio: (N, T, C) 0/1 audio ground truth.
        target_visual: (N, T, C) 0/1 visual ground truth.

    Returns:
        ``{key: fraction in [0, 1]}`` for every key of :data:`METRIC_KEYS`: the mean over
        the N videos of each per-video score (multiply by 100 for the papers' tables).

    Raises:
        DataError: (a ValueError) on N == 0, mismatched shapes or non-0/1 values.
    """
    scores = per_video_scores(pred_audio, pred_visual, target_audio, target_visual)
    if pred_audio.shape[0] == 0:
        raise DataError("avvp_scores needs at least one video, got N == 0")
    means = torch.stack(list(scores.values())).mean(1).tolist()  # (10, N) -> 10 floats
    return dict(zip(scores, means))


def decide(
    audio_prob: Tensor, visual_prob: Tensor, video_prob: Tensor, threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """HAN's decision rule: segment probabilities gated by the fused video-level probability.

    A segment is positive in a modality when its probability and the video-level
    probability of the class are both >= ``threshold`` (the video-level probability
    gates audio and visual alike).

    Args:
        audio_prob: (N, T, C) audio segment probabilities.
        visual_prob: (N, T, C) visual segment probabilities.
        video_prob: (N, C) fused video-level probabilities.
        threshold: decision threshold for both.

    Returns:
        ``(pred_audio, pred_visual)``, each (N, T, C) float 0/1.
    """
    _check_videos(audio_prob=audio_prob, visual_prob=visual_prob)
    n, _, c = audio_prob.shape
    if tuple(video_prob.shape) != (n, c):
        raise DataError(f"video_prob must be (N, C) = {(n, c)}, got {tuple(video_prob.shape)}")
    gate = (video_prob >= threshold).unsqueeze(1)  # (N, 1, C)
    dtype = audio_prob.dtype if audio_prob.is_floating_point() else torch.float32
    pred_audio = ((audio_prob >= threshold) & gate).to(dtype)  # (N, T, C)
    pred_visual = ((visual_prob >= threshold) & gate).to(dtype)  # (N, T, C)
    return pred_audio, pred_visual
