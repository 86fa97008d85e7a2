"""Tests of the parser objective: closed forms and the adversarial min-max through the GRL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avvp_lightning.losses import parser_loss
from avvp_lightning.losses.parser import smooth_labels
from avvp_lightning.models import AVVPParser


def _bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _out(video, audio, visual, logit=None):
    return {
        "video_prob": torch.tensor(video),
        "audio_prob": torch.tensor(audio),
        "visual_prob": torch.tensor(visual),
        "modality_logit": None if logit is None else torch.tensor(logit),
    }


def test_smoothing_values():
    y = torch.tensor([0.0, 1.0])
    assert torch.allclose(smooth_labels(y, 0.9), torch.tensor([0.05, 0.95]))
    assert torch.equal(smooth_labels(y, 1.0), y)


def test_terms_match_closed_form():
    out = _out([[0.8, 0.3]], [[0.6, 0.1]], [[0.7, 0.4]], logit=[[[0.5, -1.0], [2.0, 0.3]]])
    label = torch.tensor([[1.0, 0.0]])
    losses = parser_loss(out, label, lambda_g=0.6, lambda_ad=0.4)
    wsl = (_bce(0.8, 1) + _bce(0.3, 0)) / 2
    guided = (_bce(0.6, 1) + _bce(0.1, 0)) / 2 + (_bce(0.7, 0.95) + _bce(0.4, 0.05)) / 2
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    # Index 0 of the last axis is audio (target 0), index 1 visual (target 1).
    adv = -(math.log(1 - sig(0.5)) + math.log(sig(-1.0))
            + math.log(1 - sig(2.0)) + math.log(sig(0.3))) / 4
    assert losses["wsl"].item() == pytest.approx(wsl, rel=1e-5)
    assert losses["guided"].item() == pytest.approx(guided, rel=1e-5)
    assert losses["adv"].item() == pytest.approx(adv, rel=1e-5)
    assert losses["total"].item() == pytest.approx(wsl + 0.6 * guided + 0.4 * adv, rel=1e-5)


def test_audio_smoothing_and_han_weights():
    out = _out([[0.8]], [[0.6]], [[0.7]])
    losses = parser_loss(out, torch.tensor([[1.0]]), lambda_g=1.0, lambda_ad=0.0,
                         audio_smoothing=0.8, visual_smoothing=1.0)
    guided = _bce(0.6, 0.9) + _bce(0.7, 1.0)
    assert losses["guided"].item() == pytest.approx(guided, rel=1e-5)
    assert losses["total"].item() == pytest.approx(_bce(0.8, 1.0) + guided, rel=1e-5)


def test_clamping_keeps_loss_finite():
    out = _out([[0.0, 1.0 + 1e-6]], [[0.0, 1.0]], [[1.0, 0.0]])
    out = {k: v.requires_grad_() if v is not None else v for k, v in out.items()}
    losses = parser_loss(out, torch.tensor([[1.0, 0.0]]), lambda_g=0.6, lambda_ad=0.4, eps=1e-7)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["wsl"].item() == pytest.approx(-math.log(1e-7), rel=1e-2)  # both clamped
    losses["total"].backward()


def test_adv_zero_without_discriminator():
    losses = parser_loss(_out([[0.5]], [[0.5]], [[0.5]]), torch.tensor([[1.0]]),
                         lambda_g=0.6, lambda_ad=0.4)
    assert losses["adv"].item() == 0.0
    expected = losses["wsl"].item() + 0.6 * losses["guided"].item()
    assert losses["total"].item() == pytest.approx(expected)


def _adversarial_model() -> tuple[AVVPParser, tuple]:
    torch.manual_seed(0)
    model = AVVPParser(architecture="base", skip=True, adversarial=True, hidden_dim=32,
                       dropout=0.0, audio_dim=16, visual_dim=24, motion_dim=8)
    inputs = (torch.randn(4, 10, 16), torch.randn(4, 10, 24), torch.randn(4, 10, 8))
    return model, inputs


def test_grl_reverses_encoder_gradient_of_adv():
    model, inputs = _adversarial_model()
    out = model(*inputs, grl_alpha=0.7)
    adv = parser_loss(out, torch.ones(4, 25), lambda_g=0.6, lambda_ad=0.4)["adv"]
    with_grl = torch.autograd.grad(adv, model.fc_audio.weight, retain_graph=True)[0]
    disc_with = torch.autograd.grad(adv, model.discriminator.net[0].weight)[0]
    # The same features straight into the discriminator, no reversal layer.
    plain = model.discriminator(out["features"])
    adv_plain = parser_loss({**out, "modality_logit": plain}, torch.ones(4, 25),
                            lambda_g=0.6, lambda_ad=0.4)["adv"]
    assert adv_plain.item() == pytest.approx(adv.item())
    without_grl = torch.autograd.grad(adv_plain, model.fc_audio.weight, retain_graph=True)[0]
    disc_without = torch.autograd.grad(adv_plain, model.discriminator.net[0].weight)[0]
    assert without_grl.abs().sum() > 0
    assert torch.allclose(with_grl, -0.7 * without_grl, atol=1e-7)
    assert torch.allclose(disc_with, disc_without)  # the discriminator itself is not reversed


def test_gradient_step_trains_discriminator_and_fools_it():
    model, inputs = _adversarial_model()
    label = (torch.rand(4, 25) < 0.3).float()

    def adv_loss() -> float:
        with torch.no_grad():
            return parser_loss(model(*inputs), label, lambda_g=0.6, lambda_ad=0.4)["adv"].item()

    parser_loss(model(*inputs), label, lambda_g=0.6, lambda_ad=0.4)["total"].backward()
    before = adv_loss()
    disc = {id(p) for p in model.discriminator.parameters()}
    snapshot = {p: p.detach().clone() for p in model.parameters()}
    lr = 1e-2
    with torch.no_grad():  # step the discriminator only: it minimises adv
        for p in model.discriminator.parameters():
            p -= lr * p.grad
    assert adv_loss() < before
    with torch.no_grad():  # undo, then step the encoder on the adv term only: it maximises adv
        for p, v in snapshot.items():
            p.copy_(v)
    model.zero_grad()
    parser_loss(model(*inputs), label, lambda_g=0.6, lambda_ad=0.4)["adv"].backward()
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in disc and p.grad is not None:  # MMIL heads do not touch adv
                p -= lr * p.grad
    assert adv_loss() > before


def test_nan_probabilities_give_a_nan_loss_not_an_error():
    torch.manual_seed(0)
    prob = torch.rand(4, 25, requires_grad=True)
    label = (torch.rand(4, 25) > 0.7).float()
    out = {"video_prob": prob, "audio_prob": prob, "visual_prob": prob, "modality_logit": None}
    losses = parser_loss(out, label, lambda_g=0.6, lambda_ad=0.4)
    assert torch.equal(losses["wsl"], F.binary_cross_entropy(prob.clamp(1e-7, 1 - 1e-7), label))  # bit for bit
    (grad,) = torch.autograd.grad(losses["wsl"], prob)
    (bce_grad,) = torch.autograd.grad(F.binary_cross_entropy(prob.clamp(1e-7, 1 - 1e-7), label), prob)
    assert torch.equal(grad, bce_grad)
    diverged = prob.detach().clone()
    diverged[1, 3] = float("nan")  # torch's BCE alone raises "all elements of input should be between 0 and 1"
    losses = parser_loss({**out, "video_prob": diverged}, label, lambda_g=0.6, lambda_ad=0.4)
    assert torch.isnan(losses["wsl"]) and torch.isnan(losses["total"]) and torch.isfinite(losses["guided"])
