"""PretrainModule: audio-visual grounding pretraining of a UNITER-style encoder.

Each batch's grounding truth (Algorithm 1) is computed on the fly from the raw input
features with :func:`avvp_lightning.grounding.grounding_labels_torch`; the encoder's
contextualized audio and visual snippet embeddings are trained with the uni / cross /
multi hinge losses of equations (4)-(6). Validation reports the loss with every snippet as
an anchor, and the grounding accuracy and ROC AUC of the cosines the variant trains.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from torchmetrics.utilities import dim_zero_cat

from avvp_lightning.grounding import grounding_labels_torch
from avvp_lightning.losses.grounding import grounding_loss, grounding_pairs
from avvp_lightning.models.av_transformer import AVTransformer, pool_to_segments


class GroundingAUROC(BinaryAUROC):
    """ROC AUC of the grounding pairs; NaN when they all share one label.

    torchmetrics returns 0 there (the worst score, with a warning), but with one class the AUC
    is undefined: a validation set whose videos are each one connected component, say.
    """

    def compute(self) -> torch.Tensor:  # noqa: D102
        target = self.target  # a list of (m,) per batch; one (M,) tensor of all processes' pairs after a DDP sync
        if isinstance(target, list):
            target = dim_zero_cat(target) if target else torch.zeros(0)  # (M,)
        if target.numel() == 0 or bool((target == target[0]).all()):
            return torch.tensor(float("nan"), device=self.device)
        return super().compute()


class PretrainModule(pl.LightningModule):
    """Grounding pretraining (the paper's section 3.2); tuned values live in the YAML configs.

    Batches are dicts ``{"id": list[str], "audio": (B, T, Da), "visual": (B, T, Dv) or
    (B, k*T, Dv)}``.

    Args:
        audio_dim: Audio feature size (VGGish 128; linked from ``data.audio_dim``).
        visual_dim: Visual feature size (ResNet152 2048; linked from ``data.visual_dim``).
        hidden_dim: Transformer width H (also the size of the exported features).
        num_layers: Transformer encoder layers (the paper: 12).
        num_heads: Attention heads (the paper: 8).
        ffn_dim: Feed-forward width of each layer.
        dropout: Dropout probability (embeddings and layers).
        num_segments: Snippets per video T (linked from ``data.num_segments``).
        variant: Grounding objective: ``uni`` (eq. 4, within each modality), ``cross``
            (eq. 5, across modalities) or ``multi`` (eq. 6, their sum).
        alternate: For ``multi`` only: train with ``cross`` on even epochs and ``uni`` on
            odd ones instead of their sum (what the authors' code did); validation still
            reports ``multi``.
        pos_margin: Margin p: positive pairs are pulled up to cosine >= p.
        neg_margin: Margin n: negative pairs are pushed down to cosine <= n.
        anchors: Random anchor snippets per video in training (the authors: 1);
            ``None`` uses all T. Validation always uses all T.
        audio_threshold: Audio cosine threshold a_t of the grounding graph (inclusive).
        visual_threshold: Visual cosine threshold v_t of the grounding graph (inclusive).
        silence_threshold: Audio snippets whose raw feature L2 norm is below it get no
            audio edge in the grounding graph (``None``: keep all).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases, norms, embeddings).
    """

    def __init__(
        self,
        audio_dim: int = 128,
        visual_dim: int = 2048,
        hidden_dim: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        num_segments: int = 10,
        variant: Literal["uni", "cross", "multi"] = "multi",
        alternate: bool = False,
        pos_margin: float = 0.7,
        neg_margin: float = 0.7,
        anchors: Optional[int] = None,
        audio_threshold: float = 0.99,
        visual_threshold: float = 0.96,
        silence_threshold: Optional[float] = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        if alternate and variant != "multi":
            raise ValueError(f"alternate=True applies to variant='multi' only, got {variant!r}")
        if anchors is not None and not 1 <= anchors <= num_segments:
            raise ValueError(f"anchors must be in [1, num_segments={num_segments}], got {anchors}")
        if num_segments < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"num_segments must be >= 1 and dropout in [0, 1), got {num_segments} and {dropout}")
        for name, value in (("audio_threshold", audio_threshold), ("visual_threshold", visual_threshold)):
            if not -1.0 <= value <= 1.0:  # a cosine: 96 for 0.96 would silently switch the modality's edges off
                raise ValueError(f"{name} is a cosine similarity, in [-1, 1]; got {value}")
        if silence_threshold is not None and silence_threshold < 0:
            raise ValueError(f"silence_threshold is an L2 norm, >= 0 (or None); got {silence_threshold}")
        if not 0.0 < lr < float("inf") or not 0.0 <= weight_decay < float("inf"):  # also NaN
            raise ValueError(f"lr must be finite and > 0 and weight_decay finite and >= 0, got {lr} and {weight_decay}")
        for name, value in (("pos_margin", pos_margin), ("neg_margin", neg_margin)):
            if not -1.0 <= value <= 1.0:  # hinge margins on cosines
                raise ValueError(f"{name} is a cosine margin, in [-1, 1]; got {value}")
        self.save_hyperparameters()
        self.encoder = AVTransformer(
            audio_dim=audio_dim, visual_dim=visual_dim, hidden_dim=hidden_dim,
            num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout,
            num_segments=num_segments,
        )
        # Loss, grounding accuracy and ROC AUC per evaluation stage (fed in _evaluate). Metric
        # objects with sum / concatenated states sync once, exactly, at epoch end under DDP
        # (self.log(sync_dist=True) would round the summed batch size of a mean on gloo).
        self.val_loss, self.val_acc, self.val_auc = MeanMetric(), BinaryAccuracy(), GroundingAUROC()
        self.test_loss, self.test_acc, self.test_auc = MeanMetric(), BinaryAccuracy(), GroundingAUROC()

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, Da), (B, T or k*T, Dv) -> contextualized (B, T, H) audio and visual."""
        return self.encoder(audio, visual)

    # ----------------------------------------------------------------- helpers
    @torch.no_grad()
    def positives(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, T, T) bool grounding truth of a batch, from its raw input features."""
        audio = batch["audio"]  # (B, T, Da)
        visual = pool_to_segments(batch["visual"], audio.shape[1])  # (B, T, Dv)
        return grounding_labels_torch(
            audio, visual, self.hparams.audio_threshold, self.hparams.visual_threshold,
            self.hparams.silence_threshold,
        )

    def train_variant(self) -> str:
        """The objective of the current epoch (``cross``/``uni`` in turn when alternating)."""
        if self.hparams.alternate:
            return "cross" if self.current_epoch % 2 == 0 else "uni"
        return self.hparams.variant

    def _loss(self, audio_emb: torch.Tensor, visual_emb: torch.Tensor, positives: torch.Tensor,
              variant: str, anchors: Optional[int]) -> torch.Tensor:
        return grounding_loss(
            audio_emb, visual_emb, positives, variant=variant, pos_margin=self.hparams.pos_margin,
            neg_margin=self.hparams.neg_margin, anchors=anchors,
        )

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        positives = self.positives(batch)  # (B, T, T)
        audio_emb, visual_emb = self(batch["audio"], batch["visual"])  # (B, T, H) each
        loss = self._loss(audio_emb, visual_emb, positives, self.train_variant(), self.hparams.anchors)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=positives.shape[0])
        return loss

    # -------------------------------------------------------------- evaluation
    def _evaluate(self, batch: dict[str, Any], stage: str, mean_loss: MeanMetric, accuracy: BinaryAccuracy,
                  auroc: GroundingAUROC) -> None:
        positives = self.positives(batch)  # (B, T, T)
        audio_emb, visual_emb = self(batch["audio"], batch["visual"])
        variant = self.hparams.variant
        loss = self._loss(audio_emb, visual_emb, positives, variant, anchors=None)
        scores, labels = grounding_pairs(audio_emb, visual_emb, positives, variant=variant)  # (M,)
        # Cosine c -> (c + 1) / 2 in [0, 1] (exact in float64, order-preserving), so
        # torchmetrics takes the scores as probabilities and applies no sigmoid.
        probs = ((scores.double() + 1) / 2).clamp(0, 1)
        margin_mid = (self.hparams.pos_margin + self.hparams.neg_margin) / 2
        accuracy.update((scores >= margin_mid).long(), labels.long())
        auroc.update(probs, labels.long())
        batch_size = positives.shape[0]
        mean_loss.update(loss.detach(), weight=batch_size)  # the loss is a mean over the batch's videos
        self.log(f"{stage}/loss", mean_loss, on_epoch=True, batch_size=batch_size, prog_bar=stage == "val")
        self.log(f"{stage}/grounding_acc", accuracy, on_epoch=True, batch_size=batch_size)
        self.log(f"{stage}/grounding_auc", auroc, on_epoch=True, batch_size=batch_size,
                 prog_bar=stage == "val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_loss, self.val_acc, self.val_auc)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_loss, self.test_acc, self.test_auc)

    # --------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW; biases, LayerNorm weights and embedding tables get no weight decay."""
        decay, no_decay = [], []
        for module in self.modules():
            for param in module.parameters(recurse=False):
                if param.ndim < 2 or isinstance(module, (nn.Embedding, nn.LayerNorm)):
                    no_decay.append(param)
                else:
                    decay.append(param)
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.hparams.lr)
