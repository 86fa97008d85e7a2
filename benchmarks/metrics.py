"""Benchmark the vectorized AVVP evaluation against a per-video, per-class Python loop.

The loop is the HAN-style evaluation written from the metric definitions (extract each
class's events, match them by IoU, count, average F per video). Both run on the same
random LLP-like videos; the script checks that all ten numbers agree to 1e-9 and prints
the timings. Usage::

    python benchmarks/metrics.py [--sizes 1200 12000] [--loop-max 12000] [--device cpu]

Both sides run single-threaded by default (``--threads``), as the loop is; on a busy
machine, several torch threads can make small tensor ops much slower, not faster.
"""

from __future__ import annotations

import argparse
import time

import torch

from avvp_lightning.data.cli import positive_int
from avvp_lightning.metrics import METRIC_KEYS, avvp_scores
from avvp_lightning.metrics.functional import pair_table

# ----------------------------------------------------------------------------- reference loop


def runs(row: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of 1s of one class row, as half-open [start, end) intervals."""
    events, start = [], None
    for i, x in enumerate(row):
        if x and start is None:
            start = i
        elif not x and start is not None:
            events.append((start, i))
            start = None
    if start is not None:
        events.append((start, len(row)))
    return events


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def event_row_counts(pred: list[int], true: list[int]) -> tuple[int, int, int]:
    p, g = runs(pred), runs(true)
    tp = sum(any(iou(x, y) >= 0.5 for y in g) for x in p)
    fn = sum(not any(iou(x, y) >= 0.5 for x in p) for y in g)
    return tp, len(p) - tp, fn


def segment_row_counts(pred: list[int], true: list[int]) -> tuple[int, int, int]:
    tp = sum(x and y for x, y in zip(pred, true))
    return tp, sum(pred) - tp, sum(true) - tp


def mean_f(counts: list[tuple[int, int, int]]) -> float:
    """Mean F over classes with a prediction or a truth; 1.0 when there is none."""
    fs = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts if tp + fp != 0 or tp + fn != 0]
    return sum(fs) / len(fs) if fs else 1.0


def loop_scores(pa: torch.Tensor, pv: torch.Tensor, ta: torch.Tensor, tv: torch.Tensor) -> dict:
    """The ten numbers with one Python iteration per video, modality and class."""
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    n = pa.shape[0]
    for video in range(n):
        a, v = pa[video].T.tolist(), pv[video].T.tolist()  # (C, T) lists
        ga, gv = ta[video].T.tolist(), tv[video].T.tolist()
        rows = {
            "audio": (a, ga),
            "visual": (v, gv),
            "av": (
                [[x * y for x, y in zip(r, s)] for r, s in zip(a, v)],
                [[x * y for x, y in zip(r, s)] for r, s in zip(ga, gv)],
            ),
        }
        for level, count in (("segment", segment_row_counts), ("event", event_row_counts)):
            counts = {m: [count(p, g) for p, g in zip(*rows[m])] for m in rows}
            f = {m: mean_f(c) for m, c in counts.items()}
            summed = [  # Event@AV: audio and visual counts added per class
                tuple(x + y for x, y in zip(ca, cv))
                for ca, cv in zip(counts["audio"], counts["visual"])
            ]
            for m in rows:
                totals[f"{level}/{m}"] += f[m]
            totals[f"{level}/type"] += (f["audio"] + f["visual"] + f["av"]) / 3
            totals[f"{level}/event"] += mean_f(summed)
    return {k: s / n for k, s in totals.items()}


# ----------------------------------------------------------------------------- data


def random_videos(n: int, t: int, c: int, seed: int) -> tuple[torch.Tensor, ...]:
    """LLP-like sparse (N, T, C) 0/1 predictions and truth for audio and visual.

    Each video has 1-3 classes; each is present in each modality with probability 0.7
    as one or two random runs. Predictions flip 10% of the segments of those classes
    and 1% of all others.
    """
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(1, 4, (n, 1), generator=g)
    present = torch.rand(n, c, generator=g).argsort(-1).argsort(-1) < k  # (N, C) video's classes
    seg = torch.arange(t).view(1, t, 1)
    out = []
    for _ in range(2):  # audio, visual
        start = torch.randint(0, t, (2, n, 1, c), generator=g)
        length = torch.randint(1, t + 1, (2, n, 1, c), generator=g)
        run = (seg >= start) & (seg < start + length)  # (2, N, T, C) two candidate runs
        second = torch.rand(n, 1, c, generator=g) < 0.3
        truth = run[0] | (run[1] & second)  # (N, T, C)
        truth &= present.unsqueeze(1) & (torch.rand(n, 1, c, generator=g) < 0.7)
        rate = torch.where(present.unsqueeze(1), 0.10, 0.01)  # (N, 1, C)
        pred = truth ^ (torch.rand(n, t, c, generator=g) < rate)
        out.append((pred.float(), truth.float()))
    (pa, ta), (pv, tv) = out
    return pa, pv, ta, tv


# ----------------------------------------------------------------------------- main


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[1200, 12000],
                        help="numbers of videos N")
    parser.add_argument("--segments", type=positive_int, default=10, help="T")
    parser.add_argument("--classes", type=positive_int, default=25, help="C")
    parser.add_argument("--loop-max", type=positive_int, default=12000,
                        help="time the loop on at most this many videos and extrapolate linearly")
    parser.add_argument("--repeats", type=positive_int, default=5, help="vectorized runs (best is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(args)
    device = torch.device(opts.device)
    torch.set_num_threads(opts.threads)

    start = time.perf_counter()
    pair_table(opts.segments, device)  # first call in this process: builds the table
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - start
    print(f"pair table build (T={opts.segments}, {device}, one-time): {build_s:.3f} s; "
          f"{opts.threads} torch thread(s); vectorized = best of {opts.repeats} runs")
    print(f"{'N':>7} {'loop s':>10} {'vectorized s':>13} {'speedup':>9}  note")
    for n in opts.sizes:
        videos = random_videos(n, opts.segments, opts.classes, opts.seed + n)
        on_device = [x.to(device) for x in videos]
        fast = avvp_scores(*on_device)  # warm-up
        vec_s = best_time(lambda: avvp_scores(*on_device), opts.repeats)

        m = min(n, opts.loop_max)
        subset = [x[:m] for x in videos]
        start = time.perf_counter()
        slow = loop_scores(*subset)
        loop_s = (time.perf_counter() - start) * n / m
        if m < n:
            fast = avvp_scores(*[x.to(device) for x in subset])
        worst = max(abs(fast[k] - slow[k]) for k in METRIC_KEYS)
        if worst > 1e-9:
            raise SystemExit(f"MISMATCH at N={n}: max |difference| = {worst:.3g}\n{fast}\n{slow}")
        note = f"loop timed on {m} videos, extrapolated" if m < n else "full loop"
        print(f"{n:>7} {loop_s:>10.3f} {vec_s:>13.4f} {loop_s / vec_s:>8.0f}x  "
              f"{note}; max diff {worst:.1e}")
    print("all ten numbers agree to 1e-9:", ", ".join(f"{k}={fast[k]:.4f}" for k in METRIC_KEYS))


if __name__ == "__main__":
    main()
