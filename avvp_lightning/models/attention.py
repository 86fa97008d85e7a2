"""Attention blocks of the AVVP parser: multi-head attention and global context aware attention.

Both modules take a query sequence and a key/value sequence of the same width and return one
vector per query position. They differ only in how queries and keys are formed:

* :class:`MultiHeadAttention` — standard ``q = W_q x``, ``k = W_k y``.
* :class:`GlobalContextAttention` — the queries and keys are pulled towards a global context
  vector (the time mean of their own sequence) by a learned gate, after Yang et al.,
  "Context-Aware Self-Attention Networks" (AAAI 2019), as used by the seed paper (GCAA).

Values are projected the same way in both, and the attention core is
``softmax(q k^T / sqrt(hd))``, dropout on the weights, times ``v``: written out on the CPU
(about twice as fast as the fused kernel there at T = 10),
:func:`torch.nn.functional.scaled_dot_product_attention` elsewhere. On the CPU, GCAA's scores
``q^ k^T`` and its gates come from one product of the plain projections stacked with the
contexts and gate vectors, so that the full-size gated queries and keys are never formed (see
:meth:`GlobalContextAttention.scores`).
Self-attention is ``attn(x, x)``; cross-modal attention is ``attn(x, other)``. Two modules of one
class can run as one over a stacked batch, ``first(x, x, partner=second)``: on the CPU each
projection is then one batched product of both modules' weights. The Base layer's per-modality
self-attentions do this. (Measured on the 2-core development CPU: oneDNN ran bf16 products of
512-656 rows by 512 at one thread's speed, those of 1024-1280 rows at two threads'; batch 64
gives 640 rows per modality.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avvp_lightning.models.dropout import dropout

AttentionKind = Literal["mha", "gcaa"]


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16-bit floats (autocast), else the dtype itself (float32, float64)."""
    return torch.promote_types(dtype, torch.float32)


class _PairedLinear(torch.autograd.Function):
    """Two linear layers on the two halves of a stack, as one batched product, with its backward.

    ``forward(x, w0, w1, b0, b1)``: x (2, N, in), weights (out, in), biases (out,) or None ->
    (2, N, out), ``x[i] @ w_i^T + b_i``. Under autocast a float32 ``x`` is multiplied in the
    autocast dtype, as autocast runs ``bmm``. Written out because through autograd the weights,
    stacked and transposed, got their gradients as transposed views, which ``AccumulateGrad``
    then copied into the weights' own layout: 0.6 ms per 512 x 512 weight on the 2-core
    development CPU, 12 weights per training step of the paper's model. Here the weight
    gradients come out of the product in the weights' layout. Differentiable once (no double
    backward).
    """

    @staticmethod
    def forward(ctx, x: Tensor, w0: Tensor, w1: Tensor, b0: Tensor | None, b1: Tensor | None) -> Tensor:  # noqa: D102
        device, dtype = x.device.type, x.dtype
        if torch.is_autocast_enabled(device) and dtype in (torch.float32, torch.get_autocast_dtype(device)):
            dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            xc = x.to(dtype)  # (2, N, in)
            w = torch.empty((2, *w0.shape), dtype=dtype, device=x.device)  # (2, out, in): one cast each
            w[0].copy_(w0)
            w[1].copy_(w1)
            if b0 is None:
                out = torch.bmm(xc, w.transpose(1, 2))  # (2, N, out)
            else:
                b = torch.empty((2, 1, w0.shape[0]), dtype=dtype, device=x.device)  # (2, 1, out)
                b[0, 0].copy_(b0)
                b[1, 0].copy_(b1)
                out = torch.baddbmm(b, xc, w.transpose(1, 2))  # (2, N, out)
        ctx.save_for_backward(xc, w)
        ctx.dtypes = (x.dtype, w0.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        xc, w = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        need_x, need_w0, need_w1, need_b0, need_b1 = ctx.needs_input_grad  # grad: (2, N, out), like the output
        with torch.autocast(xc.device.type, enabled=False):
            gx = torch.bmm(grad, w).to(x_dtype) if need_x else None  # (2, N, in)
            gw = torch.bmm(grad.transpose(1, 2), xc).to(w_dtype) if need_w0 or need_w1 else None  # (2, out, in)
            gb = grad.sum(1).to(w_dtype) if need_b0 or need_b1 else None  # (2, out)
        return (gx, gw[0] if need_w0 else None, gw[1] if need_w1 else None,
                gb[0] if need_b0 else None, gb[1] if need_b1 else None)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention.

    Args:
        dim: Width of the query, key and value sequences (and of the output).
        num_heads: Number of heads; ``dim`` must be divisible by it.
        dropout: Dropout on the attention weights while training (as in HAN's
            ``nn.MultiheadAttention``).
    """

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)  # W_q
        self.k_proj = nn.Linear(dim, dim)  # W_k
        self.v_proj = nn.Linear(dim, dim)  # W_v
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        """(B, T, dim) -> (B, heads, T, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _linear(self, name: str, x: Tensor, partner: MultiHeadAttention | None) -> Tensor:
        """Apply this module's linear layer ``name`` to ``x``.

        With a ``partner`` (checked by :meth:`forward`), ``x`` (2B, T, in) stacks two inputs:
        rows ``[0, B)`` go through this module's layer and rows ``[B, 2B)`` through the
        partner's, as one batched product (:class:`_PairedLinear`). On the 2-core development
        CPU that was faster than two products of half the rows (oneDNN ran bf16 products of
        640 rows at one thread's speed there).
        """
        layer = getattr(self, name)
        if partner is None:
            return layer(x)
        other = getattr(partner, name)
        x2 = x.reshape(2, -1, x.shape[-1])  # (2, B*T, in)
        out = _PairedLinear.apply(x2, layer.weight, other.weight, layer.bias, other.bias)  # (2, B*T, out)
        return out.view(*x.shape[:-1], out.shape[-1])  # (2B, T, out)

    def _check_partner(self, partner: MultiHeadAttention, query: Tensor, key: Tensor) -> None:
        same = (type(partner) is type(self) and (partner.dim, partner.num_heads, partner.dropout, partner.training)
                == (self.dim, self.num_heads, self.dropout, self.training))
        if not same:
            raise ValueError(f"partner must be a {type(self).__name__} of the same dim, heads, dropout and mode, "
                             f"got {partner!r} (training={partner.training}, dropout={partner.dropout})")
        if query.shape[0] % 2 or key.shape[0] != query.shape[0]:
            raise ValueError(f"with a partner, query and key stack two batches of the same size: got batch "
                             f"{query.shape[0]} (query) and {key.shape[0]} (key)")

    def queries_keys(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        """Project the query and key sequences.

        Args:
            query: (B, Tq, dim) query sequence.
            key: (B, Tk, dim) key/value sequence.

        Returns:
            Queries (B, heads, Tq, head_dim) and keys (B, heads, Tk, head_dim).
        """
        return self._projections(query, key)

    def _projections(self, query: Tensor, key: Tensor, partner: MultiHeadAttention | None = None
                     ) -> tuple[Tensor, Tensor]:
        """``W_q query`` and ``W_k key``, (B, heads, T, head_dim) each (with a partner: see :meth:`_linear`)."""
        return self._split(self._linear("q_proj", query, partner)), self._split(self._linear("k_proj", key, partner))

    def forward(self, query: Tensor, key: Tensor, partner: MultiHeadAttention | None = None) -> Tensor:
        """Attend from every query position over the key sequence.

        Args:
            query: (B, Tq, dim) query sequence.
            key: (B, Tk, dim) key sequence, also used for the values.
            partner: Another module of the same class, size, dropout and train/eval mode for the
                second half of the batch: query and key then stack two batches, (2B, T, dim),
                and the result is ``cat([self(query[:B], key[:B]), partner(query[B:], key[B:])])``.
                On the CPU it is computed with the two modules' weights stacked (see
                :meth:`_linear`), so the partner's own forward (and its hooks) do not run, and
                one dropout draw covers both halves; elsewhere the partner is called on its half.

        Returns:
            (B, Tq, dim) attention output after the output projection; (2B, Tq, dim) with a
            partner.

        Raises:
            ValueError: A partner that differs in class, size, dropout or mode, or query and key
                batches that are not the same even size.
        """
        if partner is not None:
            self._check_partner(partner, query, key)
        if partner is not None and query.device.type != "cpu":  # the fused kernel path: one module each
            (q1, q2), (k1, k2) = query.chunk(2, dim=0), key.chunk(2, dim=0)
            return torch.cat([self(q1, k1), partner(q2, k2)], dim=0)
        v = self._split(self._linear("v_proj", key, partner))  # (B, nh, Tk, hd)
        drop = self.dropout if self.training else 0.0
        if query.device.type == "cpu":  # T is 10: the plain product is ~2x faster than SDPA here
            scores = self.scores(query, key, partner) * self.head_dim**-0.5  # (B, nh, Tq, Tk) float32
            weights = torch.softmax(scores, dim=-1)  # float32 (or float64), as SDPA's, also under autocast
            out = dropout(weights, drop).to(v.dtype) @ v  # (B, nh, Tq, Tk) @ (B, nh, Tk, hd)
        else:
            q, k = self.queries_keys(query, key)  # (B, nh, Tq, hd), (B, nh, Tk, hd)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, nh, Tq, hd)
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], self.dim)  # (B, Tq, dim)
        return self._linear("out_proj", out, partner)

    def scores(self, query: Tensor, key: Tensor, partner: MultiHeadAttention | None = None) -> Tensor:
        """Unscaled attention scores ``q k^T`` in float32 (the CPU path).

        Args:
            query: (B, Tq, dim) query sequence.
            key: (B, Tk, dim) key sequence.
            partner: The module for the second half of the batch (see :meth:`forward`).

        Returns:
            (B, heads, Tq, Tk) scores in float32 (float64 for a float64 model); the product
            itself runs in the autocast dtype.
        """
        q, k = self._projections(query, key, partner)  # (B, nh, Tq, hd), (B, nh, Tk, hd)
        return (q @ k.transpose(-1, -2)).to(_at_least_float32(q.dtype))  # (B, nh, Tq, Tk)


class GlobalContextAttention(MultiHeadAttention):
    """Global context aware attention (GCAA), multi-head.

    For a sequence ``x`` (B, T, dim) with context ``c = mean_t x_t`` (B, dim), each head forms

    * ``q = W_q x``, ``q_c = U_q c`` (``U_q`` has no bias, as the matrix in Yang et al.),
    * a scalar gate per position and head ``l_q = sigmoid(v_qx . q + v_qc . q_c)``,
    * the context-aware query ``q^ = (1 - l_q) q + l_q q_c``.

    Keys get the same treatment with their own parameters (``U_k``, ``v_kx``, ``v_kc``) and the
    context of the key sequence (for cross-modal attention, the other modality's mean).
    Values are unchanged; ``q^`` and ``k^`` then go through ordinary scaled dot-product attention.

    Args:
        dim: Width of the sequences.
        num_heads: Number of heads; each head has its own gate vectors.
        dropout: Dropout on the attention weights while training.
    """

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.1) -> None:
        super().__init__(dim, num_heads, dropout)
        self.q_context = nn.Linear(dim, dim, bias=False)  # U_q
        self.k_context = nn.Linear(dim, dim, bias=False)  # U_k
        std = self.head_dim**-0.5
        # Gate vectors, one per head: (nh, hd).
        self.q_gate_x = nn.Parameter(torch.randn(num_heads, self.head_dim) * std)  # v_qx
        self.q_gate_c = nn.Parameter(torch.randn(num_heads, self.head_dim) * std)  # v_qc
        self.k_gate_x = nn.Parameter(torch.randn(num_heads, self.head_dim) * std)  # v_kx
        self.k_gate_c = nn.Parameter(torch.randn(num_heads, self.head_dim) * std)  # v_kc

    def _contextualize(
        self, x: Tensor, proj: nn.Linear, context: nn.Linear, gate_x: Tensor, gate_c: Tensor
    ) -> Tensor:
        """Gate a projected sequence towards its projected global context.

        Args:
            x: (B, T, dim) input sequence.
            proj: W (queries or keys).
            context: U (queries or keys).
            gate_x: (nh, hd) gate vector on the local projection.
            gate_c: (nh, hd) gate vector on the context projection.

        Returns:
            (B, nh, T, hd) context-aware projections.
        """
        local = self._split(proj(x))  # (B, nh, T, hd)
        ctx = self._split(context(x.mean(dim=1, keepdim=True)))  # (B, nh, 1, hd)
        gate = torch.sigmoid(  # float32 gate parameters: float32 under autocast too
            (local * gate_x[:, None, :]).sum(-1, keepdim=True)  # (B, nh, T, 1)
            + (ctx * gate_c[:, None, :]).sum(-1, keepdim=True)  # (B, nh, 1, 1)
        )  # (B, nh, T, 1)
        return (1.0 - gate) * local + gate * ctx  # (B, nh, T, hd)

    def scores(self, query: Tensor, key: Tensor, partner: MultiHeadAttention | None = None) -> Tensor:
        """Unscaled scores ``q^ k^T`` in float32, without forming ``q^`` and ``k^`` (the CPU path).

        With ``q^_t = (1 - a_t) q_t + a_t q_c`` and ``k^_s = (1 - b_s) k_s + b_s k_c``::

            q^_t . k^_s = (1-a_t)(1-b_s) q_t.k_s + (1-a_t) b_s q_t.k_c
                          + a_t (1-b_s) q_c.k_s + a_t b_s q_c.k_c

        and the gate logits are dot products too: ``a_t = sigmoid(v_qx.q_t + v_qc.q_c)``,
        ``b_s = sigmoid(v_kx.k_s + v_kc.k_c)``. So one batched product gives every term: the
        rows ``[q_1..q_Tq, q_c, v_kx, v_kc]`` times the columns ``[k_1..k_Tk, k_c, v_qx, v_qc]``,
        a (Tq+3, Tk+3) matrix per head instead of (Tq, Tk). The full-size work left over plain
        attention is one copy of ``q`` and of ``k`` into those stacks; everything after the
        product is (Tq, Tk)-sized and runs in float32. Forming ``q^`` and ``k^`` took full-size
        float32 passes forward and backward, about half of a GCAA block's time on a 2-core CPU
        at batch 64 in bf16. Same function; under autocast the product runs in bf16, so all its
        terms, the gate logits included, are rounded once to bf16, as any matrix product's
        output is (the mean error against float64 stays below the gated form's: ``q^`` and
        ``k^`` are not rounded again after gating). The contexts are sums over time divided by
        the length: the backward of ``mean`` would write a full-size gradient.

        Args:
            query: (B, Tq, dim) query sequence.
            key: (B, Tk, dim) key sequence.
            partner: The module for the second half of the batch (see :meth:`forward`): with
                one, query and key stack two batches and the partner's projections and gate
                vectors serve the second.

        Returns:
            (B, heads, Tq, Tk) scores in float32 (float64 for a float64 model).
        """
        batch, tq, tk = query.shape[0], query.shape[1], key.shape[1]
        q, k = self._projections(query, key, partner)  # (B, nh, Tq, hd), (B, nh, Tk, hd)
        q_c = self._split(self._linear("q_context", query.sum(dim=1, keepdim=True) / tq, partner))  # (B, nh, 1, hd)
        k_c = self._split(self._linear("k_context", key.sum(dim=1, keepdim=True) / tk, partner))  # (B, nh, 1, hd)
        dtype = q.dtype  # the autocast dtype under autocast
        owners = [self] if partner is None else [self, partner]

        def gate_rows(x: str, c: str) -> Tensor:  # gate vectors (nh, hd) x and c -> (B, nh, 2, hd)
            # Joined along their rows, so that each vector's gradient is a block of whole rows, in
            # the vector's own layout (a stack along dim 1 gave (1, hd) gradients a row stride of
            # 2 hd, which DDP's gradient buckets warn of, and copy, at every step).
            g = torch.stack([torch.cat([getattr(o, x), getattr(o, c)]).view(2, *getattr(o, x).shape).transpose(0, 1)
                             for o in owners])  # (M, nh, 2, hd)
            g = g.to(dtype)[:, None].expand(-1, batch // len(owners), -1, -1, -1)  # (M, B/M, nh, 2, hd)
            return g.reshape(batch, *g.shape[2:])

        rows = torch.cat([q, q_c.to(dtype), gate_rows("k_gate_x", "k_gate_c")], dim=2)  # (B, nh, Tq+3, hd)
        cols = torch.cat([k, k_c.to(dtype), gate_rows("q_gate_x", "q_gate_c")], dim=2)  # (B, nh, Tk+3, hd)
        s = (rows @ cols.transpose(-1, -2)).to(_at_least_float32(dtype))  # (B, nh, Tq+3, Tk+3)
        with torch.autocast(query.device.type, enabled=False):  # float32 (float64) from here on
            a = torch.sigmoid(s[..., :tq, tk + 1:tk + 2] + s[..., tq:tq + 1, tk + 2:])  # (B, nh, Tq, 1)
            b = torch.sigmoid(s[..., tq + 1:tq + 2, :tk] + s[..., tq + 2:, tk:tk + 1])  # (B, nh, 1, Tk)
            qk, q_kc = s[..., :tq, :tk], s[..., :tq, tk:tk + 1]  # (B, nh, Tq, Tk), (B, nh, Tq, 1)
            qc_k, qc_kc = s[..., tq:tq + 1, :tk], s[..., tq:tq + 1, tk:tk + 1]  # (B, nh, 1, Tk), (B, nh, 1, 1)
            return (
                ((1 - a) * (1 - b)) * qk + ((1 - a) * b) * q_kc + (a * (1 - b)) * qc_k + (a * b) * qc_kc
            )  # (B, nh, Tq, Tk)

    def queries_keys(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        """Context-aware queries ``q^`` and keys ``k^``, each (B, heads, T, head_dim)."""
        q = self._contextualize(query, self.q_proj, self.q_context, self.q_gate_x, self.q_gate_c)
        k = self._contextualize(key, self.k_proj, self.k_context, self.k_gate_x, self.k_gate_c)
        return q, k


def build_attention(
    kind: AttentionKind, dim: int, num_heads: int = 1, dropout: float = 0.1
) -> MultiHeadAttention:
    """Build the attention block named by ``kind``.

    Args:
        kind: ``"mha"`` for standard multi-head attention, ``"gcaa"`` for global context
            aware attention.
        dim: Sequence width.
        num_heads: Number of heads.
        dropout: Attention-weight dropout.

    Returns:
        The attention module.
    """
    if kind == "mha":
        return MultiHeadAttention(dim, num_heads, dropout)
    if kind == "gcaa":
        return GlobalContextAttention(dim, num_heads, dropout)
    raise ValueError(f"attention must be 'mha' or 'gcaa', got {kind!r}")
