"""The fused attention, LayerNorm, GELU and softmax kernels against the composed
reference and PyTorch; batched matmul, bmm, einsum; Embedding; TransformerEncoder."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import randn
from torch_helpers import check_vs_torch

import minidl
from minidl import backend, nn
from minidl.nn import functional as F
from minidl.ops.attention import reference_attention
from minidl.testing import assert_close, gradcheck


@pytest.fixture
def unfused():
    """Run the body with the NumPy (unfused) kernels; restore Numba afterwards."""
    was = backend.numba_enabled()
    backend.set_numba_enabled(False)
    yield
    backend.set_numba_enabled(was)


def _qkv(lead, L, S, E, Ev, seed=0, dtype=np.float64):
    return [minidl.tensor(randn(seed + i, lead + shape).astype(dtype), requires_grad=True)
            for i, shape in enumerate([(L, E), (S, E), (S, Ev)])]


def _grads(fn, tensors, gy):
    for t in tensors:
        t.grad = None
    out = fn(*tensors)
    (out * minidl.tensor(gy)).sum().backward()
    return [out.numpy()] + [t.grad.numpy().copy() for t in tensors]


MASKS = {
    "none": lambda L, S: None,
    "bool": lambda L, S: np.random.default_rng(5).random((L, S)) > 0.3,
    "float per batch": lambda L, S: randn(6, (2, 1, L, S)),
    "padding row": lambda L, S: np.arange(S) < np.array([[[[S]]], [[[S - 2]]]]),
}


@pytest.mark.parametrize("mask,L,S,causal",
                         [(m, 5, 7, False) for m in sorted(MASKS)]
                         + [(m, 3, 300, False) for m in sorted(MASKS)]
                         + [("none", 6, 6, True), ("none", 270, 270, True)])
def test_fused_attention_matches_the_composed_reference(mask, L, S, causal):
    """Several key tiles (S > 256), masks of every kind, causal, in float64."""
    m = MASKS[mask](L, S)
    q, k, v = _qkv((2, 3), L, S, 4, 5)
    gy = randn(9, (2, 3, L, 5))
    fused = _grads(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=m, is_causal=causal), [q, k, v], gy)
    ref = _grads(lambda q, k, v: reference_attention(q, k, v, m, 0.0, causal)[0], [q, k, v], gy)
    for a, b in zip(fused, ref):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_causal_pattern_mask_gives_what_is_causal_gives():
    q, k, v = _qkv((2,), 5, 5, 4, 3)
    gy = randn(7, (2, 5, 3))
    as_mask = _grads(lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=np.tri(5, dtype=bool)), [q, k, v], gy)
    flag = _grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                  [q, k, v], gy)
    for a, b in zip(as_mask, flag):
        assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_fused_attention_gradcheck_with_masks_dropout_and_weights():
    q, k, v = randn(0, (2, 3, 4)), randn(1, (2, 5, 4)), randn(2, (2, 5, 3))
    mask = np.array([True, True, False, True, True])
    gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                             scale=0.7), [q, k, v])

    def dropped(q, k, v):
        minidl.manual_seed(4)    # the same dropout draws in every evaluation
        out, w = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, return_weights=True)
        return out.sum(axis=-1, keepdims=True) * 0.5 + w
    gradcheck(dropped, [q, k, v])


def test_fused_attention_dropout_is_seeded_and_matches_its_weights():
    q = minidl.tensor(randn(0, (2, 3, 6, 4)))
    minidl.manual_seed(1)
    out, w = F.scaled_dot_product_attention(q, q, q, dropout_p=0.4, return_weights=True)
    assert_close(out.numpy(), w.numpy() @ q.numpy(), rtol=1e-12, atol=1e-12)
    dropped = (w.numpy() == 0).mean()
    assert 0.25 < dropped < 0.55
    kept = w.numpy()[w.numpy() > 0]
    assert kept.max() > 1 / 6          # the kept weights are scaled by 1 / (1 - p)
    minidl.manual_seed(1)
    assert_close(F.scaled_dot_product_attention(q, q, q, dropout_p=0.4), out)


def test_fused_attention_reads_strided_and_broadcast_inputs():
    """Heads as a transposed view of (B, L, H, D) and keys shared over heads."""
    x = randn(0, (2, 5, 3, 4))
    q = minidl.tensor(x, requires_grad=True)
    k = minidl.tensor(randn(1, (2, 1, 7, 4)), requires_grad=True)
    v = minidl.tensor(randn(2, (7, 4)), requires_grad=True)
    gy = randn(3, (2, 3, 5, 4))
    args = [q, k, v]
    fused = _grads(lambda q, k, v: F.scaled_dot_product_attention(q.transpose(1, 2), k, v),
                   args, gy)
    ref = _grads(lambda q, k, v: reference_attention(q.transpose(1, 2), k, v)[0], args, gy)
    for a, b in zip(fused, ref):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fully_masked_rows_give_zeros_in_the_fused_op():
    mask = np.array([[True, False, True], [False, False, False]])
    q, k, v = _qkv((), 2, 3, 4, 5)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out.sum().backward()
    assert not out.numpy()[1].any() and not q.grad.numpy()[1].any()
    assert np.isfinite(k.grad.numpy()).all()


@pytest.mark.parametrize("mask", ["bool", "float", "causal"])
def test_fused_attention_float32_matches_torch(mask):
    torch = pytest.importorskip("torch")
    L, S = (6, 6) if mask == "causal" else (5, 7)
    m = {"bool": np.random.default_rng(2).random((L, S)) > 0.3,
         "float": randn(3, (2, 1, L, S))}.get(mask)
    tm = None if m is None else torch.tensor(m).to(torch.bool if m.dtype == bool
                                                    else torch.float32)
    causal = mask == "causal"
    check_vs_torch(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=tm, is_causal=causal),
        [(2, 3, L, 8), (2, 3, S, 8), (2, 3, S, 8)],
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal),
        dtype=np.float32, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_fused_matches_torch_with_masks(need_weights):
    torch = pytest.importorskip("torch")
    minidl.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    tmha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    tmha.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                          for k, v in mha.state_dict().items()})
    x = randn(0, (3, 5, 8)).astype(np.float32)
    causal = np.triu(np.ones((5, 5), bool), 1)           # True = masked out
    padding = np.zeros((3, 5), bool)
    padding[1, 3:] = True
    xt = torch.tensor(x, requires_grad=True)
    yt, wt = tmha(xt, xt, xt, attn_mask=torch.tensor(causal),
                  key_padding_mask=torch.tensor(padding), need_weights=need_weights)
    xm = minidl.tensor(x, requires_grad=True)
    ym, wm = mha(xm, xm, xm, attn_mask=causal, key_padding_mask=padding,
                 need_weights=need_weights)
    gy = randn(1, yt.shape).astype(np.float32)
    (yt * torch.tensor(gy)).sum().backward()
    (ym * minidl.tensor(gy)).sum().backward()
    assert_close(ym.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert_close(xm.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    if need_weights:
        assert_close(wm.numpy(), wt.detach().numpy(), rtol=1e-5, atol=1e-6)
    else:
        assert wm is None and wt is None


# --------------------------------------------------- row-wise fused kernels

def _fused_vs_numpy(fn, inputs, gy):
    xs = [minidl.tensor(x, requires_grad=True) for x in inputs]
    fused = _grads(fn, xs, gy)
    backend.set_numba_enabled(False)
    try:
        plain = _grads(fn, xs, gy)
    finally:
        backend.set_numba_enabled(True)
    for a, b in zip(fused, plain):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [
    lambda x, w, b: F.layer_norm(x, (6,), w, b),
    lambda x, w, b: F.layer_norm(x * w.sum(), (3, 6)) + b,
    lambda x, w, b: F.gelu(x) * w + b,
    lambda x, w, b: F.gelu(x, approximate="tanh") * w + b,
    lambda x, w, b: F.softmax(x * w, dim=-1) + b,
    lambda x, w, b: F.log_softmax(x * w, dim=-1) + b,
], ids=["layer_norm", "layer_norm 2 dims", "gelu", "gelu tanh", "softmax", "log_softmax"])
def test_row_kernels_match_numpy_and_gradcheck(fn):
    inputs = [randn(0, (4, 3, 6)), randn(1, (6,)) + 1, randn(2, (6,))]
    _fused_vs_numpy(fn, inputs, randn(3, (4, 3, 6)))
    gradcheck(fn, inputs)


def test_row_kernels_float32_match_torch():
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    check_vs_torch(lambda x, w, b: TF.layer_norm(x, (32,), w, b), [(4, 8, 32), (32,), (32,)],
                   lambda x, w, b: F.layer_norm(x, (32,), w, b), dtype=np.float32,
                   rtol=1e-5, atol=1e-5)
    for approximate in ("none", "tanh"):
        # both erfs are float32 approximations (each within 5e-7 of the true erf)
        check_vs_torch(lambda x: TF.gelu(x, approximate=approximate), [(64, 513)],
                       lambda x: F.gelu(x, approximate=approximate), dtype=np.float32,
                       rtol=1e-5, atol=3e-6)
    check_vs_torch(lambda x: TF.log_softmax(x, dim=-1), [(16, 65)],
                   lambda x: F.log_softmax(x, dim=-1), dtype=np.float32, rtol=1e-5, atol=1e-6)


def test_softmax_of_an_all_minus_inf_row_is_zero_in_the_fused_kernel():
    x = np.array([[-np.inf, -np.inf], [0.0, 1.0]], np.float32)
    y = F.softmax(minidl.tensor(x), dim=-1).numpy()
    assert not y[0].any() and y.dtype == np.float32
    assert np.isneginf(F.log_softmax(minidl.tensor(x), dim=-1).numpy()[0]).all()


# --------------------------------------------------------- batched products

@pytest.mark.parametrize("shapes", [((4, 3, 5), (4, 5, 2)), ((2, 3, 4, 5), (1, 3, 5, 6)),
                                    ((2, 4, 5), (5, 3)), ((4, 5), (2, 5, 3))])
def test_batched_matmul_matches_numpy_and_gradcheck(shapes):
    a, b = randn(0, shapes[0]), randn(1, shapes[1])
    assert_close((minidl.tensor(a) @ minidl.tensor(b)).numpy(), a @ b, rtol=1e-12, atol=1e-12)
    gradcheck(lambda a, b: a @ b, [a, b])


def test_batched_matmul_takes_transposed_operands_float32():
    a = np.random.default_rng(0).standard_normal((8, 6, 64, 32)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((8, 6, 64, 32)).astype(np.float32)
    got = (minidl.tensor(a) @ minidl.tensor(b).mT).numpy()
    assert got.dtype == np.float32
    assert_close(got, a @ b.swapaxes(-1, -2), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("eq,shapes", [
    ("bhld,bhsd->bhls", [(2, 3, 4, 5), (2, 3, 6, 5)]), ("ij,jk", [(3, 4), (4, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]), ("ij->", [(3, 4)]),
    ("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)]), ("i,j->ij", [(3,), (4,)])])
def test_einsum_matches_numpy_and_gradcheck(eq, shapes):
    xs = [randn(i, s) for i, s in enumerate(shapes)]
    assert_close(minidl.einsum(eq, *[minidl.tensor(x) for x in xs]).numpy(), np.einsum(eq, *xs),
                 rtol=1e-12, atol=1e-12)
    gradcheck(lambda *t: minidl.einsum(eq, *t), xs)


def test_bmm_and_einsum_reject_bad_input():
    with pytest.raises(ValueError, match=r"bmm: expected \(B, n, m\)"):
        minidl.bmm(minidl.randn(2, 3, 4), minidl.randn(3, 4, 5))
    with pytest.raises(ValueError, match="diagonal"):
        minidl.einsum("ii->i", minidl.randn(3, 3))
    with pytest.raises(ValueError, match="letter 'j' has sizes 4 and 5"):
        minidl.einsum("ij,jk", minidl.randn(3, 4), minidl.randn(5, 2))


# ----------------------------------------------------------------- Embedding

def test_embedding_matches_torch_with_padding_and_frequency_scaling():
    torch = pytest.importorskip("torch")
    idx = np.array([[0, 2, 2, 4], [4, 4, 1, 0]])
    for kwargs in ({}, {"padding_idx": 0}, {"scale_grad_by_freq": True, "padding_idx": -1}):
        minidl.manual_seed(0)
        emb = nn.Embedding(5, 3, **kwargs)
        temb = torch.nn.Embedding(5, 3, **kwargs)
        temb.weight.data = torch.from_numpy(emb.weight.numpy().copy())
        if "padding_idx" in kwargs:
            assert not emb.weight.numpy()[kwargs["padding_idx"]].any()
        gy = randn(1, (2, 4, 3)).astype(np.float32)
        (emb(idx) * minidl.tensor(gy)).sum().backward()
        (temb(torch.tensor(idx)) * torch.tensor(gy)).sum().backward()
        assert_close(emb.weight.grad.numpy(), temb.weight.grad.numpy())


def test_embedding_max_norm_renormalises_looked_up_rows_like_torch():
    torch = pytest.importorskip("torch")
    w = (randn(0, (6, 4)) * 3).astype(np.float32)
    idx = np.array([1, 3, 3])
    out = F.embedding(idx, minidl.tensor(w.copy()), max_norm=1.5)
    tw = torch.tensor(w.copy())
    tout = torch.nn.functional.embedding(torch.tensor(idx), tw, max_norm=1.5)
    assert_close(out.numpy(), tout.numpy(), rtol=1e-6, atol=1e-6)


def test_embedding_backward_is_deterministic_and_gradchecks():
    idx = np.random.default_rng(0).integers(0, 7, size=(50,))
    w = randn(1, (7, 3))
    gradcheck(lambda w: F.embedding(idx, w), [w])
    grads = []
    for _ in range(2):
        t = minidl.tensor(w.astype(np.float32), requires_grad=True)
        (F.embedding(idx, t) * minidl.tensor(randn(2, (50, 3)).astype(np.float32))).sum() \
            .backward()
        grads.append(t.grad.numpy())
    assert (grads[0] == grads[1]).all()


def test_embedding_rejects_bad_input():
    emb = nn.Embedding(4, 2)
    with pytest.raises(IndexError, match=r"indices must be in \[0, 4\)"):
        emb(np.array([0, 4]))
    with pytest.raises(TypeError, match="integer indices"):
        emb(np.array([0.5]))
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(4, 2, padding_idx=4)


def test_embedding_on_the_gpu_matches_the_cpu(device):
    idx = np.array([[0, 2, 2], [3, 3, 3]])
    emb = nn.Embedding(5, 3, padding_idx=3)
    gy = randn(1, (2, 3, 3)).astype(np.float32)
    (emb(idx) * minidl.tensor(gy)).sum().backward()
    cpu = emb.weight.grad.numpy()
    emb.zero_grad()
    emb.to(device)
    (emb(minidl.tensor(idx, device=device)) * minidl.tensor(gy, device=device)).sum().backward()
    assert_close(emb.weight.grad.numpy(), cpu, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------- TransformerEncoder

@pytest.mark.parametrize("norm_first,activation,batch_first", [
    (False, "relu", False), (True, "gelu", True), (False, "gelu", True)])
def test_transformer_encoder_matches_torch(norm_first, activation, batch_first):
    torch = pytest.importorskip("torch")
    minidl.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation,
                                       batch_first=batch_first, norm_first=norm_first)
    enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16))
    tlayer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation,
                                              batch_first=batch_first, norm_first=norm_first)
    tenc = torch.nn.TransformerEncoder(tlayer, 2, norm=torch.nn.LayerNorm(16),
                                       enable_nested_tensor=False)
    assert list(enc.state_dict()) == list(tenc.state_dict())
    tenc.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                          for k, v in enc.state_dict().items()})
    B, L = 3, 5
    x = randn(0, (B, L, 16) if batch_first else (L, B, 16)).astype(np.float32)
    mask = np.triu(np.full((L, L), -np.inf, np.float32), 1)
    padding = np.zeros((B, L), np.float32)     # float, as the mask (torch warns on a mix)
    padding[2, 4] = -np.inf
    xt = torch.tensor(x, requires_grad=True)
    yt = tenc(xt, mask=torch.tensor(mask), src_key_padding_mask=torch.tensor(padding))
    xm = minidl.tensor(x, requires_grad=True)
    ym = enc(xm, mask=mask, src_key_padding_mask=padding)
    gy = randn(1, x.shape).astype(np.float32)
    (yt * torch.tensor(gy)).sum().backward()
    (ym * minidl.tensor(gy)).sum().backward()
    assert_close(ym.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert_close(xm.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    tparams = dict(tenc.named_parameters())
    for name, p in enc.named_parameters():
        assert_close(p.grad.numpy(), tparams[name].grad.numpy(), rtol=1e-4, atol=1e-5)


def test_transformer_encoder_layer_checks_its_activation_and_copies_layers():
    with pytest.raises(ValueError, match="activation must be 'relu', 'gelu'"):
        nn.TransformerEncoderLayer(8, 2, activation="tanh")
    layer = nn.TransformerEncoderLayer(8, 2, 16, dtype=np.float64)
    enc = nn.TransformerEncoder(layer, 2)
    assert enc.layers[0].linear1.weight is not enc.layers[1].linear1.weight
    assert enc.layers[0].linear1.weight.dtype == np.float64
    layer.eval()
    y = layer(minidl.tensor(randn(0, (4, 2, 8))), is_causal=True)
    assert y.shape == (4, 2, 8)


def test_transformer_layers_run_on_the_gpu(device):
    minidl.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    x = randn(0, (2, 5, 8)).astype(np.float32)
    cpu = layer(minidl.tensor(x), is_causal=True).numpy()
    layer.to(device)
    got = layer(minidl.tensor(x, device=device), is_causal=True)
    assert_close(got.numpy(), cpu, rtol=1e-5, atol=1e-5)
