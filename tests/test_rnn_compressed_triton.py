"""Triton-only cases of the compressed-recurrent-weight ops (lstm_layer_w8, gru_layer_w8,
lstm_layer_bsr, gru_layer_bsr): the tile boundaries of triton_kernels/rnn.py. Its tiles are TILE
wide; a BSR program owns one block row per gate and walks a block's bk columns TILE at a time."""
import pytest
import torch

from backends import INTERPRETED, device_for, run
from compress import ops
from compress.formats.sparse import to_bsr
from helpers import assert_close_scaled, poisoned_outputs

pytestmark = pytest.mark.triton

TILE = 16 if INTERPRETED else 64  # triton_kernels.rnn._blocks: the widest tile
DEV = device_for("triton")


def _rand(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def _check(op, *args):
    args = tuple(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args)
    with poisoned_outputs():
        out = run(op, "triton", *args)
    for i, (o, r) in enumerate(zip(out, getattr(ops, f"{op}_reference")(*args))):
        assert_close_scaled(o, r, 1e-5, f"{op} output {i}")


def _int8_rows(g, rows, cols):
    return torch.randint(-127, 128, (rows, cols), dtype=torch.int8, generator=g), torch.rand(rows, generator=g) / 64


@pytest.mark.parametrize("P", [0, TILE + 1])
def test_w8_one_past_the_tile(P):
    # H = TILE + 1: two hidden-unit tiles (the second 1 wide) and, for GRU and the projection,
    # two K tiles; P = TILE + 1: two K tiles of the LSTM step and two rows tiles of the projection.
    g = torch.Generator().manual_seed(P)
    T, B, H = 3, 2, TILE + 1
    Pw = P or H
    lengths = torch.tensor([3, 1])
    qr, sr = _int8_rows(g, Pw, H) if P else (None, None)
    _check("lstm_layer_w8", _rand(g, T, B, 4 * H), _rand(g, B, Pw), _rand(g, B, H), *_int8_rows(g, 4 * H, Pw),
           qr, sr, lengths, True)
    _check("gru_layer_w8", _rand(g, T, B, 3 * H), _rand(g, B, H), *_int8_rows(g, 3 * H, H), _rand(g, 3 * H),
           lengths, False)


@pytest.mark.parametrize("H,P,block", [(6, TILE + 3, (3, TILE + 4)), (10, 3, (5, 2)), (3, 0, (1, 1))],
                         ids=["bk-past-tile-and-P", "proj-odd-bn", "1x1"])
def test_bsr_blocks(H, P, block):
    # bk > TILE: a block's columns take two K tiles (the LSTM's second one holds P's last 3 columns
    # and 1 of padding); bk > P: the last block column is padded past P (GRU: the whole second K
    # tile); bn odd: a program's rows tile is wider than its block row. The f gate stores no block
    # and the o gate's first block row is empty: those gates see only xg.
    g = torch.Generator().manual_seed(H)
    T, B = 3, 2
    bn = block[0]
    Pw = P or H
    w = _rand(g, 4 * H, Pw, scale=0.3)
    w[H:2 * H] = 0
    w[3 * H:3 * H + bn] = 0
    b = to_bsr(w, block)
    assert b.col.numel() < (4 * H // bn) * -(-Pw // block[1]), "some blocks should be left out"
    lengths = torch.tensor([2, 3])
    _check("lstm_layer_bsr", _rand(g, T, B, 4 * H), _rand(g, B, Pw), _rand(g, B, H), b.crow, b.col, b.values,
           _rand(g, Pw, H, scale=0.3) if P else None, lengths, True)
    w = _rand(g, 3 * H, H, scale=0.3)
    w[:bn] = 0
    b = to_bsr(w, block)
    _check("gru_layer_bsr", _rand(g, T, B, 3 * H), _rand(g, B, H), b.crow, b.col, b.values, _rand(g, 3 * H),
           lengths, False)


def test_bsr_no_stored_blocks():
    # nnz = 0: values [0, bn, bk]; the recurrence is xg (and b_hh) alone.
    g = torch.Generator().manual_seed(0)
    T, B, H = 2, 3, 4
    b = to_bsr(torch.zeros(3 * H, H), (2, 2))
    assert b.col.numel() == 0
    _check("gru_layer_bsr", _rand(g, T, B, 3 * H), _rand(g, B, H), b.crow, b.col, b.values, _rand(g, 3 * H),
           None, True)
    b = to_bsr(torch.zeros(4 * H, H), (4, 4))
    _check("lstm_layer_bsr", _rand(g, T, B, 4 * H), _rand(g, B, H), _rand(g, B, H), b.crow, b.col, b.values, None,
           None, False)
