"""Formats, SparseLinear and compress.sparsify: a pruned model runs sparse and gives the same answers."""
import pytest
import torch
from torch import nn

import compress
from compress import formats
from compress.nn import SparseLinear
from helpers import assert_close_scaled


def test_2_4_pack_round_trip_and_error_names_the_group():
    w = torch.randn(5, 16)
    w.view(5, 4, 4)[..., 2:] = 0
    p = formats.pack_2_4(w)
    assert p.values.shape == (5, 8) and p.meta.dtype == torch.uint8 and p.meta.shape == (5, 4)
    assert torch.equal(formats.unpack_2_4(p.values, p.meta), w)
    w[3, 10] = 1.0  # group 2 of row 3 (inputs 8..11) now holds 8, 9, 10
    with pytest.raises(ValueError, match="not 2:4 sparse: group 2 of row 3 has 3 nonzeros"):
        formats.pack_2_4(w)
    with pytest.raises(ValueError, match="divisible by 4, got K = 6"):
        formats.pack_2_4(torch.zeros(2, 6))


@pytest.mark.parametrize("block", [(16, 16), (4, 8), (5, 7)], ids=str)
def test_bsr_and_csr_round_trip(block):
    w = torch.randn(37, 45)
    w[torch.rand(37, 45) < 0.8] = 0
    w[:16, :16] = 0
    b = formats.to_bsr(w, block)
    assert torch.equal(formats.from_bsr(b), w) and b.values.shape[1:] == block
    assert b.crow.dtype == torch.int32 and b.col.dtype == torch.int32
    c = formats.to_csr(w)
    assert torch.equal(formats.from_csr(c), w) and c.values.numel() == int((w != 0).sum())


def pruned_linear(structure, sparsity=0.9, N=48, K=64, block=(16, 16)):
    torch.manual_seed(0)
    lin = nn.Linear(K, N)
    compress.prune(nn.Sequential(lin), sparsity, structure=structure, block=block)
    return lin


@pytest.mark.parametrize("fmt,structure", [("2:4", "2:4"), ("bsr", "block"), ("csr", "unstructured"),
                                           ("channel", "channel"), ("csr", "block")])
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 64), (0, 64), (64,)], ids=str)
def test_sparse_linear_matches_pruned_dense(fmt, structure, shape):
    lin = pruned_linear(structure)
    m = SparseLinear.from_dense(lin, fmt, block=(16, 16))
    assert torch.equal(m.to_dense_weight(), lin.weight.detach())
    x = torch.randn(shape)
    assert_close_scaled(m(x), lin(x).detach(), 1e-5, fmt)


def test_sparse_linear_errors():
    lin = pruned_linear("unstructured", 0.5)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        SparseLinear.from_dense(lin, "2:4")
    with pytest.raises(ValueError, match="`format`"):
        SparseLinear.from_dense(lin, "coo")
    m = SparseLinear.from_dense(lin, "csr")
    with pytest.raises(ValueError, match="in_features = 64, got shape \\(2, 63\\)"):
        m(torch.randn(2, 63))
    with pytest.raises(TypeError, match="weight's dtype"):
        m(torch.randn(2, 64, dtype=torch.float64))


@pytest.mark.parametrize("fmt,structure", [("2:4", "2:4"), ("bsr", "block"), ("csr", "unstructured"),
                                           ("channel", "channel")])
def test_sparse_linear_state_dict_round_trip(fmt, structure):
    src = SparseLinear.from_dense(pruned_linear(structure), fmt, block=(16, 16))
    dst = SparseLinear(64, 48, True, fmt, block=(16, 16))
    dst.load_state_dict(src.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize("fmt,structure", [("2:4", "2:4"), ("bsr", "block"), ("csr", "unstructured"),
                                           ("channel", "channel")])
def test_sparsify_equals_pruned_model(fmt, structure):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 6))
    compress.prune(model, 0.75, structure=structure, block=(16, 16))
    x = torch.randn(8, 64)
    ref = model(x).detach()
    report = compress.sparsify(model, format=fmt, block=(16, 16))
    assert len(report.converted) == 3 and all(isinstance(model[i], SparseLinear) for i in (0, 2, 4))
    assert all(e.details["format"] == fmt for e in report.converted)
    assert_close_scaled(model(x), ref, 1e-4, f"sparsify {fmt}")
    assert_close_scaled(torch.compile(model, fullgraph=True)(x), ref, 1e-4, f"compiled sparsify {fmt}")


def test_sparsify_skips_with_reasons():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.Linear(8, 6))
    compress.prune(model, 0.5, structure="unstructured", filter_fn=lambda m, n: n != "3")
    report = compress.sparsify(model, format="2:4", filter_fn=lambda m, n: n != "2")
    assert "does not fit 2:4: not 2:4 sparse" in report["0"].reason
    assert report["2"].reason == "excluded by filter_fn"
    assert "no zero weights" in report["3"].reason
    with pytest.raises(ValueError, match="`format`"):
        compress.sparsify(model, format="ell")


def test_sparsify_auto_measures_and_explains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))
    compress.prune(model, 0.95)
    x = torch.randn(16, 256)
    ref = model(x).detach()
    report = compress.sparsify(model, format="auto", batch=16)
    for e in report.entries:
        text = e.details.get("why", e.reason)
        assert "fastest at batch 16 on cpu" in text and "dense" in text, e
        if e.converted:
            measured = dict(kv.rsplit(" ", 2)[:2] for kv in text.split(": ", 1)[1].split(" (")[0].split(", "))
            assert min(measured, key=lambda k: float(measured[k])) == e.details["format"]
    assert_close_scaled(model(x), ref, 1e-4, "auto")


def test_sparsify_auto_never_grows_a_layer():
    """CSR with int32 indices at 50% sparsity is larger than the dense weight: "auto" must not time it,
    whatever the timings say (a compression method that grows the model is a bug)."""
    from compress.sparsify import choose_format, nbytes
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 80))
    compress.prune(model, 0.5, structure="unstructured")
    compress.prune.remove(model)
    assert nbytes(SparseLinear.from_dense(model[0], "csr")) > nbytes(model[0])   # the premise
    fmt, why, times = choose_format(model[0], batch=4)
    assert "csr" not in times and "csr: larger than dense" in why
    before = nbytes(model)
    compress.sparsify(model, format="auto", batch=4)
    assert nbytes(model) <= before
