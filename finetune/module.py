"""ParserModule: trains and evaluates the AVVP parser (HAN and the paper's variants)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import SingleDeviceStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from avvp_lightning.data.llp import write_dense_csv
from avvp_lightning.graphs import GraphedBackward
from avvp_lightning.labels import CLASSES
from avvp_lightning.losses.parser import parser_loss
from avvp_lightning.metrics import METRIC_KEYS, AVVPMetrics, decide
from avvp_lightning.models.discriminator import dann_alpha
from avvp_lightning.models.parser import AVVPParser
from avvp_lightning.runinfo import write_atomic


# The val/ and test/ metrics are computed from metric states that every process holds after their sync:
# under DDP Lightning advises sync_dist=True for epoch-level values, which would only average equal numbers.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/.*sync_dist=True")


class ParserModule(pl.LightningModule):
    """The AVVP parser trained from weak labels, evaluated with the standard metrics.

    Every row of the paper's Tables 1-2 is a choice of the flags below (see
    ``configs/finetune``); tuned values live in the YAML configs.

    Args:
        audio_dim: Audio feature size (VGGish 128; linked from ``data.audio_dim``).
        visual_dim: 2D visual feature size (ResNet152 2048; linked from ``data.visual_dim``).
        motion_dim: 3D visual feature size (R(2+1)D 512; 0 = no 3D branch; linked from data).
        architecture: ``han`` (one shared hybrid attention layer) or ``base`` (separate
            self-attention per modality, cross-attention over it, shared linear layer).
        attention: ``mha`` (multi-head attention) or ``gcaa`` (global context aware attention).
        skip: Add the self-attended features back after the shared layer (``base`` only).
        adversarial: Modality discriminator behind a gradient reversal layer.
        hidden_dim: Model width.
        ffn_dim: Feed-forward width.
        num_layers: Stacked attention layers.
        num_heads: Attention heads.
        dropout: Dropout probability.
        lambda_g: Weight of the modality-guided loss L_g.
        lambda_ad: Weight of the adversarial loss L_ad.
        audio_smoothing: Label smoothing of the audio-guided targets (1.0 = none).
        visual_smoothing: Label smoothing of the visual-guided targets (0.9 -> 0.9 y + 0.05).
        grl_gamma: DANN schedule steepness: alpha = 2 / (1 + exp(-gamma p)) - 1, p = progress.
        threshold: Decision threshold on segment and video probabilities at evaluation.
        cuda_graphs: Replay each training step's forward and backward as one CUDA graph
            (:class:`~avvp_lightning.graphs.GraphedBackward`); the optimizer step, learning-rate
            schedule and gradient clipping stay Lightning's. The same training as eager steps
            (PyTorch's graph-safe random numbers give the same dropout draws). Used when
            training runs in one process on one CUDA device (Lightning's single-device
            strategy) without gradient accumulation, in 32-bit or bfloat16 precision, without
            ``--run.compile``; otherwise ignored: silently on a CPU, with a note in the other
            cases.
        output_dir: Where ``test``/``predict`` write metrics and prediction CSVs;
            default ``<run folder>/test`` or ``<run folder>/predict``.

    Under mixed precision (``bf16-mixed``: ``avvp-finetune fit``'s default where the hardware
    runs bfloat16 natively, else ``32-true``; ``--trainer.precision`` overrides) the parser's
    training forward runs in bfloat16 while the loss (BCE on clamped probabilities) runs in
    float32 outside autocast. Validation, test and predict always run the parser in float32.
    """

    _graph_devices = ("cuda",)  # where cuda_graphs applies (the CPU test adds "cpu": the same code, eagerly)

    def __init__(
        self,
        audio_dim: int = 128,
        visual_dim: int = 2048,
        motion_dim: int = 512,
        architecture: Literal["han", "base"] = "base",
        attention: Literal["mha", "gcaa"] = "gcaa",
        skip: bool = True,
        adversarial: bool = True,
        hidden_dim: int = 512,
        ffn_dim: int = 512,
        num_layers: int = 1,
        num_heads: int = 1,
        dropout: float = 0.1,
        lambda_g: float = 0.6,
        lambda_ad: float = 0.4,
        audio_smoothing: float = 1.0,
        visual_smoothing: float = 0.9,
        grl_gamma: float = 10.0,
        threshold: float = 0.5,
        cuda_graphs: bool = False,
        output_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:  # also NaN: past 1 nothing is positive, below 0 everything
            raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
        for name, value in (("audio_smoothing", audio_smoothing), ("visual_smoothing", visual_smoothing)):
            if not 0.0 <= value <= 1.0:  # BCE targets y s + (1 - s) / 2 leave [0, 1] otherwise
                raise ValueError(f"{name} must be in [0, 1] (1: none), got {value}")
        for name, value in (("lambda_g", lambda_g), ("lambda_ad", lambda_ad), ("grl_gamma", grl_gamma)):
            if not 0.0 <= value < float("inf"):  # also NaN
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        self.save_hyperparameters()
        self.parser = AVVPParser(
            audio_dim=audio_dim, visual_dim=visual_dim, motion_dim=motion_dim,
            architecture=architecture, attention=attention, skip=skip, adversarial=adversarial,
            hidden_dim=hidden_dim, ffn_dim=ffn_dim, num_layers=num_layers, num_heads=num_heads,
            dropout=dropout,
        )
        self.val_metrics = AVVPMetrics()  # one instance per stage: states never mix
        self.test_metrics = AVVPMetrics()
        self._outputs: dict[str, list] = {}
        self._total_steps: Optional[int] = None  # training steps of the whole fit, for the GRL schedule
        self._graphed: Optional[GraphedBackward] = None  # with cuda_graphs, while fitting

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, Any], grl_alpha: float = 1.0) -> dict[str, torch.Tensor]:
        return self.parser(batch["audio"], batch["visual"], batch["motion"], grl_alpha=grl_alpha)

    def on_train_start(self) -> None:
        self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)  # once, not every step
        self._graphed = None
        if not self.hparams.cuda_graphs or self.device.type not in self._graph_devices:
            return
        trainer = self.trainer
        precision = str(trainer.precision)
        why = (f"strategy {type(trainer.strategy).__name__}" if not isinstance(trainer.strategy, SingleDeviceStrategy)
               else f"precision {precision}" if precision not in ("32-true", "32", "bf16-mixed", "bf16-true")
               else "--run.compile" if any(getattr(m, "_compiled_call_impl", None) is not None
                                           for m in self.parser.modules())
               else None)
        if why is not None:
            rank_zero_info(f"cuda_graphs: not used with {why}; training steps run eagerly")
            return
        self._graphed = GraphedBackward(self._graph_losses, list(self.parameters()))  # (accumulation: training_step)

    def on_train_end(self) -> None:
        if self._graphed is not None:
            rank_zero_info(f"cuda_graphs: {self._graphed.replays} steps replayed, {self._graphed.eager_calls} eager")
            self.zero_grad(set_to_none=True)  # the gradients live in the graph's memory pool
        self._graphed = None  # frees the graph and its pool (after a failed fit: at the next fit's start)

    def _graph_losses(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training losses of one batch of tensors (what :class:`GraphedBackward` records)."""
        out = self.parser(inputs["audio"], inputs["visual"], inputs.get("motion"), grl_alpha=inputs["grl_alpha"])
        return self._losses(out, inputs["label"])

    def _losses(self, out: dict[str, Any], label: torch.Tensor) -> dict[str, torch.Tensor]:
        out = _float32({k: out[k] for k in ("video_prob", "audio_prob", "visual_prob", "modality_logit")})
        with _no_autocast(self.device):  # BCE on clamped probabilities: float32 (banned under CUDA autocast)
            return parser_loss(
                out, label.float(), lambda_g=self.hparams.lambda_g, lambda_ad=self.hparams.lambda_ad,
                audio_smoothing=self.hparams.audio_smoothing, visual_smoothing=self.hparams.visual_smoothing,
            )

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Lightning's ``zero_grad()``, except with cuda_graphs: each graphed step writes the gradients."""
        if self._graphed is None:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``loss.backward()``, except with cuda_graphs: the graphed step ran it."""
        if self._graphed is None:
            super().backward(loss, *args, **kwargs)

    def grl_alpha(self) -> float:
        """DANN strength for the current step (0 -> 1 over the whole training)."""
        total = self._total_steps or max(int(self.trainer.estimated_stepping_batches), 1)
        return dann_alpha(self.global_step / total, gamma=self.hparams.grl_gamma)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        alpha = self.grl_alpha() if self.hparams.adversarial else 1.0
        if self._graphed is not None and self.trainer.accumulate_grad_batches > 1:
            # graphed steps overwrite the gradients; checked every step, since a
            # GradientAccumulationScheduler may raise accumulation mid-fit
            rank_zero_info("cuda_graphs: not used with gradient accumulation; training steps run eagerly from here on")
            self._graphed = None  # Lightning's zero_grad and backward run again from this step on
        if self._graphed is not None:  # forward and backward here (replayed when captured)
            inputs = {k: batch[k] for k in ("audio", "visual", "motion", "label") if batch.get(k) is not None}
            # a float32 tensor (bf16-true makes bfloat16 the default dtype): a graph input
            inputs["grl_alpha"] = torch.full((), alpha, dtype=torch.float32, device=self.device)
            # the graph's own loss tensors are overwritten by the next replay: copies for the logs
            losses = {k: v.clone() for k, v in self._graphed(inputs).items()}  # (returned detached)
            losses["loss"] = losses["total"]  # for Lightning's closure (backward() skips it)
        else:
            losses = self._losses(self(batch, grl_alpha=alpha), batch["label"])
            # The extra keys reach on_train_batch_end as its ``outputs``, which logs them.
            losses = {k: v.detach() for k, v in losses.items()} | {"loss": losses["total"]}
        return {**losses, "grl_alpha": alpha, "batch_size": batch["label"].shape[0]}

    def on_train_batch_end(self, outputs: dict[str, Any], batch: Any, batch_idx: int) -> None:
        """Log the step's losses when Lightning writes this step's logs.

        That is every ``log_every_n_steps`` steps, on the step that stops training, and every
        step of ``fast_dev_run``: step-level values logged on other steps are never written, and
        each ``self.log`` call costs Lightning 2.x about 1-2 ms of CPU (it moves its result
        record to the value's device), a few % of a training step on the CPU and more on a GPU.
        The progress bar's loss is refreshed at the same rate, and callbacks see ``train/*``
        only on those steps.
        """
        trainer = self.trainer
        connector = getattr(trainer, "_logger_connector", None)  # Lightning's own test for it
        if not (trainer.fast_dev_run or connector is None or connector.should_update_logs):
            return
        bs = outputs["batch_size"]
        losses = {f"train/{k}": outputs[k] for k in ("total", "wsl", "guided", "adv")}
        self.log_dict(losses, batch_size=bs, prog_bar=False)
        self.log("train/loss", outputs["total"], batch_size=bs, prog_bar=True)
        if self.hparams.adversarial:
            self.log("train/grl_alpha", outputs["grl_alpha"], batch_size=bs)

    # ---------------------------------------------------------------- evaluation
    def _decide(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        # Never uses batch["label"]: val/test weak labels must not reach the model. Float32 even
        # when training is mixed precision, so that validation in fit, validate and test give the
        # same decisions for the same weights on any hardware.
        with _no_autocast(self.device):
            out = _float32(self(batch))
        seg = out["segment_prob"]  # (B, T, 2, C)
        pred_a, pred_v = decide(seg[:, :, 0], seg[:, :, 1], out["video_prob"], threshold=self.hparams.threshold)
        return out, pred_a, pred_v  # preds (B, T, C)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, pred_a, pred_v = self._decide(batch)
        self.val_metrics.update(pred_a, pred_v, batch["dense_audio"], batch["dense_visual"])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        self.val_metrics.reset()
        scalars = {k: v for k, v in scores.items() if v.ndim == 0}  # float64, logged with all their digits
        self.log("val/segment/type", scalars.pop("segment/type"), prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in scalars.items()})

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out, pred_a, pred_v = self._decide(batch)
        self.test_metrics.update(pred_a, pred_v, batch["dense_audio"], batch["dense_visual"])
        self._collect(batch, out, pred_a, pred_v)

    def on_test_epoch_start(self) -> None:
        self._outputs = {}

    def on_test_epoch_end(self) -> None:
        scores = self.test_metrics.compute()
        self.test_metrics.reset()
        self.log_dict({f"test/{k}": v for k, v in scores.items() if v.ndim == 0})  # float64, as metrics.json
        ids, pred_a, pred_v, _ = self._gathered()
        if self.trainer.is_global_zero:
            folder = self._output_folder("test")
            write_dense_csv(folder / "pred_audio.csv", ids, pred_a)
            write_dense_csv(folder / "pred_visual.csv", ids, pred_v)
            result = {k: float(scores[k]) for k in METRIC_KEYS}
            result["per_class"] = {
                k.removeprefix("per_class/"): dict(zip(CLASSES, v.tolist()))
                for k, v in scores.items() if k.startswith("per_class/")
            }
            result["seed"] = self._seed()
            result["config"] = self._run_name()
            result["num_videos"] = len(ids)
            write_atomic(folder / "metrics.json", json.dumps(result, indent=2))  # last: the run is tested
            print(f"\n{format_table(result)}\nmetrics and predictions written to {folder}", flush=True)

    # ---------------------------------------------------------------- prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out, pred_a, pred_v = self._decide(batch)
        self._collect(batch, out, pred_a, pred_v)

    def on_predict_epoch_start(self) -> None:
        self._outputs = {}
        # predict_step returns nothing on purpose (this module gathers and writes the outputs);
        # Lightning would say so in a warning at every predict.
        warnings.filterwarnings("ignore", message="predict returned None if it was on purpose")

    def on_predict_epoch_end(self) -> None:
        ids, pred_a, pred_v, probs = self._gathered()
        if self.trainer.is_global_zero:
            folder = self._output_folder("predict")
            write_dense_csv(folder / "pred_audio.csv", ids, pred_a)
            write_dense_csv(folder / "pred_visual.csv", ids, pred_v)
            write_atomic(folder / "probabilities.npz", lambda file: np.savez_compressed(
                file, ids=np.array(ids), classes=np.array(CLASSES), **probs))
            print(f"predictions for {len(ids)} videos written to {folder}", flush=True)

    # ------------------------------------------------------------------- helpers
    def _collect(self, batch: dict[str, Any], out: dict[str, torch.Tensor], pred_a: torch.Tensor,
                 pred_v: torch.Tensor) -> None:
        seg = out["segment_prob"].float()
        rows = {
            "ids": list(batch["id"]),
            "pred_audio": pred_a.to(torch.uint8).cpu(),
            "pred_visual": pred_v.to(torch.uint8).cpu(),
            "audio_prob": seg[:, :, 0].cpu(),  # (B, T, C)
            "visual_prob": seg[:, :, 1].cpu(),  # (B, T, C)
            "video_prob": out["video_prob"].float().cpu(),  # (B, C)
        }
        for key, value in rows.items():
            self._outputs.setdefault(key, []).append(value)

    def _gathered(self) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """This rank's outputs or, under DDP, all ranks' concatenated in rank order.

        The datamodules' evaluation sampler (``EvalDistributedSampler``) gives each process one
        contiguous block of the list, without padding, so rank order is list order and every
        video appears once, as in a single process. A collective: every rank calls it once per
        epoch (never per step); only rank zero writes the result.
        """
        local = {k: (sum(v, []) if k == "ids" else torch.cat(v).numpy()) for k, v in self._outputs.items()}
        self._outputs = {}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, local)
            parts = [part for part in parts if part]  # a rank may have had no batch
            local = {k: (sum((part[k] for part in parts), []) if k == "ids"
                         else np.concatenate([part[k] for part in parts])) for k in (parts[0] if parts else {})}
            repeated = len(local.get("ids", [])) - len(set(local.get("ids", [])))
            if repeated:
                rank_zero_warn(f"{repeated} gathered outputs repeat a video id: the list repeats videos, or "
                               "the loader's sampler pads (PyTorch's DistributedSampler does; the avvp "
                               "datamodules' EvalDistributedSampler does not) and scores videos twice.")
        if not local:
            return [], np.zeros((0, 10, len(CLASSES))), np.zeros((0, 10, len(CLASSES))), {}
        probs = {k: local[k] for k in ("audio_prob", "visual_prob", "video_prob")}
        return local["ids"], local["pred_audio"], local["pred_visual"], probs

    def _output_folder(self, stage: str) -> Path:
        folder = Path(self.hparams.output_dir or Path(self.trainer.default_root_dir) / stage)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _seed(self) -> Optional[int]:
        import os

        seed = os.environ.get("PL_GLOBAL_SEED")
        return int(seed) if seed is not None else None

    def _run_name(self) -> str:
        return Path(self.trainer.default_root_dir).parent.name


def _float32(out: dict[str, Any]) -> dict[str, Any]:
    """Parser outputs with every floating tensor in float32 (they are bfloat16 under autocast)."""
    return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in out.items()}


def _no_autocast(device: torch.device) -> torch.autocast:
    """A region where mixed precision is off (the loss and the metrics)."""
    return torch.autocast(device.type, enabled=False)


def format_table(result: dict[str, Any]) -> str:
    """The ten numbers in percent with one decimal, in the papers' layout."""
    cols = ("audio", "visual", "av", "type", "event")
    head = f"{'':<9}" + "".join(f"{c.replace('type', 'Type@AV').replace('event', 'Event@AV'):>10}" for c in cols)
    lines = [head]
    for level in ("segment", "event"):
        lines.append(f"{level:<9}" + "".join(f"{100 * result[f'{level}/{c}']:>10.1f}" for c in cols))
    return "\n".join(lines)
