"""compress.ops.int8_mm on every backend against the exact reference."""
import pytest
import torch

from compress import ops
from helpers import ODD_SHAPES, assert_exact, make_int8, poisoned_outputs

HAS_CUDA = torch.cuda.is_available()

# Each backend with the device its tests run on. cpu must be available wherever the package is
# built (a missing kernel fails, it is not skipped); triton runs under the interpreter without a GPU.
BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", marks=pytest.mark.triton, id="triton"),
    pytest.param("cuda", marks=pytest.mark.cuda, id="cuda"),
]


def device_for(backend):
    if backend == "cuda" or (backend == "triton" and HAS_CUDA):
        return torch.device("cuda")
    return torch.device("cpu")


def run(backend, a, b):
    with ops.backend(backend):
        out = ops.int8_mm(a, b)
    choice = ops.last_choice("int8_mm")
    assert choice.backend == backend, choice
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", ODD_SHAPES)
@pytest.mark.parametrize("layout_a,layout_b", [("contiguous", "contiguous"), ("transposed", "contiguous"),
                                               ("strided", "transposed"), ("offset", "offset")])
def test_matches_reference(backend, M, N, K, layout_a, layout_b):
    dev = device_for(backend)
    a = make_int8(M, K, dev, layout_a)
    b = make_int8(K, N, dev, layout_b)
    with poisoned_outputs():
        out = run(backend, a, b)
    assert out.device.type == dev.type and out.is_contiguous()
    assert_exact(out, ops.int8_mm_reference(a, b), f"{backend} {M}x{N}x{K} {layout_a}/{layout_b}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("va,vb", [(-128, -128), (-128, 127), (127, 127)])
def test_extremes_exact_at_k2048(backend, va, vb):
    # 128 * 128 * 2048 = 2^25: fits int32, but overflows any int16 partial sum or u8 x s8 saturating path.
    dev = device_for(backend)
    M, N = (5, 7) if backend == "triton" and not HAS_CUDA else (33, 130)
    a = torch.full((M, 2048), va, dtype=torch.int8, device=dev)
    b = torch.full((2048, N), vb, dtype=torch.int8, device=dev)
    with poisoned_outputs():
        out = run(backend, a, b)
    assert_exact(out, torch.full((M, N), va * vb * 2048, dtype=torch.int32, device=dev), f"{backend} {va}*{vb}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_extremes(backend):
    dev = device_for(backend)
    pick = torch.tensor([-128, -127, -1, 0, 1, 126, 127], dtype=torch.int8)
    a = pick[torch.randint(0, 7, (19, 1100))].to(dev)
    b = pick[torch.randint(0, 7, (1100, 23))].to(dev)
    assert_exact(run(backend, a, b), ops.int8_mm_reference(a, b), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", [(0, 5, 7), (4, 0, 7), (4, 5, 0), (0, 0, 0)])
def test_empty(backend, M, N, K):
    dev = device_for(backend)
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=dev)
    b = torch.randint(-128, 128, (K, N), dtype=torch.int8, device=dev)
    with poisoned_outputs():
        out = run(backend, a, b)
    assert_exact(out, torch.zeros(M, N, dtype=torch.int32, device=dev), f"{backend} empty {M}x{N}x{K}")


def cpu_isas():
    order = ["scalar", "avx2", "avx512_vnni"]
    best = ops._C.detected_cpu_isa()
    return order[: order.index(best) + 1]


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_every_isa_path(threads):
    torch.set_num_threads(threads)
    for isa in cpu_isas():
        ops._C.set_cpu_isa(isa)
        assert ops._C.cpu_isa() == isa
        for M, N, K in ODD_SHAPES + [(257, 1000, 1023), (8, 4096, 512)]:
            a, b = make_int8(M, K, "cpu"), make_int8(K, N, "cpu", "transposed")
            with poisoned_outputs():
                out = run("cpu", a, b)
            assert_exact(out, ops.int8_mm_reference(a, b), f"cpu/{isa} {threads} threads {M}x{N}x{K}")
        a = torch.full((9, 2048), -128, dtype=torch.int8)
        assert_exact(run("cpu", a, a.t()), torch.full((9, 9), 2**25, dtype=torch.int32), f"cpu/{isa} extremes")


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_small_m_weight_layout(threads):
    # The AVX-512 VNNI path for small M with b = W^T (k contiguous, as int8_linear passes the
    # nn.Linear weight): M <= 8, or M <= 24 when W holds >= 4 MiB; 25 rows take the packed path.
    # K not a multiple of its 64-byte steps, N not of its 4 / 8-column tiles, W a misaligned slice.
    if "avx512_vnni" not in cpu_isas():
        pytest.skip("this CPU lacks AVX-512 VNNI")
    ops._C.set_cpu_isa("avx512_vnni")
    torch.set_num_threads(threads)
    shapes = [(M, N, K) for M in (1, 2, 3, 4, 5, 8) for N, K in [(1, 1), (7, 63), (13, 129), (70, 1000)]]
    shapes += [(M, 1031, 4097) for M in (9, 17, 24, 25)]
    for M, N, K in shapes:
        w = make_int8(N, K + 3, "cpu")[:, 2:K + 2]  # row stride K + 3, starting 2 bytes in
        for layout_a in ("contiguous", "transposed"):
            a = make_int8(M, K, "cpu", layout_a)
            with poisoned_outputs():
                out = run("cpu", a, w.t())
            assert_exact(out, ops.int8_mm_reference(a, w.t()), f"{threads} threads {M}x{N}x{K} a {layout_a}")
    for M in (1, 3, 17):  # 128 * 128 * 4097 < 2^31: exact; the +128 offset of W must not wrap
        a = torch.full((M, 4097), -128, dtype=torch.int8)
        w = torch.full((1031, 4097), -128, dtype=torch.int8)
        assert_exact(run("cpu", a, w.t()), torch.full((M, 1031), 128 * 128 * 4097, dtype=torch.int32), f"{M} rows -128")


def test_cpu_isa_errors():
    with pytest.raises(ValueError, match="expected `name`"):
        ops._C.set_cpu_isa("sse9")


def test_cpu_large_blocked():
    # Larger than one K block and one panel of the CPU kernel: exercises the accumulation across blocks.
    a, b = make_int8(130, 4100, "cpu"), make_int8(4100, 300, "cpu")
    assert_exact(run("cpu", a, b), ops.int8_mm_reference(a, b), "cpu 130x300x4100")


BAD_INPUTS = [
    # (description, a spec, b spec, exception, message fragment)
    ("float a", ((4, 8), torch.float32), ((8, 3), torch.int8), TypeError, "`a`"),
    ("int32 b", ((4, 8), torch.int8), ((8, 3), torch.int32), TypeError, "`b`"),
    ("1-D a", ((8,), torch.int8), ((8, 3), torch.int8), ValueError, "`a`"),
    ("3-D b", ((4, 8), torch.int8), ((2, 8, 3), torch.int8), ValueError, "`b`"),
    ("mismatched K", ((4, 8), torch.int8), ((9, 3), torch.int8), ValueError, "`b`"),
]


def _make(spec, dev):
    shape, dtype = spec
    if dtype.is_floating_point:
        return torch.randn(shape, device=dev).to(dtype)
    return torch.randint(-5, 5, shape, device=dev).to(dtype)


@pytest.mark.parametrize("backend", BACKENDS + [pytest.param("reference", id="reference")])
@pytest.mark.parametrize("desc,sa,sb,exc,frag", BAD_INPUTS, ids=[x[0] for x in BAD_INPUTS])
def test_bad_input_python(backend, desc, sa, sb, exc, frag):
    dev = device_for(backend)
    a, b = _make(sa, dev), _make(sb, dev)
    with pytest.raises(exc, match=frag) as info, ops.backend(backend):
        ops.int8_mm(a, b)
    assert "int8_mm" in str(info.value)


@pytest.mark.parametrize("backend", [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")])
@pytest.mark.parametrize("desc,sa,sb,exc,frag", BAD_INPUTS, ids=[x[0] for x in BAD_INPUTS])
def test_bad_input_native_op(backend, desc, sa, sb, exc, frag):
    # Called straight through torch.ops, the C++ kernels check for themselves.
    dev = device_for(backend)
    a, b = _make(sa, dev), _make(sb, dev)
    with pytest.raises(exc, match=frag) as info:
        torch.ops.compress.int8_mm(a, b)
    assert "int8_mm" in str(info.value)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="`b`"):
        ops.int8_mm(torch.zeros(2, 2, dtype=torch.int8), [[1, 2], [3, 4]])


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_mixed_devices(backend):
    a = torch.zeros(4, 8, dtype=torch.int8, device="cuda")
    b = torch.zeros(8, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="`b`"), ops.backend(backend):
        ops.int8_mm(a, b)
    with pytest.raises((ValueError, RuntimeError), match="`b`"):
        torch.ops.compress.int8_mm(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    dev = device_for(backend)
    op = torch.ops.compress.int8_mm_triton.default if backend == "triton" else torch.ops.compress.int8_mm.default
    for M, N, K in [(3, 17, 33), (16, 32, 64)]:
        torch.library.opcheck(op, (make_int8(M, K, dev), make_int8(K, N, dev, "transposed")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    dev = device_for(backend)

    def f(a, b):
        return ops.int8_mm(a, b) * 2 + 1

    a, b = make_int8(17, 40, dev), make_int8(40, 9, dev)
    with ops.backend(backend):
        eager = f(a, b)
        compiled = torch.compile(f, fullgraph=True)(a, b)
    assert_exact(compiled, eager, f"compiled vs eager on {backend}")
    assert_exact(eager, ops.int8_mm_reference(a, b) * 2 + 1, f"eager on {backend}")


# ---- CUDA split-K (csrc/int8/int8_gemm.cu): M <= 32 on a grid of few CTAs sums K splits with int32
# atomics; COMPRESS_INT8_SPLITK=0 switches it off. N = 97 / 45 give at most 2 x 4 CTAs, so these split
# on any GPU: K = 4112 (33 BK-slices of 128, the last 16 bytes: a last split shorter than the others
# with a tail), K = 4100 (padded to 4112 by the glue), K = 1040 (9 slices: 2 splits). Written without
# a GPU; not yet run on one.
SPLITK_SHAPES = [(M, N, K) for M in (1, 3, 17, 32) for N, K in [(97, 4112), (45, 4100), (97, 1040)]]


@pytest.mark.cuda
@pytest.mark.parametrize("splitk", ["1", "0"])
@pytest.mark.parametrize("M,N,K", SPLITK_SHAPES)
def test_cuda_splitk(monkeypatch, splitk, M, N, K):
    monkeypatch.setenv("COMPRESS_INT8_SPLITK", splitk)
    a, b = make_int8(M, K, "cuda"), make_int8(K, N, "cuda", "transposed")
    with poisoned_outputs():
        out = run("cuda", a, b)
    assert_exact(out, ops.int8_mm_reference(a, b), f"cuda split-K={splitk} {M}x{N}x{K}")


@pytest.mark.cuda
def test_cuda_splitk_extremes():
    # every split must add its full share: all -128 at K = 4112 sums to 128 * 128 * 4112 exactly
    a = torch.full((3, 4112), -128, dtype=torch.int8, device="cuda")
    w = torch.full((97, 4112), -128, dtype=torch.int8, device="cuda")
    with poisoned_outputs():
        out = run("cuda", a, w.t())
    assert_exact(out, torch.full((3, 97), 128 * 128 * 4112, dtype=torch.int32, device="cuda"), "split-K extremes")


# ---- the Hopper kernel (csrc/int8/int8_gemm_sm90.cu: wgmma + TMA) -----------------------------
# The glue takes it for M > 64 on a compute capability 9.0 device of a build with "9.0a" in
# TORCH_CUDA_ARCH_LIST, unless COMPRESS_INT8_SM90=0 (read on every call, so monkeypatch works).
# Both settings must give the exact result; the shapes cut every tile edge (BM = BN = 128, BK = 128
# bytes: M, N and K tails, one row / column past a tile, K not a multiple of 16 -> padded copies).
SM90_SHAPES = [(65, 8, 16), (129, 136, 80), (257, 383, 1040), (200, 1, 2000), (130, 257, 5)]


def sm90_available():
    from compress import _build_config
    return (HAS_CUDA and torch.cuda.get_device_capability() == (9, 0)
            and "9.0a" in _build_config.BUILD["cuda_archs"])


needs_sm90 = pytest.mark.skipif(not sm90_available(),
                                reason="needs a compute capability 9.0 GPU and a build with 9.0a")


@pytest.mark.cuda
@needs_sm90
@pytest.mark.parametrize("sm90", ["1", "0"], ids=["sm90_on", "sm90_off"])
@pytest.mark.parametrize("M,N,K", SM90_SHAPES)
@pytest.mark.parametrize("layout_a,layout_b", [("contiguous", "transposed"), ("offset", "strided")])
def test_cuda_sm90_switch(monkeypatch, sm90, M, N, K, layout_a, layout_b):
    monkeypatch.setenv("COMPRESS_INT8_SM90", sm90)
    dev = torch.device("cuda")
    a = make_int8(M, K, dev, layout_a)
    b = make_int8(K, N, dev, layout_b)
    with poisoned_outputs():
        out = run("cuda", a, b)
    assert_exact(out, ops.int8_mm_reference(a, b), f"COMPRESS_INT8_SM90={sm90} {M}x{N}x{K} {layout_a}/{layout_b}")


@pytest.mark.cuda
@needs_sm90
@pytest.mark.parametrize("va,vb", [(-128, -128), (-128, 127)])
def test_cuda_sm90_extremes(monkeypatch, va, vb):
    # 4096 * 128 * 128 = 2^26: every k32 step and pipeline stage must be summed exactly.
    monkeypatch.setenv("COMPRESS_INT8_SM90", "1")
    M, N, K = 129, 130, 4096
    a = torch.full((M, K), va, dtype=torch.int8, device="cuda")
    b = torch.full((K, N), vb, dtype=torch.int8, device="cuda")
    with poisoned_outputs():
        out = run("cuda", a, b)
    assert_exact(out, ops.int8_mm_reference(a, b), f"extremes {va} x {vb}")
