"""Tests for ``avvp_lightning.metrics`` against an independent, loop-based reference.

The reference below is written only from the metric definitions (NOTES.md section 5, the
standard HAN evaluation): per video, (T, C) 0/1 matrices for audio, visual and
audio-visual (``av = a * v``); per class TP / FP / FN over segments or over events
(maximal runs of 1s, half-open ``[start, end)``, matched at IoU >= 0.5); per class
``F = 2TP / (2TP + FP + FN)`` for the classes present in prediction or truth; the video's
score is the mean over those classes or 1.0 when there is none; reported = mean over
videos. Type@AV is the mean of audio, visual and AV; Event@AV adds the audio and visual
counts per class before F.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics import MetricCollection
from torchmetrics.utilities.data import dim_zero_sum

from avvp_lightning.labels import CLASS_INDEX, CLASSES
from avvp_lightning.metrics import (
    METRIC_KEYS,
    AVVPMetrics,
    avvp_scores,
    decide,
    event_counts,
    per_video_scores,
    segment_counts,
)

TOL = 1e-9
T, C = 10, 25
KEYS = (
    "segment/audio", "segment/visual", "segment/av", "segment/type", "segment/event",
    "event/audio", "event/visual", "event/av", "event/type", "event/event",
)
MODALITIES = ("audio", "visual", "av")
PER_CLASS_KEYS = tuple(f"per_class/{lv}/{m}" for lv in ("segment", "event") for m in MODALITIES)
# the real LLP annotation CSVs: $AVVP_LLP_CSVS, else ../shared/llp beside the checkout (tests skip without them)
LLP_ROOT = Path(os.environ.get("AVVP_LLP_CSVS") or Path(__file__).resolve().parents[2] / "shared" / "llp")


# --------------------------------------------------------------------------- reference
def ref_events(row) -> list[tuple[int, int]]:
    """Maximal runs of 1s in a 0/1 sequence, as half-open ``(start, end)`` pairs."""
    events, start = [], None
    for t, x in enumerate(row):
        if x and start is None:
            start = t
        elif not x and start is not None:
            events.append((start, t))
            start = None
    if start is not None:
        events.append((start, len(row)))
    return events


def ref_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Intersection over union of two half-open intervals."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def ref_event_counts(pred_row, true_row) -> tuple[int, int, int]:
    """Event-level (TP, FP, FN) of one class row."""
    pred_ev, true_ev = ref_events(pred_row), ref_events(true_row)
    tp = fp = fn = 0
    for p in pred_ev:
        if any(ref_iou(p, g) >= 0.5 for g in true_ev):
            tp += 1
        else:
            fp += 1
    for g in true_ev:
        if not any(ref_iou(p, g) >= 0.5 for p in pred_ev):
            fn += 1
    return tp, fp, fn


def ref_segment_counts(pred_row, true_row) -> tuple[int, int, int]:
    """Segment-level (TP, FP, FN) of one class row."""
    tp = fp = fn = 0
    for p, g in zip(pred_row, true_row):
        tp += int(p == 1 and g == 1)
        fp += int(p == 1 and g == 0)
        fn += int(p == 0 and g == 1)
    return tp, fp, fn


def ref_video_f(counts) -> float:
    """Mean per-class F over the classes with a prediction or a truth; 1.0 if none."""
    scores = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts if tp + fp != 0 or tp + fn != 0]
    return sum(scores) / len(scores) if scores else 1.0


def ref_video(pa, pv, ta, tv):
    """Scores and per-class counts of one video given (T, C) 0/1 integer matrices.

    Returns:
        (scores dict over KEYS, counts array (2 levels, 3 modalities, C, 3)).
    """
    pairs = {"audio": (pa, ta), "visual": (pv, tv), "av": (pa * pv, ta * tv)}
    counts = np.zeros((2, 3, pa.shape[1], 3), dtype=np.int64)
    scores = {}
    for li, (level, count_fn) in enumerate((("segment", ref_segment_counts), ("event", ref_event_counts))):
        for mi, m in enumerate(MODALITIES):
            p, g = pairs[m]
            active = (p.any(axis=0) | g.any(axis=0)).tolist()  # (C,)
            p_rows, g_rows = p.T.tolist(), g.T.tolist()  # (C, T) lists
            # a class empty in both prediction and truth has no TP, FP or FN
            per_class = [
                count_fn(p_rows[c], g_rows[c]) if active[c] else (0, 0, 0) for c in range(p.shape[1])
            ]
            counts[li, mi] = per_class
            scores[f"{level}/{m}"] = ref_video_f(per_class)
        scores[f"{level}/type"] = (scores[f"{level}/audio"] + scores[f"{level}/visual"] + scores[f"{level}/av"]) / 3
        added = (counts[li, 0] + counts[li, 1]).tolist()  # (C, 3): audio + visual counts
        scores[f"{level}/event"] = ref_video_f(added)
    return scores, counts


def ref_all(pa, pv, ta, tv):
    """Reference over N videos of (N, T, C) arrays.

    Returns:
        (means dict, per-video dict of (N,) arrays, pooled per-class F dict of (C,) arrays).
    """
    n = pa.shape[0]
    per_video = {k: np.zeros(n) for k in KEYS}
    pooled = np.zeros((2, 3, pa.shape[2], 3), dtype=np.int64)
    for i in range(n):
        s, counts = ref_video(pa[i], pv[i], ta[i], tv[i])
        for k in KEYS:
            per_video[k][i] = s[k]
        pooled += counts
    means = {k: float(np.mean(v)) for k, v in per_video.items()}
    per_class = {}
    for li, level in enumerate(("segment", "event")):
        for mi, m in enumerate(MODALITIES):
            tp, fp, fn = pooled[li, mi, :, 0], pooled[li, mi, :, 1], pooled[li, mi, :, 2]
            den = 2 * tp + fp + fn
            per_class[f"per_class/{level}/{m}"] = np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)
    return means, per_video, per_class


# --------------------------------------------------------------------------- random data
def _markov_row(rng, t_len, p_on, p_off):
    """A 0/1 row from a two-state Markov chain: runs, not iid bits."""
    u = rng.random(t_len + 1).tolist()
    row = np.zeros(t_len, dtype=np.int8)
    state = u[0] < p_on / (p_on + p_off)
    for t in range(t_len):
        row[t] = state
        state = (u[t + 1] >= p_off) if state else (u[t + 1] < p_on)
    return row


def _perturb(rng, row):
    """A prediction row near a truth row: copy, shift, jitter event ends, flip bits or drop."""
    t_len = len(row)
    kind = rng.integers(6)
    if kind == 0:
        return row.copy()
    if kind == 1:
        s = int(rng.integers(-3, 4))
        out = np.zeros_like(row)
        if s >= 0:
            out[s:] = row[: t_len - s]
        else:
            out[:s] = row[-s:]
        return out
    if kind == 2:
        out = np.zeros_like(row)
        for a, b in ref_events(row):
            a2 = int(np.clip(a + rng.integers(-2, 3), 0, t_len - 1))
            b2 = int(np.clip(b + rng.integers(-2, 3), a2 + 1, t_len))
            out[a2:b2] = 1
        return out
    if kind == 3:
        return (row ^ (rng.random(t_len) < 0.15)).astype(np.int8)
    if kind == 4:
        return _markov_row(rng, t_len, 0.3, 0.3)
    return np.zeros_like(row)


def _sparse_truth(rng, t_len, c_num, classes):
    m = np.zeros((t_len, c_num), dtype=np.int8)
    for c in classes:
        m[:, c] = _markov_row(rng, t_len, float(rng.choice([0.1, 0.3, 0.6])), float(rng.choice([0.1, 0.3, 0.6])))
    return m


def random_video(rng, t_len=T, c_num=C):
    """(pa, pv, ta, tv) for one video, drawn from one of several regimes of density."""
    kind = rng.integers(8)
    if kind <= 1:  # iid bits with per-matrix density
        dens = rng.choice([0.0, 0.02, 0.1, 0.3, 0.5, 0.8, 0.97, 1.0], size=4)
        return tuple((rng.random((t_len, c_num)) < d).astype(np.int8) for d in dens)
    if kind == 2:  # runs over every class
        p_on, p_off = rng.choice([0.05, 0.2, 0.5, 0.8], size=2)
        return tuple(
            np.stack([_markov_row(rng, t_len, p_on, p_off) for _ in range(c_num)], axis=1) for _ in range(4)
        )
    # few active classes (like real LLP videos), predictions perturbed from truth
    k = int(rng.integers(0, 4))
    cls_a = rng.choice(c_num, size=k, replace=False)
    cls_v = cls_a if rng.random() < 0.6 else rng.choice(c_num, size=int(rng.integers(0, 4)), replace=False)
    ta = _sparse_truth(rng, t_len, c_num, cls_a)
    tv = _sparse_truth(rng, t_len, c_num, cls_v)
    if rng.random() < 0.5:  # visual truth near the audio truth: a non-empty AV
        tv = np.stack([_perturb(rng, ta[:, c]) for c in range(c_num)], axis=1)
    pa = np.stack([_perturb(rng, ta[:, c]) if ta[:, c].any() else np.zeros(t_len, np.int8) for c in range(c_num)], 1)
    pv = np.stack([_perturb(rng, tv[:, c]) if tv[:, c].any() else np.zeros(t_len, np.int8) for c in range(c_num)], 1)
    for p in (pa, pv):  # occasional spurious class
        if rng.random() < 0.3:
            p[:, rng.integers(c_num)] |= _markov_row(rng, t_len, 0.2, 0.4)
    if kind == 7 and rng.random() < 0.3:
        return np.zeros_like(pa), np.zeros_like(pv), np.zeros_like(ta), np.zeros_like(tv)
    return pa, pv, ta, tv


def random_set(seed, n, t_len=T, c_num=C):
    """Four (N, T, C) int8 arrays: pred audio, pred visual, truth audio, truth visual."""
    rng = np.random.default_rng(seed)
    vids = [random_video(rng, t_len, c_num) for _ in range(n)]
    return tuple(np.stack([v[j] for v in vids]) for j in range(4))


def tens(arrays, dtype=torch.float32):
    return tuple(torch.as_tensor(np.asarray(a)).to(dtype) for a in arrays)


def assert_close(got: dict, want: dict, keys, tol=TOL):
    for k in keys:
        g = np.asarray(torch.as_tensor(got[k], dtype=torch.float64)) if torch.is_tensor(got[k]) else np.asarray(got[k])
        np.testing.assert_allclose(g, np.asarray(want[k], dtype=np.float64), rtol=0, atol=tol, err_msg=k)


@pytest.fixture(scope="module")
def big_set():
    """3000 random videos and their reference results."""
    arrays = random_set(0, 3000)
    return arrays, ref_all(*arrays)


# --------------------------------------------------------------------------- 1. random agreement
def test_metric_keys_order():
    assert tuple(METRIC_KEYS) == KEYS


def test_random_agreement_with_reference(big_set):
    arrays, (means, per_video, _) = big_set
    assert 0.05 < means["segment/type"] < 0.95  # the draw is neither trivial nor saturated
    got = avvp_scores(*tens(arrays))
    assert set(got) == set(KEYS)
    assert_close(got, means, KEYS)
    assert all(0.0 <= float(got[k]) <= 1.0 for k in KEYS)
    got_bool = avvp_scores(*tens(arrays, torch.bool))
    assert_close(got_bool, means, KEYS)
    pv = per_video_scores(*tens(arrays))
    assert set(pv) == set(KEYS)
    for k in KEYS:
        assert tuple(pv[k].shape) == (3000,)
    assert_close(pv, per_video, KEYS)


# --------------------------------------------------------------------------- 2. hand-made cases
def _video(**rows):
    """One video (1, T, C) per matrix; rows like pa=[(class, start, end), ...]."""
    out = []
    for name in ("pa", "pv", "ta", "tv"):
        m = np.zeros((1, T, C), dtype=np.int8)
        for c, a, b in rows.get(name, []):
            m[0, a:b, c] = 1
        out.append(m)
    return out


def _row(*spans, t_len=T):
    r = np.zeros(t_len, dtype=np.int8)
    for a, b in spans:
        r[a:b] = 1
    return r


def _counts(fn, pred, true):
    tp, fp, fn_ = fn(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(true, dtype=torch.float32))
    return int(tp), int(fp), int(fn_)


@pytest.mark.parametrize(
    "pred, true, expected",
    [
        (_row((0, 1), (9, 10)), _row((0, 1), (9, 10)), (2, 0, 0)),  # single-segment events at both ends
        (_row((0, 1)), _row((0, 1), (9, 10)), (1, 0, 1)),
        (_row((9, 10)), _row((8, 10)), (1, 0, 0)),  # IoU 1/2 at the last segment
        (_row((0, 2)), _row((0, 4)), (1, 0, 0)),  # IoU exactly 0.5 counts
        (_row((0, 3)), _row((1, 4)), (1, 0, 0)),  # IoU 2/4
        (_row((1, 3)), _row((0, 2)), (0, 1, 1)),  # IoU 1/3
        (_row((0, 4)), _row((0, 9)), (0, 1, 1)),  # IoU 4/9, just under
        (_row((0, 5)), _row((0, 2)), (0, 1, 1)),  # IoU 2/5
        (_row((0, 7)), _row((0, 3), (4, 7)), (0, 1, 2)),  # one prediction over two events, 3/7 each
        (_row((0, 6)), _row((0, 4), (5, 6)), (1, 0, 1)),  # spans two, matches the big one (4/6)
        (_row((0, 5), (6, 10)), _row((0, 10)), (1, 1, 0)),  # two inside one: 5/10 and 4/10
        (_row((1, 4), (6, 9)), _row((0, 10)), (0, 2, 1)),  # two inside one, both 3/10
        (_row((0, 10)), _row(), (0, 1, 0)),
        (_row(), _row((2, 3), (5, 6), (8, 9)), (0, 0, 3)),
        (_row(), _row(), (0, 0, 0)),
    ],
)
def test_event_counts_hand_made(pred, true, expected):
    assert _counts(event_counts, pred, true) == expected
    assert ref_event_counts(list(pred), list(true)) == expected


@pytest.mark.parametrize(
    "pred, true, expected",
    [
        (_row((0, 3)), _row((2, 6)), (1, 2, 3)),
        (_row(), _row(), (0, 0, 0)),
        (_row((0, 10)), _row((0, 1), (9, 10)), (2, 8, 0)),
    ],
)
def test_segment_counts_hand_made(pred, true, expected):
    assert _counts(segment_counts, pred, true) == expected
    assert ref_segment_counts(list(pred), list(true)) == expected


def test_counts_keep_leading_shape():
    rng = np.random.default_rng(3)
    pred = torch.as_tensor(rng.random((2, 3, 4, T)) < 0.5).float()
    true = torch.as_tensor(rng.random((2, 3, 4, T)) < 0.5).float()
    for fn, ref in ((event_counts, ref_event_counts), (segment_counts, ref_segment_counts)):
        tp, fp, fn_ = fn(pred, true)
        for x in (tp, fp, fn_):
            assert tuple(x.shape) == (2, 3, 4)
            assert not x.dtype.is_floating_point
        for idx in np.ndindex(2, 3, 4):
            want = ref(list(pred[idx].int().tolist()), list(true[idx].int().tolist()))
            assert (int(tp[idx]), int(fp[idx]), int(fn_[idx])) == want


def test_all_zero_video_scores_one():
    got = avvp_scores(*tens(_video()))
    for k in KEYS:
        assert float(got[k]) == pytest.approx(1.0, abs=TOL), k


# pa: class 0 [0,3), class 1 [5,10), class 2 [0,1); ta: class 0 [0,6), class 1 [5,10)
# pv: class 0 [0,8); tv: class 0 [2,8).  AV pred class 0 [0,3), AV truth class 0 [2,6).
MIXED = dict(pa=[(0, 0, 3), (1, 5, 10), (2, 0, 1)], ta=[(0, 0, 6), (1, 5, 10)], pv=[(0, 0, 8)], tv=[(0, 2, 8)])
MIXED_EXPECTED = {
    "segment/audio": (2 / 3 + 1 + 0) / 3,  # class 0: TP3 FN3 -> 6/9; class 1: 1; class 2: FP only -> 0
    "segment/visual": 12 / 14,  # TP6 FP2
    "segment/av": 2 / 7,  # TP1 FP2 FN3
    "segment/type": 107 / 189,  # (5/9 + 6/7 + 2/7) / 3
    "segment/event": (18 / 23 + 1 + 0) / 3,  # class 0: TP 3+6, FP 0+2, FN 3+0
    "event/audio": 2 / 3,  # [0,3) vs [0,6): IoU 0.5 -> TP; class 1 TP; class 2 FP
    "event/visual": 1.0,  # IoU 6/8
    "event/av": 0.0,  # [0,3) vs [2,6): IoU 1/6 -> FP + FN
    "event/type": 5 / 9,
    "event/event": 2 / 3,  # AV counts excluded (else class 0 would be 4/6)
}


def test_mixed_video_hand_computed():
    arrays = _video(**MIXED)
    assert_close(avvp_scores(*tens(arrays)), MIXED_EXPECTED, KEYS)
    assert_close(ref_all(*arrays)[0], MIXED_EXPECTED, KEYS)


def test_mean_over_videos_counts_empty_videos_as_one():
    arrays = [np.concatenate(pair) for pair in zip(_video(**MIXED), _video())]
    want = {k: (v + 1.0) / 2 for k, v in MIXED_EXPECTED.items()}
    assert_close(avvp_scores(*tens(arrays)), want, KEYS)
    pv = per_video_scores(*tens(arrays))
    assert_close(pv, {k: [v, 1.0] for k, v in MIXED_EXPECTED.items()}, KEYS)


def test_disjoint_audio_visual_empty_av_scores_one():
    arrays = _video(pa=[(0, 0, 5)], ta=[(0, 0, 5)], pv=[(0, 5, 10), (1, 0, 10)], tv=[(0, 5, 10), (1, 0, 10)])
    got = avvp_scores(*tens(arrays))
    for k in KEYS:
        assert float(got[k]) == pytest.approx(1.0, abs=TOL), k


def test_av_predicted_but_absent_in_truth_scores_zero():
    # truth audio and visual disjoint (AV truth empty); prediction overlaps them (AV pred [3,6)).
    arrays = _video(pa=[(0, 0, 6)], ta=[(0, 0, 5)], pv=[(0, 3, 10)], tv=[(0, 5, 10)])
    got = avvp_scores(*tens(arrays))
    assert float(got["segment/av"]) == pytest.approx(0.0, abs=TOL)
    assert float(got["event/av"]) == pytest.approx(0.0, abs=TOL)
    assert float(got["segment/audio"]) == pytest.approx(10 / 11, abs=TOL)  # TP5 FP1
    assert float(got["segment/visual"]) == pytest.approx(10 / 12, abs=TOL)  # TP5 FP2
    assert float(got["event/audio"]) == pytest.approx(1.0, abs=TOL)  # IoU 5/6
    assert float(got["event/visual"]) == pytest.approx(1.0, abs=TOL)  # IoU 5/7


def test_class_only_in_prediction_scores_zero():
    arrays = _video(pa=[(0, 0, 5), (3, 2, 4)], ta=[(0, 0, 5)])
    want = {
        "segment/audio": 0.5, "segment/visual": 1.0, "segment/av": 1.0, "segment/type": 2.5 / 3,
        "segment/event": 0.5, "event/audio": 0.5, "event/visual": 1.0, "event/av": 1.0,
        "event/type": 2.5 / 3, "event/event": 0.5,
    }
    assert_close(avvp_scores(*tens(arrays)), want, KEYS)


def test_bad_input_raises():
    empty = torch.zeros(0, T, C)
    with pytest.raises(ValueError):
        avvp_scores(empty, empty, empty, empty)
    a, b = torch.zeros(2, T, C), torch.zeros(2, T, C - 1)
    with pytest.raises(ValueError):
        avvp_scores(a, a, b, b)
    with pytest.raises(ValueError):
        avvp_scores(a, a, a, torch.zeros(3, T, C))


# --------------------------------------------------------------------------- 3. exhaustive events
def _bits(t_len=T):
    codes = np.arange(2**t_len)
    return ((codes[:, None] >> np.arange(t_len)[None, :]) & 1).astype(np.int8)  # (2^T, T)


def _reference_event_table(bits):
    """Reference event counts for every (pred code, truth code) pair, vectorized over truth codes.

    Returns:
        int64 array (2^T, 2^T, 3): [pred code, truth code] -> (TP, FP, FN).
    """
    n = len(bits)
    events = [ref_events(list(r)) for r in bits]
    k = max(len(e) for e in events)
    starts = np.zeros((n, k), np.int64)
    ends = np.zeros((n, k), np.int64)
    valid = np.zeros((n, k), bool)
    for i, ev in enumerate(events):
        for j, (a, b) in enumerate(ev):
            starts[i, j], ends[i, j], valid[i, j] = a, b, True
    table = np.zeros((n, n, 3), np.int64)
    for p in range(n):
        ps = starts[p, valid[p]][None, :, None]  # (1, kp, 1)
        pe = ends[p, valid[p]][None, :, None]
        inter = np.clip(np.minimum(pe, ends[:, None, :]) - np.maximum(ps, starts[:, None, :]), 0, None)
        union = (pe - ps) + (ends - starts)[:, None, :] - inter  # (n, kp, k)
        match = (2 * inter >= union) & valid[:, None, :]
        tp = match.any(axis=2).sum(axis=1)
        table[p, :, 0] = tp
        table[p, :, 1] = valid[p].sum() - tp
        table[p, :, 2] = (valid & ~match.any(axis=1)).sum(axis=1)
    return table


def test_vectorized_reference_matches_loop_reference():
    bits = _bits()
    table = _reference_event_table(bits)
    rng = np.random.default_rng(1)
    for p, g in rng.integers(0, len(bits), size=(3000, 2)):
        assert tuple(table[p, g]) == ref_event_counts(list(bits[p]), list(bits[g]))


def test_event_counts_exhaustive():
    bits = _bits()
    table = _reference_event_table(bits)
    n = len(bits)
    truth = torch.as_tensor(bits, dtype=torch.float32)
    for lo in range(0, n, 256):
        chunk = torch.as_tensor(bits[lo:lo + 256], dtype=torch.float32)
        pred = chunk[:, None, :].expand(-1, n, -1).contiguous()  # (256, 1024, T)
        target = truth[None].expand(len(chunk), -1, -1).contiguous()
        got = np.stack([x.numpy() for x in event_counts(pred, target)], axis=-1)
        bad = np.argwhere((got != table[lo:lo + 256]).any(-1))
        assert len(bad) == 0, f"first mismatch pred={bits[lo + bad[0][0]]} truth={bits[bad[0][1]]}"


def test_segment_counts_exhaustive():
    bits = _bits()
    pred = torch.as_tensor(bits, dtype=torch.bool)[:, None, :].expand(-1, len(bits), -1).contiguous()
    target = torch.as_tensor(bits, dtype=torch.bool)[None].expand(len(bits), -1, -1).contiguous()
    got = [x.numpy() for x in segment_counts(pred, target)]
    b = bits.astype(np.int64)
    want = (b @ b.T, b @ (1 - b).T, (1 - b) @ b.T)  # (pred, truth): TP, FP, FN
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------- 4. torchmetrics class
BATCHES = (1, 7, 500, 13, 979, 2, 1498)


def _feed(metric, arrays, sizes):
    lo = 0
    for i, size in enumerate(sizes):
        dtype = torch.bool if i % 2 else torch.float32
        metric.update(*tens([a[lo:lo + size] for a in arrays], dtype))
        lo += size
    assert lo == len(arrays[0])


def test_metric_accumulates_uneven_batches(big_set):
    arrays, (means, _, per_class) = big_set
    metric = AVVPMetrics(num_classes=C)
    _feed(metric, arrays, BATCHES)
    got = metric.compute()
    assert set(got) == set(KEYS) | set(PER_CLASS_KEYS)
    assert all(torch.is_tensor(v) for v in got.values())
    for k in PER_CLASS_KEYS:
        assert tuple(got[k].shape) == (C,)
    assert_close(got, means, KEYS)
    assert_close(got, avvp_scores(*tens(arrays)), KEYS)
    assert_close(got, per_class, PER_CLASS_KEYS)


def test_metric_per_class_absent_class_is_zero():
    arrays = _video(pa=[(0, 0, 3)], ta=[(0, 0, 6)], pv=[(4, 2, 3)], tv=[(4, 0, 3)])
    metric = AVVPMetrics()
    metric.update(*tens(arrays))
    metric.update(*tens(_video()))
    got = metric.compute()
    want = {k: np.zeros(C) for k in PER_CLASS_KEYS}
    want["per_class/segment/audio"][0] = 6 / 9
    want["per_class/event/audio"][0] = 1.0
    want["per_class/segment/visual"][4] = 2 / 4
    want["per_class/event/visual"][4] = 0.0  # IoU 1/3
    assert_close(got, want, PER_CLASS_KEYS)
    assert_close(got, ref_all(*[np.concatenate(p) for p in zip(arrays, _video())])[2], PER_CLASS_KEYS)


def test_metric_states_are_sums():
    metric = AVVPMetrics()
    assert len(metric._defaults) > 0
    for name in metric._defaults:
        assert metric._reductions[name] is dim_zero_sum, name


def test_metric_reset_and_forward():
    a, b = random_set(5, 40), random_set(6, 30)
    metric = AVVPMetrics()
    metric.update(*tens(a))
    assert_close(metric.compute(), ref_all(*a)[0], KEYS)
    metric.reset()
    metric.update(*tens(b))
    assert_close(metric.compute(), ref_all(*b)[0], KEYS)
    metric.reset()
    batch_out = metric(*tens(a))  # forward: this batch only, and accumulated
    assert_close(batch_out, ref_all(*a)[0], KEYS)
    metric(*tens(b))
    both = [np.concatenate(p) for p in zip(a, b)]
    assert_close(metric.compute(), ref_all(*both)[0], KEYS)


def test_metric_in_collection_with_prefix():
    a, b = random_set(7, 50), random_set(8, 35)
    base = MetricCollection({"avvp": AVVPMetrics()})
    val, test = base.clone(prefix="val/"), base.clone(prefix="test/")
    val.update(*tens(a))
    test.update(*tens(b))
    got_val, got_test = val.compute(), test.compute()
    assert set(got_val) == {f"val/{k}" for k in KEYS + PER_CLASS_KEYS}
    assert set(got_test) == {f"test/{k}" for k in KEYS + PER_CLASS_KEYS}
    means_a, _, pc_a = ref_all(*a)
    assert_close({k[4:]: v for k, v in got_val.items()}, {**means_a, **pc_a}, KEYS + PER_CLASS_KEYS)
    assert_close({k[5:]: v for k, v in got_test.items()}, ref_all(*b)[0], KEYS)
    val.reset()
    val.update(*tens(b))
    assert_close({k[4:]: v for k, v in val.compute().items()}, ref_all(*b)[0], KEYS)


def test_metric_other_class_count():
    arrays = random_set(9, 120, c_num=5)
    metric = AVVPMetrics(num_classes=5)
    _feed(metric, arrays, (3, 100, 17))
    means, _, per_class = ref_all(*arrays)
    got = metric.compute()
    assert_close(got, means, KEYS)
    assert_close(got, per_class, PER_CLASS_KEYS)


# --------------------------------------------------------------------------- 5. decide
def test_decide_inclusive_threshold_and_video_filter():
    below = float(torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)))
    audio = torch.zeros(1, T, C)
    visual = torch.zeros(1, T, C)
    video = torch.zeros(1, C)
    audio[0, :, 0], visual[0, :, 0], video[0, 0] = 0.5, 0.5, 0.5  # all exactly at threshold
    audio[0, :, 1], visual[0, :, 1], video[0, 1] = 0.9, 0.9, below  # video filter kills both
    audio[0, :, 2], visual[0, :, 2], video[0, 2] = below, 0.7, 0.95  # audio just under
    audio[0, 3, 3], visual[0, 6, 3], video[0, 3] = 1.0, 1.0, 1.0  # one segment each
    pa, pv = decide(audio, visual, video)
    pa, pv = pa.bool(), pv.bool()
    assert tuple(pa.shape) == tuple(pv.shape) == (1, T, C)
    assert pa[0, :, 0].all() and pv[0, :, 0].all()
    assert not pa[0, :, 1].any() and not pv[0, :, 1].any()
    assert not pa[0, :, 2].any() and pv[0, :, 2].all()
    assert pa[0, :, 3].tolist() == [t == 3 for t in range(T)]
    assert pv[0, :, 3].tolist() == [t == 6 for t in range(T)]
    assert int(pa.sum()) == T + 1 and int(pv.sum()) == 2 * T + 1


def test_decide_custom_threshold_random():
    g = torch.Generator().manual_seed(0)
    audio, visual = torch.rand(60, T, C, generator=g), torch.rand(60, T, C, generator=g)
    video = torch.rand(60, C, generator=g)
    audio[audio < 0.1] = 0.25  # exact ties at the threshold
    video[video < 0.1] = 0.25
    for th in (0.25, 0.5, 0.75):
        pa, pv = decide(audio, visual, video, threshold=th)
        keep = (video >= th)[:, None, :]
        assert torch.equal(pa.bool(), (audio >= th) & keep)
        assert torch.equal(pv.bool(), (visual >= th) & keep)
    pa, pv = decide(audio, visual, video)
    assert torch.equal(pa.bool(), (audio >= 0.5) & (video >= 0.5)[:, None, :])


# --------------------------------------------------------------------------- 6. other lengths
@pytest.mark.parametrize("t_len", [7, 16])
def test_other_lengths_agree(t_len):
    arrays = random_set(10 + t_len, 300, t_len=t_len)
    means, per_video, _ = ref_all(*arrays)
    assert_close(avvp_scores(*tens(arrays)), means, KEYS)
    assert_close(per_video_scores(*tens(arrays)), per_video, KEYS)
    rng = np.random.default_rng(t_len)
    pred = np.stack([_markov_row(rng, t_len, 0.3, 0.3) for _ in range(2000)])
    true = np.stack([_perturb(rng, _markov_row(rng, t_len, 0.3, 0.3)) for _ in range(2000)])
    got = np.stack([x.numpy() for x in event_counts(*tens((pred, true)))], axis=-1)
    want = np.array([ref_event_counts(list(p), list(g)) for p, g in zip(pred, true)])
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- 7. real LLP data
def _dense(csv_path, index):
    gt = np.zeros((len(index), T, C), dtype=np.int8)
    df = pd.read_csv(csv_path, sep="\t")
    for fname, onset, offset, label in df[["filename", "onset", "offset", "event_labels"]].itertuples(index=False):
        i = index.get(fname)
        if i is not None:
            gt[i, int(onset):int(offset), CLASS_INDEX[label]] = 1  # onset >= offset sets nothing
    return gt


@pytest.mark.skipif(not LLP_ROOT.is_dir(), reason="real LLP annotations not available")
def test_real_llp_test_split():
    split = pd.read_csv(LLP_ROOT / "AVVP_test_pd.csv", sep="\t")
    index = {f: i for i, f in enumerate(split["filename"])}
    ta, tv = _dense(LLP_ROOT / "AVVP_eval_audio.csv", index), _dense(LLP_ROOT / "AVVP_eval_visual.csv", index)
    assert len(CLASSES) == C
    # the NOTES.md counts: 6 videos with no audio truth, 121 no visual, 174 no AV
    assert int((ta.sum((1, 2)) == 0).sum()) == 6
    assert int((tv.sum((1, 2)) == 0).sum()) == 121
    assert int(((ta * tv).sum((1, 2)) == 0).sum()) == 174

    perfect = avvp_scores(*tens((ta, tv, ta, tv)))
    for k in KEYS:
        assert float(perfect[k]) == pytest.approx(1.0, abs=TOL), k

    weak = np.zeros((len(split), C), dtype=np.int8)
    for i, labels in enumerate(split["event_labels"]):
        for name in labels.split(","):
            weak[i, CLASS_INDEX[name]] = 1
    painted = np.repeat(weak[:, None, :], T, axis=1)  # (N, T, C)
    means = ref_all(painted, painted, ta, tv)[0]
    assert_close(avvp_scores(*tens((painted, painted, ta, tv))), means, KEYS)
    assert abs(means["segment/type"] - 0.630) < 0.0015


def test_scores_unchanged_under_bf16_autocast() -> None:
    """Row codes come from a matrix product: autocast must not round it to bfloat16."""
    gen = torch.Generator().manual_seed(11)
    tensors = [(torch.rand(200, 10, 25, generator=gen) < 0.4).float() for _ in range(4)]
    plain = avvp_scores(*tensors)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = avvp_scores(*tensors)
    for key in plain:
        assert under[key] == pytest.approx(plain[key], abs=1e-12), key
