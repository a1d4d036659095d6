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
    token_divergence,
    token_kd_per_sample,
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


# ------------------------------------------------------------- causal LM, token level
def test_token_divergences_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    ps, pt = _softmax([1.0, 2.0, 0.5]), _softmax([2.0, 0.0, 1.0])
    assert token_divergence(s, t, 1.0, "kl").item() == pytest.approx(_kl(pt, ps), rel=1e-5)
    assert token_divergence(s, t, 1.0, "reverse_kl").item() == pytest.approx(_kl(ps, pt), rel=1e-5)
    m = [0.3 * a + 0.7 * b for a, b in zip(pt, ps)]
    want = 0.3 * _kl(pt, m) + 0.7 * _kl(ps, m)
    assert token_divergence(s, t, 1.0, "jsd", beta=0.3).item() == pytest.approx(want, rel=1e-5)
    # temperature: T^2 * KL of the softened distributions
    p2s, p2t = _softmax([0.5, 1.0, 0.25]), _softmax([1.0, 0.0, 0.5])
    assert token_divergence(s, t, 2.0, "kl").item() == pytest.approx(4 * _kl(p2t, p2s), rel=1e-5)
    with pytest.raises(ValueError, match="beta"):
        token_divergence(s, t, 1.0, "jsd", beta=1.0)


def _full_reference(hs, head_s, ht, head_t, labels, temperature, loss, beta=0.5):
    """The unchunked computation: whole [B, S, V] logits, shifted, masked."""
    ls = head_s(hs)[:, :-1]
    with torch.no_grad():
        lt = head_t(ht)[:, :-1]
    y = labels[:, 1:]
    valid = y.ne(-100)
    d = token_divergence(ls.reshape(-1, ls.shape[-1]), lt.reshape(-1, lt.shape[-1]), temperature, loss, beta)
    ce = torch.nn.functional.cross_entropy(ls.reshape(-1, ls.shape[-1]).float(), y.reshape(-1).clamp_min(0),
                                           reduction="none")
    d, ce = d.view_as(y) * valid, ce.view_as(y) * valid
    n = valid.sum(1).clamp_min(1)
    return d.sum(1) / n, ce.sum(1) / n


@pytest.mark.parametrize("loss", ["kl", "reverse_kl", "jsd"])
def test_chunked_token_kd_equals_unchunked_values_and_gradients(loss):
    g = torch.Generator().manual_seed(0)
    B, S, Ds, Dt, V = 3, 7, 6, 10, 50
    head_s, head_t = torch.nn.Linear(Ds, V, bias=False), torch.nn.Linear(Dt, V, bias=False)
    hs = torch.randn(B, S, Ds, generator=g, requires_grad=True)
    ht = torch.randn(B, S, Dt, generator=g)
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[0, 4:] = -100  # padding
    labels[2, :] = -100   # a sample with nothing to predict
    ref_kd, ref_ce = _full_reference(hs, head_s, ht, head_t, labels, 2.0, loss)
    (ref_kd.sum() + ref_ce.sum()).backward()
    ref_grads = hs.grad.clone(), head_s.weight.grad.clone()
    hs.grad, head_s.weight.grad = None, None
    for chunk in (1, 4, 1000):
        kd, ce = token_kd_per_sample(hs, head_s, ht, head_t, labels, temperature=2.0, loss=loss, chunk_size=chunk)
        assert torch.allclose(kd, ref_kd, atol=1e-6) and torch.allclose(ce, ref_ce, atol=1e-6)
        assert kd[2].item() == 0.0 and ce[2].item() == 0.0
        (kd.sum() + ce.sum()).backward()
        assert torch.allclose(hs.grad, ref_grads[0], atol=1e-6) and torch.allclose(head_s.weight.grad, ref_grads[1], atol=1e-6)
        assert head_t.weight.grad is None  # the teacher never trains
        hs.grad, head_s.weight.grad = None, None


def test_chunked_token_kd_holds_one_chunk_of_logits_for_backward():
    """What autograd keeps for the backward pass: with checkpointed chunks, no [N, V] logits."""
    B, S, D, V = 2, 64, 8, 4096
    head_s, head_t = torch.nn.Linear(D, V, bias=False), torch.nn.Linear(D, V, bias=False)
    hs = torch.randn(B, S, D, requires_grad=True)
    ht, labels = torch.randn(B, S, D), torch.randint(0, V, (B, S))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kd, ce = token_kd_per_sample(hs, head_s, ht, head_t, labels, chunk_size=16)
    assert max(saved) < 16 * V  # no saved tensor as large as even one chunk's logits
    (kd.sum() + ce.sum()).backward()
    assert hs.grad is not None and hs.grad.abs().sum() > 0
