"""Training throughput: the reference (HAN) design against avvp-lightning's fast path, in one run.

All cases train the same model function (same initial weights, HAN's loss, Adam 3e-4) on the same
synthetic LLP set at the real feature sizes, generated into a temporary folder::

    A   reference design at HAN's settings: every step a torch DataLoader reads each video's
        three .npy files (VGGish (10, 128), ResNet152 (80, 2048), R(2+1)D (10, 512)); the model
        projects all 80 frames with fc(2048->512), then means each 8, with torch's stock pieces
        (``nn.Dropout``, the fused attention kernel, ``torch.optim.Adam`` defaults); batch 16, fp32.
    B   fast path at the same batch and precision: the packed store (frames pooled once, when
        packing), held as tensors on the device, batches sliced by index; pooled-first model with
        avvp-lightning's CPU dropout and attention core, and fused Adam (the defaults of ``fit``).
    B0  B's data path and pooling with A's stock model pieces and optimizer (the share of the data
        path, pooling first and the allocator setting; A and A' run in a process of their own with
        glibc's default allocator, as HAN's code does, see ReferenceWorker).
    A'  the reference design at our batch and precision (64, bf16 autocast where native).
    C   the fast path at our batch and precision; C0 like B0 at C's settings.
    F   ``avvp-finetune fit`` itself at the paper's settings (the paper's model, batch 64, the
        default precision: bf16-mixed where native; on a GPU each training step one CUDA graph,
        ``--model.cuda_graphs``) with ``--data.store`` and ``--data.device_resident``; F-HAN the
        same with HAN's model.
    C+comp  (``--compile``) C with ``torch.compile``; its compilation time is printed apart.
    F+comp  (``--compile``) F with ``--run.compile`` (the parser's blocks compiled; compilation
        falls in the warm-up epoch).
    F-eager (``--eager-fit``) F with ``--model.cuda_graphs=false``: eager training steps on a GPU
        too (on a CPU, F itself).
    E   a full evaluation of the test videos (forward, HAN's decision rule, all ten metrics): the
        reference's way (per-file loading, one video a step, float32, per-video Python metrics)
        and ours (store, batch 64, vectorized metrics).

The table also gives each case's matrix products in GFLOP/s (videos/s x the products per
training video, which torch's FLOP counter counts for each model form) beside one large product
on the device: how close each case runs to what the device's products can do, and so what bounds
B / A at the same batch and precision.

After the timed epochs every case's model is scored on the test videos (segment Type@AV), so
that the cases can be seen to learn the same thing: each has trained the same number of epochs
(the A epochs timed next to each fit epoch are timings only, undone afterwards).

Cases are timed in rounds (one epoch of each case per round), so background load hits all alike;
the median epoch is reported. Usage::

    python benchmarks/train_throughput.py                        # CPU: 2000 videos, 3 rounds
    python benchmarks/train_throughput.py --device cuda --videos 10000 --epochs 1
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

os.environ.setdefault("WANDB_MODE", "disabled")

from avvp_lightning.cli import native_bf16, reuse_freed_memory  # noqa: E402
from avvp_lightning.data.cli import positive_int  # noqa: E402
from avvp_lightning.data.datamodules import LLPDataModule  # noqa: E402
from avvp_lightning.data.llp import DENSE_FILES, FEATURE_DIRS, SPLIT_FILES, read_dense_truth  # noqa: E402
from avvp_lightning.data.store import ResidentBatches, pack_store, read_store  # noqa: E402
from avvp_lightning.data.synthetic import generate_llp  # noqa: E402
from avvp_lightning.finetune.cli import FinetuneCLI  # noqa: E402
from avvp_lightning.finetune.module import ParserModule  # noqa: E402
from avvp_lightning.labels import CLASS_INDEX, NUM_CLASSES  # noqa: E402
from avvp_lightning.losses.parser import parser_loss  # noqa: E402
from avvp_lightning.metrics import AVVPMetrics, decide  # noqa: E402
from avvp_lightning.models.attention import MultiHeadAttention  # noqa: E402
from avvp_lightning.models.dropout import Dropout  # noqa: E402
from avvp_lightning.models.parser import AVVPParser  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metrics import loop_scores  # noqa: E402  (benchmarks/metrics.py: the per-video Python evaluation)


# ------------------------------------------------------------------------ reference design
class PerFileLLP(Dataset):
    """HAN's dataset: the split CSV in memory; each item loads the video's three .npy files."""

    def __init__(self, root: Path, split: str, dense: bool = False) -> None:
        table = pd.read_csv(root / SPLIT_FILES[split], sep="\t", dtype=str, keep_default_na=False)
        self.root, self.rows = root, list(zip(table["filename"], table["event_labels"]))
        self.dense = None
        if dense:  # the dense truth, read once as HAN's evaluation does
            names = [name for name, _ in self.rows]
            self.dense = [torch.from_numpy(read_dense_truth(root / DENSE_FILES[m], names)) for m in ("audio", "visual")]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name, labels = self.rows[i]
        vid = name[:11]
        item = {key: torch.from_numpy(np.load(self.root / FEATURE_DIRS[key] / f"{vid}.npy"))
                for key in ("audio", "visual", "motion")}  # (10, 128), (80, 2048), (10, 512)
        label = torch.zeros(NUM_CLASSES)
        label[[CLASS_INDEX[c] for c in labels.split(",")]] = 1.0  # HAN's ids_to_multinomial
        item["label"] = label
        if self.dense is not None:
            item["dense_audio"], item["dense_visual"] = self.dense[0][i], self.dense[1][i]
        return item


def _stock_attention(self: MultiHeadAttention, query: torch.Tensor, key: torch.Tensor,
                     partner: MultiHeadAttention | None = None) -> torch.Tensor:
    """The attention core as torch's fused kernel (what ``nn.MultiheadAttention`` users get).

    A ``partner`` (the Base layer's second modality) is called on its half of the batch.
    """
    if partner is not None:
        (q1, q2), (k1, k2) = query.chunk(2, dim=0), key.chunk(2, dim=0)
        return torch.cat([_stock_attention(self, q1, k1), partner(q2, k2)], dim=0)
    q, k = self.queries_keys(query, key)  # (B, nh, Tq, hd), (B, nh, Tk, hd)
    v = self._split(self.v_proj(key))  # (B, nh, Tk, hd)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
    return self.out_proj(out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.dim))


class ReferenceParser(AVVPParser):
    """The parser built from torch's stock pieces, optionally in HAN's order of operations.

    ``nn.Dropout`` instead of avvp-lightning's CPU dropout, the fused attention kernel instead of
    the written-out core; with ``frames`` the visual projection runs on each of the 80 frames
    before the mean of each 8 (HAN's order; the same function as pooling first, since a linear
    map commutes with the mean, checked below, at 8 times the cost). Same weights as
    ``AVVPParser`` built after the same seed.
    """

    def __init__(self, frames: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.frames = frames
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, Dropout):
                    setattr(module, name, nn.Dropout(child.p))
            if isinstance(module, MultiHeadAttention):
                module.forward = types.MethodType(_stock_attention, module)

    def embed(self, audio: torch.Tensor, visual: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        if not self.frames:
            return super().embed(audio, visual, motion)
        batch, length = audio.shape[:2]
        v = self.fc_visual(visual)  # (B, 80, H)
        v = v.view(batch, length, -1, v.shape[-1]).mean(dim=2)  # (B, T, H)
        v = self.fc_fusion(torch.cat([v, self.fc_motion(motion)], dim=-1))  # (B, T, H)
        return torch.cat([self.fc_audio(audio), v], dim=0)  # (2B, T, H)


# ---------------------------------------------------------------------------- one training case
class Case:
    """One configuration: a model, its optimizer and a way to make an epoch's batches."""

    def __init__(self, key: str, label: str, path: str, frames: bool, batch: int, bf16: bool,
                 batches: Callable[[], Iterable[dict[str, Any]]], device: torch.device, stock: bool,
                 compile: bool = False, compile_mode: str | None = None) -> None:
        self.key, self.label, self.path, self.frames, self.batch, self.bf16 = key, label, path, frames, batch, bf16
        self.batches, self.device = batches, device
        torch.manual_seed(0)  # the same initial weights in every case
        model = ReferenceParser(frames, architecture="han") if stock else AVVPParser(architecture="han")
        self.model = model.to(device)
        if compile:
            self.model.compile(mode=compile_mode)
        # stock: torch's default Adam (a loop over parameters on the CPU); ours: fit's default, fused
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-4, **({} if stock else {"fused": True}))
        self.rates: list[float] = []
        self.epoch_s: list[float] = []

    def step(self, batch: dict[str, Any]) -> int:
        audio, visual, motion, label = (batch[k].to(self.device, non_blocking=True)
                                        for k in ("audio", "visual", "motion", "label"))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(audio, visual, motion)
        out = {k: v.float() for k, v in out.items() if v is not None}
        loss = parser_loss(out, label, lambda_g=1.0, lambda_ad=0.0)["total"]  # HAN's loss, in float32
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return len(label)

    def warm_up(self, steps: int = 3) -> float:
        """A few untimed training steps (compilation, allocator, caches); returns their duration."""
        self.model.train()
        start = time.perf_counter()
        for i, batch in enumerate(self.batches()):
            if i == steps:
                break
            self.step(batch)
        _sync(self.device)
        return time.perf_counter() - start

    def epoch(self, record: bool = True) -> float:
        """One timed epoch; returns its videos/s.

        With ``record`` the rate is kept in ``rates`` and the epoch counts as training; without, it
        is a timing only: the weights, the optimizer's state and the random state are put back
        afterwards, so every case's model is scored after the same number of epochs.
        """
        kept = None if record else (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                                    torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                                    else None)
        self.model.train()
        _sync(self.device)
        start, videos = time.perf_counter(), 0
        for batch in self.batches():
            videos += self.step(batch)
        _sync(self.device)
        seconds = time.perf_counter() - start
        if kept is None:
            self.rates.append(videos / seconds)
            self.epoch_s.append(seconds)
        else:
            self.model.load_state_dict(kept[0])
            self.optimizer.load_state_dict(kept[1])
            torch.set_rng_state(kept[2])
            if kept[3] is not None:  # the GPU's dropout draws
                torch.cuda.set_rng_state_all(kept[3])
        return videos / seconds


def training_flops(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    """Matrix-product FLOPs per training video of each model form: forward, loss and backward.

    As ``torch.utils.flop_counter`` counts them (products and attention; elementwise work is
    not counted). The count depends on the shapes only, so it is made on fresh models at the
    batch given, with torch's random state put back afterwards (dropout draws in training mode).
    Keys: ``frames`` (the reference's HAN model, 80 frames projected), ``pooled`` (HAN's model,
    pooled first: B0, B, C0, C, F-HAN), ``paper`` (the paper's model and loss, as ``fit`` builds
    them with its defaults: F).
    """
    audio, visual, motion, label = (batch[k].to(device) for k in ("audio", "visual", "motion", "label"))
    pooled = visual.view(len(visual), audio.shape[1], -1, visual.shape[-1]).mean(2)  # (B, 80, D) -> (B, 10, D)
    flops = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        module = ParserModule()  # the paper's model: the module's defaults are defaults.yaml's
        forms = {  # model, its visual input, its loss weights
            "frames": (ReferenceParser(True, architecture="han"), visual, (1.0, 0.0)),  # HAN's loss
            "pooled": (AVVPParser(architecture="han"), pooled, (1.0, 0.0)),
            "paper": (module.parser, pooled, (module.hparams.lambda_g, module.hparams.lambda_ad)),
        }
        for name, (model, vis, (lambda_g, lambda_ad)) in forms.items():
            model.to(device).train()
            with FlopCounterMode(display=False) as counter:
                out = {k: v.float() for k, v in model(audio, vis, motion).items() if v is not None}
                parser_loss(out, label.float(), lambda_g=lambda_g, lambda_ad=lambda_ad)["total"].backward()
            flops[name] = counter.get_total_flops() / len(label)
    return flops


def product_ceiling(device: torch.device, bf16: bool) -> dict[str, float]:
    """GFLOP/s of one large square matrix product on ``device`` (fp32, and bf16 where native):
    what the device's products reach at best (2048^3 on a CPU, 8192^3 on a GPU). Its operands
    come from a generator of their own, so torch's random state (the cases' dropout) is untouched."""
    n = 8192 if device.type == "cuda" else 2048
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16} if bf16 else {"fp32": torch.float32}
    generator = torch.Generator(device).manual_seed(0)
    rates = {}
    for name, dtype in dtypes.items():
        a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in range(2))
        times = []
        for _ in range(5):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - start)
        rates[name] = 2 * n**3 / min(times[1:]) / 1e9  # the first: warm-up
        del a, b
    return rates


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- avvp-finetune fit
class EpochTimer(Callback):
    """Videos per second of each training epoch (data and steps; validation excluded).

    After each timed epoch it runs ``paired()`` (one epoch of case A), so that every fit epoch
    has a reference epoch next to it in time: on a shared machine the speed drifts by tens of
    percent within minutes, far more than between neighbouring epochs.
    """

    def __init__(self, paired: Callable[[], float] | None = None) -> None:
        self.rates: list[float] = []
        self.epoch_s: list[float] = []
        self.paired, self.paired_rates = paired, []
        self.model: AVVPParser | None = None  # the fit's parser after its last epoch

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.model = pl_module.parser

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        _sync(pl_module.device)
        self.start, self.videos = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.videos += len(batch["id"])
        if batch_idx + 1 == trainer.num_training_batches:
            _sync(pl_module.device)
            seconds = time.perf_counter() - self.start
            self.rates.append(self.videos / seconds)
            self.epoch_s.append(seconds)
            if self.paired is not None and len(self.rates) > 1:  # not after the warm-up epoch
                self.paired_rates.append(self.paired())


def run_fit(root: Path, out: Path, device: torch.device, epochs: int, han: bool,
            paired: Callable[[], float] | None = None, compile: bool = False,
            compile_mode: str | None = None, eager: bool = False) -> EpochTimer:
    """``avvp-finetune fit`` (the real CLI, defaults.yaml first: fused Adam, bf16-mixed where native)
    plus the timer; epoch 1 is warm-up (and compilation, with ``compile``: ``--run.compile``).
    ``paired`` runs after each timed epoch (see EpochTimer)."""
    timer = EpochTimer(paired)

    class TimedCLI(FinetuneCLI):
        def stage_callbacks(self, run_dir: Path) -> list[Callback]:
            return [*super().stage_callbacks(run_dir), timer]

    args = ["fit", *(["--config", "han.yaml", "--data.batch_size", "64"] if han else []),
            "--data.root", str(root), "--data.store", str(root / "packed"), "--data.device_resident=true",
            "--trainer.max_epochs", str(epochs + 1),
            "--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu", "--trainer.devices", "1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--run.output_dir", str(out),
            "--run.name", ("han" if han else "paper") + ("-compiled" if compile else "") + ("-eager" if eager else ""),
            *(["--run.compile=true"] if compile else []), *(["--model.cuda_graphs=false"] if eager else []),
            *(["--run.compile_mode", compile_mode] if compile and compile_mode else [])]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees this script's own flags
    try:
        TimedCLI(ParserModule, LLPDataModule, args=args)
    finally:
        sys.argv = argv
    timer.rates, timer.epoch_s = timer.rates[1:], timer.epoch_s[1:]
    return timer


# ----------------------------------------------------------------------------------- evaluation
def evaluate_reference(root: Path, device: torch.device, model: AVVPParser) -> tuple[float, float]:
    """HAN's evaluation: one video a step from the files, float32, metrics per video in Python."""
    start = time.perf_counter()
    loader = DataLoader(PerFileLLP(root, "test", dense=True), batch_size=1, shuffle=False)
    preds: list[list[torch.Tensor]] = [[], [], [], []]
    model.eval()
    with torch.no_grad():
        for batch in loader:
            out = model(*(batch[k].to(device) for k in ("audio", "visual", "motion")))
            seg = out["segment_prob"]  # (1, T, 2, C)
            pa, pv = decide(seg[:, :, 0], seg[:, :, 1], out["video_prob"])
            for store, x in zip(preds, (pa, pv, batch["dense_audio"], batch["dense_visual"])):
                store.append(x.cpu())
    scores = loop_scores(*(torch.cat(x) for x in preds))
    return time.perf_counter() - start, scores["segment/type"]


def evaluate_ours(batches: Iterable[dict[str, Any]], device: torch.device, model: AVVPParser,
                  bf16: bool) -> tuple[float, float]:
    """Ours: store-fed device-resident batches of 64, bf16 forward, vectorized metrics."""
    _sync(device)
    start = time.perf_counter()
    metrics = AVVPMetrics().to(device)
    model.eval()
    with torch.no_grad():
        for batch in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(batch["audio"], batch["visual"], batch["motion"])
            seg = out["segment_prob"].float()  # (B, T, 2, C)
            pa, pv = decide(seg[:, :, 0], seg[:, :, 1], out["video_prob"].float())
            metrics.update(pa, pv, batch["dense_audio"], batch["dense_visual"])
    score = float(metrics.compute()["segment/type"])
    _sync(device)
    return time.perf_counter() - start, score


# ------------------------------------------------------------ the reference in its own process
class ReferenceWorker:
    """A second Python process that runs the reference cases (A, A') with glibc's default allocator.

    ``avvp-finetune`` keeps freed memory in the process (``--run.reuse_memory``,
    :func:`avvp_lightning.cli.reuse_freed_memory`); HAN's code runs with glibc's defaults. The
    setting is process-wide and cannot be undone, so this script sets it for its own cases and
    runs the reference ones in a process that never does. One process computes while the other
    waits for its reply, so the rounds still interleave the cases. Commands go in pickled on the
    worker's stdin (``train_throughput.py --reference-worker``); replies come back on its stdout.
    """

    def __init__(self, root: Path, device: torch.device, threads: int, workers: int, bf16: bool) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--reference-worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            self.call("init", str(root), str(device), threads, workers, bf16)
        except BaseException:
            self.close()
            raise

    def call(self, command: str, *args: Any) -> Any:
        try:
            pickle.dump((command, args), self.proc.stdin)
            self.proc.stdin.flush()
            status, value = pickle.load(self.proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):  # the worker died
            self.close()
            raise RuntimeError(f"reference worker exited (status {self.proc.returncode}) during {command!r}; "
                               "its error is on stderr above") from None
        if status != "ok":
            raise RuntimeError(f"reference worker failed in {command!r}:\n{value}")
        return value

    def close(self) -> None:
        """Stop the worker: ``quit`` when it still answers, else (or after 60 s) kill it."""
        if self.proc.poll() is None:
            try:
                pickle.dump(("quit", ()), self.proc.stdin)
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


class RemoteCase:
    """A reference case that the :class:`ReferenceWorker` runs; its rates are kept here."""

    def __init__(self, worker: ReferenceWorker, key: str, label: str, batch: int, bf16: bool,
                 device: torch.device) -> None:
        self.worker, self.key, self.label, self.batch, self.bf16, self.device = worker, key, label, batch, bf16, device
        self.path, self.frames = "per-file .npy + DataLoader", True
        self.rates: list[float] = []
        self.epoch_s: list[float] = []

    def warm_up(self) -> float:
        return self.worker.call("warm_up", self.key)

    def epoch(self, record: bool = True) -> float:
        rate, seconds = self.worker.call("epoch", self.key, record)
        if record:
            self.rates.append(rate)
            self.epoch_s.append(seconds)
        return rate

    @property
    def model(self) -> AVVPParser:
        """A copy of the worker's model, with its current weights, in this process (each access asks the worker)."""
        model = AVVPParser(architecture="han")
        model.load_state_dict(self.worker.call("state_dict", self.key))
        return model.to(self.device)

    def evaluate_reference(self) -> tuple[float, float]:
        """:func:`evaluate_reference` of this case's model, run in the worker."""
        return self.worker.call("evaluate_reference", self.key)


def reference_worker() -> None:
    """The loop of ``--reference-worker``: one pickled reply on stdout per command from stdin."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else printed goes to stderr: stdout carries only the replies
    cases: dict[str, Case] = {}
    root, device = Path(), torch.device("cpu")
    while True:
        try:
            command, args = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            value: Any = None
            if command == "init":
                root, device, threads, workers, bf16 = Path(args[0]), torch.device(args[1]), *args[2:]
                torch.set_num_threads(threads)
                per_file = PerFileLLP(root, "train")

                def loader(bs: int) -> Callable[[], Iterable[dict[str, Any]]]:
                    return lambda: DataLoader(per_file, batch_size=bs, shuffle=True, num_workers=workers,
                                              pin_memory=device.type == "cuda")

                cases = {"A": Case("A", "", "", True, 16, False, loader(16), device, stock=True),
                         "A'": Case("A'", "", "", True, 64, bf16, loader(64), device, stock=True)}
            elif command == "warm_up":
                value = cases[args[0]].warm_up()
            elif command == "epoch":
                case, start = cases[args[0]], time.perf_counter()
                rate = case.epoch(record=args[1])
                value = (rate, case.epoch_s[-1] if args[1] else time.perf_counter() - start)
            elif command == "state_dict":
                value = {k: v.cpu() for k, v in cases[args[0]].model.state_dict().items()}
            elif command == "evaluate_reference":
                value = evaluate_reference(root, device, cases[args[0]].model)
            elif command != "quit":
                raise ValueError(f"unknown command {command!r}")
            reply = ("ok", value)
        except Exception:  # noqa: BLE001  (sent to the parent, which raises it)
            reply = ("error", traceback.format_exc())
        pickle.dump(reply, replies)
        replies.flush()
        if command == "quit":
            return


# ------------------------------------------------------------------------------------------ main
def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds: the temporary data is removed, the worker stopped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--videos", type=positive_int, default=2000,
                        help="training videos (synthetic, real feature sizes)")
    parser.add_argument("--val-videos", type=positive_int, default=100, help="validation videos (for the fit cases)")
    parser.add_argument("--test-videos", type=positive_int, default=1200,
                        help="videos of the full evaluation (LLP test: 1200)")
    parser.add_argument("--epochs", type=positive_int, default=3,
                        help="timed epochs (rounds) per case; the median is shown")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--ref-workers", type=int, default=None,
                        help="DataLoader workers of the reference design (default: 0 on CPU, HAN's 12 on GPU)")
    parser.add_argument("--skip-fit", action="store_true", help="skip the avvp-finetune fit cases")
    parser.add_argument("--compile", action="store_true",
                        help="add cases C+comp (torch.compile) and F+comp (fit with --run.compile); on a CPU "
                             "compilation takes minutes")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode of C+comp and F+comp, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--eager-fit", action="store_true",
                        help="add case F-eager: F with --model.cuda_graphs=false (eager steps on a GPU too)")
    parser.add_argument("--data", default=None, help="folder for the generated data (default: a temporary one)")
    opts = parser.parse_args(argv)
    try:
        device = torch.device(opts.device)
    except RuntimeError as err:
        parser.error(f"--device {opts.device}: {err}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {opts.device}: cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {opts.device}: no CUDA device is available to this torch ({torch.__version__})")
    if opts.ref_workers is not None and opts.ref_workers < 0:
        parser.error(f"--ref-workers must be >= 0, got {opts.ref_workers}")
    if opts.data is not None:
        try:
            Path(opts.data).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--data {opts.data}: cannot make the folder ({err.strerror or err})")
    torch.set_num_threads(opts.threads)
    bf16 = native_bf16("gpu" if device.type == "cuda" else "cpu")  # bf16 autocast pays off (AVX512-BF16/AMX, GPU)
    workers = opts.ref_workers if opts.ref_workers is not None else (min(12, os.cpu_count() or 1)
                                                                     if device.type == "cuda" else 0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {opts.threads} torch threads"
    reused = reuse_freed_memory()  # what avvp-finetune does (--run.reuse_memory); the reference worker does not
    print(f"device: {name}; torch {torch.__version__}; bf16 autocast: {'yes' if bf16 else 'no (fp32)'}; "
          f"reference DataLoader workers: {workers}; allocator: "
          + ("freed memory kept for ours, glibc defaults for the reference (a process of its own)" if reused
             else "the C library's defaults for all (not glibc)"), flush=True)

    with tempfile.TemporaryDirectory(dir=opts.data) as tmp:
        root = Path(tmp) / "llp"
        start = time.perf_counter()
        generate_llp(root, num_train=opts.videos, num_val=opts.val_videos, num_test=opts.test_videos, seed=0)
        gen_s = time.perf_counter() - start
        start = time.perf_counter()
        pack_store(root)
        pack_s = time.perf_counter() - start
        start = time.perf_counter()
        data = read_store(root / "packed", ["train", "test"])
        tensors = {split: {k: torch.from_numpy(getattr(data[split], a)).to(device) for k, a in
                           (("audio", "audio"), ("visual", "visual"), ("motion", "motion"), ("label", "labels"),
                            ("dense_audio", "dense_audio"), ("dense_visual", "dense_visual"))
                           if getattr(data[split], a) is not None} for split in data}
        resident = {bs: ResidentBatches(data["train"].filenames, tensors["train"], bs, shuffle=True, device=device)
                    for bs in (16, 64)}
        _sync(device)
        open_s = time.perf_counter() - start
        print(f"data: {opts.videos} train / {opts.val_videos} val / {opts.test_videos} test videos generated in "
              f"{gen_s:.1f} s; store packed in {pack_s:.1f} s (once); opened + moved to {device.type} in "
              f"{open_s:.2f} s", flush=True)

        store = "store, device-resident"
        worker = ReferenceWorker(root, device, opts.threads, workers, bf16)  # A and A', glibc's allocator
        try:
            cases: list[Any] = [
                RemoteCase(worker, "A", "reference design, HAN settings", 16, False, device),
                Case("B0", "fast data path, stock model pieces", store, False, 16, False, lambda: resident[16], device,
                     stock=True),
                Case("B", "fast path, same batch/precision", store, False, 16, False, lambda: resident[16], device,
                     stock=False),
                RemoteCase(worker, "A'", "reference design, our batch/precision", 64, bf16, device),
                Case("C0", "fast data path, stock model pieces", store, False, 64, bf16, lambda: resident[64], device,
                     stock=True),
                Case("C", "fast path (ours)", store, False, 64, bf16, lambda: resident[64], device, stock=False),
            ]
            if opts.compile:
                cases.append(Case("C+comp", "fast path + torch.compile", store, False, 64, bf16,
                                  lambda: resident[64], device, stock=False, compile=True,
                                  compile_mode=opts.compile_mode))
            # The two model forms compute the same function (up to float rounding).
            with torch.no_grad():
                batch = next(iter(DataLoader(PerFileLLP(root, "train"), batch_size=4)))
                args = [batch[k].to(device) for k in ("audio", "visual", "motion")]
                torch.manual_seed(0)  # A's initial weights, as the worker's Case builds them
                ref_out = ReferenceParser(True, architecture="han").to(device).eval()(*args)["video_prob"]
                pooled = args[1].view(len(args[1]), 10, 8, -1).mean(2)  # (B, 80, D) -> (B, 10, D)
                for case in cases[1:3]:  # B0 (stock pieces), B (ours): pooled input
                    fast_out = case.model.eval()(args[0], pooled, args[2])["video_prob"]
                    torch.testing.assert_close(fast_out, ref_out, rtol=1e-4, atol=1e-5)
            flops = training_flops(batch, device)
            ceiling = product_ceiling(device, bf16)
            for case in cases:
                warm = case.warm_up()
                if case.key == "C+comp":
                    print(f"C+comp: compilation (first 3 steps) took {warm:.1f} s", flush=True)
            def round_(name: str) -> None:
                for case in cases:
                    case.epoch()
                rates = ", ".join(f"{c.key} {c.rates[-1]:.0f}" for c in cases)
                print(f"round {name}: {rates} videos/s", flush=True)

            for r in range(opts.epochs):
                round_(f"{r + 1}/{opts.epochs}")
            fits = {}
            if not opts.skip_fit:
                paired = lambda: cases[0].epoch(record=False)  # noqa: E731  (an A epoch, kept out of A's rounds)
                for key, han, comp, eager in (("F", False, False, False), ("F-HAN", True, False, False),
                                              ("F+comp", False, True, False), ("F-eager", False, False, True)):
                    if (comp and not opts.compile) or (eager and not opts.eager_fit):
                        continue
                    fits[key] = run_fit(root, Path(tmp) / "runs", device, opts.epochs, han, paired, comp,
                                        opts.compile_mode, eager)
                    print(f"{key}: " + ", ".join(f"{r:.0f}" for r in fits[key].rates) + " videos/s; A right after "
                          "each: " + ", ".join(f"{r:.0f}" for r in fits[key].paired_rates), flush=True)
                round_("after the fits")  # brackets the fits, so that load drifts hit both sides

            test_batches = ResidentBatches(data["test"].filenames, tensors["test"], 64, device=device)
            models = {case.key: case.model for case in cases}  # A and A': fetched from the worker once
            models.update({key: fit.model.to(device) for key, fit in fits.items()  # Lightning may leave it on the CPU
                           if fit.model is not None and key in ("F", "F-HAN")})
            scores = {key: evaluate_ours(test_batches, device, model, False)[1] for key, model in models.items()}
            print("test segment Type@AV after the timed epochs (%; the fits after their warm-up epoch too, F with "
                  "the paper's model): " + ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items()), flush=True)
            ref_eval = cases[0].evaluate_reference()  # A's trained model, in the worker
            model = models["A"]  # the same weights here (it also takes pooled input)
            evaluate_ours(test_batches, device, model, bf16)  # warm-up
            ours_eval = evaluate_ours(test_batches, device, model, bf16)
        finally:
            worker.close()  # also when a case or a fit raises

    report(opts, cases, fits, bf16, ref_eval, ours_eval, flops, ceiling)


def report(opts: argparse.Namespace, cases: list[Case], fits: dict[str, EpochTimer], bf16: bool,
           ref_eval: tuple[float, float], ours_eval: tuple[float, float], flops: dict[str, float],
           ceiling: dict[str, float]) -> None:
    prec = "bf16" if bf16 else "fp32"
    rate = {c.key: statistics.median(c.rates) for c in cases}
    # each row ends with its model form (training_flops' key), for its matrix-product work per video
    rows = [(c.key, c.label, c.path, "80 frames" if c.frames else "pooled", c.batch, "bf16" if c.bf16 else "fp32",
             rate[c.key], statistics.median(c.epoch_s), min(c.rates), max(c.rates),
             "frames" if c.frames else "pooled") for c in cases]
    for key, timer in fits.items():
        if timer.rates:
            rate[key] = statistics.median(timer.rates)
            label = "avvp-finetune fit, " + {"F": "paper model + settings", "F-HAN": "HAN model",
                                             "F+comp": "paper model, compiled",
                                             "F-eager": "paper model, eager steps"}[key]
            rows.append((key, label, "store, device-resident", "pooled", 64, f"{prec}-mixed" if bf16 else "fp32",
                         rate[key], statistics.median(timer.epoch_s), min(timer.rates), max(timer.rates),
                         "pooled" if key == "F-HAN" else "paper"))
    print(f"\nTraining throughput, {opts.videos} videos per epoch, median of {len(cases[0].rates)} epochs "
          f"(min-max)" + (f"; fits: median of {opts.epochs} after a warm-up epoch" if fits else ""))
    print(f"{'':<8}{'case':<44}{'data path':<28}{'visual':<11}{'batch':>5}  {'prec':<11}{'videos/s':>9}"
          f"{'epoch s':>9}{'vs A':>7}   range    GFLOP/s")
    for key, label, path, visual, batch, precision, r, seconds, lo, hi, form in rows:
        gflops = r * flops[form] / 1e9  # the rate of its matrix products, over the whole epoch
        print(f"{key:<8}{label:<44}{path:<28}{visual:<11}{batch:>5}  {precision:<11}{r:>9.0f}{seconds:>9.2f}"
              f"{r / rate['A']:>6.1f}x   {f'{lo:.0f}-{hi:.0f}':<9}{gflops:>7.0f}")
    print("\nMatrix products per training video (forward, loss and backward, as torch.utils.flop_counter counts them)")
    for name, what in (("frames", "the reference's HAN model, 80 frames projected (A, A')"),
                       ("pooled", "HAN's model, pooled first (B0, B, C0, C, C+comp, F-HAN)"),
                       ("paper", "the paper's model, pooled first (F, F+comp, F-eager)")):
        print(f"  {flops[name] / 1e6:6.0f} MFLOP  {what}")
    ratio, best = flops["frames"] / flops["pooled"], ceiling["fp32"]  # A and B run in fp32
    a_gflops = rate["A"] * flops["frames"] / 1e9
    print("  GFLOP/s in the table: videos/s x these; one large product on this device: "
          + ", ".join(f"{v:.0f} GFLOP/s {k}" for k, v in ceiling.items()))
    print(f"  So B / A = {ratio:.2f} (the ratio of the products) x B's GFLOP/s / A's: {ratio:.2f}x where B's "
          f"products run as efficiently as A's (A's: {100 * a_gflops / best:.0f}% of the fp32 product above), at most "
          f"{ratio * best / a_gflops:.2f}x where B did nothing but products at that rate.")
    print("\nSpeed-ups (paired: median over rounds of each ratio, with its range)")
    lines = [
        ("B / A", "fast path vs reference, HAN's batch 16 fp32 (the target: >= 2x)"),
        ("B0 / A", "  of which the data path, pooling first and the allocator"),
        ("C / A'", f"fast path vs reference, batch 64 {prec}"),
        ("C0 / A'", "  of which the data path, pooling first and the allocator"),
        ("C / A", "ours at our settings vs the reference at HAN's"),
        ("F / A", f"avvp-finetune fit, paper model and settings ({prec}), vs the reference at HAN's (>= 4x)"),
        ("F-HAN / A", f"avvp-finetune fit, HAN's model at batch 64 {prec}, vs the reference at HAN's"),
        ("C+comp / C", "torch.compile in the bare loop (batch 64)"),
        ("F+comp / F", "avvp-finetune fit --run.compile (the parser's blocks compiled) vs fit"),
        ("F / F-eager", "avvp-finetune fit (CUDA graphs where a GPU) vs fit --model.cuda_graphs=false"),
    ]
    # Paired ratios: each round's (or each fit epoch's) rate over the reference epoch run next to
    # it, then the median over rounds. Drift on a shared machine moves neighbours alike, so these
    # spread far less than the rates themselves; "of medians" divides the medians above.
    series = {c.key: c.rates for c in cases}
    print(f"{'':<12}{'paired':>7}  {'range':<12}{'of medians':>10}")
    for ratio, what in lines:
        num, den = ratio.split(" / ")
        if num not in rate or den not in rate:
            continue
        if num in fits:  # each fit epoch against the A epoch run right after it
            pairs = list(zip(fits[num].rates, fits[num].paired_rates)) if den == "A" else []
        else:
            pairs = list(zip(series[num], series[den]))
        ratios = [a / b for a, b in pairs]
        paired = f"{statistics.median(ratios):6.2f}x  {min(ratios):.2f}-{max(ratios):.2f}" if ratios else f"{'':18}"
        print(f"  {ratio:<10}{paired:<21}{rate[num] / rate[den]:6.2f}x  {what}")
    print(f"\nFull evaluation of {opts.test_videos} test videos (forward + decisions + all ten metrics)")
    print(f"  reference (per-file, 1 video/step, fp32, Python metrics): {ref_eval[0]:7.2f} s   "
          f"segment Type@AV {100 * ref_eval[1]:.1f}")
    print(f"  ours (store, device-resident, batch 64, {prec}, vectorized): {ours_eval[0]:7.2f} s   "
          f"segment Type@AV {100 * ours_eval[1]:.1f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--reference-worker"]:
        reference_worker()
    else:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)  # e.g. `timeout`: clean up as after Ctrl-C
        main()
