"""Numpy replay of csrc/int8/int8_gemm_sm90.cu's addressing (the Hopper wgmma + TMA int8 GEMM),
checked against numpy matmuls on odd shapes. The kernel has NOT run on a GPU; this model is the
offline check of its index arithmetic, in the style of int8_gemm_model.py.

Replayed, with the kernel's constants:
  * TMA 2-D tiled load with CU_TENSOR_MAP_SWIZZLE_128B: box [128 rows][128 bytes] of a [rows, K]
    tensor (row stride ld) -> the smem byte of each (row, k) (chunk c of row r at c ^ (r & 7),
    i.e. address bits [4:6] ^= bits [7:9] on a 1024-aligned tile), zero fill outside the tensor;
  * the wgmma matrix descriptor (start >> 4, LBO, SBO >> 4, swizzle mode 1 = 128B) the kernel
    builds for each warpgroup and k32 step, decoded back, and the bytes the hardware reads for
    each (row, k) of the m64 x k32 A and n128 x k32 B operands (canonical K-major SW128 layout:
    unswizzled address start + (row / 8) * SBO + (row % 8) * 128 + k, then the same XOR);
  * the accumulator fragment d[4i + e] of lane 4g + t in warp w -> (row, col) and the bounds-
    checked store of int8_gemm_common.cuh's store_tile<1, 16>;
  * the mbarrier phase parities of the producer / consumer loops.
Run: python benchmarks/dev/int8_gemm_sm90_model.py
"""
import numpy as np

BM, BN, BK, STAGES = 128, 128, 128, 6
TILE_A = BM * BK
STAGE = TILE_A + BN * BK
SMEM_BASE = 1024 * 3 + 1024  # any 1024-aligned base (the kernel rounds its dynamic base up)


def swz128(addr):
    """The 128B swizzle on a shared-memory byte address (Swizzle<3,4,3>)."""
    return addr ^ (((addr >> 7) & 7) << 4)


def tma_load(smem, dst, mat, row0, k0, box_rows):
    """cp.async.bulk.tensor.2d of box (k0, row0) of `mat` [rows, K] into smem at dst."""
    assert dst % 1024 == 0, "128B-swizzled boxes must start on the 1024-byte pattern period"
    rows, K = mat.shape
    for r in range(box_rows):
        for kb in range(BK):
            gr, gk = row0 + r, k0 + kb
            v = int(mat[gr, gk]) if (gr < rows and gk < K) else 0  # OOB: zero fill
            smem[swz128(dst + r * BK + kb)] = np.uint8(v & 0xFF)
    return box_rows * BK  # bytes counted toward complete_tx: the whole box, always


def make_desc(addr):
    """smem_desc() of the kernel."""
    return ((addr & 0x3FFFF) >> 4) | (1 << 16) | ((1024 >> 4) << 32) | (1 << 62)


def wgmma_operand(smem, desc, rows):
    """The [rows][32] int8 K-major operand a wgmma reads through `desc` (128B swizzle)."""
    start = (desc & 0x3FFF) << 4
    sbo = ((desc >> 32) & 0x3FFF) << 4
    base_offset = (desc >> 49) & 7
    mode = desc >> 62
    assert mode == 1 and base_offset == 0 and sbo == 1024
    out = np.zeros((rows, 32), np.int8)
    for i in range(rows):
        for j in range(32):
            a = start + (i // 8) * sbo + (i % 8) * 128 + j
            # K-major SW128: one k32 step never leaves its 128-byte row (start offset 32 s + j < 128)
            assert (a - start) // 128 == i and (start % 128) + j < 128
            out[i, j] = smem[swz128(a)].view(np.int8)
    return out


def frag_coords(warp, lane, i, e):
    """(row within the warpgroup's m64, col) of accumulator register d[4i + e]."""
    g, t = lane >> 2, lane & 3
    return 16 * warp + g + 8 * (e >> 1), 8 * i + 2 * t + (e & 1)


def check_fragment_is_mma_sync_layout():
    # store_tile<1, 16> reads acc[0][ni][e] at row0 + g + 8 * (e >= 2), col0 + 8 ni + 2 t + (e & 1)
    # with row0 = 16 * warp: identical to frag_coords, and every (row, col) of m64 x n128 once.
    seen = np.zeros((64, 128), int)
    for w in range(4):
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            for i in range(16):
                for e in range(4):
                    r, c = frag_coords(w, lane, i, e)
                    assert (r, c) == (16 * w + g + 8 * (e >= 2), 8 * i + 2 * t + (e & 1))
                    seen[r, c] += 1
    assert (seen == 1).all()


def check_pipeline_parities(num_kt):
    """Producer waits empty[s] with parity (use - 1) & 1, consumers full[s] with use & 1."""
    full_done = [0] * STAGES   # completed phases
    empty_done = [0] * STAGES
    for kt in range(num_kt):
        s, use = kt % STAGES, kt // STAGES
        if use > 0:  # the wait returns once phase (use - 1) of empty[s] completed
            assert empty_done[s] == use and ((use - 1) & 1) == (empty_done[s] - 1) & 1
        full_done[s] += 1  # expect_tx + the two boxes land
        assert ((kt // STAGES) & 1) == (full_done[s] - 1) & 1  # consumer's parity: the phase just done
        if kt > 0:
            empty_done[(kt - 1) % STAGES] += 1  # 8 warps arrive after wgmma.wait_group 1


def gemm(A, Bt):
    """The kernel's data flow for C = A @ Bt^T (int32), CTA by CTA."""
    M, K = A.shape
    N = Bt.shape[0]
    C = np.full((M, N), 0x7FFFFFFF, np.int64)  # poisoned
    num_kt = -(-K // BK)
    for bm in range(-(-M // BM)):
        for bn in range(-(-N // BN)):
            m0, n0 = bm * BM, bn * BN
            acc = np.zeros((2, 64, 128), np.int64)  # [warpgroup][row][col]
            smem = np.zeros(SMEM_BASE + STAGES * STAGE, np.uint8)
            for kt in range(num_kt):
                s = kt % STAGES
                a_dst = SMEM_BASE + s * STAGE
                tx = tma_load(smem, a_dst, A, m0, kt * BK, BM)
                tx += tma_load(smem, a_dst + TILE_A, Bt, n0, kt * BK, BN)
                assert tx == STAGE
                for wg in range(2):
                    a_tile = SMEM_BASE + s * STAGE + wg * 64 * BK
                    b_tile = SMEM_BASE + s * STAGE + TILE_A
                    for j in range(BK // 32):
                        a = wgmma_operand(smem, make_desc(a_tile + 32 * j), 64).astype(np.int64)
                        b = wgmma_operand(smem, make_desc(b_tile + 32 * j), 128).astype(np.int64)
                        acc[wg] += a @ b.T
            # epilogue: store_tile<1, 16> per warp, bounds-checked
            for wg in range(2):
                for w in range(4):
                    for lane in range(32):
                        for i in range(16):
                            for e in range(4):
                                r, c = frag_coords(w, lane, i, e)
                                row, col = m0 + 64 * wg + r, n0 + c
                                if row < M and col < N:
                                    C[row, col] = acc[wg, r, c]
    return C


def main():
    rng = np.random.default_rng(0)
    check_fragment_is_mma_sync_layout()
    for num_kt in (1, 5, 6, 7, 13, 40):
        check_pipeline_parities(num_kt)
    # K: multiples of 16 (the glue pads K to 16); M, N, K cut every tile edge.
    for M, N, K in [(65, 8, 16), (129, 136, 80), (130, 1, 272), (1, 129, 144), (200, 257, 400)]:
        A = rng.integers(-128, 128, (M, K), dtype=np.int64).astype(np.int8)
        Bt = rng.integers(-128, 128, (N, K), dtype=np.int64).astype(np.int8)
        C = gemm(A, Bt)
        ref = A.astype(np.int64) @ Bt.astype(np.int64).T
        assert np.array_equal(C, ref), f"mismatch at {M}x{N}x{K}"
        print(f"ok  M={M:4d} N={N:4d} K={K:4d}: swizzle / descriptor / fragment replay == numpy matmul")
    print("all checks passed")


if __name__ == "__main__":
    main()
