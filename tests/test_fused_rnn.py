"""compress.nn FusedLSTM / FusedGRU / cells against torch's modules on the same weights, and fuse_rnn."""
import itertools
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import compress
from compress import ops
from compress.nn import FusedGRU, FusedGRUCell, FusedLSTM, FusedLSTMCell
from helpers import assert_close_scaled

# float32 bars of the issue: outputs within 1e-4, gradients within 1e-3 of max|torch's|. Ours and
# torch's differ by summation order and our exp polynomial (< 2e-7 relative) compounded over T.
OUT_TOL, GRAD_TOL = 1e-4, 1e-3

pytestmark = [pytest.mark.filterwarnings("ignore:compress. .* runs the slow plain-PyTorch reference"),
              pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")]


def _pair(kind, **kw):
    torch.manual_seed(0)
    ref = {"LSTM": nn.LSTM, "GRU": nn.GRU}[kind](**kw)
    fused = {"LSTM": FusedLSTM, "GRU": FusedGRU}[kind].from_torch(ref)
    return ref, fused


def _states(kind, L, B, H, P, unbatched=False, grad=True):
    shp = (lambda *s: s[:1] + s[2:]) if unbatched else (lambda *s: s)
    h = torch.randn(*shp(L, B, P), requires_grad=grad)
    if kind == "GRU":
        return h
    return h, torch.randn(*shp(L, B, H), requires_grad=grad)


def _flat(out):
    y, s = out
    y = y.data if isinstance(y, nn.utils.rnn.PackedSequence) else y
    return [y] + (list(s) if isinstance(s, tuple) else [s])


def _check_parity(ref, fused, x, hx, what, x_leaf=None):
    leaves = [x if x_leaf is None else x_leaf] + ([hx] if isinstance(hx, torch.Tensor) else list(hx or []))
    outs = []
    for m in (ref, fused):
        res = _flat(m(x, hx) if hx is not None else m(x))
        weights = [torch.randn_like(r) for r in res] if not outs else outs[0][2]
        loss = sum((r * w).sum() for r, w in zip(res, weights))
        params = [p for _, p in sorted(m.named_parameters())]
        grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad] + params, retain_graph=True)
        outs.append((res, grads, weights))
    for i, (a, b) in enumerate(zip(outs[1][0], outs[0][0])):
        assert_close_scaled(a, b, OUT_TOL, f"{what}: output {i}")
    names = [f"input/state {i}" for i, t in enumerate(leaves) if t.requires_grad] + sorted(
        n for n, _ in ref.named_parameters())
    for n, a, b in zip(names, outs[1][1], outs[0][1]):
        assert_close_scaled(a, b, GRAD_TOL, f"{what}: grad of {n}")


LSTM_OPTIONS = [dict(num_layers=L, bias=b, batch_first=bf, bidirectional=bi, proj_size=p)
                for L, b, bf, bi, p in itertools.product((1, 2), (True, False), (False, True), (False, True), (0, 3))
                if not (bf and not b)]


@pytest.mark.parametrize("opts", LSTM_OPTIONS, ids=lambda o: "-".join(f"{k}{int(v)}" for k, v in o.items()))
def test_lstm_parity(opts):
    ref, fused = _pair("LSTM", input_size=5, hidden_size=7, **opts)
    T, B = 4, 3
    x = torch.randn(*((B, T) if opts["batch_first"] else (T, B)), 5, requires_grad=True)
    D = 2 if opts["bidirectional"] else 1
    hx = _states("LSTM", opts["num_layers"] * D, B, 7, opts["proj_size"] or 7)
    _check_parity(ref, fused, x, hx, f"LSTM {opts}")


GRU_OPTIONS = [dict(num_layers=L, bias=b, batch_first=bf, bidirectional=bi)
               for L, b, bf, bi in itertools.product((1, 2), (True, False), (False, True), (False, True))]


@pytest.mark.parametrize("opts", GRU_OPTIONS, ids=lambda o: "-".join(f"{k}{int(v)}" for k, v in o.items()))
def test_gru_parity(opts):
    ref, fused = _pair("GRU", input_size=5, hidden_size=7, **opts)
    T, B = 4, 3
    x = torch.randn(*((B, T) if opts["batch_first"] else (T, B)), 5, requires_grad=True)
    D = 2 if opts["bidirectional"] else 1
    _check_parity(ref, fused, x, _states("GRU", opts["num_layers"] * D, B, 7, 7), f"GRU {opts}")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_default_states_and_larger(kind):
    ref, fused = _pair(kind, input_size=20, hidden_size=40, num_layers=2)
    _check_parity(ref, fused, torch.randn(13, 2, 20, requires_grad=True), None, f"{kind} zero states")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence(kind, enforce_sorted):
    kw = dict(proj_size=3) if kind == "LSTM" else {}
    ref, fused = _pair(kind, input_size=5, hidden_size=6, num_layers=2, bidirectional=True, **kw)
    lengths = torch.tensor([5, 4, 2]) if enforce_sorted else torch.tensor([2, 5, 1, 4])
    x = torch.randn(5, len(lengths), 5, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    hx = _states(kind, 4, len(lengths), 6, 3 if kind == "LSTM" else 6)
    _check_parity(ref, fused, packed, hx, f"{kind} packed", x_leaf=x)
    out = fused(packed, hx)[0]
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert out.sorted_indices is packed.sorted_indices or torch.equal(out.sorted_indices, packed.sorted_indices)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_unbatched(kind):
    ref, fused = _pair(kind, input_size=5, hidden_size=6, num_layers=2, bidirectional=True)
    x = torch.randn(4, 5, requires_grad=True)
    _check_parity(ref, fused, x, _states(kind, 4, 1, 6, 6, unbatched=True), f"{kind} unbatched")
    _check_parity(ref, fused, x, None, f"{kind} unbatched, zero states")


def test_dropout_between_layers():
    ref, fused = _pair("LSTM", input_size=5, hidden_size=6, num_layers=3, dropout=0.5)
    x = torch.randn(4, 2, 5)
    fused.eval()
    ref.eval()
    assert_close_scaled(fused(x)[0], ref(x)[0], OUT_TOL, "eval: no dropout")
    fused.train()
    torch.manual_seed(1)
    a = fused(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, fused(x)[0]), "training: dropout between layers"


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bias", [True, False])
def test_cells(kind, bias):
    torch.manual_seed(0)
    ref = {"LSTM": nn.LSTMCell, "GRU": nn.GRUCell}[kind](5, 7, bias=bias)
    fused = {"LSTM": FusedLSTMCell, "GRU": FusedGRUCell}[kind].from_torch(ref)
    for B, unbatched in ((3, False), (1, True)):
        x = torch.randn(*((5,) if unbatched else (B, 5)), requires_grad=True)
        shp = (7,) if unbatched else (B, 7)
        hx = torch.randn(shp, requires_grad=True)
        if kind == "LSTM":
            hx = (hx, torch.randn(shp, requires_grad=True))
        outs = []
        for m in (ref, fused):
            res = m(x, hx)
            res = list(res) if isinstance(res, tuple) else [res]
            leaves = [x] + (list(hx) if isinstance(hx, tuple) else [hx]) + list(m.parameters())
            loss = sum((r * (i + 1.5)).sum() for i, r in enumerate(res))
            outs.append((res, torch.autograd.grad(loss, leaves)))
        for a, b in zip(outs[1][0], outs[0][0]):
            assert_close_scaled(a, b, OUT_TOL, f"{kind}Cell output")
        for a, b in zip(outs[1][1], outs[0][1]):
            assert_close_scaled(a, b, GRAD_TOL, f"{kind}Cell grad")
        res = fused(x)
        ref_res = ref(x)
        for a, b in zip(res if kind == "LSTM" else [res], ref_res if kind == "LSTM" else [ref_res]):
            assert_close_scaled(a, b, OUT_TOL, f"{kind}Cell zero state")


@pytest.mark.parametrize("torch_cls,fused_cls,kw", [
    (nn.LSTM, FusedLSTM, dict(num_layers=2, bidirectional=True, proj_size=3)),
    (nn.GRU, FusedGRU, dict(num_layers=2, bias=False)),
    (nn.LSTMCell, FusedLSTMCell, {}), (nn.GRUCell, FusedGRUCell, dict(bias=False))])
def test_state_dict_both_ways(torch_cls, fused_cls, kw):
    t, f = torch_cls(5, 6, **kw), fused_cls(5, 6, **kw)
    assert list(t.state_dict()) == list(f.state_dict())
    f.load_state_dict(t.state_dict())
    t2 = torch_cls(5, 6, **kw)
    t2.load_state_dict(f.state_dict())
    for k, v in t.state_dict().items():
        assert torch.equal(v, t2.state_dict()[k]), k


BAD = [
    ("LSTM", lambda m: m(torch.randn(4, 2, 6)), ValueError, "`input` with last dimension input_size = 5"),
    ("LSTM", lambda m: m(torch.randn(2, 3, 4, 5)), ValueError, "`input` to be 2-D or 3-D"),
    ("LSTM", lambda m: m(torch.randn(4, 2, 5).double()), TypeError, "`input` to be torch.float32"),
    ("LSTM", lambda m: m(torch.randn(4, 2, 5), (torch.zeros(1, 3, 6), torch.zeros(1, 2, 6))), ValueError,
     r"`hx\[0\]` of shape \(1, 2, 6\)"),
    ("LSTM", lambda m: m(torch.randn(4, 2, 5), (torch.zeros(1, 2, 6), torch.zeros(1, 2, 7))), ValueError,
     r"`hx\[1\]` of shape \(1, 2, 6\)"),
    ("LSTM", lambda m: m(torch.randn(4, 2, 5), (torch.zeros(1, 2, 6), torch.zeros(1, 2, 6).double())), TypeError,
     r"`hx\[1\]` to be torch.float32"),
    ("LSTM", lambda m: m(torch.randn(4, 2, 5), torch.zeros(1, 2, 6)), TypeError, "`hx` to be a tuple"),
    ("LSTM", lambda m: m(torch.randn(4, 5), (torch.zeros(1, 1, 6), torch.zeros(1, 1, 6))), ValueError,
     r"expected `hx\[0\]` to be 2-D"),
    ("GRU", lambda m: m(torch.randn(4, 2, 5), torch.zeros(2, 2, 6)), ValueError, r"`hx` of shape \(1, 2, 6\)"),
    ("GRUCell", lambda m: m(torch.randn(2, 4)), ValueError, "input_size = 5"),
    ("LSTMCell", lambda m: m(torch.randn(2, 5), (torch.zeros(2, 6), torch.zeros(3, 6))), ValueError,
     r"`hx\[1\]` of shape \(2, 6\)"),
]


@pytest.mark.parametrize("kind,call,exc,msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input(kind, call, exc, msg):
    m = {"LSTM": FusedLSTM, "GRU": FusedGRU, "LSTMCell": FusedLSTMCell, "GRUCell": FusedGRUCell}[kind](5, 6)
    with pytest.raises(exc, match=msg):
        call(m)


def test_bad_constructor():
    with pytest.raises(ValueError, match="`proj_size` < hidden_size"):
        FusedLSTM(5, 6, proj_size=6)
    with pytest.raises(ValueError, match="`dropout` in"):
        FusedGRU(5, 6, dropout=1.5)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 8, num_layers=2, batch_first=True)
        self.gru = nn.GRU(8, 6, bidirectional=True, batch_first=True)
        self.cell = nn.LSTMCell(12, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        h, _ = self.cell(y[:, -1])
        return self.head(h)


class _MyLSTM(nn.LSTM):
    pass


def test_fuse_rnn_report_and_parity():
    torch.manual_seed(0)
    net = _Net()
    net.extra = _MyLSTM(3, 3)
    x = torch.randn(2, 7, 5)
    before = net(x)
    report = compress.fuse_rnn(net, filter_fn=lambda m, name: name != "cell")
    assert isinstance(net.lstm, FusedLSTM) and isinstance(net.gru, FusedGRU)
    assert isinstance(net.cell, nn.LSTMCell), "filtered out"
    assert report["lstm"].after == "FusedLSTM" and report["lstm"].before == "LSTM"
    assert report["lstm"].details["backend"] == ops.resolve("lstm_layer", "cpu")[0]
    assert report["gru"].details["bidirectional"] is True
    assert report["cell"].reason == "excluded by filter_fn"
    assert "subclass" in report["extra"].reason
    assert_close_scaled(net(x), before, OUT_TOL, "fused model vs original")
    report = compress.fuse_rnn(net)
    assert [e.name for e in report.converted] == ["cell"]
    assert_close_scaled(net(x), before, OUT_TOL, "fully fused model vs original")
    root = compress.fuse_rnn(nn.GRU(3, 3))
    assert "cannot be replaced in place" in root["<root>"].reason
    assert "fuse_rnn" in str(report)


def test_compile_fullgraph():
    torch.manual_seed(0)
    net = _Net()
    compress.fuse_rnn(net)
    x = torch.randn(2, 5, 5)
    eager = net(x)
    compiled = torch.compile(net, fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compiled(x)
    assert_close_scaled(out, eager, 1e-6, "compiled vs eager")
