"""Dev check (not a test): the sparse CUDA glue (csrc/sparse/sparse_linear_cuda.cpp) run on the CPU,
and a GPU run of the real kernels against the references.

    python benchmarks/dev/sparse_glue_model.py          # no GPU needed (builds in /tmp, ~30 s)
    python benchmarks/dev/sparse_glue_model.py --gpu    # on a CUDA machine: real kernels vs references

Default (CPU): the glue source is compiled for the CPU with mechanical edits (namespace compress_t,
CPU dispatch key, no CUDAGuard / stream, STUB_TC env var in place of the compute-capability query)
and linked against CPU stand-ins of the launchers (STUB_CPP below) that check every launcher
precondition of sparse_linear_cuda.h strictly (alignment, K % 64, strides) and compute the
contract's math in double. Checked against compress/ops/sparse.py: exception type and message of
every Python check (order included), and results for contiguous / transposed / misaligned-offset /
padded operands, K tails, three dtypes, bias dtypes, empty sizes, K == 0, both the tensor-core and
the simple paths (which launcher ran is counted).

--gpu: JIT-builds the four CUDA sources (unless compress._C already has CUDA kernels for the ops)
and compares torch.ops.compress.{sparse24,bsr,csr}_linear on the GPU with the references, over
small-M and large-M shapes, odd N / K, all block shapes, malformed-free random data.
"""
import os
import sys

os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
os.environ.setdefault("MAX_JOBS", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
BUILD = "/tmp/compress_sparse_glue_model"

STUB_CPP = r"""// CPU stand-ins for the sparse launchers, honouring the contracts in sparse_linear_cuda.h
// (preconditions checked strictly; reference math in double). For the glue check only.
#include "sparse/sparse_linear_cuda.h"
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <vector>
extern "C" const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "invalid argument (stub)"; }
namespace compress {
static int g_calls[8];
extern "C" int stub_calls(int i) { return g_calls[i]; }
extern "C" void stub_reset() { std::memset(g_calls, 0, sizeof g_calls); }
static float bf2f(uint16_t b) { uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f; }
static uint16_t f2bf(float f) { uint32_t u; std::memcpy(&u, &f, 4); if (std::isnan(f)) return 0x7FC0; return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16); }
static float h2f(uint16_t h) { _Float16 v; std::memcpy(&v, &h, 2); return float(v); }
static uint16_t f2h(float f) { _Float16 v = (_Float16)f; uint16_t h; std::memcpy(&h, &v, 2); return h; }
static float ld(const void* p, SparseDtype dt, int64_t i) {
  if (dt == SparseDtype::kFloat32) return static_cast<const float*>(p)[i];
  uint16_t b = static_cast<const uint16_t*>(p)[i];
  return dt == SparseDtype::kBFloat16 ? bf2f(b) : h2f(b);
}
static void st(void* p, SparseDtype dt, int64_t i, float v) {
  if (dt == SparseDtype::kFloat32) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = dt == SparseDtype::kBFloat16 ? f2bf(v) : f2h(v);
}
static bool mis(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a != 0; }
static cudaError_t bad(const char* what) { std::fprintf(stderr, "STUB: precondition violated: %s\n", what); return cudaErrorInvalidValue; }
static int64_t es(SparseDtype dt) { return dt == SparseDtype::kFloat32 ? 4 : 2; }

static void s24(const void* x, int64_t ldx, const void* v, int64_t ldv, const uint8_t* meta, int64_t ldm, const float* bias, void* out, int64_t ldo, SparseDtype dt, int M, int N, int K, bool ordered) {
  for (int m = 0; m < M; ++m) for (int n = 0; n < N; ++n) {
    double acc = 0;
    for (int g = 0; g < K / 4; ++g) {
      int b = meta[int64_t(n) * ldm + g], i0 = b & 3, i1 = (b >> 2) & 3;
      if (ordered && i0 >= i1) { i0 = 0; i1 = 1; }
      acc += double(ld(v, dt, int64_t(n) * ldv + 2 * g)) * ld(x, dt, int64_t(m) * ldx + 4 * g + i0);
      acc += double(ld(v, dt, int64_t(n) * ldv + 2 * g + 1)) * ld(x, dt, int64_t(m) * ldx + 4 * g + i1);
    }
    st(out, dt, int64_t(m) * ldo + n, float(acc) + (bias ? bias[n] : 0.f));
  }
}
cudaError_t sparse24_linear_mma(const void* x, int64_t ldx, const void* values, int64_t ldv, const uint8_t* meta, int64_t ldm, const float* bias, void* out, int64_t ldo, SparseDtype dt, int M, int N, int K, cudaStream_t) {
  g_calls[0]++;
  if (dt == SparseDtype::kFloat32) return bad("mma dtype");
  if (K % kSparse24KAlign) return bad("K % 64");
  if (mis(x, 16) || mis(values, 16) || mis(meta, 16) || mis(out, 2)) return bad("align");
  if ((M > 1 && ldx % 8) || (N > 1 && (ldv % 8 || ldm % 16)) || (M > 1 && ldo < N)) return bad("ld");
  if (M > 1 && ldx < K) return bad("ldx < K (stub: glue never passes overlapping rows)");
  s24(x, ldx, values, ldv, meta, ldm, bias, out, ldo, dt, M, N, K, true);
  return cudaSuccess;
}
cudaError_t sparse24_linear_simple(const void* x, int64_t ldx, const void* values, int64_t ldv, const uint8_t* meta, int64_t ldm, const float* bias, void* out, int64_t ldo, SparseDtype dt, int M, int N, int K, cudaStream_t) {
  g_calls[1]++;
  if (K % 4 || mis(x, es(dt)) || mis(values, es(dt)) || mis(out, es(dt)) || (M > 1 && ldo < N)) return bad("simple s24");
  s24(x, ldx, values, ldv, meta, ldm, bias, out, ldo, dt, M, N, K, false);
  return cudaSuccess;
}
static void bsr(const void* x, int64_t ldx, const int32_t* crow, const int32_t* col, const void* v, int64_t nnzb, int bn, int bk, const float* bias, void* out, int64_t ldo, SparseDtype dt, int M, int N, int K) {
  std::vector<double> acc(size_t(M) * N, 0.0);
  int64_t R = (int64_t(N) + bn - 1) / bn;
  for (int64_t r = 0; r < R; ++r) {
    int64_t s = std::min<int64_t>(std::max<int64_t>(crow[r], 0), nnzb), e = std::min<int64_t>(std::max<int64_t>(crow[r + 1], s), nnzb);
    for (int64_t j = s; j < e; ++j) {
      int64_t c = col[j]; if (c < 0 || c * bk >= K) continue;
      for (int i = 0; i < bn; ++i) { int64_t n = r * bn + i; if (n >= N) break;
        for (int kk = 0; kk < bk; ++kk) { int64_t k = c * bk + kk; if (k >= K) break;
          double w = ld(v, dt, (j * bn + i) * bk + kk);
          for (int m = 0; m < M; ++m) acc[size_t(m) * N + n] += w * ld(x, dt, int64_t(m) * ldx + k); } } } }
  for (int m = 0; m < M; ++m) for (int n = 0; n < N; ++n) st(out, dt, int64_t(m) * ldo + n, float(acc[size_t(m) * N + n]) + (bias ? bias[n] : 0.f));
}
bool bsr_mma_block_supported(int bn, int bk) { return (bn == 16 || bn == 32 || bn == 64) && (bk == 16 || bk == 32 || bk == 64); }
cudaError_t bsr_linear_mma(const void* x, int64_t ldx, const int32_t* crow, const int32_t* col, const void* values, int64_t nnzb, int bn, int bk, const float* bias, void* out, int64_t ldo, SparseDtype dt, int M, int N, int K, cudaStream_t) {
  g_calls[2]++;
  if (dt == SparseDtype::kFloat32 || !bsr_mma_block_supported(bn, bk)) return bad("bsr mma dtype/block");
  if (K % 8 || (M > 1 && ldx % 8) || mis(x, 16) || mis(values, 16) || mis(out, 2) || (M > 1 && ldo < N)) return bad("bsr mma align");
  bsr(x, ldx, crow, col, values, nnzb, bn, bk, bias, out, ldo, dt, M, N, K);
  return cudaSuccess;
}
cudaError_t bsr_linear_simple(const void* x, int64_t ldx, const int32_t* crow, const int32_t* col, const void* values, int64_t nnzb, int bn, int bk, const float* bias, void* out, int64_t ldo, SparseDtype dt, int M, int N, int K, cudaStream_t) {
  g_calls[3]++;
  if (mis(x, es(dt)) || mis(values, es(dt)) || (M > 1 && ldo < N) || bn < 1 || bk < 1) return bad("bsr simple");
  bsr(x, ldx, crow, col, values, nnzb, bn, bk, bias, out, ldo, dt, M, N, K);
  return cudaSuccess;
}
int64_t csr_linear_scratch_elems(int M, int K) {
  if (M <= 1 || K <= 0) return 0;
  int MV = M <= 2 ? 2 : M <= 4 ? 4 : M <= 8 ? 8 : 16;
  return (int64_t(M) + MV - 1) / MV * K * MV;
}
cudaError_t csr_linear(const void* x, int64_t ldx, void* scratch, const int32_t* crow, const int32_t* col, const void* v, int64_t nnz, const float* bias, void* out, int64_t ldo, SparseDtype dt, int M, int N, int K, cudaStream_t) {
  g_calls[4]++;
  if (mis(x, es(dt)) || mis(v, es(dt)) || (M > 1 && ldo < N)) return bad("csr");
  if (M > 1 && (scratch == nullptr || mis(scratch, 16))) return bad("csr scratch");
  for (int m = 0; m < M; ++m) for (int n = 0; n < N; ++n) {
    int64_t s = std::min<int64_t>(std::max<int64_t>(crow[n], 0), nnz), e = std::min<int64_t>(std::max<int64_t>(crow[n + 1], s), nnz);
    double acc = 0;
    for (int64_t j = s; j < e; ++j) { int64_t c = col[j]; if (c < 0 || c >= K) continue; acc += double(ld(v, dt, j)) * ld(x, dt, int64_t(m) * ldx + c); }
    st(out, dt, int64_t(m) * ldo + n, float(acc) + (bias ? bias[n] : 0.f));
  }
  return cudaSuccess;
}
}  // namespace compress
"""


def make_cpu_glue() -> str:
    src = open(os.path.join(ROOT, "csrc/sparse/sparse_linear_cuda.cpp")).read()
    reps = [
        ("TORCH_LIBRARY_IMPL(compress, CUDA, m)", "TORCH_LIBRARY_IMPL(compress_t, CPU, m)"),
        ('TORCH_CHECK_VALUE(x.is_cuda(), op, ": expected `x` on a CUDA device, got ", x.device());',
         'TORCH_CHECK_VALUE(x.is_cpu(), op, ": expected `x` on a CUDA device, got ", x.device());'),
        ("#include <c10/cuda/CUDAException.h>\n#include <c10/cuda/CUDAGuard.h>\n#include <c10/cuda/CUDAStream.h>\n", ""),
        ("#include <cuda_runtime_api.h>\n",
         "#include <driver_types.h>\n#include <cstdlib>\nextern \"C\" const char* cudaGetErrorString(cudaError_t);\n"),
    ]
    for a, b in reps:
        assert a in src, a
        src = src.replace(a, b)
    assert src.count("c10::cuda::CUDAGuard guard(x.device());") == 3
    src = src.replace("c10::cuda::CUDAGuard guard(x.device());", "/* no guard */")
    assert src.count("c10::cuda::getCurrentCUDAStream(x.device().index()).stream()") == 3
    src = src.replace("c10::cuda::getCurrentCUDAStream(x.device().index()).stream()", "nullptr")
    old = src[src.index("bool has_tensor_cores(const at::Device& device) {"):src.index("#define CHECK_LAUNCH")]
    src = src.replace(old, 'bool has_tensor_cores(const at::Device&) { return std::getenv("STUB_TC") != nullptr; }\n\n')
    os.makedirs(BUILD, exist_ok=True)
    open(os.path.join(BUILD, "glue_cpu.cpp"), "w").write(src)
    open(os.path.join(BUILD, "stubs.cpp"), "w").write(STUB_CPP)
    return BUILD


def cpu_main() -> int:
    import ctypes
    import torch
    from torch.utils.cpp_extension import load
    L = torch.library.Library("compress_t", "FRAGMENT")
    L.define("sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor")
    L.define("bsr_linear(Tensor x, Tensor crow, Tensor col, Tensor values, int out_features, Tensor? bias) -> Tensor")
    L.define("csr_linear(Tensor x, Tensor crow, Tensor col, Tensor values, int out_features, Tensor? bias) -> Tensor")
    d = make_cpu_glue()
    so = load(name="sparse_glue_cpu", sources=[os.path.join(d, "glue_cpu.cpp"), os.path.join(d, "stubs.cpp")],
              extra_include_paths=[os.path.join(ROOT, "csrc"), os.path.join(os.environ["CUDA_HOME"], "include")],
              extra_cflags=["-O1", "-Wall"], build_directory=d, is_python_module=False, with_cuda=False)
    lib = ctypes.CDLL(so)
    import compress.ops.sparse as P
    from compress.formats.sparse import pack_2_4, to_bsr, to_csr
    T = torch.ops.compress_t
    torch.manual_seed(0)
    ok = True

    def rep(name, good, extra=""):
        nonlocal ok
        ok &= bool(good)
        print("ok  " if good else "FAIL", name, extra)

    def same_err(f_ours, f_py):
        try:
            f_py(); e_py = None
        except Exception as e:
            e_py = e
        try:
            f_ours(); e_o = None
        except Exception as e:
            e_o = e
        if e_py is None and e_o is None:
            return True, ""
        if e_py is None or e_o is None:
            return False, f"py={e_py!r} ours={e_o!r}"
        mo = str(e_o).split("\nException raised from")[0]
        return (type(e_o) is type(e_py) and mo == str(e_py)), f"\n   py  : {type(e_py).__name__}: {e_py}\n   ours: {type(e_o).__name__}: {mo}"

    # ---- messages --------------------------------------------------------------------------------
    f32, bf, hf = torch.float32, torch.bfloat16, torch.float16
    x = torch.randn(3, 8); w = torch.randn(5, 8); w[:, 1::2] = 0
    s = pack_2_4(w)
    cases24 = [
        ("x int", (x.to(torch.int32), s.values, s.meta, None)),
        ("x 3-D", (x[None], s.values, s.meta, None)),
        ("x 1-D", (x[0], s.values, s.meta, None)),
        ("values dtype", (x, s.values.to(bf), s.meta, None)),
        ("values 1-D", (x, s.values[0], s.meta, None)),
        ("meta dtype", (x, s.values, s.meta.to(torch.int32), None)),
        ("meta 3-D", (x, s.values, s.meta[None], None)),
        ("K % 4", (torch.randn(3, 6), s.values, s.meta, None)),
        ("values shape", (x, s.values[:, :3], s.meta, None)),
        ("meta shape", (x, s.values, s.meta[:, :1], None)),
        ("meta rows", (x, s.values, s.meta[:4], None)),
        ("bias dtype", (x, s.values, s.meta, torch.zeros(5, dtype=torch.int64))),
        ("bias 2-D", (x, s.values, s.meta, torch.zeros(5, 1))),
        ("bias 0-D", (x, s.values, s.meta, torch.zeros(()))),
        ("bias size", (x, s.values, s.meta, torch.zeros(4))),
        ("bias size + dtype order", (x, s.values, s.meta, torch.zeros(4, dtype=torch.int8))),
        ("ok", (x, s.values, s.meta, torch.zeros(5, dtype=hf))),
    ]
    good = True
    for name, a in cases24:
        g, msg = same_err(lambda: T.sparse24_linear(*a), lambda: P.check_sparse24_linear(*a))
        if not g: print("   sparse24", name, msg)
        good &= g
    rep("sparse24_linear: check order and wording (%d cases)" % len(cases24), good)

    b = to_bsr(torch.randn(10, 12), (4, 3)); c = to_csr(torch.randn(10, 12) * (torch.rand(10, 12) > 0.5))
    cases_bsr = [
        ("crow dtype", (x, b.crow.long(), b.col, b.values, 10, None)),
        ("crow 2-D", (x, b.crow[None], b.col, b.values, 10, None)),
        ("col dtype", (x, b.crow, b.col.float(), b.values, 10, None)),
        ("x dtype", (x.to(torch.int8), b.crow, b.col, b.values, 10, None)),
        ("values dtype", (torch.randn(3, 12), b.crow, b.col, b.values.half(), 10, None)),
        ("values 2-D", (torch.randn(3, 12), b.crow, b.col, b.values[0], 10, None)),
        ("bias size", (torch.randn(3, 12), b.crow, b.col, b.values, 10, torch.zeros(9))),
        ("bias dtype", (torch.randn(3, 12), b.crow, b.col, b.values, 10, torch.zeros(10, dtype=torch.int32))),
        ("out_features < 0", (torch.randn(3, 12), b.crow, b.col, b.values, -3, None)),
        ("out_features < 0 + bias", (torch.randn(3, 12), b.crow, b.col, b.values, -3, torch.zeros(2))),
        ("crow len", (torch.randn(3, 12), b.crow[:-1], b.col, b.values, 10, None)),
        ("crow len 2", (torch.randn(3, 12), b.crow, b.col, b.values, 13, None)),
        ("col len", (torch.randn(3, 12), b.crow, b.col[:-1], b.values, 10, None)),
        ("bn 0", (torch.randn(3, 12), torch.zeros(11, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), torch.zeros(0, 0, 3), 10, None)),
        ("ok", (torch.randn(3, 12), b.crow, b.col, b.values, 10, torch.zeros(10, dtype=bf))),
    ]
    good = True
    for name, a in cases_bsr:
        g, msg = same_err(lambda: T.bsr_linear(*a), lambda: P.check_bsr_linear(*a))
        if not g: print("   bsr", name, msg)
        good &= g
    rep("bsr_linear: check order and wording (%d cases)" % len(cases_bsr), good)
    cases_csr = [
        ("crow dtype", (x, c.crow.long(), c.col, c.values, 10, None)),
        ("col 2-D", (x, c.crow, c.col[None], c.values, 10, None)),
        ("values dtype", (torch.randn(3, 12), c.crow, c.col, c.values.to(bf), 10, None)),
        ("values 2-D", (torch.randn(3, 12), c.crow, c.col, c.values[None], 10, None)),
        ("crow len", (torch.randn(3, 12), c.crow, c.col, c.values, 9, None)),
        ("col len", (torch.randn(3, 12), c.crow, c.col[1:], c.values, 10, None)),
        ("bias 2-D", (torch.randn(3, 12), c.crow, c.col, c.values, 10, torch.zeros(1, 10))),
        ("out_features < 0", (torch.randn(3, 12), c.crow, c.col, c.values, -1, None)),
        ("ok", (torch.randn(3, 12), c.crow, c.col, c.values, 10, None)),
    ]
    good = True
    for name, a in cases_csr:
        g, msg = same_err(lambda: T.csr_linear(*a), lambda: P.check_csr_linear(*a))
        if not g: print("   csr", name, msg)
        good &= g
    rep("csr_linear: check order and wording (%d cases)" % len(cases_csr), good)

    # ---- results ---------------------------------------------------------------------------------
    def close(a, r):
        if a.shape != r.shape or a.dtype != r.dtype: return False
        tol = 1e-5 if a.dtype == f32 else 2e-2
        return torch.allclose(a.float(), r.float(), rtol=tol, atol=tol)

    def rnd(*shape, dt=f32):
        return (torch.randint(-4, 5, shape).float() / 4).to(dt)

    def variants(t, kind):
        """t as contiguous, as a transposed view, and as an offset (misaligned) view."""
        if kind == "contig": return t
        if kind == "transposed": return t.t().contiguous().t()
        if kind == "offset":
            big = torch.zeros(t.shape[0], t.shape[1] + 1, dtype=t.dtype); big[:, 1:] = t; return big[:, 1:]
        if kind == "padded":
            big = torch.zeros(t.shape[0], t.shape[1] + 64, dtype=t.dtype); big[:, :t.shape[1]] = t; return big[:, :t.shape[1]]

    for tc in (False, True):
        if tc: os.environ["STUB_TC"] = "1"
        else: os.environ.pop("STUB_TC", None)
        good = True
        lib.stub_reset()
        for (M, N, K) in [(1, 5, 64), (3, 7, 128), (17, 33, 4), (2, 3, 100), (0, 3, 8), (3, 0, 8), (4, 3, 0), (40, 9, 192)]:
            for dt in (f32, bf, hf):
                w = rnd(N, K, dt=dt)
                if K: w.view(N, K // 4, 4)[..., :2] = 0 if K else w
                s = pack_2_4(w) if K else None
                vals = s.values if K else torch.zeros(N, 0, dtype=dt); meta = s.meta if K else torch.zeros(N, 0, dtype=torch.uint8)
                for kind in ("contig", "transposed", "offset", "padded"):
                    xx = variants(rnd(M, K, dt=dt), kind) if K else rnd(M, K, dt=dt)
                    vv = variants(vals, kind) if K and N else vals
                    mm = variants(meta, kind) if K and N else meta
                    for bias in (None, rnd(N, dt=bf), rnd(N)):
                        got = T.sparse24_linear(xx, vv, mm, bias)
                        ref = P.sparse24_linear_reference(xx, vv, mm, bias)
                        if not close(got, ref):
                            good = False; print("   s24", M, N, K, dt, kind, bias is not None, (got.float() - ref.float()).abs().max())
        calls = [lib.stub_calls(i) for i in range(2)]
        rep(f"sparse24_linear results, tc={tc}: layouts, K tails (K % 64 != 0 padded), dtypes, bias, empty", good, f"calls mma/simple={calls}")

        good = True
        lib.stub_reset()
        for (M, N, K) in [(1, 20, 64), (5, 33, 100), (70, 64, 48), (2, 7, 5), (0, 4, 8), (3, 4, 0)]:
            for block in ((16, 16), (32, 64), (64, 32), (4, 3), (16, 24)):
                for dt in (f32, bf, hf):
                    w = rnd(N, K, dt=dt) * (torch.rand(N, K) > 0.5).to(dt)
                    bb = to_bsr(w, block) if N and K else None
                    if bb is None: continue
                    for kind in ("contig", "transposed", "offset"):
                        xx = variants(rnd(M, K, dt=dt), kind)
                        vv = bb.values
                        if kind == "offset":  # contiguous but misaligned values
                            flat = torch.zeros(vv.numel() + 1, dtype=dt); flat[1:] = vv.reshape(-1)
                            vv = flat[1:].view(vv.shape)
                        if kind == "transposed":
                            vv = vv.transpose(1, 2).contiguous().transpose(1, 2)
                        for bias in (None, rnd(N, dt=hf)):
                            got = T.bsr_linear(xx, bb.crow, bb.col, vv, N, bias)
                            ref = P.bsr_linear_reference(xx, bb.crow, bb.col, vv, N, bias)
                            if not close(got, ref):
                                good = False; print("   bsr", M, N, K, block, dt, kind, (got.float() - ref.float()).abs().max())
        calls = [lib.stub_calls(i) for i in (2, 3)]
        rep(f"bsr_linear results, tc={tc}: blocks 16/32/64 and odd, K tails, layouts, dtypes, bias, empty", good, f"calls mma/simple={calls}")

        good = True
        lib.stub_reset()
        for (M, N, K) in [(1, 20, 64), (2, 33, 100), (9, 17, 7), (17, 5, 40), (0, 4, 8), (3, 4, 0), (3, 5, 6)]:
            for dt in (f32, bf, hf):
                w = rnd(N, K, dt=dt) * (torch.rand(N, K) > 0.8).to(dt)
                cc = to_csr(w)
                for kind in ("contig", "transposed", "offset"):
                    xx = variants(rnd(M, K, dt=dt), kind) if K else rnd(M, K, dt=dt)
                    for bias in (None, rnd(N)):
                        got = T.csr_linear(xx, cc.crow, cc.col, cc.values, N, bias)
                        ref = P.csr_linear_reference(xx, cc.crow, cc.col, cc.values, N, bias)
                        if not close(got, ref):
                            good = False; print("   csr", M, N, K, dt, kind, (got.float() - ref.float()).abs().max())
        rep(f"csr_linear results, tc={tc}: M 1/2/9/17, layouts, dtypes, bias, empty, K = 0", good, f"calls={lib.stub_calls(4)}")

    # bias -0.0 with K == 0: reference gives +0.0
    xx = torch.randn(2, 0); z = T.csr_linear(xx, torch.zeros(4, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), torch.zeros(0), 3, torch.tensor([-0.0, 1.0, 2.0]))
    r = P.csr_linear_reference(xx, torch.zeros(4, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), torch.zeros(0), 3, torch.tensor([-0.0, 1.0, 2.0]))
    rep("K == 0: bias only, sign of zero as the reference", torch.equal(z, r) and torch.equal(torch.signbit(z), torch.signbit(r)))
    print("ALL OK" if ok else "SOME FAILED")
    return 0 if ok else 1


def gpu_main() -> int:
    import torch
    import compress.ops.sparse as P
    from compress.formats.sparse import pack_2_4, to_bsr, to_csr
    assert torch.cuda.is_available(), "--gpu needs a CUDA device"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("compress::sparse24_linear", "CUDA"):
        from torch.utils.cpp_extension import load
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
        S = os.path.join(ROOT, "csrc/sparse/")
        load(name="compress_sparse_cuda_dev",
             sources=[S + "sparse24_linear.cu", S + "bsr_linear.cu", S + "csr_linear.cu", S + "sparse_linear_cuda.cpp"],
             extra_include_paths=[os.path.join(ROOT, "csrc")], extra_cflags=["-O3"],
             extra_cuda_cflags=["-O3", "-lineinfo", "--expt-relaxed-constexpr"],
             build_directory=BUILD + "_cuda", is_python_module=False)
    C = torch.ops.compress
    dev = "cuda"
    torch.manual_seed(0)
    ok = True

    def close(got, ref, x, w):
        # error bound: a few ulps of the output dtype plus float32 accumulation over K terms
        scale = (x.float().abs() @ w.float().abs().t())
        eps = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[x.dtype]
        err = (got.float() - ref.float()).abs()
        return bool((err <= eps * (scale + ref.float().abs()) + 1e-6).all()), float(err.max()) if err.numel() else 0.0

    shapes = [(1, 4096, 4096), (1, 1000, 832), (3, 257, 512), (8, 64, 4096), (16, 512, 1000),
              (17, 300, 256), (33, 384, 640), (128, 256, 1024), (200, 129, 192)]
    for (M, N, K) in shapes:
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            x = torch.randn(M, K, device=dev).to(dt)
            bias = torch.randn(N, device=dev)
            # 2:4
            if K % 4 == 0:
                w = torch.randn(N, K, device=dev)
                w = w * (torch.rand(N, K // 4, 4, device=dev).argsort(-1) < 2).reshape(N, K).float()
                s = pack_2_4(w.to(dt))
                got = C.sparse24_linear(x, s.values, s.meta, bias)
                ref = P.sparse24_linear_reference(x, s.values, s.meta, bias)
                g, e = close(got, ref, x, w.to(dt))
                ok &= g
                print(("ok  " if g else "FAIL"), "sparse24", M, N, K, dt, f"max err {e:.3g}")
            # BSR
            for block in ((16, 16), (32, 64), (64, 32), (64, 64), (8, 24)):
                w = torch.randn(N, K, device=dev)
                R, Cb = -(-N // block[0]), -(-K // block[1])
                keep = (torch.rand(R, Cb, device=dev) < 0.3).repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
                w = (w * keep[:N, :K]).to(dt)
                b = to_bsr(w, block)
                got = C.bsr_linear(x, b.crow, b.col, b.values, N, bias)
                ref = P.bsr_linear_reference(x, b.crow, b.col, b.values, N, bias)
                g, e = close(got, ref, x, w)
                ok &= g
                print(("ok  " if g else "FAIL"), "bsr", block, M, N, K, dt, f"max err {e:.3g}")
            # CSR
            w = (torch.randn(N, K, device=dev) * (torch.rand(N, K, device=dev) < 0.15)).to(dt)
            c = to_csr(w)
            got = C.csr_linear(x, c.crow, c.col, c.values, N, bias)
            ref = P.csr_linear_reference(x, c.crow, c.col, c.values, N, bias)
            g, e = close(got, ref, x, w)
            ok &= g
            print(("ok  " if g else "FAIL"), "csr", M, N, K, dt, f"max err {e:.3g}")
    torch.cuda.synchronize()
    print("ALL OK" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(gpu_main() if "--gpu" in sys.argv else cpu_main())
