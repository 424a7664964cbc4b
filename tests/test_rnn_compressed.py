"""Int8 and block-sparse fused RNN modules (compress.nn.rnn) against torch's modules on the weights
they compute with, and their conversion by compress.quantize / compress.sparsify."""
import itertools
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import compress
from compress import ops
from compress.nn import (FusedGRU, FusedLSTM, Int8GRU, Int8GRUCell, Int8Linear, Int8LSTM, Int8LSTMCell,
                         SparseGRU, SparseGRUCell, SparseLSTM, SparseLSTMCell)
from helpers import assert_close_scaled, poisoned_outputs

# float32: a module and its torch twin (the weights it computes with) differ only by summation order
# (the int8 input projection scales after the dot product, torch before) compounded over T steps:
# the fused-RNN bar of test_fused_rnn.py.
OUT_TOL = 1e-4

pytestmark = [pytest.mark.filterwarnings("ignore:compress. .* runs the slow plain-PyTorch reference"),
              pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")]

TORCH = {"LSTM": nn.LSTM, "GRU": nn.GRU, "LSTMCell": nn.LSTMCell, "GRUCell": nn.GRUCell}
INT8 = {"LSTM": Int8LSTM, "GRU": Int8GRU, "LSTMCell": Int8LSTMCell, "GRUCell": Int8GRUCell}
SPARSE = {"LSTM": SparseLSTM, "GRU": SparseGRU, "LSTMCell": SparseLSTMCell, "GRUCell": SparseGRUCell}


def zero_blocks(m: nn.Module, block, keep=0.3, seed=0) -> nn.Module:
    """Zero a random ~(1 - keep) of the (rows x cols) blocks of every recurrent weight of m, in place."""
    g = torch.Generator().manual_seed(seed)
    bn, bk = block
    with torch.no_grad():
        for name, w in m.named_parameters():
            if name.startswith("weight_hh"):
                R, C = -(-w.shape[0] // bn), -(-w.shape[1] // bk)
                mask = (torch.rand(R, C, generator=g) < keep).repeat_interleave(bn, 0).repeat_interleave(bk, 1)
                w.mul_(mask[: w.shape[0], : w.shape[1]])
    return m


def twin(m, kind, **kw) -> nn.Module:
    """torch's module holding the float weights m computes with."""
    t = TORCH[kind](m.input_size, m.hidden_size, **kw)
    t.load_state_dict(m.float_state_dict())
    return t


def make(family, kind, block=(4, 4), **kw):
    """(compressed module, reference, float source) of `kind` with options kw. int8: the reference
    is torch's module on the dequantized weights; sparse: the block-pruned source itself."""
    torch.manual_seed(0)
    src = TORCH[kind](5 if "Cell" not in kind else 6, 8, **kw)
    if family == "int8":
        m = INT8[kind].from_float(src)
        return m, twin(m, kind, **kw), src
    zero_blocks(src, block)
    m = SPARSE[kind].from_dense(src, block)
    assert m.float_state_dict().keys() == src.state_dict().keys()
    for k, v in m.float_state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    return m, src, src


def _flat(out):
    y, s = out
    y = y.data if isinstance(y, nn.utils.rnn.PackedSequence) else y
    return [y] + (list(s) if isinstance(s, tuple) else [s])


def _states(kind, L, B, H, P):
    h = torch.randn(L, B, P)
    return h if kind == "GRU" else (h, torch.randn(L, B, H))


OPTIONS = [("LSTM", dict(num_layers=L, bias=b, batch_first=bf, bidirectional=bi, proj_size=p))
           for L, b, bf, bi, p in itertools.product((1, 2), (True, False), (False, True), (False, True), (0, 3))
           if not (bf and not b)]
OPTIONS += [("GRU", {k: v for k, v in o.items() if k != "proj_size"}) for _, o in OPTIONS if not o["proj_size"]]


@pytest.mark.parametrize("family", ["int8", "sparse"])
@pytest.mark.parametrize("kind,opts", OPTIONS,
                         ids=[k + "-" + "-".join(f"{a}{int(v)}" for a, v in o.items()) for k, o in OPTIONS])
def test_matches_torch_on_its_weights(family, kind, opts):
    m, ref, src = make(family, kind, **opts)
    T, B = 7, 3
    x = torch.randn(*((B, T) if opts["batch_first"] else (T, B)), 5)
    D = 2 if opts["bidirectional"] else 1
    hx = _states(kind, opts["num_layers"] * D, B, 8, opts.get("proj_size") or 8)
    with torch.no_grad(), poisoned_outputs():
        got, want = _flat(m(x, hx)), _flat(ref(x, hx))
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close_scaled(a, b, OUT_TOL, f"{family} {kind} {opts}: output {i}")
    if family == "int8":  # and the int8 weights are a close stand-in for the float module's
        y, y_src = got[0], src(x, hx)[0].detach()
        assert ((y - y_src).norm() / y_src.norm()).item() < 0.02


@pytest.mark.parametrize("family", ["int8", "sparse"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_packed_unbatched_and_zero_states(family, kind):
    kw = dict(proj_size=3) if kind == "LSTM" else {}
    m, ref, _ = make(family, kind, num_layers=2, bidirectional=True, **kw)
    P = 3 if kind == "LSTM" else 8
    lengths = torch.tensor([2, 5, 1, 4])
    x = torch.randn(5, 4, 5)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    hx1 = _states(kind, 4, 1, 8, P)
    hx_unbatched = tuple(s[:, 0] for s in hx1) if kind == "LSTM" else hx1[:, 0]
    with torch.no_grad():
        for what, args in (("packed", (packed, _states(kind, 4, 4, 8, P))), ("packed, zero states", (packed,)),
                           ("unbatched", (x[:, 0], hx_unbatched)), ("unbatched, zero states", (x[:, 0],)),
                           ("zero states", (x,))):
            for i, (a, b) in enumerate(zip(_flat(m(*args)), _flat(ref(*args)))):
                assert_close_scaled(a, b, OUT_TOL, f"{family} {kind} {what}: output {i}")
        out = m(packed)[0]
    assert torch.equal(out.batch_sizes, packed.batch_sizes) and torch.equal(out.sorted_indices, packed.sorted_indices)


@pytest.mark.parametrize("family", ["fused", "int8", "sparse"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_empty_input_multi_layer(family, kind, bidirectional):
    """An empty batch gives torch's empty outputs; an empty sequence (torch raises) gives an empty
    output and h_n = h_0, as the ops do for T = 0."""
    kw = dict(num_layers=2, bidirectional=bidirectional)
    if family == "fused":
        torch.manual_seed(0)
        ref = TORCH[kind](5, 8, **kw)
        m = {"LSTM": FusedLSTM, "GRU": FusedGRU}[kind].from_torch(ref)
    else:
        m, ref, _ = make(family, kind, **kw)
    L = 2 * (2 if bidirectional else 1)
    with torch.no_grad():
        x = torch.randn(4, 0, 5)
        for i, (a, b) in enumerate(zip(_flat(m(x)), _flat(ref(x)))):
            assert a.shape == b.shape, f"{family} {kind} B=0: output {i} {tuple(a.shape)} != {tuple(b.shape)}"
        hx = _states(kind, L, 3, 8, 8)
        y, *h_n = _flat(m(torch.randn(0, 3, 5), hx))
        assert y.shape == (0, 3, 8 * L // 2)
        for a, b in zip(h_n, [hx] if kind == "GRU" else hx):
            assert torch.equal(a, b)

@pytest.mark.parametrize("family", ["int8", "sparse"])
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False])
def test_cells(family, kind, bias):
    m, ref, _ = make(family, kind, block=(2, 4), bias=bias)
    for B, unbatched in ((3, False), (1, True)):
        shp = (8,) if unbatched else (B, 8)
        x = torch.randn(*((6,) if unbatched else (B, 6)))
        hx = torch.randn(shp) if kind == "GRUCell" else (torch.randn(shp), torch.randn(shp))
        with torch.no_grad(), poisoned_outputs():
            for what, args in (("given state", (x, hx)), ("zero state", (x,))):
                got, want = m(*args), ref(*args)
                got, want = (got, want) if kind == "LSTMCell" else ((got,), (want,))
                for i, (a, b) in enumerate(zip(got, want)):
                    assert_close_scaled(a, b, OUT_TOL, f"{family} {kind} B={B} {what}: output {i}")


def test_int8_lstm_cell_keeps_a_long_carried_state():
    """Silero VAD's use: LSTMCell(128, 128) at batch 1, the state carried over many calls."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(128, 128)
    q = Int8LSTMCell.from_float(cell)
    hs = {}
    with torch.no_grad():
        for name, m in (("float", cell), ("int8", q)):
            torch.manual_seed(1)
            state, out = None, []
            for _ in range(300):
                state = m(torch.randn(1, 128), state)
                out.append(state[0])
            hs[name] = torch.cat(out)
    cos = torch.nn.functional.cosine_similarity(hs["int8"], hs["float"], dim=1)
    assert cos.min().item() > 0.99, cos.min()


@pytest.mark.parametrize("family", ["int8", "sparse"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell"])
def test_bf16_error_at_most_twice_torchs(family, kind):
    """Against the float32 twin, our bf16 run errs at most 2x torch's bf16 run (plus 2^-8, one bf16
    rounding of the output, for runs where torch happens to be nearly exact)."""
    m, ref, _ = make(family, kind, block=(4, 4))
    x = torch.randn(*((3,) if "Cell" in kind else (20, 3)), m.input_size)
    with torch.no_grad():
        want = _flat(ref(x)) if "Cell" not in kind else list(ref(x))
        got = m.to(torch.bfloat16)(x.bfloat16())
        torch_bf16 = ref.to(torch.bfloat16)(x.bfloat16())
        got, torch_bf16 = ((list(got), list(torch_bf16)) if "Cell" in kind else (_flat(got), _flat(torch_bf16)))
    for i, (a, t, w) in enumerate(zip(got, torch_bf16, want)):
        assert a.dtype == torch.bfloat16, f"output {i}: {a.dtype}"
        scale = w.abs().max()
        err, torch_err = (a.float() - w).abs().max() / scale, (t.float() - w).abs().max() / scale
        assert err <= 2 * torch_err + 2 ** -8, f"{family} {kind} output {i}: {err:.3g} vs torch {torch_err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_int8_half_keeps_scales_float32(dtype):
    m, _, _ = make("int8", "LSTM", proj_size=3, bidirectional=True)
    x = torch.randn(4, 2, 5)
    y32 = m(x)[0]
    m = m.half() if dtype == torch.float16 else m.to(dtype)
    scales = {n: b.dtype for n, b in m.named_buffers() if n.endswith("_scale")}
    assert len(scales) == 6 and set(scales.values()) == {torch.float32}, scales
    assert m.weight_ih_l0.dtype == torch.int8 and m.bias_ih_l0.dtype == dtype
    y = m(x.to(dtype))[0]
    assert y.dtype == dtype
    assert_close_scaled(y.float(), y32.detach(), 2 ** -6, "half-precision run vs float32")
    assert m(x)[0].dtype == torch.float32, "the int8 modules take any float input"


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_int8_state_dict_round_trip(kind):
    kw = dict(num_layers=2, bidirectional=True) if "Cell" not in kind else {}
    m, _, _ = make("int8", kind, **kw)
    sd = m.state_dict()
    torch_names = set(TORCH[kind](5, 8, **kw).state_dict())
    assert {k for k in sd if not k.endswith("_scale")} == torch_names
    assert {k[: -len("_scale")] for k in sd if k.endswith("_scale")} == {k for k in torch_names if "weight" in k}
    assert all(sd[k].dtype == torch.int8 for k in torch_names if "weight" in k)
    fresh = INT8[kind](m.input_size, 8, **kw)
    fresh.load_state_dict(sd)
    x = torch.randn(*((3, m.input_size) if "Cell" in kind else (4, 3, m.input_size)))
    a, b = fresh(x), m(x)
    a, b = (a, b) if isinstance(a, torch.Tensor) else (a[0], b[0])
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "GRUCell"])
def test_sparse_state_dict_round_trip_of_another_block_count(kind):
    kw = dict(num_layers=2, bidirectional=True) if "Cell" not in kind else {}
    m, _, _ = make("sparse", kind, block=(4, 4), **kw)
    sd = m.state_dict()
    assert any(k.endswith("_values") and v.shape[0] > 0 for k, v in sd.items())
    fresh = SPARSE[kind](m.input_size, 8, block=(4, 4), **kw)  # no stored blocks yet
    fresh.load_state_dict(sd)
    x = torch.randn(*((3, m.input_size) if "Cell" in kind else (4, 3, m.input_size)))
    a, b = fresh(x), m(x)
    a, b = (a, b) if isinstance(a, torch.Tensor) else (a[0], b[0])
    assert torch.equal(a, b)
    for k, v in fresh.float_state_dict().items():
        assert torch.equal(v, m.float_state_dict()[k]), k


def test_from_fused_and_from_pruned_modules():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 8, num_layers=2)
    fused = FusedLSTM.from_torch(lstm)
    x = torch.randn(4, 2, 5)
    a, b = Int8LSTM.from_float(lstm), Int8LSTM.from_float(fused)
    assert torch.equal(a(x)[0], b(x)[0])
    gru = zero_blocks(nn.GRU(5, 8), (4, 4))
    s = SparseGRU.from_dense(FusedGRU.from_torch(gru), block=(4, 4))
    assert_close_scaled(s(x)[0], gru(x)[0].detach(), OUT_TOL, "SparseGRU from FusedGRU")
    # compress.prune keeps masks as parametrizations: the conversions take the masked weights
    held = _holder(lstm)
    compress.prune(held, 0.5, structure="block", block=(4, 4))
    report = compress.quantize(held)
    assert report["rnn"].before == "LSTM" and isinstance(held.rnn, Int8LSTM)
    mask = lstm.parametrizations.weight_hh_l1[0].mask
    assert (~mask).any() and not held.rnn.weight_hh_l1[~mask].any()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(5, 8)
        self.lstm = nn.LSTM(8, 8, num_layers=2, batch_first=True)
        self.gru = nn.GRU(8, 8, bidirectional=True, batch_first=True)
        self.cell = nn.GRUCell(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.lstm(self.proj(x))
        y, _ = self.gru(y)
        return self.head(self.cell(y[:, -1]))


class MyLSTM(nn.LSTM):
    pass


def test_quantize_converts_rnns_and_reports():
    torch.manual_seed(0)
    net = Net()
    net.custom = MyLSTM(3, 3)
    x = torch.randn(2, 6, 5)
    ref = net(x).detach()
    report = compress.quantize(net, filter_fn=lambda m, name: name != "gru")
    assert [e.name for e in report.entries] == ["proj", "lstm", "gru", "cell", "head", "custom"]
    assert [e.after for e in report.entries] == ["Int8Linear", "Int8LSTM", None, "Int8GRUCell", "Int8Linear", None]
    assert report["lstm"].before == "LSTM" and report["cell"].before == "GRUCell"
    for name, op in (("lstm", "lstm_layer_w8"), ("cell", "gru_layer_w8")):
        d = report[name].details
        assert d["mode"] == "w8 (float activations)" and d["bits"] == 8 and d["op"] == op
        assert d["backend"] == ops.resolve(op, "cpu")[0]
    assert report["gru"].reason == "excluded by filter_fn"
    assert "subclass of nn.LSTM (MyLSTM)" in report["custom"].reason
    assert type(net.gru) is nn.GRU and type(net.custom) is MyLSTM
    out = net(x).detach()
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999
    again = compress.quantize(net)
    assert [e.name for e in again.converted] == ["gru"] and isinstance(net.gru, Int8GRU)
    assert "Int8LSTM" in str(report) and "excluded by filter_fn" in str(report)


def test_quantize_fused_modules_and_what_it_cannot_convert():
    torch.manual_seed(0)
    model = nn.Sequential(FusedLSTM(4, 6))
    report = compress.quantize(model, mode="w8a16")
    assert report["0"].before == "FusedLSTM" and isinstance(model[0], Int8LSTM)
    assert report["0"].details["mode"] == "w8 (float activations)"
    root = compress.quantize(nn.LSTMCell(3, 3))
    assert "cannot be replaced in place; use Int8LSTMCell.from_float" in root["<root>"].reason
    qat = compress.quantize(Net(), qat=True)
    assert "QAT covers nn.Linear only" in qat["lstm"].reason and not qat["lstm"].converted
    assert qat["proj"].after == "QATLinear"


def _holder(rnn):
    m = nn.Module()
    m.rnn = rnn
    m.forward = lambda x: m.rnn(x)[0]
    return m


def test_sparsify_block_pruned_lstm_matches_the_pruned_model():
    torch.manual_seed(0)
    model = _holder(nn.LSTM(20, 64, num_layers=2))
    compress.prune(model, 0.8, structure="block", block=(32, 32))
    x = torch.randn(9, 3, 20)
    with torch.no_grad():
        ref = model(x)
    report = compress.sparsify(model, format="bsr", block=(32, 32))
    e = report["rnn"]
    assert e.after == "SparseLSTM" and isinstance(model.rnn, SparseLSTM), report
    assert e.details["format"] == "bsr" and e.details["block"] == (32, 32) and e.details["op"] == "lstm_layer_bsr"
    assert 0.7 < e.details["sparsity"] < 0.9 and e.details["block_density"] < 0.3
    with torch.no_grad():
        assert_close_scaled(model(x), ref, OUT_TOL, "sparsified vs pruned")


def test_sparsify_rnn_skips_and_block_rows():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("dense", nn.LSTM(6, 8))
    model.add_module("gru", zero_blocks(nn.GRU(6, 48), (16, 16)))     # 32-row blocks do not divide H = 48
    model.add_module("cell", zero_blocks(nn.LSTMCell(6, 8), (4, 4)))
    model.add_module("scattered", nn.GRUCell(6, 8))
    with torch.no_grad():
        model.scattered.weight_hh.view(-1)[::3] = 0                   # zeros, but no all-zero block
    report = compress.sparsify(model, format="bsr", block=(32, 32), filter_fn=lambda m, n: n != "cell")
    assert report["dense"].reason == "no zero recurrent weights (prune it first)"
    assert report["cell"].reason == "excluded by filter_fn"
    assert "does not fit bsr: no 8x32 block" in report["scattered"].reason
    assert isinstance(model.gru, SparseGRU) and report["gru"].details["block"] == (16, 32)
    assert "block rows 32 -> 16 to divide hidden_size = 48" in report["gru"].details["block_note"]
    report = compress.sparsify(model, format="2:4")
    assert "not for RNNs" in report["cell"].reason and type(model.cell) is nn.LSTMCell


def test_sparsify_auto_decides_by_measurement_or_says_why():
    torch.manual_seed(0)
    model = _holder(zero_blocks(nn.LSTM(16, 64), (32, 32), keep=0.2))
    x = torch.randn(5, 2, 16)
    with torch.no_grad():
        ref = model(x)
    e = compress.sparsify(model, format="auto", block=(32, 32), batch=4)["rnn"]
    if ops.resolve("lstm_layer_bsr", "cpu")[0] == "reference":
        assert not e.converted and "only the slow reference backend runs lstm_layer_bsr" in e.reason
    else:
        text = e.details["why"] if e.converted else e.reason
        assert "fastest at batch 4, 16 steps on cpu" in text and "dense" in text and "bsr" in text, e
        assert e.converted == isinstance(model.rnn, SparseLSTM)
    with torch.no_grad():
        assert_close_scaled(model(x), ref, OUT_TOL, "auto")


def test_compile_fullgraph_and_export():
    torch.manual_seed(0)
    net = Net()
    zero_blocks(net.gru, (4, 4))
    compress.sparsify(net, format="bsr", block=(4, 4), filter_fn=lambda m, n: n == "gru")
    compress.quantize(net, filter_fn=lambda m, n: n != "gru")
    assert isinstance(net.gru, SparseGRU) and isinstance(net.lstm, Int8LSTM) and isinstance(net.proj, Int8Linear)
    x = torch.randn(2, 5, 5)
    with torch.no_grad():
        eager = net(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = torch.compile(net, fullgraph=True)(x)
        assert_close_scaled(compiled, eager, 1e-6, "compiled vs eager")
        ep = torch.export.export(net, (x,))
        assert_close_scaled(ep.module()(x), eager, 1e-6, "exported vs eager")
        y = torch.randn(2, 5, 5)
        assert_close_scaled(ep.module()(y), net(y), 1e-6, "exported vs eager, other input")


def test_save_load_round_trip(tmp_path):
    def converted(seed):
        torch.manual_seed(seed)
        net = Net()
        zero_blocks(net.gru, (4, 4), seed=seed)
        compress.sparsify(net, format="bsr", block=(4, 4), filter_fn=lambda m, n: n == "gru")
        compress.quantize(net, filter_fn=lambda m, n: n != "gru")
        return net
    net = converted(0)
    compress.save(net, tmp_path / "net.safetensors")
    other = converted(0)
    with torch.no_grad():
        other.lstm.weight_hh_l0.zero_()
        other.gru.weight_ih_l0.zero_()
    compress.load(other, tmp_path / "net.safetensors")
    x = torch.randn(2, 5, 5)
    assert torch.equal(other(x), net(x))


BAD = [
    (lambda: Int8LSTM.from_float(nn.GRU(4, 4)), TypeError, "expected `m` to be an nn.LSTM or FusedLSTM, got GRU"),
    (lambda: Int8GRUCell.from_float(nn.GRU(4, 4)), TypeError, "`m` to be an nn.GRUCell or FusedGRUCell"),
    (lambda: SparseLSTM.from_dense(nn.Linear(4, 4)), TypeError, "`m` to be an nn.LSTM"),
    (lambda: SparseLSTM.from_dense(nn.LSTM(4, 6), block=(4, 4)), ValueError,
     r"`block` rows dividing hidden_size = 6 .*got block=\(4, 4\)"),
    (lambda: SparseGRUCell(4, 6, block=(0, 2)), ValueError, "`block` as \\(rows, cols\\) of positive ints"),
    (lambda: Int8LSTM(5, 8)(torch.ones(3, 2, 5, dtype=torch.long)), TypeError,
     "`input` to be float32, bfloat16 or float16, got torch.int64"),
    (lambda: Int8GRU(5, 8)(torch.randn(3, 2, 6)), ValueError, "`input` with last dimension input_size = 5"),
    (lambda: Int8LSTMCell(5, 8)(torch.randn(2, 5), (torch.zeros(2, 8), torch.zeros(2, 8).double())), TypeError,
     r"`hx\[1\]` to be torch.float32"),
    (lambda: SparseGRU(5, 8, block=(4, 4))(torch.randn(3, 2, 5).double()), TypeError,
     "`input` to be torch.float32 \\(the dtype of the parameters\\)"),
    (lambda: compress.sparsify(nn.Sequential(nn.LSTM(4, 4)), block=(32,)), ValueError, "`block`"),
]


@pytest.mark.parametrize("call,exc,msg", BAD, ids=range(len(BAD)))
def test_bad_input_names_the_argument(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["int8", "sparse"])
def test_to_cuda(family):
    m, ref, _ = make(family, "LSTM", num_layers=2, proj_size=3)
    x = torch.randn(6, 2, 5)
    with torch.no_grad():
        want = m(x)[0]
        g = m.to("cuda")
        assert all(b.device.type == "cuda" for b in g.buffers())
        got = g(x.cuda())[0]
    assert_close_scaled(got.cpu(), want, OUT_TOL, f"{family} on cuda vs cpu")
