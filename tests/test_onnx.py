"""minidl.onnx.export: onnxruntime must give minidl's outputs (1e-5)."""
from __future__ import annotations

import numpy as np
import pytest

import minidl
from minidl import nn
from minidl.nn import functional as F

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from minidl.onnx import ExportError, export  # noqa: E402


def _roundtrip(model, x, tmp_path, **kwargs):
    """Export, run in onnxruntime on a fresh input of the same shape, compare."""
    path = export(model, x, tmp_path / "m.onnx", **kwargs)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    fresh = np.random.default_rng(9).standard_normal(x.shape).astype(np.float32)
    model.eval()
    with minidl.no_grad():
        expected = model(minidl.tensor(fresh))
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(None, {"input": fresh})
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-5, atol=1e-5)
    return session


@pytest.mark.parametrize("arch", ["seed", "default"])
def test_zoo_model_exports_with_a_free_batch(arch, tmp_path):
    from minidl.models import CNNAttention
    minidl.manual_seed(0)
    model = CNNAttention(arch)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    export(model, x, tmp_path / "first.onnx")
    assert model.training is True                    # restored after export
    session = _roundtrip(model, x, tmp_path, dynamic_batch=True)
    five = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    model.eval()
    np.testing.assert_allclose(session.run(None, {"input": five})[0],
                               model(minidl.tensor(five)).numpy(), rtol=1e-5, atol=1e-5)


class _Everything(nn.Module):
    """A user model touching every exported layer kind."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, count_include_pad=False, padding=1)
        self.adapt = nn.AdaptiveAvgPool2d((2, 2))
        self.ln = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 6)
        self.head = nn.Linear(6 * 4 + 8, 5)

    def forward(self, x):
        x = F.leaky_relu(self.bn(self.conv(x)), 0.1)
        x = F.gelu(self.grouped(x)) + F.silu(x) * 0.5
        x = self.adapt(self.avg(self.pool(x)))                    # (N, 8, 2, 2)
        seq = x.flatten(2).transpose(1, 2)                        # (N, 4, 8)
        seq = self.ln(seq + self.attn(seq, seq, seq)[0])
        tokens = F.gelu(self.fc(seq), approximate="tanh").tanh()  # (N, 4, 6)
        pooled = F.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1).sigmoid()
        both = minidl.cat([tokens.reshape(x.shape[0], -1), pooled[:, ::-1]], dim=1)
        y = self.head(F.pad(both, (0, 0)).clamp(-3, 3) / 2 - 1)
        return F.log_softmax(y, 1), F.softmax(y.exp().sqrt(), dim=-1).max(dim=1).values


def test_user_model_with_every_layer_kind(tmp_path):
    minidl.manual_seed(1)
    model = _Everything()
    model.bn.running_mean._data[:] = np.linspace(-0.5, 0.5, 8, dtype=np.float32)
    model.bn.running_var._data[:] = np.linspace(0.5, 2, 8, dtype=np.float32)
    x = np.random.default_rng(2).standard_normal((2, 3, 15, 15)).astype(np.float32)
    _roundtrip(model, x, tmp_path)


def test_sequential_with_flatten_and_3d_input(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    _roundtrip(model, np.zeros((1, 1, 6, 6), np.float32), tmp_path)


def test_an_op_without_translation_is_named(tmp_path):
    class Std(nn.Module):
        def forward(self, x):
            return x.std(dim=1)
    with pytest.raises(ExportError, match=r"op Std \(minidl.ops.reduce\) cannot be exported"):
        export(Std(), np.ones((2, 3), np.float32), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_dropout_left_in_training_is_refused(tmp_path):
    class AlwaysDrop(nn.Module):
        def forward(self, x):
            return F.dropout(x, 0.5, training=True)
    with pytest.raises(ExportError, match="Dropout.*training mode"):
        export(AlwaysDrop(), np.ones((2, 3), np.float32), tmp_path / "m.onnx")


def test_values_computed_outside_the_ops_are_caught(tmp_path):
    class Frozen(nn.Module):
        def forward(self, x):
            return x * minidl.tensor(x.numpy().mean())    # leaves minidl's ops: a constant
    with pytest.raises(ExportError, match="does not reproduce the model"):
        export(Frozen(), np.ones((2, 3), np.float32), tmp_path / "m.onnx")


def test_dict_outputs_and_gather_locations_with_an_index_input(tmp_path):
    from minidl.ops.detection import gather_locations

    class Pick(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1)

        def forward(self, x, index):
            maps = self.conv(x)
            return {"features": gather_locations(maps, index), "maps": maps, "none": None}
    model = Pick()
    x = np.random.default_rng(3).standard_normal((2, 2, 4, 5)).astype(np.float32)
    index = np.array([[0, 19, 7], [3, 3, 11]])
    path = export(model, (x, index), tmp_path / "m.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features", "maps"]
    other = np.array([[5, 1, 2], [18, 0, 4]])
    got = session.run(None, {"input0": x, "input1": other})
    np.testing.assert_allclose(got[0], model(minidl.tensor(x), other)["features"].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_the_detector_is_refused_clearly_not_exported_wrong(tmp_path):
    # its object stage computes indices with NumPy (peaks, neighbourhoods, box
    # decoding), outside the traced ops: the check must catch the frozen values
    from minidl.models.detector import CNNAttentionDetector
    model = CNNAttentionDetector()
    x = np.random.default_rng(4).random((1, 1, 64, 64), dtype=np.float32)
    for example in (x, (x, np.array([[5, 40, 100]]))):
        with pytest.raises(ExportError, match="does not reproduce the model"):
            export(model, example, tmp_path / "det.onnx")
    assert not (tmp_path / "det.onnx").exists()


class _Indexing(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        y = self.ln(x + self.attn(x, x, x)[0])
        return (y[:, 0] + y[..., -1, :] * 2, y[None, :, ::-2, 1:5], y[:, -2:, None, 3],
                y.reshape(-1, 8).sum(0), y.expand(3, -1, -1, -1).mean(0))


def test_basic_indexing_reshape_and_expand_keep_the_batch_free(tmp_path):
    minidl.manual_seed(3)
    model = _Indexing()
    x = np.random.default_rng(5).random((2, 5, 8), dtype=np.float32)
    path = export(model, x, tmp_path / "m.onnx", dynamic_batch=True)   # checked on batch 3 too
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    four = np.random.default_rng(6).random((4, 5, 8), dtype=np.float32)
    model.eval()
    for got, expected in zip(session.run(None, {"input": four}), model(minidl.tensor(four))):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_advanced_indexing_exports_with_fixed_shapes(tmp_path):
    class Pick(nn.Module):
        def forward(self, x):
            return x[:, [0, 2]] * 2 + x[-1, :2]
    x = np.random.default_rng(8).random((2, 3, 4), dtype=np.float32)
    _roundtrip(Pick(), x, tmp_path)
    with pytest.raises(ExportError, match="a batch of another size"):
        export(Pick(), x, tmp_path / "d.onnx", dynamic_batch=True)


@pytest.mark.parametrize("form", ["causal", "bool_mask", "float_mask", "weights",
                                  "key_padding"])
def test_fused_attention_exports_with_each_mask_form(form, tmp_path):
    """The fused attention op (masks, causal cut, weights output, a row with every key
    masked) as ONNX MatMul/Softmax nodes, equal to minidl's output."""
    minidl.manual_seed(3)
    L, E = 5, 8
    mha = nn.MultiheadAttention(E, 2, batch_first=True)
    bool_mask = np.tri(L, L, dtype=bool) | np.eye(L, k=2, dtype=bool)
    bool_mask[4] = False                                  # a query that sees no key

    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            q = x.reshape(2, L, 2, 4).transpose(1, 2)
            if form == "causal":
                return F.scaled_dot_product_attention(q, q * 2, q, is_causal=True)
            if form == "bool_mask":
                return F.scaled_dot_product_attention(q, q, q, attn_mask=bool_mask)
            if form == "float_mask":
                m = np.linspace(-1, 1, L * L, dtype=np.float32).reshape(L, L)
                return F.scaled_dot_product_attention(q, q, q, attn_mask=m)
            if form == "weights":
                out, w = self.mha(x, x, x, need_weights=True)
                return out, w
            pad = np.array([[False] * 4 + [True], [False] * L])
            return self.mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]

    x = np.random.default_rng(4).standard_normal((2, L, E)).astype(np.float32)
    _roundtrip(Attend(), x, tmp_path)
