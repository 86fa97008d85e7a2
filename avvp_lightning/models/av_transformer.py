"""UNITER-style audio-visual encoder for grounding pretraining (the paper's section 3.2).

Each modality's snippet features go through their own FC embedding (Linear + LayerNorm);
learned position embeddings (one per snippet index, shared by both modalities) and
modality type embeddings (audio, visual) are added; the tokens
``[audio_1 .. audio_T, visual_1 .. visual_T]`` then pass through a multi-layer Transformer
encoder (post-norm, GELU, as BERT/UNITER), and the contextualized audio and visual
snippet embeddings come out. The defaults are small enough for CPU tests; the paper-size
encoder (12 layers, 8 heads, hidden 768) is a config.
"""

from __future__ import annotations

import torch
from torch import nn

from avvp_lightning.errors import DataError, require_sizes

__all__ = ["AVTransformer", "pool_to_segments"]


def pool_to_segments(x: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean-pool (B, k*T, D) frame features to (B, T, D) snippet features.

    Args:
        x: (B, L, D) features with L a multiple of ``num_segments``.
        num_segments: the number T of snippets to pool to.

    Returns:
        (B, T, D): ``x`` itself when L == T, else the mean of each run of k = L // T rows.

    Raises:
        DataError: when L is not a positive multiple of T.
    """
    batch, length, dim = x.shape
    if length == num_segments:
        return x
    if num_segments <= 0 or length % num_segments != 0 or length == 0:
        raise DataError(
            f"expected (B, k*T, D) features with T={num_segments} snippets, got {tuple(x.shape)}"
        )
    return x.reshape(batch, num_segments, length // num_segments, dim).mean(dim=2)


class AVTransformer(nn.Module):
    """Joint audio-visual Transformer over snippet tokens.

    Args:
        audio_dim: size Da of the audio snippet features (VGGish: 128).
        visual_dim: size Dv of the visual snippet features (ResNet152: 2048).
        hidden_dim: width H of the embeddings and of the Transformer.
        num_layers: number of Transformer encoder layers.
        num_heads: number of attention heads (must divide ``hidden_dim``).
        ffn_dim: width of each layer's feed-forward block.
        dropout: dropout on the embeddings and inside every layer.
        num_segments: most snippets per video (size of the position table).
    """

    def __init__(
        self,
        *,
        audio_dim: int = 128,
        visual_dim: int = 2048,
        hidden_dim: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        num_segments: int = 10,
    ) -> None:
        super().__init__()
        require_sizes(num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim, ffn_dim=ffn_dim,
                      audio_dim=audio_dim, visual_dim=visual_dim)
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}")
        self.num_segments = num_segments
        self.audio_embed = nn.Sequential(nn.Linear(audio_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.visual_embed = nn.Sequential(
            nn.Linear(visual_dim, hidden_dim), nn.LayerNorm(hidden_dim)
        )
        self.type_embed = nn.Embedding(2, hidden_dim)  # 0 audio, 1 visual
        self.position_embed = nn.Embedding(num_segments, hidden_dim)
        nn.init.normal_(self.type_embed.weight, std=0.02)  # BERT-style small init
        nn.init.normal_(self.position_embed.weight, std=0.02)
        self.embed_norm = nn.LayerNorm(hidden_dim)
        self.embed_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=hidden_dim,
            nhead=num_heads,
            dim_feedforward=ffn_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(
        self, audio: torch.Tensor, visual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contextualize audio and visual snippets jointly.

        Args:
            audio: (B, T, Da) audio snippet features.
            visual: (B, T, Dv) visual snippet features, or (B, k*T, Dv) frame features
                (mean-pooled over each k frames first).

        Returns:
            ``(audio_emb, visual_emb)``, each (B, T, H).
        """
        num_snippets = audio.shape[1]
        if num_snippets > self.num_segments:
            raise DataError(
                f"audio has T={num_snippets} snippets, more than num_segments="
                f"{self.num_segments}; expected shape (B, T<={self.num_segments}, Da)"
            )
        visual = pool_to_segments(visual, num_snippets)  # (B, T, Dv)
        positions = self.position_embed.weight[:num_snippets]  # (T, H)
        audio_tok = self.audio_embed(audio) + positions + self.type_embed.weight[0]  # (B, T, H)
        visual_tok = self.visual_embed(visual) + positions + self.type_embed.weight[1]
        tokens = torch.cat([audio_tok, visual_tok], dim=1)  # (B, 2T, H)
        tokens = self.embed_dropout(self.embed_norm(tokens))
        hidden = self.encoder(tokens)  # (B, 2T, H)
        return hidden[:, :num_snippets], hidden[:, num_snippets:]
