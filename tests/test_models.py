"""Tests of the AVVP parser, its attention blocks, the MMIL pooling and the discriminator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from avvp_lightning.errors import DataError
from avvp_lightning.models import (
    AVVPParser,
    GlobalContextAttention,
    ModalityDiscriminator,
    MultiHeadAttention,
    dann_alpha,
    grad_reverse,
)
from avvp_lightning.models.attention import _PairedLinear
from avvp_lightning.models.parser import AttentiveMMILPooling, BaseLayer

B, T, C = 3, 10, 25


def _batch(seed: int = 0, frames: int = T, audio_dim: int = 128, visual_dim: int = 2048):
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(B, T, audio_dim, generator=gen)
    visual = torch.randn(B, frames, visual_dim, generator=gen)
    motion = torch.randn(B, T, 512, generator=gen)
    return audio, visual, motion


# ----------------------------------------------------------------------------- attention


def _set_linear(layer: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.copy_(torch.zeros_like(layer.bias) if bias is None else bias)


def test_gcaa_gate_half_with_identity_weights():
    """Zero gate vectors give l = 1/2, so q^ = (x + mean x) / 2 with identity projections."""
    attn = GlobalContextAttention(2, num_heads=1, dropout=0.0)
    eye = torch.eye(2)
    for layer in (attn.q_proj, attn.k_proj, attn.q_context, attn.k_context):
        _set_linear(layer, eye)
    with torch.no_grad():
        for gate in (attn.q_gate_x, attn.q_gate_c, attn.k_gate_x, attn.k_gate_c):
            gate.zero_()
    query = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2), mean (0.5, 0.5)
    key = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]]])  # (1, 3, 2), mean (1, 1)
    q, k = attn.queries_keys(query, key)
    assert torch.allclose(q[0, 0], torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    assert torch.allclose(k[0, 0], torch.tensor([[1.5, 0.5], [0.5, 0.5], [1.0, 2.0]]))


@pytest.mark.parametrize("heads", [1, 2])
def test_gcaa_matches_hand_computation(heads):
    torch.manual_seed(0)
    dim, hd = 4, 4 // heads
    attn = GlobalContextAttention(dim, num_heads=heads, dropout=0.0).eval()
    query, key = torch.randn(2, 3, dim), torch.randn(2, 5, dim)  # (B, Tq, D), (B, Tk, D)
    W = {name: torch.randn(dim, dim) for name in ("q", "k", "v", "o", "uq", "uk")}
    bias = {name: torch.randn(dim) for name in ("q", "k", "v", "o")}
    _set_linear(attn.q_proj, W["q"], bias["q"])
    _set_linear(attn.k_proj, W["k"], bias["k"])
    _set_linear(attn.v_proj, W["v"], bias["v"])
    _set_linear(attn.out_proj, W["o"], bias["o"])
    _set_linear(attn.q_context, W["uq"])
    _set_linear(attn.k_context, W["uk"])
    gates = {name: torch.randn(heads, hd) for name in ("qx", "qc", "kx", "kc")}
    with torch.no_grad():
        attn.q_gate_x.copy_(gates["qx"])
        attn.q_gate_c.copy_(gates["qc"])
        attn.k_gate_x.copy_(gates["kx"])
        attn.k_gate_c.copy_(gates["kc"])

    expected = torch.zeros(2, 3, dim)
    for b in range(2):
        q_all = query[b] @ W["q"].T + bias["q"]  # (Tq, D)
        k_all = key[b] @ W["k"].T + bias["k"]  # (Tk, D)
        v_all = key[b] @ W["v"].T + bias["v"]  # (Tk, D)
        qc_all = query[b].mean(0) @ W["uq"].T  # (D,)
        kc_all = key[b].mean(0) @ W["uk"].T  # (D,)
        heads_out = []
        for h in range(heads):
            cols = slice(h * hd, (h + 1) * hd)
            q, k, v = q_all[:, cols], k_all[:, cols], v_all[:, cols]
            qc, kc = qc_all[cols], kc_all[cols]
            lq = torch.sigmoid(q @ gates["qx"][h] + qc @ gates["qc"][h])[:, None]  # (Tq, 1)
            lk = torch.sigmoid(k @ gates["kx"][h] + kc @ gates["kc"][h])[:, None]  # (Tk, 1)
            q_hat = (1 - lq) * q + lq * qc
            k_hat = (1 - lk) * k + lk * kc
            weights = torch.softmax(q_hat @ k_hat.T / math.sqrt(hd), dim=-1)  # (Tq, Tk)
            heads_out.append(weights @ v)
        expected[b] = torch.cat(heads_out, dim=-1) @ W["o"].T + bias["o"]
    assert torch.allclose(attn(query, key), expected, atol=1e-5)


def _gated_scores(attn: GlobalContextAttention, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``q^ k^T`` of the gated ``q^``, ``k^``, the product in the autocast dtype, then float32 (or float64)."""
    q, k = attn.queries_keys(query, key)  # (B, nh, T, hd) gated
    return (q @ k.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32))  # (B, nh, Tq, Tk)


@pytest.mark.parametrize("heads", [1, 2])
def test_gcaa_expanded_scores_equal_the_gated_form(heads: int) -> None:
    """The CPU path's scores (expanded, no q^/k^ formed) equal q^ k^T, values and gradients."""
    torch.manual_seed(0)
    attn = GlobalContextAttention(8, num_heads=heads, dropout=0.0).double()
    query = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)  # Tq = 4
    key = torch.randn(3, 6, 8, dtype=torch.float64, requires_grad=True)  # Tk = 6
    weights = torch.randn(3, heads, 4, 6, dtype=torch.float64)  # a fixed linear read-out

    def grads(scores: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad((scores * weights).sum(), [query, key, *attn.parameters()], allow_unused=True)

    q, k = attn.queries_keys(query, key)  # (B, nh, T, hd) gated
    gated = q @ k.transpose(-1, -2)  # (B, nh, Tq, Tk)
    expanded = attn.scores(query, key)
    torch.testing.assert_close(expanded, gated, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_gated_scores(attn, query, key), gated, rtol=1e-12, atol=1e-12)  # the bf16 test's
    for got, want in zip(grads(attn.scores(query, key)), grads(gated)):
        if want is None:  # v_proj, out_proj: not in the scores
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("paired", [False, True])
def test_gcaa_gradients_come_in_their_parameters_layout(heads: int, paired: bool) -> None:
    # DDP's gradient buckets warn of, and copy, a gradient whose strides differ from its parameter's,
    # (1, hd) gate vectors with a row stride of 2 hd included.
    torch.manual_seed(0)
    first, second = GlobalContextAttention(8, num_heads=heads), GlobalContextAttention(8, num_heads=heads)
    x = torch.randn(4 if paired else 2, 10, 8)
    (first(x, x, partner=second) if paired else first(x, x)).square().sum().backward()
    grads = [(n, p) for m in ((first, second) if paired else (first,)) for n, p in m.named_parameters()]
    assert all(p.grad is not None for _, p in grads)
    assert [n for n, p in grads if p.grad.stride() != p.stride()] == []


def test_gcaa_expanded_scores_under_bf16_autocast_are_as_close_as_the_gated_form() -> None:
    """Under bf16 autocast both forms round; on average the expanded one is no further from float64.

    (It skips the rounding of the gated q^, k^ to bf16, and rounds each term of its one product,
    gate logits included, once; the maximum error per draw goes either way, the mean error was
    0.86-0.93 of the gated form's over 40 seeds on the development CPU.)
    """
    err_expanded = err_gated = 0.0
    for seed in range(4):
        torch.manual_seed(seed)
        attn = GlobalContextAttention(64, num_heads=1, dropout=0.0)
        query, key = torch.randn(16, 10, 64), torch.randn(16, 10, 64)
        with torch.no_grad():
            exact = attn.double().scores(query.double(), key.double())
            attn.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                expanded = attn.scores(query, key)
                gated = _gated_scores(attn, query, key)  # q^ k^T of the gated q^, k^
        assert expanded.dtype == gated.dtype == torch.float32
        assert (expanded.double() - exact).abs().max() < 0.05 * exact.abs().max()
        err_expanded += float((expanded.double() - exact).abs().mean())
        err_gated += float((gated.double() - exact).abs().mean())
    assert err_expanded <= err_gated


@pytest.mark.parametrize("cls", [MultiHeadAttention, GlobalContextAttention])
@pytest.mark.parametrize("heads", [1, 2])
def test_partner_attention_equals_each_module_on_its_half(cls, heads: int) -> None:
    """``first(x, y, partner=second)`` is first on the first half of the batch, second on the rest."""
    torch.manual_seed(4)
    first, second = (cls(8, num_heads=heads, dropout=0.0).double() for _ in range(2))
    x = torch.randn(6, 5, 8, dtype=torch.float64, requires_grad=True)  # 2 x 3 videos, T = 5
    y = torch.randn(6, 7, 8, dtype=torch.float64, requires_grad=True)  # keys: Tk = 7
    weights = torch.randn(6, 5, 8, dtype=torch.float64)
    params = [x, y, *first.parameters(), *second.parameters()]

    paired = first(x, y, partner=second)
    apart = torch.cat([first(x[:3], y[:3]), second(x[3:], y[3:])])
    torch.testing.assert_close(paired, apart, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad((paired * weights).sum(), params),
                         torch.autograd.grad((apart * weights).sum(), params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the stacked products under mixed precision too
        mixed = first.float()(x.float(), y.float(), partner=second.float())
    torch.testing.assert_close(mixed.double(), apart, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("bias", [True, False])
def test_paired_linear_is_two_linears_with_gradients_in_the_weights_layout(bias: bool) -> None:
    """``_PairedLinear``: ``x[i] @ w_i^T + b_i``, its gradients, and weight gradients as contiguous as
    the weights (through autograd they were transposed views that AccumulateGrad had to copy)."""
    torch.manual_seed(6)
    x = torch.randn(2, 12, 8, dtype=torch.float64, requires_grad=True)
    w = [torch.randn(5, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    b = [torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None for _ in range(2)]
    leaves = [x, *w, *(b if bias else [])]
    weights = torch.randn(2, 12, 5, dtype=torch.float64)

    got = _PairedLinear.apply(x, w[0], w[1], b[0], b[1])  # (2, 12, 5)
    want = torch.stack([nn.functional.linear(x[i], w[i], b[i]) for i in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got_grads = torch.autograd.grad((got * weights).sum(), leaves)
    for g, ref, leaf in zip(got_grads, torch.autograd.grad((want * weights).sum(), leaves), leaves):
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)
        assert g.dtype == leaf.dtype and g.stride() == leaf.stride()
    (gx,) = torch.autograd.grad((_PairedLinear.apply(x, w[0], w[1], b[0], b[1]) ** 2).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):  # no silently wrong second order
        gx.pow(2).sum().backward()

    with torch.autocast("cpu", dtype=torch.bfloat16):  # products in bf16, gradients in the leaves' dtypes
        leaves32 = [t.detach().float().requires_grad_() for t in leaves]
        x32, w32 = leaves32[0], leaves32[1:3]
        b32 = leaves32[3:] if bias else [None, None]
        mixed = _PairedLinear.apply(x32, w32[0], w32[1], b32[0], b32[1])
        ref = torch.stack([nn.functional.linear(x32[i], w32[i], b32[i]) for i in range(2)])  # (2, 12, 5) bf16
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed, ref)
    for g, r, leaf in zip(torch.autograd.grad((mixed.float() * weights.float()).sum(), leaves32),
                          torch.autograd.grad((ref.float() * weights.float()).sum(), leaves32), leaves32):
        assert g.dtype == torch.float32 and g.stride() == leaf.stride()
        torch.testing.assert_close(g, r, rtol=0.02, atol=0.02 * float(r.abs().max()))


@pytest.mark.parametrize("attention", ["mha", "gcaa"])
def test_base_layer_runs_each_modality_through_its_own_self_attention(attention: str) -> None:
    """Audio rows through ``self_attn[0]``, visual rows through ``self_attn[1]`` (stacked or not)."""
    torch.manual_seed(5)
    layer = BaseLayer(8, 8, num_heads=2, dropout=0.0, attention=attention, skip=True).double()
    x = torch.randn(6, 5, 8, dtype=torch.float64)  # [audio; visual], B = 3
    got = layer(x)
    audio, visual = x.chunk(2)
    attended = torch.cat([layer.self_attn[0](audio, audio), layer.self_attn[1](visual, visual)])
    s = torch.cat([layer.self_norm[0]((x + attended)[:3]), layer.self_norm[1]((x + attended)[3:])])
    c = layer.cross_norm(s + layer.cross_attn(s, s.roll(3, 0)))
    joint = layer.shared_norm(c + layer.shared(c))
    want = torch.cat([layer.skip_norm[0]((s + joint)[:3]), layer.skip_norm[1]((s + joint)[3:])])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_partner_must_match() -> None:
    first = GlobalContextAttention(8, num_heads=2, dropout=0.1)
    x = torch.randn(6, 5, 8)
    for partner in (MultiHeadAttention(8, 2, 0.1), GlobalContextAttention(8, 1, 0.1),
                    GlobalContextAttention(8, 2, 0.2), GlobalContextAttention(8, 2, 0.1).eval()):
        with pytest.raises(ValueError, match="partner must be"):
            first(x, x, partner=partner)
    with pytest.raises(ValueError, match="two batches of the same size"):
        first(x[:5], x[:5], partner=GlobalContextAttention(8, 2, 0.1))


@pytest.mark.parametrize("cls", [MultiHeadAttention, GlobalContextAttention])
def test_attention_runs_in_a_bf16_model(cls) -> None:
    """A model cast to bf16 (Lightning's bf16-true) runs the CPU core and stays close to fp32."""
    torch.manual_seed(2)
    attn = cls(32, num_heads=2, dropout=0.1).eval()
    x, y = torch.randn(4, 10, 32), torch.randn(4, 10, 32)
    want = attn(x, y)
    got = attn.bfloat16()(x.bfloat16(), y.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    attn.train()(x.bfloat16(), y.bfloat16()).float().sum().backward()  # training step too


def test_mha_matches_torch_multihead_attention():
    torch.manual_seed(1)
    ours = MultiHeadAttention(8, num_heads=2, dropout=0.0).eval()
    ref = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    with torch.no_grad():
        projs = (ours.q_proj, ours.k_proj, ours.v_proj)
        ref.in_proj_weight.copy_(torch.cat([proj.weight for proj in projs]))
        ref.in_proj_bias.copy_(torch.cat([proj.bias for proj in projs]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    query, key = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    expected, _ = ref(query, key, key)
    assert torch.allclose(ours(query, key), expected, atol=1e-5)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("cls", [MultiHeadAttention, GlobalContextAttention])
def test_attention_shapes(cls, heads):
    attn = cls(8, num_heads=heads)
    out = attn(torch.randn(3, 5, 8), torch.randn(3, 7, 8))
    assert out.shape == (3, 5, 8)
    if cls is GlobalContextAttention:
        assert attn.q_gate_x.shape == (heads, 8 // heads)  # one gate vector per head
    with pytest.raises(ValueError, match="divisible"):
        cls(8, num_heads=3)


# ------------------------------------------------------------------ gradient reversal


def test_grad_reverse_flips_and_scales_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = grad_reverse(x, 0.25)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.equal(x.grad, -0.25 * w)


def test_dann_alpha_schedule():
    assert dann_alpha(0.0) == 0.0
    assert dann_alpha(0.5) == pytest.approx(0.98661, abs=1e-5)
    assert dann_alpha(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_alpha(0.5, gamma=1.0) == pytest.approx(2 / (1 + math.exp(-0.5)) - 1)


def test_discriminator_layout_and_shape():
    disc = ModalityDiscriminator(512)
    widths = [(m.in_features, m.out_features) for m in disc.modules() if isinstance(m, nn.Linear)]
    assert widths == [(512, 128), (128, 10), (10, 1)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in disc.modules()) == 2
    assert disc(torch.randn(B, T, 2, 512)).shape == (B, T, 2)


# ---------------------------------------------------------------------- MMIL pooling


def test_mmil_pooling_matches_hand_computation():
    torch.manual_seed(2)
    pool = AttentiveMMILPooling(dim=3, num_classes=2)
    with torch.no_grad():
        for layer in (pool.fc_prob, pool.fc_frame_att, pool.fc_av_att):
            layer.weight.copy_(torch.randn(2, 3))
            layer.bias.copy_(torch.randn(2))
    x = torch.randn(2, 4, 2, 3)  # (B, T, M, H)
    out = pool(x)
    pool.requires_grad_(False)

    def score(fc: nn.Linear, b: int, c: int) -> torch.Tensor:  # (T, M) logits of class c
        return torch.tensor([[x[b, t, m] @ fc.weight[c] + fc.bias[c] for m in range(2)]
                             for t in range(4)])

    for b in range(2):
        for c in range(2):
            p = torch.sigmoid(score(pool.fc_prob, b, c))  # (T, M)
            s, r = score(pool.fc_frame_att, b, c), score(pool.fc_av_att, b, c)
            att_t = s.exp() / s.exp().sum(0, keepdim=True)  # softmax over time
            att_m = r.exp() / r.exp().sum(1, keepdim=True)  # softmax over modalities
            video = sum(att_t[t, m] * att_m[t, m] * p[t, m] for t in range(4) for m in range(2))
            audio = sum(att_t[t, 0] * p[t, 0] for t in range(4))
            visual = sum(att_t[t, 1] * p[t, 1] for t in range(4))
            assert out["video_prob"][b, c].item() == pytest.approx(video.item(), abs=1e-6)
            assert out["audio_prob"][b, c].item() == pytest.approx(audio.item(), abs=1e-6)
            assert out["visual_prob"][b, c].item() == pytest.approx(visual.item(), abs=1e-6)
            assert torch.allclose(out["segment_prob"][b, :, :, c], p, atol=1e-6)


# ---------------------------------------------------------------------------- parser

TABLE_ROWS = {
    "han": dict(architecture="han"),
    "base": dict(architecture="base"),
    "base+gcaa": dict(architecture="base", attention="gcaa"),
    "base+adv+skip": dict(architecture="base", adversarial=True, skip=True),
    "base+adv+skip+gcaa": dict(architecture="base", adversarial=True, skip=True, attention="gcaa"),
    "han+gcaa+adv": dict(architecture="han", attention="gcaa", adversarial=True),
    "han-2-layers": dict(architecture="han", num_layers=2),
    "base-2-layers-2-heads": dict(architecture="base", skip=True, num_layers=2, num_heads=2),
    "pretrained-features": dict(architecture="base", adversarial=True, skip=True, attention="gcaa",
                                audio_dim=64, visual_dim=96, motion_dim=0),
}


@pytest.mark.parametrize("row", list(TABLE_ROWS))
def test_table_rows_forward_backward(row):
    kwargs = dict(TABLE_ROWS[row], hidden_dim=32, ffn_dim=48)
    torch.manual_seed(3)
    model = AVVPParser(**kwargs)
    audio, visual, motion = _batch(audio_dim=model.audio_dim, visual_dim=model.visual_dim)
    out = model(audio, visual, None if model.motion_dim == 0 else motion, grl_alpha=0.5)
    shapes = {"video_prob": (B, C), "audio_prob": (B, C), "visual_prob": (B, C),
              "segment_prob": (B, T, 2, C), "features": (B, T, 2, 32)}
    for key, shape in shapes.items():
        assert out[key].shape == shape, key
        assert torch.isfinite(out[key]).all(), key
    if kwargs.get("adversarial"):
        assert out["modality_logit"].shape == (B, T, 2)
    else:
        assert out["modality_logit"] is None
    loss = sum(out[k].sum() for k in ("video_prob", "audio_prob", "visual_prob"))
    if out["modality_logit"] is not None:
        loss = loss + out["modality_logit"].sum()
    loss.backward()
    for name, param in model.named_parameters():  # every parameter is used and finite
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_default_han_matches_reference_size():
    # HAN's published architecture: fc_a, fc_v, fc_st, fc_fusion, one hybrid layer, MMIL heads.
    assert sum(p.numel() for p in AVVPParser().parameters()) == 4_569_675


def test_video_prob_within_unit_interval():
    torch.manual_seed(4)
    model = AVVPParser(hidden_dim=32, ffn_dim=32).eval()
    audio, visual, motion = (10 * x for x in _batch(seed=4))
    out = model(audio, visual, motion)
    for key in ("video_prob", "audio_prob", "visual_prob"):
        assert (out[key] >= 0).all() and (out[key] <= 1 + 1e-6).all()


@pytest.mark.parametrize("row", ["han", "base+adv+skip+gcaa"])
def test_frame_level_visual_equals_pooled(row):
    torch.manual_seed(5)
    model = AVVPParser(**TABLE_ROWS[row], hidden_dim=32, ffn_dim=32).eval()
    audio, frames, motion = _batch(seed=5, frames=8 * T)
    pooled = frames.view(B, T, 8, -1).mean(dim=2)  # (B, T, Dv)
    a, b = model(audio, frames, motion), model(audio, pooled, motion)
    keys = ("video_prob", "audio_prob", "visual_prob", "segment_prob", "features", "modality_logit")
    for key in keys:
        if a[key] is None:
            assert b[key] is None and not TABLE_ROWS[row].get("adversarial")
        else:
            assert torch.allclose(a[key], b[key], atol=1e-5), key


@pytest.mark.parametrize("architecture", ["han", "base"])
def test_layers_feed_forward(architecture):
    torch.manual_seed(6)
    two = AVVPParser(architecture=architecture, num_layers=2, hidden_dim=32, ffn_dim=32).eval()
    seen: dict[int, tuple] = {}
    for i, layer in enumerate(two.layers):
        layer.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, (args[0], out)))
    audio, visual, motion = _batch(seed=6)
    out2 = two(audio, visual, motion)
    assert torch.equal(seen[1][0], seen[0][1])  # layer 1's input is layer 0's output
    assert torch.equal(out2["features"], torch.stack(seen[1][1].chunk(2), dim=2))
    # The same weights without the second layer give different outputs.
    one = AVVPParser(architecture=architecture, num_layers=1, hidden_dim=32, ffn_dim=32).eval()
    state = {k: v for k, v in two.state_dict().items() if not k.startswith("layers.1.")}
    one.load_state_dict(state)
    out1 = one(audio, visual, motion)
    assert torch.equal(out1["features"], torch.stack(seen[0][1].chunk(2), dim=2))
    assert not torch.allclose(out1["video_prob"], out2["video_prob"])


def test_motion_dim_zero_drops_motion_branch():
    model = AVVPParser(audio_dim=16, visual_dim=24, motion_dim=0, hidden_dim=32, ffn_dim=32)
    assert not hasattr(model, "fc_motion") and not hasattr(model, "fc_fusion")
    out = model(torch.randn(B, T, 16), torch.randn(B, T, 24))
    assert out["video_prob"].shape == (B, C)


def test_invalid_configuration_and_shapes():
    with pytest.raises(ValueError, match="skip"):
        AVVPParser(architecture="han", skip=True)
    with pytest.raises(ValueError, match="architecture"):
        AVVPParser(architecture="transformer")
    with pytest.raises(ValueError, match="attention"):
        AVVPParser(attention="linear")
    model = AVVPParser(hidden_dim=32, ffn_dim=32)
    audio, visual, motion = _batch()
    with pytest.raises(DataError, match=r"'visual'.*\(3, k\*10, 2048\)"):
        model(audio, visual[:, :7], motion)
    with pytest.raises(DataError, match=r"'motion'.*\(3, 10, 512\)"):
        model(audio, visual, motion[:, :, :100])
    with pytest.raises(DataError, match="'motion'"):
        model(audio, visual)


# ----------------------------------------------------------------------------------- dropout
def test_dropout_keeps_one_minus_p_and_rescales() -> None:
    from avvp_lightning.models.dropout import dropout

    torch.manual_seed(0)
    x = torch.ones(1_000_001)  # odd: the last 64-bit draw is half used
    for p in (0.1, 0.5, 0.9):
        y = dropout(x, p)
        kept = y != 0
        assert y.shape == x.shape and y.dtype == x.dtype
        assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5
        assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert torch.equal(dropout(x, 0.0), x) and torch.equal(dropout(x, 0.3, training=False), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(dropout(x, 1 - 2**-40), torch.zeros_like(x))  # rounds to "all dropped"
    with pytest.raises(ValueError):
        dropout(x, 1.5)


@pytest.mark.parametrize("p", [0.1, 1 / 3, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dropout_mask_is_the_documented_threshold_on_the_draws(monkeypatch, p: float, dtype: torch.dtype) -> None:
    """Keep exactly when floor(u / 2) >= -2**30 + round(p * 2**31), u the 32-bit draws: at the
    threshold, one below it, at both ends of the range, and on random draws (written with NumPy)."""
    import numpy as np

    from avvp_lightning.models import dropout as module

    at = -(2**30) + round(p * 2**31)  # the smallest kept value of floor(u / 2)
    edges = np.array([2 * at, 2 * at + 1, 2 * at - 1, 2 * at - 2, -(2**31), 2**31 - 1, 0, -1], dtype=np.int64)
    draws = np.concatenate([edges, np.random.default_rng(0).integers(-(2**31), 2**31, 1001)]).astype(np.int32)
    raw = np.concatenate([draws, np.zeros(1, np.int32)]).view(np.uint64)  # as SFC64 hands them out, two a word

    class Fixed:
        def __init__(self, seed: int) -> None:
            pass

        def random_raw(self, size: int) -> np.ndarray:
            assert size == (len(draws) + 1) // 2
            return raw[:size].copy()

    monkeypatch.setattr(module.np.random, "SFC64", Fixed)
    x = torch.ones(len(draws), dtype=dtype)
    y = module.dropout(x, p)
    keep = torch.from_numpy((draws.astype(np.int64) // 2) >= at)
    assert keep[:6].tolist() == [True, True, False, False, False, True]
    assert torch.equal(y != 0, keep) and y.dtype == dtype
    scale = torch.tensor(1 / (1 - p), dtype=dtype)  # 1 / (1 - p) rounded to the dtype
    assert torch.equal(y[keep], scale.expand(int(keep.sum())))


def test_dropout_is_seeded_dtype_preserving_and_differentiable() -> None:
    from avvp_lightning.models.dropout import Dropout, dropout

    x = torch.randn(4, 10, 8, dtype=torch.bfloat16)
    torch.manual_seed(3)
    a = dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.2)) and a.dtype == torch.bfloat16
    w = torch.randn(6, 7, requires_grad=True)
    torch.manual_seed(5)
    out = dropout(w, 0.3)
    out.sum().backward()
    assert torch.allclose(w.grad, (out != 0).float() / 0.7)  # gradient = the mask, rescaled
    module = Dropout(0.25)
    assert "p=0.25" in repr(module)
    module.eval()
    assert torch.equal(module(x), x)


def test_attention_cpu_core_equals_the_fused_kernel() -> None:
    import torch.nn.functional as F

    torch.manual_seed(0)
    attn = MultiHeadAttention(16, num_heads=4, dropout=0.1).eval()
    x, y = torch.randn(3, 10, 16), torch.randn(3, 10, 16)
    q, k = attn.queries_keys(x, y)
    v = attn._split(attn.v_proj(y))
    fused = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 10, 16)
    torch.testing.assert_close(attn(x, y), attn.out_proj(fused), rtol=1e-5, atol=1e-6)
    attn.train()  # dropout on the weights: each output row is a partial mix of the values
    torch.manual_seed(1)
    assert not torch.allclose(attn(x, y), attn.out_proj(fused))


@pytest.mark.parametrize("architecture", ["han", "base"])
def test_compiled_blocks_trace_without_graph_breaks(architecture: str, fresh_dynamo: None) -> None:
    """``compile_blocks``: one graph per block (the per-step GRL strength stays outside, so no
    recompiles), and dropout traced as ``F.dropout`` (the CPU's NumPy draws would break the graph)."""
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(0)
    gcaa = architecture == "base"
    kwargs = dict(audio_dim=8, visual_dim=8, motion_dim=4, hidden_dim=16, ffn_dim=16, architecture=architecture,
                  attention="gcaa" if gcaa else "mha", skip=gcaa, adversarial=True)
    model = AVVPParser(**kwargs, dropout=0.5)
    model.compile_blocks(backend="eager")
    for step in range(3):
        out = model(torch.randn(4, 10, 8), torch.randn(4, 10, 8), torch.randn(4, 10, 4), grl_alpha=0.3 * step)
        (out["video_prob"].sum() + out["modality_logit"].sum()).backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 3  # the layer, the pooling, the discriminator
    assert all(p.grad is not None for p in model.parameters())
    assert set(model.state_dict()) == set(AVVPParser(**kwargs).state_dict())  # names as eager
