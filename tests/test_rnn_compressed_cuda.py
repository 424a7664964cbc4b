"""CUDA-only cases of the compressed-recurrent-weight ops (lstm_layer_w8, gru_layer_w8,
lstm_layer_bsr, gru_layer_bsr; kernels csrc/rnn/rnn_recurrence.cu): both paths forced with
COMPRESS_RNN_CUDA_PATH, shapes past the persistent path's limits, the int8 path rule, BSR block
structures and index contents, operands the glue must copy, and the bare ops' own checks.
test_rnn_compressed_ops.py runs the common cases on every backend (cuda included, under `auto`)."""
import pytest
import torch

from backends import run
from compress import ops
from compress.formats.sparse import to_bsr
from helpers import FLOAT_TOL, assert_close_scaled, make_int8, poisoned_outputs
from test_rnn_compressed_ops import BAD, OPS, _bad_args, _bsr_bad_contents, make_args

pytestmark = pytest.mark.cuda

F32 = FLOAT_TOL[torch.float32]


@pytest.fixture(autouse=True)
def _need_cuda_kernels():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for op in OPS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"compress::{op}", "CUDA"):
            pytest.skip(f"compress._C has no CUDA kernel for compress::{op} (built without CUDA?)")


def _check(op, args, rtol, what, path=None, monkeypatch=None):
    """Runs the CUDA kernel (path forced when given) with poisoned outputs; compares with the reference."""
    if path is not None:
        monkeypatch.setenv("COMPRESS_RNN_CUDA_PATH", path)
    with poisoned_outputs():
        out = run(op, "cuda", *args)
    ref = getattr(ops, f"{op}_reference")(*args)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert_close_scaled(o, r, rtol, f"cuda {path or 'auto'} {op} {what} output {i}")


def _with_min_code(op, args):
    """The int8 ops with a -128 code in every int8 weight (the format allows it; the quantizer never
    makes it): the kernel's sign-flip widening must map it to -128."""
    if not op.endswith("w8"):
        return args
    args = list(args)
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.dtype == torch.int8 and a.numel():
            args[i] = a.clone()
            args[i].view(-1)[0] = -128
    return tuple(args)


# (T, B, H, P, lengths, reverse): B = 16 (the largest persistent batch), 6 and 7 (a partial group of
# 4 rows), H = 1 / 3 (fewer units than a block's warps), 130 (several units per block), P > H.
PATH_CASES = [(1, 1, 1, 0, False, False), (5, 3, 17, 7, True, True), (4, 16, 33, 5, True, False),
              (3, 6, 130, 0, True, True), (3, 2, 3, 2, True, False), (2, 7, 10, 13, False, True)]


@pytest.mark.parametrize("path", ["persistent", "stepwise"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T,B,H,P,L,R", PATH_CASES,
                         ids=[f"T{T}-B{B}-H{H}-P{P}-len{int(L)}-rev{int(R)}" for T, B, H, P, L, R in PATH_CASES])
def test_paths(monkeypatch, path, op, T, B, H, P, L, R):
    # BSR blocks (1, 3): 3 does not divide P = 7, 5, 2, 13: the last block column is padded.
    args = _with_min_code(op, make_args(op, T, B, H, P, L, R, "cuda"))
    _check(op, args, F32, "", path, monkeypatch)


@pytest.mark.parametrize("path", ["persistent", "stepwise"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_paths_half_dtypes(monkeypatch, path, op, dtype):
    # xg / y (and BSR values, dense w_hr) in dtype; int8 weights and float32 state whatever it is.
    args = make_args(op, 5, 6, 37, 7, True, False, "cuda", dtype, block=(1, 5))
    _check(op, args, 2 * FLOAT_TOL[dtype], str(dtype), path, monkeypatch)


# BSR structures on both paths, H = 40 (LSTM P = 13): bn 1..40 (bn = 40: a block row is a whole
# gate), bk 1, 3, 5, past 32 (the lanes of a block group) and past P; density 0 (nnz = 0), sparse,
# dense.
BSR_STRUCTURES = [((1, 1), 0.5), ((4, 5), 0.4), ((8, 3), 0.6), ((40, 7), 0.7), ((2, 33), 0.5), ((5, 64), 1.0),
                  ((4, 4), 0.0), ((10, 2), 0.1)]


@pytest.mark.parametrize("path", ["persistent", "stepwise"])
@pytest.mark.parametrize("op", ["lstm_layer_bsr", "gru_layer_bsr"])
@pytest.mark.parametrize("block,density", BSR_STRUCTURES, ids=[f"{b[0]}x{b[1]}-d{d}" for b, d in BSR_STRUCTURES])
def test_bsr_structures(monkeypatch, path, op, block, density):
    args = make_args(op, 4, 5, 40, 13, True, True, "cuda", block=block, density=density)
    _check(op, args, F32, f"block {block} density {density}", path, monkeypatch)


@pytest.mark.parametrize("path", ["persistent", "stepwise"])
@pytest.mark.parametrize("op", ["lstm_layer_bsr", "gru_layer_bsr"])
def test_bsr_padding_values_ignored(monkeypatch, path, op):
    # The last block column's values past P are padding (to_bsr stores zeros there; a direct caller
    # may not): the reference drops them, and so must the kernels (NaN there would show).
    args = list(make_args(op, 4, 3, 10, 7, True, False, "cuda", block=(2, 3), density=1.0))
    col_at = 4 if op.startswith("lstm") else 3
    K = 7 if op.startswith("lstm") else 10  # the weight's columns: P, or H for GRU
    values = args[col_at + 1].clone()
    values[args[col_at] == K // 3, :, K % 3:] = float("nan")
    args[col_at + 1] = values
    _check(op, tuple(args), F32, "NaN padding", path, monkeypatch)


@pytest.mark.parametrize("path", ["persistent", "stepwise"])
def test_operands_the_glue_copies(monkeypatch, path):
    # int8 weights one byte into their storage (misaligned: copied), column-major, P % 4 != 0
    # (padded copy); BSR crow / col / values as strided views; scales as strided views.
    T, B, H, P = 4, 3, 13, 6
    g = torch.Generator().manual_seed(11)
    xg, h0, c0 = (torch.randn(*s, generator=g).cuda() for s in ((T, B, 4 * H), (B, P), (B, H)))
    lengths = torch.tensor([4, 0, 2]).cuda()
    for layout in ("offset", "transposed", "strided"):
        q = make_int8(4 * H, P, "cuda", layout, generator=g)
        qr = make_int8(P, H, "cuda", layout, generator=g)
        s = (torch.rand(8 * H, generator=g) / 64).cuda()[::2]
        sr = (torch.rand(P, generator=g) / 64).cuda()
        _check("lstm_layer_w8", (xg, h0, c0, q, s, qr, sr, lengths, True), F32, layout, path, monkeypatch)
    b = to_bsr(torch.randn(3 * H, H, generator=g) * (torch.rand(3 * H, H, generator=g) < 0.3), (1, 2))
    crow = torch.stack([b.crow, b.crow], 1).cuda()[:, 0]
    col = torch.stack([b.col, b.col], 1).cuda()[:, 1]
    values = torch.cat([b.values, b.values], 2).cuda()[..., :2]
    assert not (crow.is_contiguous() or col.is_contiguous() or values.is_contiguous())
    gx, gh = torch.randn(T, B, 3 * H, generator=g).cuda(), torch.randn(B, H, generator=g).cuda()
    _check("gru_layer_bsr", (gx, gh, crow, col, values, None, lengths, False), F32, "strided indices", path,
           monkeypatch)


# Larger shapes under `auto` and forced stepwise: B = 20 and 37 are above the persistent batch limit
# (37: three 16-row slices); H = 1100 is persistent with int8 weights (~40 KB a block); BSR H = 1024,
# 16 x 16 blocks at density 0.25. float32 sums over up to 1100 products differ from the reference's
# order by ~1e-5 of the largest output, hence 1e-4 (as test_rnn_ops.test_cuda_large_shapes).
LARGE = [("lstm_layer_w8", 3, 20, 40, 7, None), ("gru_layer_w8", 3, 37, 29, 0, None),
         ("lstm_layer_w8", 2, 2, 1100, 0, None), ("gru_layer_w8", 2, 2, 1100, 0, None),
         ("lstm_layer_w8", 2, 4, 600, 300, None), ("lstm_layer_bsr", 3, 37, 40, 7, (4, 4)),
         ("gru_layer_bsr", 2, 4, 1024, 0, (16, 16)), ("lstm_layer_bsr", 2, 2, 1024, 256, (16, 16))]


@pytest.mark.parametrize("path", ["auto", "stepwise"])
@pytest.mark.parametrize("op,T,B,H,P,block", LARGE, ids=[f"{o}-T{T}-B{B}-H{H}-P{P}" for o, T, B, H, P, _ in LARGE])
def test_large_shapes(monkeypatch, path, op, T, B, H, P, block):
    args = make_args(op, T, B, H, P, True, True, "cuda", block=block, density=0.25)
    _check(op, args, 1e-4, "large", path, monkeypatch)


def test_int8_fits_the_persistent_path_where_bf16_does_not(monkeypatch):
    # The path rule on weight bytes: an LSTM with H = P = 2048 at B = 1 needs 256 KB of bf16 weights
    # per block (more than any GPU's shared memory per block), 128 KB as int8 (+ 8 KB of state).
    args = make_args("lstm_layer_w8", 2, 1, 2048, 0, False, False, "cuda", torch.bfloat16)
    _check("lstm_layer_w8", args, 2 * FLOAT_TOL[torch.bfloat16], "H 2048", "persistent", monkeypatch)
    xg, h0, c0, q, s = args[:5]
    w = (q.float() * s[:, None]).bfloat16()
    with pytest.raises(RuntimeError, match="persistent kernel cannot run .* shared memory"):
        run("lstm_layer", "cuda", xg, h0, c0, w, None, None, False)


@pytest.mark.parametrize("op", OPS)
def test_persistent_refuses_large_batch(monkeypatch, op):
    monkeypatch.setenv("COMPRESS_RNN_CUDA_PATH", "persistent")
    with pytest.raises(RuntimeError, match="persistent kernel cannot run .* B = 17"):
        run(op, "cuda", *make_args(op, 2, 17, 5, 0, False, False, "cuda"))


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("op", ["lstm_layer_bsr", "gru_layer_bsr"])
@pytest.mark.parametrize("desc,edit,exc,msg", _bsr_bad_contents(), ids=[b[0] for b in _bsr_bad_contents()])
def test_bsr_index_contents_checked(op, desc, edit, exc, msg):
    # Through compress.ops and through the bare op: a bad index must raise, never read out of bounds.
    args = _bad_args(op, "cuda", edit)
    with pytest.raises(exc, match=f"{op}: .*{msg}"), ops.backend("cuda"):
        getattr(ops, op)(*args)
    with pytest.raises(exc, match=f"{op}: .*{msg}"):
        getattr(torch.ops.compress, op).default(*args)
    torch.cuda.synchronize()  # and nothing faulted


@pytest.mark.parametrize("op,desc,edit,exc,msg", BAD, ids=[f"{b[0]}-{b[1]}" for b in BAD])
def test_bare_op_checks_inputs(op, desc, edit, exc, msg):
    # torch.ops.compress.* skips the Python checks: the CUDA glue must say the same. (Edits that make
    # a CPU tensor are moved to the GPU: this is about the check, not the device.)
    args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in _bad_args(op, "cuda", edit))
    with pytest.raises(exc, match=f"{op}: .*{msg}"):
        getattr(torch.ops.compress, op).default(*args)


@pytest.mark.parametrize("op", OPS)
def test_bare_op_checks_devices(op):
    args = list(make_args(op, 3, 2, 5, 3, True, False, "cuda"))
    name = {"lstm_layer_w8": "w_hh_scale", "gru_layer_w8": "w_hh_scale", "lstm_layer_bsr": "col",
            "gru_layer_bsr": "col"}[op]
    at = {"lstm_layer_w8": 4, "gru_layer_w8": 3, "lstm_layer_bsr": 4, "gru_layer_bsr": 3}[op]
    args[at] = args[at].cpu()
    with pytest.raises(ValueError, match=f"{op}: expected `{name}` on cuda"):
        getattr(torch.ops.compress, op).default(*args)
    args = make_args(op, 3, 2, 5, 3, True, False, "cuda")
    lengths_at = len(args) - 2
    args = args[:lengths_at] + (args[lengths_at].cpu(), args[-1])
    with pytest.raises(ValueError, match=f"{op}: expected `lengths` on cuda"):
        getattr(torch.ops.compress, op).default(*args)
