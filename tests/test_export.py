"""Converted models export with torch.export and compile with fullgraph=True, matching eager."""
import torch
from torch import nn

import compress
from helpers import assert_close_scaled


def converted_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                      nn.Linear(16, 8))
    compress.prune(m, 0.5, structure="2:4", filter_fn=lambda mod, n: n == "2")
    compress.prune(m, 0.8, filter_fn=lambda mod, n: n == "4")
    compress.sparsify(m, format="2:4", filter_fn=lambda mod, n: n == "2")
    compress.sparsify(m, format="csr", filter_fn=lambda mod, n: n == "4")
    compress.quantize(m, filter_fn=lambda mod, n: n == "0")
    compress.quantize(m, mode="w8a16", filter_fn=lambda mod, n: n == "6")
    return m


def test_export_matches_eager():
    m = converted_model()
    x = torch.randn(4, 32)
    ep = torch.export.export(m, (x,))
    assert torch.equal(ep.module()(x), m(x))
    y = torch.randn(4, 32)
    assert torch.equal(ep.module()(y), m(y))


def test_compile_fullgraph_matches_eager():
    m = converted_model()
    x = torch.randn(6, 32)
    assert_close_scaled(torch.compile(m, fullgraph=True)(x), m(x), 1e-6, "compiled vs eager")
