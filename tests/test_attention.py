"""scaled_dot_product_attention (masks, causal, fully masked rows), MultiheadAttention
against torch via the state dict, AttentionPool2d: gradcheck and parity."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import randn
from torch_helpers import check_vs_torch

import minidl
from minidl import nn
from minidl.nn import functional as F
from minidl.testing import assert_close, gradcheck

BOOL_MASK = np.array([[True, False, True], [False, True, True]])          # True = takes part
FLOAT_MASK = np.array([[0.0, -1.0, -np.inf], [1.0, 2.0, 3.0]])


@pytest.mark.parametrize("mask", [None, "bool", "float", "causal"])
def test_sdpa_vs_torch_and_gradcheck(mask):
    torch = pytest.importorskip("torch")
    m = {"bool": BOOL_MASK, "float": FLOAT_MASK}.get(mask)
    causal = mask == "causal"
    L = 3 if causal else 2
    tm = None if m is None else torch.tensor(m)
    shapes = [(2, 2, L, 4), (2, 2, 3, 4), (2, 2, 3, 5)]
    check_vs_torch(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=tm, is_causal=causal), shapes,
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal))
    gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m,
                                                             is_causal=causal, scale=0.7),
              [randn(0, (2, L, 4)), randn(1, (2, 3, 4)), randn(2, (2, 3, 5))])


def test_sdpa_fully_masked_row_is_zero_not_nan():
    mask = np.array([[True, False, True], [False, False, False]])
    q = minidl.tensor(randn(0, (2, 4)), requires_grad=True)
    k = minidl.tensor(randn(1, (3, 4)), requires_grad=True)
    v = minidl.tensor(randn(2, (3, 5)), requires_grad=True)
    out, w = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_weights=True)
    assert not out.numpy()[1].any() and not w.numpy()[1].any()
    assert_close(w.numpy()[0].sum(), 1.0)
    out.sum().backward()
    for t in (q, k, v):
        assert np.isfinite(t.grad.numpy()).all()
    assert not q.grad.numpy()[1].any()
    float_mask = np.where(mask, 0.0, -np.inf)
    assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask), out)


def test_sdpa_float32_and_dropout():
    q = minidl.randn(2, 3, 4)
    assert F.scaled_dot_product_attention(q, q, q).dtype == np.float32
    minidl.manual_seed(0)
    a = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    minidl.manual_seed(0)
    assert_close(F.scaled_dot_product_attention(q, q, q, dropout_p=0.5), a)
    with pytest.raises(ValueError, match="same E"):
        F.scaled_dot_product_attention(q, minidl.randn(2, 3, 5), q)


def test_attention_dropout_drops_weights_in_training_only():
    minidl.manual_seed(0)
    q, k = minidl.randn(4, 16, 8), minidl.randn(4, 64, 8)
    v = minidl.tensor(np.eye(64, dtype=np.float32)[None].repeat(4, axis=0))   # out = weights
    plain = F.scaled_dot_product_attention(q, k, v).numpy()
    dropped = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25).numpy()
    zeroed = dropped == 0
    assert 0.2 < zeroed.mean() < 0.3   # each weight dropped with probability 0.25
    assert_close(dropped[~zeroed], plain[~zeroed] / 0.75, rtol=1e-5, atol=1e-7)
    # MultiheadAttention: dropout in train(), none in eval()
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    x = minidl.randn(2, 5, 8)
    mha.eval()
    out_eval, w_eval = mha(x, x, x)
    mha.dropout = 0.0
    out_ref, _ = mha(x, x, x)
    assert_close(out_eval, out_ref)
    mha.dropout = 0.5
    mha.train()
    _, w_train = mha(x, x, x, average_attn_weights=False)
    assert (w_train.numpy() == 0).any()


def _mha_pair(batch_first, kdim=None):
    torch = pytest.importorskip("torch")
    m = nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim).double()
    t = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim,
                                    dtype=torch.float64)
    result = t.load_state_dict({k: torch.tensor(v.numpy()) for k, v in m.state_dict().items()})
    assert not result.missing_keys and not result.unexpected_keys
    return m, t


@pytest.mark.parametrize("batch_first,kdim", [(False, None), (True, None), (False, 5)])
@pytest.mark.parametrize("average", [True, False])
def test_multihead_attention_matches_torch(batch_first, kdim, average):
    torch = pytest.importorskip("torch")
    m, t = _mha_pair(batch_first, kdim)
    rng = np.random.default_rng(0)
    L, S, B = 3, 4, 2

    def shape(n, e):
        return (B, n, e) if batch_first else (n, B, e)

    q, k, v = (rng.standard_normal(shape(L, 8)), rng.standard_normal(shape(S, kdim or 8)),
               rng.standard_normal(shape(S, kdim or 8)))
    kpm = np.array([[False, False, True, False], [False, False, False, True]])   # True = OUT
    am = np.array([[False, True, False, False], [False] * 4, [True, False, False, False]])
    mq, tq = minidl.tensor(q, requires_grad=True), torch.tensor(q, requires_grad=True)
    o, w = m(mq, minidl.tensor(k), minidl.tensor(v), key_padding_mask=kpm, attn_mask=am,
             average_attn_weights=average)
    to, tw = t(tq, torch.tensor(k), torch.tensor(v), key_padding_mask=torch.tensor(kpm),
               attn_mask=torch.tensor(am), average_attn_weights=average)
    assert_close(o, to.detach().numpy())
    assert_close(w, tw.detach().numpy())
    g = rng.standard_normal(o.shape)
    o.backward(g)
    to.backward(torch.tensor(g))
    assert_close(mq.grad, tq.grad.numpy())
    tparams = dict(t.named_parameters())
    for name, p in m.named_parameters():
        assert_close(p.grad, tparams[name].grad.numpy(), msg=f"{name}: ")
    assert m(mq, minidl.tensor(k), minidl.tensor(v), need_weights=False)[1] is None


def test_multihead_attention_unbatched_float_mask_and_gradcheck():
    torch = pytest.importorskip("torch")
    m, t = _mha_pair(False)
    x = randn(3, (3, 8))
    fm = np.array([[0.0, -1.0, 0.5], [0.0, 0.0, -np.inf], [2.0, 0.0, 0.0]])
    o, w = m(*[minidl.tensor(x)] * 3, attn_mask=fm)
    to, tw = t(*[torch.tensor(x)] * 3, attn_mask=torch.tensor(fm))
    assert_close(o, to.detach().numpy())
    assert_close(w, tw.detach().numpy())
    gradcheck(lambda q, k, v: m(q, k, v, attn_mask=fm)[0],
              [randn(0, (3, 1, 8)), randn(1, (4, 1, 8))[:3], randn(2, (3, 1, 8))])
    with pytest.raises(ValueError, match=r"MultiheadAttention.*query \(L, B, E\) with E = 8"):
        m(minidl.randn(3, 2, 6), minidl.randn(3, 2, 8), minidl.randn(3, 2, 8))


def test_attention_pool2d():
    minidl.manual_seed(0)
    pool = nn.AttentionPool2d(4, 3, 2, num_heads=2)
    x = minidl.randn(5, 4, 3, 2)
    pooled, amap = pool(x)
    assert pooled.shape == (5, 4) and amap.shape == (5, 3, 2) and pooled.dtype == np.float32
    assert_close(amap.numpy().sum(axis=(1, 2)), np.ones(5, np.float32), atol=1e-6)
    names = {n for n, _ in pool.named_parameters()}
    assert {"query", "pos_embedding", "attn.in_proj_weight", "attn.out_proj.weight"} <= names
    pool.double()
    params = [p.numpy().copy() for p in pool.parameters()]
    pnames = [n for n, _ in pool.named_parameters()]

    def run(x, *ps):
        for name, p in zip(pnames, ps):
            *path, leaf = name.split(".")
            sub = pool
            for part in path:
                sub = getattr(sub, part)
            sub._parameters[leaf] = p
        return pool(x)

    gradcheck(run, [randn(0, (2, 4, 3, 2))] + params)
    with pytest.raises(ValueError, match=r"AttentionPool2d.*\(B, 4, 3, 2\)"):
        pool(minidl.randn(2, 4, 2, 3))


def test_multihead_attention_is_causal_combines_with_other_masks():
    # Regression: is_causal was dropped whenever a key_padding_mask or attn_mask was given.
    # PyTorch needs the causal mask spelled out, so it gets the equivalent explicit mask.
    torch = pytest.importorskip("torch")
    m, t = _mha_pair(True)
    L = 4
    x = randn(5, (2, L, 8))
    above_diagonal = np.triu(np.ones((L, L), bool), 1)                # True = masked OUT
    kpm = np.array([[False, False, True, False], [False, True, False, False]])
    am = np.zeros((L, L), bool)
    am[3, 1] = True
    for attn_mask in (None, am):
        o, w = m(*[minidl.tensor(x)] * 3, key_padding_mask=kpm, attn_mask=attn_mask,
                 is_causal=True)
        explicit = above_diagonal if attn_mask is None else above_diagonal | attn_mask
        to, tw = t(*[torch.tensor(x)] * 3, key_padding_mask=torch.tensor(kpm),
                   attn_mask=torch.tensor(explicit))
        assert not (w.numpy() * above_diagonal).any()
        assert_close(o, to.detach().numpy())
        assert_close(w, tw.detach().numpy())


def test_multihead_attention_names_mismatched_batch_or_length():
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    q = minidl.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"share the batch size.*\(2, 5\) for query, \(3, 5\)"):
        mha(q, minidl.randn(3, 5, 4), minidl.randn(3, 5, 4))
    with pytest.raises(ValueError, match="key and value the length"):
        mha(q, minidl.randn(2, 5, 4), minidl.randn(2, 6, 4))
