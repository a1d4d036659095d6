"""Distillation losses against hand computations on fixed tensors."""

import math

import pytest
import torch

from pakd_hf.distill import (
    HiddenProjections,
    attention_kl_per_sample,
    hidden_per_sample,
    logit_kd_loss,
    logit_kd_per_sample,
    logit_mse_per_sample,
    resolve_layer_map,
)


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_logit_kd_matches_hand_computation():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    T = 2.0
    expected = [T * T * _kl(_softmax([x / T for x in ti]), _softmax([x / T for x in si])) for si, ti in zip(s, t)]
    got = logit_kd_per_sample(torch.tensor(s), torch.tensor(t), T)
    assert got.shape == (2,)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert logit_kd_loss(torch.tensor(s), torch.tensor(t), T).item() == pytest.approx(sum(expected) / 2, abs=1e-6)


def test_logit_kd_is_zero_for_identical_logits_and_positive_otherwise():
    x = torch.randn(4, 5)
    assert torch.allclose(logit_kd_per_sample(x, x.clone(), 3.0), torch.zeros(4), atol=1e-6)
    assert (logit_kd_per_sample(x, x.flip(-1), 3.0) >= 0).all()


def test_token_level_kd_masks_padding():
    s = torch.tensor([[[1.0, 0.0], [5.0, -5.0]], [[0.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[0.0, 1.0], [-5.0, 5.0]], [[0.0, 0.0], [1.0, 0.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    T = 1.0
    row = lambda a, b: _kl(_softmax(b), _softmax(a))  # noqa: E731  KL(teacher || student)
    expected0 = row([1.0, 0.0], [0.0, 1.0])  # the padded position (huge disagreement) is ignored
    expected1 = (row([0.0, 0.0], [0.0, 0.0]) + row([0.0, 1.0], [1.0, 0.0])) / 2
    got = logit_kd_per_sample(s, t, T, mask)
    assert torch.allclose(got, torch.tensor([expected0, expected1]), atol=1e-6)


def test_logit_mse_by_hand_and_masked():
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(logit_mse_per_sample(s, t), torch.tensor([(1 + 4) / 2, (0 + 4) / 2]))
    # Unlike the KL, it still pulls when the softened probabilities nearly agree.
    a, b = torch.tensor([[10.0, -10.0]]), torch.tensor([[20.0, -20.0]])
    assert logit_kd_per_sample(a, b, 2.0).item() < 1e-3 < logit_mse_per_sample(a, b).item() == 100.0
    tok_s = torch.tensor([[[1.0, 0.0], [9.0, 9.0]]])
    tok_t = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    got = logit_mse_per_sample(tok_s, tok_t, torch.tensor([[True, False]]))
    assert torch.allclose(got, torch.tensor([0.5]))  # the padded position is ignored
    with pytest.raises(ValueError, match="same label space"):
        logit_mse_per_sample(torch.zeros(2, 3), torch.zeros(2, 4))


def test_logit_kd_rejects_different_label_spaces():
    with pytest.raises(ValueError, match="same label space"):
        logit_kd_per_sample(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


def test_hidden_mse_and_cosine_by_hand():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    t = torch.tensor([[[1.0, 0.0], [0.0, 4.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    mse = ((0 + 4) / 2 + (9 + 0) / 2) / 2
    assert hidden_per_sample(s, t, mask, "mse").item() == pytest.approx(mse)
    cos0 = 1 / math.sqrt(5)
    cos1 = 16 / (5 * 4)
    assert hidden_per_sample(s, t, mask, "cosine").item() == pytest.approx(((1 - cos0) + (1 - cos1)) / 2, abs=1e-6)
    # Without a mask every position counts.
    assert hidden_per_sample(s, t, None, "mse").item() == pytest.approx((2 + 4.5 + 81) / 3)
    with pytest.raises(ValueError, match="unknown hidden-state loss"):
        hidden_per_sample(s, t, None, "l1")


def test_attention_kl_by_hand_and_head_averaging():
    t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # [B=1, H=1, S=2, S=2]
    s = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 1.0 * math.log(1.0 / 0.5)
    assert attention_kl_per_sample(s, t).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert attention_kl_per_sample(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(row0, abs=1e-6)
    # Two student heads vs one teacher head: the student's maps are averaged first.
    s2 = torch.cat([s, t], dim=1)
    avg = (s + t) / 2
    assert attention_kl_per_sample(s2, t).item() == pytest.approx(attention_kl_per_sample(avg, t).item(), abs=1e-7)


def test_resolve_layer_map():
    assert resolve_layer_map("auto", 2, 4, "hidden") == [(0, 0), (1, 2), (2, 4)]
    assert resolve_layer_map("auto", 3, 6, "attention") == [(0, 1), (1, 3), (2, 5)]
    assert resolve_layer_map([[1, 3]], 2, 4, "hidden") == [(1, 3)]


def test_projections_only_when_widths_differ():
    same = HiddenProjections([0, 1], 8, 8)
    x = torch.randn(2, 3, 8)
    assert len(same.maps) == 0 and same(1, x) is x
    proj = HiddenProjections([0, 1], 8, 16)
    assert proj(1, x).shape == (2, 3, 16)
