"""Dev check (not a test): a numpy model of csrc/int8/int8_gemm.cu, run on a machine with no GPU.

    python benchmarks/dev/int8_gemm_model.py        # prints one line per check, exits 1 on failure

Two halves:

1. PTX reference semantics, written from the PTX ISA text and nothing else:
   `ldmatrix.sync.aligned.m8n8.x4.shared.b16` (lanes 8q..8q+7 give the 8 row addresses of matrix q;
   lane L receives row L/4, bytes 4(L%4)..+3, little-endian, into register q) and
   `mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32` (the A / B / C fragment formulas of
   "Matrix Fragments for mma.m16n8k32"). `check_one_warp_k32` feeds one warp's ldmatrix row
   addresses, as the kernel computes them, through these and compares with A[16x32] @ Bt[8x32]^T.

2. A transcription of the kernel's index arithmetic (same names as the .cu): the per-thread copy
   assignment and its predicates, the swizzled shared-memory layout, the multistage cp.async
   pipeline (copies stay *pending* until the wait_group that retires them; a read of shared memory
   that a pending copy still targets is an error), the ldmatrix lane addresses of every warp,
   the accumulator -> C epilogue. `run_gemm` simulates every CTA of the grid for given
   M, N, K, lda, ldb, ldc and checks C == A @ Bt^T exactly, every C element written once and
   nothing else written, every global read inside the first K bytes of a valid row, every smem
   byte written by exactly one copy per slice, and (for 8-lane phases) no shared-memory bank
   conflicts in ldmatrix or in the cp.async stores.

What this proves: the index arithmetic *as transcribed here* is right for the sizes tried (odd
M, N; K tails; padded lda / ldb; odd and even ldc; both tile configs) and under the PTX ISA
semantics as read from the documentation.

What it does not prove: that this transcription matches the .cu line for line (kept in sync by
eye: change one, change the other); that the hardware follows the documented fragment layouts
(the first GPU run decides); the asm constraints / memory clobbers, the real ordering of
cp.async completion and __syncthreads (modelled, not executed); int32 wrap-around for huge K;
launcher argument checks; performance.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------
# 1. PTX reference semantics (PTX ISA text)
# ---------------------------------------------------------------------------------------------


def ldmatrix_x4(smem: np.ndarray, lane_addr: np.ndarray) -> np.ndarray:
    """ldmatrix.sync.aligned.m8n8.x4.shared.b16: returns uint32 regs [32 lanes, 4]."""
    assert smem.dtype == np.uint8 and lane_addr.shape == (32,)
    assert np.all(lane_addr % 16 == 0), "ldmatrix row addresses must be 16-byte aligned"
    rows = lane_addr.reshape(4, 8)  # matrix q, row i -> address given by lane 8q + i
    L = np.arange(32)
    out = np.zeros((32, 4), np.uint32)
    for q in range(4):
        start = rows[q, L // 4] + 4 * (L % 4)  # lane L: row L/4 of matrix q, bytes 4(L%4)..+3
        byts = smem[start[:, None] + np.arange(4)].astype(np.uint32)  # [32, 4], lowest address first
        out[:, q] = byts[:, 0] | (byts[:, 1] << 8) | (byts[:, 2] << 16) | (byts[:, 3] << 24)
    return out


def _bytes_of(reg: np.ndarray) -> np.ndarray:
    """uint32 [...] -> int8 [..., 4], low byte first."""
    return reg.astype("<u4").view(np.uint8).reshape(*reg.shape, 4).view(np.int8)


def mma_m16n8k32_s8(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 on per-lane registers.

    a: uint32 [32, 4]; b: uint32 [32, 2]; c: int32 [32, 4]. Returns d: int32 [32, 4].
    Fragments (groupID = lane >> 2, threadID_in_group = lane % 4), elements low to high:
      A a_i, i = 0..15:  row = g for 0 <= i < 4 or 8 <= i < 12, else g + 8
                         col = 4t + (i & 3) for i < 8, else 4t + (i & 3) + 16
      B b_i, i = 0..7:   row = 4t + (i & 3) for i < 4, else 4t + (i & 3) + 16;  col = g
      C c_i, i = 0..3:   row = g for i < 2, else g + 8;  col = 2t + (i & 1)
    """
    A = np.zeros((16, 32), np.int64)
    B = np.zeros((32, 8), np.int64)
    nA = np.zeros((16, 32), np.int64)
    nB = np.zeros((32, 8), np.int64)
    ab, bb = _bytes_of(a), _bytes_of(b)  # [32, 4, 4], [32, 2, 4]
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for i in range(16):
            row = g if (i < 4 or 8 <= i < 12) else g + 8
            col = 4 * t + (i & 3) + (16 if i >= 8 else 0)
            A[row, col] = ab[lane, i // 4, i % 4]
            nA[row, col] += 1
        for i in range(8):
            row = 4 * t + (i & 3) + (16 if i >= 4 else 0)
            B[row, g] = bb[lane, i // 4, i % 4]
            nB[row, g] += 1
    assert np.all(nA == 1) and np.all(nB == 1), "fragment formulas must tile A and B exactly"
    D = A @ B
    d = np.zeros((32, 4), np.int64)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for i in range(4):
            d[lane, i] = c[lane, i] + D[g if i < 2 else g + 8, 2 * t + (i & 1)]
    return d.astype(np.int32)


def banks_conflict_free(addrs16: list[int]) -> bool:
    """8 accesses of 16 bytes (one phase of a 128-bit shared access): conflict-free iff they
    cover 32 distinct 4-byte banks."""
    banks = set()
    for a in addrs16:
        for w in range(4):
            banks.add(((a + 4 * w) // 4) % 32)
    return len(banks) == 4 * len(addrs16)


# ---------------------------------------------------------------------------------------------
# 2. Transcription of the kernel (names as in int8_gemm.cu)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cfg:
    BM: int
    BN: int
    BK: int
    WARPS_M: int
    WARPS_N: int
    STAGES: int

    @property
    def kThreads(self): return 32 * self.WARPS_M * self.WARPS_N
    @property
    def kWarpM(self): return self.BM // self.WARPS_M
    @property
    def kWarpN(self): return self.BN // self.WARPS_N
    @property
    def kMTiles(self): return self.kWarpM // 16
    @property
    def kNTiles(self): return self.kWarpN // 8
    @property
    def kKSteps(self): return self.BK // 32
    @property
    def kChunks(self): return self.BK // 16
    @property
    def kStageBytesA(self): return self.BM * self.BK
    @property
    def kStageBytesB(self): return self.BN * self.BK
    @property
    def kStageBytes(self): return self.kStageBytesA + self.kStageBytesB
    @property
    def kSmemBytes(self): return self.STAGES * self.kStageBytes
    @property
    def kLoadsA(self): return self.BM * self.kChunks // self.kThreads
    @property
    def kLoadsB(self): return self.BN * self.kChunks // self.kThreads

    def static_asserts(self):
        assert self.BK in (64, 128)
        assert self.BM % (16 * self.WARPS_M) == 0 and self.BN % (16 * self.WARPS_N) == 0
        assert (self.BM * self.kChunks) % self.kThreads == 0
        assert (self.BN * self.kChunks) % self.kThreads == 0
        assert self.kThreads % self.kChunks == 0 and self.STAGES >= 2


BIG = Cfg(128, 128, 64, 2, 4, 4)
SMALL = Cfg(16, 32, 128, 1, 2, 6)
K_SMALL_MAX_M = 32


def pick_config(M: int) -> Cfg:
    return SMALL if M <= K_SMALL_MAX_M else BIG


K_MIN_SPLIT_TILES, K_MAX_SPLITS = 4, 64


def splitk_plan(M: int, N: int, K: int, wave: int) -> tuple[int, int]:
    """int8_gemm.cu splitk_plan: (splits, k_split)."""
    one = (1, K)
    if M > K_SMALL_MAX_M:
        return one
    BK = SMALL.BK
    num_kt = (K + BK - 1) // BK
    ctas = ((M + SMALL.BM - 1) // SMALL.BM) * ((N + SMALL.BN - 1) // SMALL.BN)
    want = min(2 * wave // ctas, num_kt // K_MIN_SPLIT_TILES, K_MAX_SPLITS)
    if want < 2:
        return one
    tiles = (num_kt + want - 1) // want
    splits = (num_kt + tiles - 1) // tiles
    return one if splits < 2 else (splits, tiles * BK)


def check_splitk_plan():
    """Over many sizes and GPUs: splits tile [0, K) exactly with non-empty BK-aligned ranges, at
    most ~2 waves, and no split when the M x N grid alone fills more than a wave."""
    n = 0
    for wave in (1, 8, 108 * 4, 132 * 6, 5000):
        for M in (1, 16, 17, 32, 33):
            for N in (1, 45, 97, 1000, 4096, 16384):
                for K in list(range(0, 2200, 16)) + [4096, 4100 + 12, 8192, 65536 + 16]:
                    splits, k_split = splitk_plan(M, N, K, wave)
                    ctas = -(-M // SMALL.BM) * -(-N // SMALL.BN)
                    if splits == 1:
                        assert k_split == K
                        continue
                    n += 1
                    assert M <= K_SMALL_MAX_M and 2 <= splits <= K_MAX_SPLITS and k_split % SMALL.BK == 0
                    ranges = [(z * k_split, min(K, (z + 1) * k_split)) for z in range(splits)]
                    assert all(hi > lo for lo, hi in ranges), "empty split"
                    assert ranges[-1][1] == K and all(ranges[i][1] == ranges[i + 1][0] for i in range(splits - 1))
                    assert k_split >= K_MIN_SPLIT_TILES * SMALL.BK
                    assert ctas * splits <= 2 * wave and ctas <= wave
    return n


def swz(BK: int, r: int) -> int:
    return ((r >> 1) & 3) if BK == 64 else (r & 7)


def tile_offset(BK: int, r: int, c: int) -> int:
    return r * BK + ((c ^ swz(BK, r)) << 4)


class Sim:
    """Global buffers, shared memory and pending cp.async groups of one CTA."""

    def __init__(self, cfg, A, Bt, C, M, N, K, lda, ldb, ldc, c_base_elems):
        self.cfg, self.A, self.Bt, self.C = cfg, A, Bt, C
        self.M, self.N, self.K, self.lda, self.ldb, self.ldc = M, N, K, lda, ldb, ldc
        self.c_base_elems = c_base_elems  # C's offset in int32 elements from an 8-byte boundary
        self.smem = np.full(cfg.kSmemBytes, 0xAB, np.uint8)  # garbage, never read unwritten
        self.pending: list[list[tuple[int, bytes]]] = []
        self.open_group: list[tuple[int, bytes]] = []
        self.pend_count = np.zeros(cfg.kSmemBytes // 16, np.int64)  # pending copies per 16 B slot

    # --- cp.async ---
    def cp_async_16(self, dst: int, src: tuple[str, int], zero_fill: bool):
        assert 0 <= dst and dst + 16 <= self.cfg.kSmemBytes and dst % 16 == 0
        which, off = src
        buf = self.A if which == "A" else self.Bt
        ld = self.lda if which == "A" else self.ldb
        assert 0 <= off and off + 16 <= buf.size, "dummy / real source must be a valid address"
        if zero_fill:
            data = bytes(16)
        else:
            rows = (self.M if which == "A" else self.N)
            row, k = divmod(off, ld) if ld > 0 else (0, off)
            assert off % 16 == 0, "16-byte aligned global source"
            assert k + 16 <= self.K and row < rows, f"read outside the valid [rows, K] of {which}"
            data = buf[off : off + 16].tobytes()
        self.open_group.append((dst, data))
        self.pend_count[dst // 16] += 1

    def cp_async_commit(self):
        self.pending.append(self.open_group)
        self.open_group = []

    def cp_async_wait(self, n: int):
        while len(self.pending) > n:
            for dst, data in self.pending.pop(0):
                self.smem[dst : dst + 16] = np.frombuffer(data, np.uint8)
                self.pend_count[dst // 16] -= 1

    def check_not_pending(self, addr16: np.ndarray):
        assert np.all(self.pend_count[addr16 // 16] == 0), "smem read races a pending cp.async"


def run_cta(sim: Sim, bx: int, by: int, written: np.ndarray, stats: dict, bz: int = 0, k_split=None,
            atomic_add=False):
    cfg = sim.cfg
    BK, STAGES, CH = cfg.BK, cfg.STAGES, cfg.kChunks
    MT, NT = cfg.kMTiles, cfg.kNTiles
    m0, n0 = bx * cfg.BM, by * cfg.BN
    T = cfg.kThreads
    # split-K: this CTA's K range (the kernel's k_begin / k_len); one split: k_split = K
    k_split = sim.K if k_split is None else k_split
    k_begin = bz * k_split
    k_len = min(sim.K - k_begin, k_split)
    assert k_len > 0 or sim.K == 0, "an empty split was launched"
    assert k_len % 16 == 0 and (bz == 0 or k_begin % BK == 0)
    K = k_len  # the predicates below are the kernel's, on the split's length

    # ---- per-thread copy assignment
    thr = []
    for tid in range(T):
        ld_chunk = tid % CH
        a = []
        for j in range(cfg.kLoadsA):
            r = (tid + j * T) // CH
            ok = m0 + r < sim.M
            a.append((ok, (m0 + r) * sim.lda + k_begin + ld_chunk * 16 if ok else 0,
                      tile_offset(BK, r, ld_chunk)))
        b = []
        for j in range(cfg.kLoadsB):
            r = (tid + j * T) // CH
            ok = n0 + r < sim.N
            b.append((ok, (n0 + r) * sim.ldb + k_begin + ld_chunk * 16 if ok else 0,
                      cfg.kStageBytesA + tile_offset(BK, r, ld_chunk)))
        thr.append((ld_chunk, a, b))

    def load_slice(stage, kt):
        k0 = kt * BK
        s = stage * cfg.kStageBytes
        dsts = []
        for j in range(max(cfg.kLoadsA, cfg.kLoadsB)):  # phase check: same j, 8 consecutive tids
            for which in ("A", "B"):
                loads = cfg.kLoadsA if which == "A" else cfg.kLoadsB
                if j >= loads:
                    continue
                phase = []
                for tid in range(T):
                    ld_chunk, a, b = thr[tid]
                    k_ok = k0 + ld_chunk * 16 < K
                    row_ok, src, dst = (a if which == "A" else b)[j]
                    ok = row_ok and k_ok
                    sim.cp_async_16(s + dst, (which, src + k0 if ok else 0), not ok)
                    dsts.append(s + dst)
                    phase.append(s + dst)
                    if len(phase) == 8:
                        stats["cp_phases"] += 1
                        stats["cp_conflicts"] += not banks_conflict_free(phase)
                        phase = []
        # every byte of the stage written exactly once per slice
        cover = np.zeros(cfg.kStageBytes, np.int64)
        for d in dsts:
            cover[d - s : d - s + 16] += 1
        assert np.all(cover == 1), "copies must tile the stage exactly"

    num_kt = (K + BK - 1) // BK
    stage_slice = [None] * STAGES  # which slice a stage was last filled with (model bookkeeping)
    for s_ in range(STAGES - 1):
        if s_ < num_kt:
            load_slice(s_, s_)
            stage_slice[s_] = s_
        sim.cp_async_commit()

    acc = np.zeros((cfg.WARPS_M * cfg.WARPS_N, MT, NT, 32, 4), np.int32)
    for kt in range(num_kt):
        sim.cp_async_wait(STAGES - 2)
        # __syncthreads()
        nxt = kt + STAGES - 1
        if nxt < num_kt:
            tgt = nxt % STAGES
            assert stage_slice[tgt] is None or stage_slice[tgt] < kt, "refilling a live stage"
            load_slice(tgt, nxt)
            stage_slice[tgt] = nxt
        sim.cp_async_commit()

        assert stage_slice[kt % STAGES] == kt
        s = (kt % STAGES) * cfg.kStageBytes
        for warp in range(cfg.WARPS_M * cfg.WARPS_N):
            warp_m, warp_n = warp % cfg.WARPS_M, warp // cfg.WARPS_M
            wm0, wn0 = warp_m * cfg.kWarpM, warp_n * cfg.kWarpN
            lanes = np.arange(32)
            a_row = wm0 + (lanes & 15)
            a_csel = lanes >> 4
            b_row = wn0 + (lanes & 7) + ((lanes >> 4) << 3)
            b_csel = (lanes >> 3) & 1
            a_row_off = a_row * BK
            b_row_off = cfg.kStageBytesA + b_row * BK
            a_swz = np.array([swz(BK, int(r)) for r in a_row])
            b_swz = np.array([swz(BK, int(r)) for r in b_row])
            for ks in range(cfg.kKSteps):
                af, bf = [], [None] * NT
                for mi in range(MT):
                    addr = s + a_row_off + mi * 16 * BK + (((2 * ks + a_csel) ^ a_swz) << 4)
                    af.append(ldsm(sim, addr, stats, s, s + cfg.kStageBytesA))
                for p in range(NT // 2):
                    addr = s + b_row_off + p * 16 * BK + (((2 * ks + b_csel) ^ b_swz) << 4)
                    r = ldsm(sim, addr, stats, s + cfg.kStageBytesA, s + cfg.kStageBytes)
                    bf[2 * p] = r[:, 0:2]
                    bf[2 * p + 1] = r[:, 2:4]
                for mi in range(MT):
                    for ni in range(NT):
                        acc[warp, mi, ni] = mma_fast(acc[warp, mi, ni], af[mi], bf[ni])
    sim.cp_async_wait(0)

    # ---- epilogue
    vec2 = (sim.ldc % 2 == 0) and (sim.c_base_elems % 2 == 0)
    for warp in range(cfg.WARPS_M * cfg.WARPS_N):
        warp_m, warp_n = warp % cfg.WARPS_M, warp // cfg.WARPS_M
        wm0, wn0 = warp_m * cfg.kWarpM, warp_n * cfg.kWarpN
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            for mi in range(MT):
                for h in range(2):
                    row = m0 + wm0 + mi * 16 + g + 8 * h
                    if row >= sim.M:
                        continue
                    for ni in range(NT):
                        col = n0 + wn0 + ni * 8 + 2 * t
                        v0, v1 = acc[warp, mi, ni, lane, 2 * h], acc[warp, mi, ni, lane, 2 * h + 1]
                        if atomic_add:  # Int32Store::atomic_add: C += acc, per element
                            for c_, v in ((col, v0), (col + 1, v1)):
                                if c_ < sim.N:
                                    sim.C[row * sim.ldc + c_] += v
                                    written[row, c_] += 1
                        elif vec2 and col + 1 < sim.N:
                            assert (sim.c_base_elems + row * sim.ldc + col) % 2 == 0
                            store(sim, written, row, col, v0)
                            store(sim, written, row, col + 1, v1)
                            stats["vec_stores"] += 1
                        else:
                            if col < sim.N:
                                store(sim, written, row, col, v0)
                            if col + 1 < sim.N:
                                store(sim, written, row, col + 1, v1)


def store(sim, written, row, col, v):
    assert 0 <= row < sim.M and 0 <= col < sim.N, "store outside C"
    sim.C[row * sim.ldc + col] = v
    written[row, col] += 1


def ldsm(sim, addr, stats, lo, hi):
    addr = np.asarray(addr, np.int64)
    assert np.all((addr >= lo) & (addr + 16 <= hi)), "ldmatrix row outside its tile"
    sim.check_not_pending(addr)
    for q in range(4):
        stats["ldsm_phases"] += 1
        stats["ldsm_conflicts"] += not banks_conflict_free([int(x) for x in addr[8 * q : 8 * q + 8]])
    return ldmatrix_x4(sim.smem, addr)


# A vectorised mma with the same fragment formulas as mma_m16n8k32_s8 (checked equal below).
_lane = np.arange(32)
_g, _t = _lane >> 2, _lane & 3


def mma_fast(c, a, b):
    ab, bb = _bytes_of(np.ascontiguousarray(a)).astype(np.int64), _bytes_of(np.ascontiguousarray(b)).astype(np.int64)
    A = np.zeros((16, 32), np.int64)
    B = np.zeros((32, 8), np.int64)
    for i in range(16):
        row = _g if (i < 4 or 8 <= i < 12) else _g + 8
        col = 4 * _t + (i & 3) + (16 if i >= 8 else 0)
        A[row, col] = ab[:, i // 4, i % 4]
    for i in range(8):
        B[4 * _t + (i & 3) + (16 if i >= 4 else 0), _g] = bb[:, i // 4, i % 4]
    D = A @ B
    d = c.astype(np.int64).copy()
    for i in range(4):
        d[:, i] += D[np.where(i < 2, _g, _g + 8), 2 * _t + (i & 1)]
    return d.astype(np.int32)


def run_gemm(M, N, K, lda, ldb, ldc, cfg=None, c_base_elems=0, seed=0, wave=None):
    """Simulate the whole grid; returns stats. K here is the kernel's K (a multiple of 16).
    wave: resident CTAs of a modelled GPU: split K as splitk_plan decides (C zeroed, then added)."""
    cfg = cfg or pick_config(M)
    splits, k_split = splitk_plan(M, N, K, wave) if wave is not None else (1, K)
    if splits > 1:
        assert cfg is SMALL
    cfg.static_asserts()
    assert K % 16 == 0 and lda % 16 == 0 and ldb % 16 == 0 and lda >= K and ldb >= K
    rng = np.random.default_rng(seed)
    # Buffers hold exactly the bytes the contract lets the kernel read (up to the last row's K).
    A = rng.integers(-128, 128, size=max((M - 1) * lda + K, 16), dtype=np.int64).astype(np.int8)
    Bt = rng.integers(-128, 128, size=max((N - 1) * ldb + K, 16), dtype=np.int64).astype(np.int8)
    C = np.full((M - 1) * ldc + N, -7, np.int32)
    written = np.zeros((M, N), np.int64)
    stats = dict(cp_phases=0, cp_conflicts=0, ldsm_phases=0, ldsm_conflicts=0, vec_stores=0, ctas=0,
                 splits=splits, k_split=k_split)
    grid_m, grid_n = (M + cfg.BM - 1) // cfg.BM, (N + cfg.BN - 1) // cfg.BN
    assert grid_n <= 65535
    if splits > 1:  # zero_int32: C's [M, N] elements (not the ldc padding)
        for m in range(M):
            C[m * ldc : m * ldc + N] = 0
    for bz, bx, by in itertools.product(range(splits), range(grid_m), range(grid_n)):
        sim = Sim(cfg, A, Bt, C, M, N, K, lda, ldb, ldc, c_base_elems)
        run_cta(sim, bx, by, written, stats, bz, k_split, atomic_add=splits > 1)
        stats["ctas"] += 1
    assert np.all(written == splits), "every C element added exactly once per split"
    written //= splits
    # reference
    Am = np.stack([A[m * lda : m * lda + K] for m in range(M)]).astype(np.int64) if K else np.zeros((M, 0), np.int64)
    Bm = np.stack([Bt[n * ldb : n * ldb + K] for n in range(N)]).astype(np.int64) if K else np.zeros((N, 0), np.int64)
    ref = Am @ Bm.T
    got = np.stack([C[m * ldc : m * ldc + N] for m in range(M)])
    assert np.all(written == 1), "every C element written exactly once"
    # C padding between rows untouched
    for m in range(M - 1):
        assert np.all(C[m * ldc + N : (m + 1) * ldc] == -7), "wrote into ldc padding"
    assert np.array_equal(got.astype(np.int64), ref), "C != A @ Bt^T"
    return stats


def check_one_warp_k32(seed=1):
    """One warp, one k32 step, from the kernel's ldmatrix lane addresses on a [16][64] A tile and
    a [16][64] Bt tile (BK = 64 swizzle), through the PTX ldmatrix and mma semantics."""
    rng = np.random.default_rng(seed)
    BK = 64
    A = rng.integers(-128, 128, (16, BK)).astype(np.int8)
    Bt = rng.integers(-128, 128, (16, BK)).astype(np.int8)  # two n8 tiles
    smem = np.zeros(2 * 16 * BK, np.uint8)
    for r in range(16):
        for c in range(BK // 16):
            o = tile_offset(BK, r, c)
            smem[o : o + 16] = A[r, 16 * c : 16 * c + 16].view(np.uint8)
            o = 16 * BK + tile_offset(BK, r, c)
            smem[o : o + 16] = Bt[r, 16 * c : 16 * c + 16].view(np.uint8)
    lanes = np.arange(32)
    for ks in range(BK // 32):
        a_row = lanes & 15
        a_addr = a_row * BK + (((2 * ks + (lanes >> 4)) ^ np.array([swz(BK, r) for r in a_row])) << 4)
        b_row = (lanes & 7) + ((lanes >> 4) << 3)
        b_addr = 16 * BK + b_row * BK + (((2 * ks + ((lanes >> 3) & 1)) ^ np.array([swz(BK, r) for r in b_row])) << 4)
        af = ldmatrix_x4(smem, a_addr)
        br = ldmatrix_x4(smem, b_addr)
        for ni in range(2):
            b = br[:, 2 * ni : 2 * ni + 2]
            d = mma_m16n8k32_s8(af, b, np.zeros((32, 4), np.int32))
            assert np.array_equal(d, mma_fast(np.zeros((32, 4), np.int32), af, b))
            ref = A[:, 32 * ks : 32 * ks + 32].astype(np.int64) @ Bt[8 * ni : 8 * ni + 8, 32 * ks : 32 * ks + 32].astype(np.int64).T
            D = np.zeros((16, 8), np.int64)
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1] = d[lane]
            assert np.array_equal(D, ref), f"one-warp k32 mismatch (ks={ks}, n-tile {ni})"


def main() -> int:
    check_one_warp_k32()
    print("ok  one warp, k32 step: ldmatrix(PTX) + mma(PTX) == A[16x32] @ Bt[8x32]^T, both k32 halves of BK=64, both n8 tiles")

    cases = [
        # (M, N, K, lda, ldb, ldc, cfg, c_base_elems)
        (1, 1, 16, 16, 16, 1, None, 0),
        (1, 100, 144, 144, 160, 100, None, 0),
        (5, 33, 400, 416, 400, 33, None, 1),
        (16, 64, 128, 128, 128, 64, None, 0),
        (17, 7, 48, 48, 64, 9, None, 0),
        (32, 45, 272, 288, 272, 46, None, 0),
        (33, 1, 16, 16, 16, 1, None, 0),
        (33, 130, 80, 96, 80, 131, None, 0),
        (129, 45, 208, 208, 224, 46, None, 1),
        (200, 257, 64, 64, 64, 258, None, 0),
        (128, 128, 336, 336, 336, 128, None, 0),
        (37, 45, 16, 16, 16, 45, SMALL, 0),
        (3, 9, 96, 112, 96, 10, BIG, 0),
    ]
    for M, N, K, lda, ldb, ldc, cfg, cb in cases:
        st = run_gemm(M, N, K, lda, ldb, ldc, cfg, cb, seed=M * 1000 + N)
        name = "small" if (cfg or pick_config(M)) is SMALL else "big"
        print(f"ok  {name:5s} M={M:3d} N={N:3d} K={K:3d} lda={lda} ldb={ldb} ldc={ldc} C+{cb}: "
              f"{st['ctas']} CTAs exact, each C once; bank conflicts ldsm {st['ldsm_conflicts']}/{st['ldsm_phases']} "
              f"cp.async {st['cp_conflicts']}/{st['cp_phases']}; int2 stores {st['vec_stores']}")
        assert st["ldsm_conflicts"] == 0 and st["cp_conflicts"] == 0
    # split-K: plan arithmetic, then whole grids with K splits (C zeroed, atomic adds)
    n = check_splitk_plan()
    print(f"ok  splitk_plan: {n} split configurations tile K exactly, none empty, <= 2 waves")
    for M, N, K, lda, ldb, ldc, wave in [
        (1, 45, 4112, 4112, 4112, 45, 132 * 6),    # 33 slices -> 7 splits of 5 (last 3, 16-byte tail)
        (3, 97, 1040, 1040, 1056, 98, 108 * 4),    # 9 slices -> 2 splits of 5 + 4 (tail)
        (17, 33, 2064, 2080, 2064, 34, 64),        # 17 slices -> 4 splits of 5, 5, 5, 2
        (32, 7, 1024, 1024, 1024, 7, 132 * 6),     # 8 slices -> 2 splits of 4 exactly
        (2, 40, 4096 + 128, 4224, 4224, 41, 4),    # small wave: 4 splits (2 CTAs x 4 <= 2 waves)
    ]:
        st = run_gemm(M, N, K, lda, ldb, ldc, SMALL, seed=K + M, wave=wave)
        assert st["splits"] > 1, st
        assert st["ldsm_conflicts"] == 0 and st["cp_conflicts"] == 0
        print(f"ok  split-K M={M:2d} N={N:3d} K={K} ldc={ldc} wave={wave}: {st['splits']} splits of "
              f"{st['k_split']} bytes, {st['ctas']} CTAs, C == A @ Bt^T exactly, each element added once per split")
    # K = 0: no slice, zeros written everywhere once
    st = run_gemm(3, 5, 0, 16, 16, 5)
    print("ok  K=0 writes zeros, each C once")
    # pipeline bookkeeping over many slice counts and stage depths (no data)
    for stages in (2, 3, 4, 5, 6):
        cfg = Cfg(16, 32, 64, 1, 2, stages)
        for K in (16, 64, 80, 64 * stages, 64 * stages + 16, 64 * 3 * stages):
            run_gemm(2, 3, K, K, K, 3, cfg, seed=K + stages)
    print("ok  pipeline: STAGES 2..6, slice counts 1..18: no read of a pending stage, no refill of a live one")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print("FAIL", e)
        raise
