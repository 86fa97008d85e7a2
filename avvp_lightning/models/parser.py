"""The AVVP parser: HAN and the seed paper's Base / +GCAA / +Adv+Skip variants in one class.

Pipeline (M = 2 modalities, index 0 audio, 1 visual)::

    audio (B,T,Da) ----fc----------------------------------------> a (B,T,H)
    visual (B,T|kT,Dv) -pool k-fc-+-concat-fc(2H->H)--------------> v (B,T,H)
    motion (B,T,Dm) ---fc---------+
    [a; v] -> num_layers x (HANLayer | BaseLayer) -> features (B,T,2,H)
          -> AttentiveMMILPooling -> video / audio / visual / segment probabilities
          -> (adversarial) grad_reverse -> ModalityDiscriminator -> modality_logit (B,T,2)

Inside the layers both modalities travel stacked along the batch axis, ``x (2B, T, H)`` with
audio in rows ``[0, B)`` and visual in ``[B, 2B)``, so every module shared between the
modalities runs once over both; ``x.roll(B, 0)`` is "the other modality".
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Literal

import torch
from torch import Tensor, nn

from avvp_lightning.errors import DataError, require_sizes
from avvp_lightning.models.attention import AttentionKind, build_attention
from avvp_lightning.models.discriminator import ModalityDiscriminator, grad_reverse
from avvp_lightning.models.dropout import Dropout


def _other(x: Tensor) -> Tensor:
    """(2B, T, H) [audio; visual] -> (2B, T, H) [visual; audio]."""
    return x.roll(x.shape[0] // 2, dims=0)


def _per_modality(norms: nn.ModuleList, x: Tensor) -> Tensor:
    """Apply ``norms[0]`` to the audio half and ``norms[1]`` to the visual half of (2B, T, H)."""
    audio, visual = x.chunk(2, dim=0)  # (B, T, H) each
    return torch.cat([norms[0](audio), norms[1](visual)], dim=0)  # (2B, T, H)


class HANLayer(nn.Module):
    """HAN's hybrid attention layer: one set of weights serves both modalities (post-norm).

    ``x = norm1(x + drop(cross_attn(x, other)) + drop(self_attn(x)))``, then
    ``x = norm2(x + drop(ffn(x)))`` with ``ffn = Linear(H, F) - ReLU - drop - Linear(F, H)``.

    Args:
        dim: Hidden width H.
        ffn_dim: Feed-forward width F.
        num_heads: Attention heads.
        dropout: Dropout probability.
        attention: ``"mha"`` or ``"gcaa"`` for both attentions.
    """

    def __init__(
        self, dim: int, ffn_dim: int, num_heads: int, dropout: float, attention: AttentionKind
    ) -> None:
        super().__init__()
        self.self_attn = build_attention(attention, dim, num_heads, dropout)
        self.cross_attn = build_attention(attention, dim, num_heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Map stacked [audio; visual] (2B, T, H) to the same shape."""
        x = self.norm1(
            x + self.drop(self.cross_attn(x, _other(x))) + self.drop(self.self_attn(x, x))
        )  # (2B, T, H)
        return self.norm2(x + self.drop(self.ffn(x)))  # (2B, T, H)


class BaseLayer(nn.Module):
    """The seed paper's Base layer, optionally with its skip connection (post-norm throughout).

    1. Separate self-attention per modality: ``s_m = norm_self_m(x_m + drop(self_attn_m(x_m)))``.
    2. Cross-modal attention over the self-attended features (weights shared by both
       directions, as HAN's): ``c = norm_cross(s + drop(cross_attn(s, s_other)))``.
    3. Shared linear layer over both streams, in HAN's feed-forward form (HAN's "shared
       linear layer" is its shared layer's FFN): ``j = shared_norm(c + drop(ffn(c)))`` with
       ``ffn = Linear(H, F) - ReLU - drop - Linear(F, H)``, one set of weights for both.
    4. Output ``j`` (Base), or with ``skip`` the self-attended features added back and a
       LayerNorm per modality: ``out_m = norm_skip_m(s_m + j_m)``.

    The residual around the shared block keeps a direct path from the inputs to the pooling
    (a bare ``relu(linear(c))`` output learned markedly slower from weak labels on our
    synthetic LLP). With ``skip`` the joint features become a residual on the pure
    self-attended signal, the paper's remedy for the visual stream swamping the audio one.

    Args:
        dim: Hidden width H.
        ffn_dim: Width F of the shared feed-forward block.
        num_heads: Attention heads.
        dropout: Dropout probability.
        attention: ``"mha"`` or ``"gcaa"`` for all three attentions.
        skip: Add the self-attended features back after the shared linear layer.
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float,
        attention: AttentionKind,
        skip: bool,
    ) -> None:
        super().__init__()
        self.self_attn = nn.ModuleList(
            [build_attention(attention, dim, num_heads, dropout) for _ in range(2)]
        )
        self.self_norm = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.cross_attn = build_attention(attention, dim, num_heads, dropout)
        self.cross_norm = nn.LayerNorm(dim)
        self.shared = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.shared_norm = nn.LayerNorm(dim)
        self.skip_norm = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)]) if skip else None
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Map stacked [audio; visual] (2B, T, H) to the same shape."""
        # self_attn[0] on the audio rows, self_attn[1] on the visual rows, as one stacked computation
        attended = self.self_attn[0](x, x, partner=self.self_attn[1])  # (2B, T, H)
        s = _per_modality(self.self_norm, x + self.drop(attended))  # (2B, T, H)
        c = self.cross_norm(s + self.drop(self.cross_attn(s, _other(s))))  # (2B, T, H)
        joint = self.shared_norm(c + self.drop(self.shared(c)))  # (2B, T, H)
        if self.skip_norm is None:
            return joint
        return _per_modality(self.skip_norm, s + joint)  # (2B, T, H)


class AttentiveMMILPooling(nn.Module):
    """HAN's attentive multimodal multiple-instance pooling.

    Over features x (B, T, M, H): segment probabilities ``p = sigmoid(fc_prob(x))``;
    temporal attention ``softmax_T(fc_frame_att(x))``; modality attention
    ``softmax_M(fc_av_att(x))``; video probability ``sum_T sum_M att_T * att_M * p``;
    per-modality probabilities ``sum_T att_T[:, :, m] * p[:, :, m]``.

    Args:
        dim: Feature width H.
        num_classes: Number of event classes C.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc_prob = nn.Linear(dim, num_classes)
        self.fc_frame_att = nn.Linear(dim, num_classes)
        self.fc_av_att = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Pool features (B, T, M, H) into video-, modality- and segment-level probabilities.

        Returns:
            Dict with ``video_prob`` (B, C), ``audio_prob`` (B, C) (modality 0),
            ``visual_prob`` (B, C) (modality 1) and ``segment_prob`` (B, T, M, C).
        """
        prob = torch.sigmoid(self.fc_prob(x))  # (B, T, M, C)
        att_time = torch.softmax(self.fc_frame_att(x), dim=1)  # (B, T, M, C)
        att_modality = torch.softmax(self.fc_av_att(x), dim=2)  # (B, T, M, C)
        modality_prob = (att_time * prob).sum(dim=1)  # (B, M, C)
        video_prob = (att_modality * att_time * prob).sum(dim=(1, 2))  # (B, C)
        return {
            "video_prob": video_prob,
            "audio_prob": modality_prob[:, 0],
            "visual_prob": modality_prob[:, 1],
            "segment_prob": prob,
        }


class AVVPParser(nn.Module):
    """Audio-visual video parser covering every model row of the seed paper's Tables 1-2.

    Table row -> arguments (all others at their defaults):

    * HAN: ``architecture="han"``.
    * Base: ``architecture="base"``.
    * Base + GCAA: ``architecture="base", attention="gcaa"``.
    * Base + Adv + Skip: ``architecture="base", adversarial=True, skip=True``.
    * Base + Adv + Skip + GCAA: the same with ``attention="gcaa"``.
    * Pretrain (uni | cross | multi): the last row's model on the pretrained encoder's audio
      and visual features, ``audio_dim`` / ``visual_dim`` set to their width, and
      ``motion_dim=0`` when no 3D features are fused with them.

    Input fusion follows HAN: ``a = fc_audio(audio)``; ``v = fc_fusion([fc_visual(visual);
    fc_motion(motion)])`` with no activations in between. Visual input may be pooled
    (B, T, Dv) or frame-level (B, k*T, Dv); frames are averaged per segment before
    ``fc_visual``, the same function as HAN's fc-then-mean (a linear map commutes with the
    mean) at 1/k of the cost. With ``motion_dim=0`` there is no motion branch and no fusion
    layer: ``v = fc_visual(visual)`` (for pretrained feature variants).

    The encoder is ``num_layers`` layers, each fed the previous layer's output
    (:class:`HANLayer` or :class:`BaseLayer`, see their docstrings for the exact
    residual/norm arrangement), then :class:`AttentiveMMILPooling`. With ``adversarial``,
    the features entering the pooling also pass through a gradient reversal layer into a
    :class:`~avvp_lightning.models.discriminator.ModalityDiscriminator`.

    Args:
        audio_dim: Audio feature width Da (VGGish: 128).
        visual_dim: Visual (2D) feature width Dv (ResNet152: 2048).
        motion_dim: Motion (3D) feature width Dm (R(2+1)D: 512); 0 drops the motion branch.
        num_classes: Number of event classes C.
        hidden_dim: Model width H.
        ffn_dim: Feed-forward width F of HAN's layer and of Base's shared block.
        num_layers: Number of stacked encoder layers.
        num_heads: Attention heads (H must be divisible by it).
        dropout: Dropout probability (attention weights, residual branches, FFN).
        architecture: ``"han"``: one hybrid attention layer shared by both modalities;
            ``"base"``: separate self-attention per modality, cross-modal attention over the
            self-attended features, a shared linear layer over both streams.
        attention: ``"mha"`` (multi-head scaled dot-product) or ``"gcaa"`` (global context
            aware attention) for every self and cross attention.
        skip: Add the self-attended features back after the shared linear layer, then a
            LayerNorm per modality. Only for ``"base"``; raises ValueError with ``"han"``.
        adversarial: Add the gradient reversal layer and modality discriminator; the output
            ``modality_logit`` is None without it.

    Raises:
        ValueError: ``skip`` with ``"han"``, an unknown architecture or attention, or
            ``hidden_dim`` not divisible by ``num_heads``.
    """

    def __init__(
        self,
        audio_dim: int = 128,
        visual_dim: int = 2048,
        motion_dim: int = 512,
        num_classes: int = 25,
        hidden_dim: int = 512,
        ffn_dim: int = 512,
        num_layers: int = 1,
        num_heads: int = 1,
        dropout: float = 0.1,
        architecture: Literal["han", "base"] = "han",
        attention: Literal["mha", "gcaa"] = "mha",
        skip: bool = False,
        adversarial: bool = False,
    ) -> None:
        super().__init__()
        if architecture not in ("han", "base"):
            raise ValueError(f"architecture must be 'han' or 'base', got {architecture!r}")
        if skip and architecture == "han":
            raise ValueError(
                "skip=True needs architecture='base': HAN has no shared linear layer to skip over"
            )
        require_sizes(num_layers=num_layers, hidden_dim=hidden_dim, ffn_dim=ffn_dim, num_heads=num_heads,
                      audio_dim=audio_dim, visual_dim=visual_dim)
        if not isinstance(motion_dim, Integral) or motion_dim < 0:
            raise ValueError(f"motion_dim must be >= 0 (0: no 3D branch), got {motion_dim}")
        self.audio_dim, self.visual_dim, self.motion_dim = audio_dim, visual_dim, motion_dim
        self.fc_audio = nn.Linear(audio_dim, hidden_dim)
        self.fc_visual = nn.Linear(visual_dim, hidden_dim)
        if motion_dim > 0:
            self.fc_motion = nn.Linear(motion_dim, hidden_dim)
            self.fc_fusion = nn.Linear(2 * hidden_dim, hidden_dim)
        self.layers = nn.ModuleList(
            HANLayer(hidden_dim, ffn_dim, num_heads, dropout, attention)
            if architecture == "han"
            else BaseLayer(hidden_dim, ffn_dim, num_heads, dropout, attention, skip)
            for _ in range(num_layers)
        )  # distinct weights per layer; each layer is fed the previous one's output
        self.pool = AttentiveMMILPooling(hidden_dim, num_classes)
        self.discriminator = ModalityDiscriminator(hidden_dim) if adversarial else None

    def compile_blocks(self, **options: Any) -> None:
        """``torch.compile`` the encoder layers, the pooling and the discriminator, in place.

        Each block is compiled with ``nn.Module.compile``, so parameter names, ``state_dict``
        and checkpoints stay those of the eager model. The glue in :meth:`forward` (input
        projections, stacking, the gradient reversal) stays eager: the reversal reads its
        per-step strength as a Python float, which a compiled frame would specialize on, one
        recompilation per step. Inside compiled code, dropout is ``F.dropout`` on every device (see
        :func:`~avvp_lightning.models.dropout.dropout`), so a compiled CPU run draws other masks
        than an eager one; without dropout the function is the same.

        Args:
            **options: Passed to ``torch.compile`` (``backend``, ``mode``, ...).
        """
        blocks: list[nn.Module] = [*self.layers, self.pool]
        if self.discriminator is not None:
            blocks.append(self.discriminator)
        for block in blocks:
            block.compile(**options)

    def _check(self, name: str, x: Tensor | None, batch: int, length: int | None, dim: int) -> None:
        """Raise DataError unless ``x`` is (batch, length, dim) (any length when None)."""
        want = f"({batch}, {'k*T' if length is None else length}, {dim})"
        if x is None or x.dim() != 3 or x.shape[0] != batch or x.shape[2] != dim or (
            length is not None and x.shape[1] != length
        ):
            got = None if x is None else tuple(x.shape)
            raise DataError(f"AVVPParser input {name!r}: expected shape {want}, got {got}")

    def embed(self, audio: Tensor, visual: Tensor, motion: Tensor | None) -> Tensor:
        """Project the inputs to the model width, stacked [audio; visual] as (2B, T, H)."""
        batch, length = audio.shape[0], audio.shape[1]
        self._check("audio", audio, batch, None, self.audio_dim)
        self._check("visual", visual, batch, None, self.visual_dim)
        frames = visual.shape[1]
        if frames % length != 0:
            raise DataError(
                f"AVVPParser input 'visual': expected ({batch}, k*{length}, {self.visual_dim}) "
                f"frames, got {tuple(visual.shape)}"
            )
        if frames != length:  # (B, kT, Dv) -> (B, T, Dv), mean over each k frames
            visual = visual.view(batch, length, frames // length, -1).mean(dim=2)
        v = self.fc_visual(visual)  # (B, T, H)
        if self.motion_dim > 0:
            self._check("motion", motion, batch, length, self.motion_dim)
            v = self.fc_fusion(torch.cat([v, self.fc_motion(motion)], dim=-1))  # (B, T, H)
        return torch.cat([self.fc_audio(audio), v], dim=0)  # (2B, T, H)

    def forward(
        self,
        audio: Tensor,
        visual: Tensor,
        motion: Tensor | None = None,
        grl_alpha: float | Tensor = 1.0,
    ) -> dict[str, Tensor | None]:
        """Parse a batch of videos.

        Args:
            audio: (B, T, Da) audio features.
            visual: (B, T, Dv) segment-pooled or (B, k*T, Dv) frame-level visual features.
            motion: (B, T, Dm) motion features; ignored (may be None) when ``motion_dim=0``.
            grl_alpha: Gradient reversal strength for the discriminator branch (see
                :func:`~avvp_lightning.models.discriminator.dann_alpha`): a float, or a 0-dim
                tensor read when the backward runs.

        Returns:
            Dict with ``video_prob`` (B, C), ``audio_prob`` (B, C), ``visual_prob`` (B, C),
            ``segment_prob`` (B, T, 2, C), ``features`` (B, T, 2, H) (the pooling input) and
            ``modality_logit`` (B, T, 2) (None when ``adversarial=False``); modality index 0
            is audio, 1 visual.
        """
        x = self.embed(audio, visual, motion)  # (2B, T, H)
        for layer in self.layers:
            x = layer(x)  # (2B, T, H)
        features = torch.stack(x.chunk(2, dim=0), dim=2)  # (B, T, 2, H)
        out: dict[str, Tensor | None] = dict(self.pool(features))
        out["features"] = features
        out["modality_logit"] = (
            None
            if self.discriminator is None
            else self.discriminator(grad_reverse(features, grl_alpha))  # (B, T, 2)
        )
        return out
