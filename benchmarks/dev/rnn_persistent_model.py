"""Dev check (not a test): a numpy model of csrc/rnn/rnn_recurrence.cu (the fused LSTM / GRU recurrence,
persistent and stepwise paths, dense / int8 / block-sparse recurrent weights) and of the operands
csrc/rnn/rnn_cuda.cpp hands it, run on a machine with no GPU.

    python benchmarks/dev/rnn_persistent_model.py      # one line per check; exits 1 on failure

A transcription of the kernels' index arithmetic with the .cu's names (persistent_layout,
plan_persistent, bsr_max_entries, matvec_rows, bsr_rows, bsr_row_range, bsr_stage_rows,
cell_update, proj_update, stage_cg, rnn_persistent_kernel, rnn_step_cell_kernel,
rnn_step_proj_kernel), executed block by block:
  - the persistent kernel is a Python generator per block, `yield` = grid.sync(); each phase runs
    the blocks in a random order, and every block must reach the same number of barriers;
  - every stepwise launch is one phase;
  - global memory records, per element, the block / phase / launch of its last write and the
    readers of the current phase: a read or write of an element another block writes in the same
    phase is a race; a plain (non-.cg) load of an element another block wrote earlier in the same
    launch is a stale-L1 hazard (L1 is not coherent across SMs);
  - shared memory is per block, one typed array per region of persistent_layout (checked disjoint,
    inside the allocation, within the planned size, aligned); it records per element the writing
    thread and its __syncthreads epoch: reading an element never written, or one another thread
    wrote (or writing one another thread read) since the last __syncthreads, is an error;
  - vector loads check their alignment (16 bytes for float4, 8 for four 16-bit elements, 4 for
    four int8) from the region's byte offset; every index is bounds-checked;
  - y starts as NaN and every element must be written exactly once;
  - int8 weights are widened bit for bit as Elem<kI8>::widen4 does (sign flip, 0x4B0000bb - 2^23 - 128),
    checked exact for all 256 codes.
Results are compared with compress.ops.rnn's references (float32 math; |err| <= tol * max|ref|).
BSR cases put garbage in the values past P (the last block column's padding: the reference drops
it, so must the kernels). A self-test plants bugs (a single h buffer, a missing barrier, a plain
load of another block's h, an unrounded layout, a wrong gate stride, a forgotten int8 scale, BSR
padding read, ...) and requires each to be caught. A defensive check runs the BSR kernels on
garbage device crow / col (the glue's validation skipped): they must stay in bounds.

What it proves: the index arithmetic and the barrier / buffer protocol *as transcribed here* are
right for the shapes tried (odd H, P, B; partial last blocks; blocks with no projection rows;
B over the stepwise batch slice and the grid-y limit; H = 0 / P = 0 with a projection; lengths
with zeros; reverse; float32 / float16 / bfloat16; int8 codes -128..127; BSR block shapes 1x1 to
one block per gate, bk past P and past 32 lanes, empty block rows, nnz = 0).

What it does not prove: that the transcription matches the .cu line for line (kept in sync by eye:
change one, change the other); the hardware memory model (grid.sync ordering, __ldcg); register
and launch limits; the occupancy query; CUDA's float functions (expf / tanhf: modelled by numpy
float32); performance. The kernels have to run on a GPU to be trusted.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# ---- constants (rnn_cuda.h / rnn_recurrence.cu) ------------------------------------------------------
kThreads, kWarps, kNB = 256, 8, 4
kStepUnits, kStepProjRows, kStepBatch = 8, 32, 16
kRnnPad, kRnnPersistentMaxBatch = 4, 16
MAX_GRID_Y = [65535]  # kMaxGridY; a check lowers it to exercise the grid-stride loop over batch slices

BUG = None  # the planted bug of the self-test (None: the kernels as written)


class ModelError(AssertionError):
    pass


def cdiv(a, b):
    return (a + b - 1) // b


# ---- element types -----------------------------------------------------------------------------

def _bf16_to_f(raw):
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _f_to_bf16(f):
    u = np.asarray(f, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _i8_to_f(raw):
    """Elem<kI8>::widen4: b = q ^ 0x80 (q + 128), the float with bits 0x4B0000bb is 2^23 + b."""
    b = np.asarray(raw).astype(np.int8).view(np.uint8).astype(np.uint32)
    if BUG != "i8_no_sign_flip":
        b = b ^ np.uint32(0x80)
    return (b | np.uint32(0x4B000000)).view(np.float32) - np.float32(8388736.0)


@dataclass(frozen=True)
class Elem:
    name: str
    raw: type
    es: int

    def to_f(self, v):
        v = np.asarray(v)
        if self.name == "bf16":
            return _bf16_to_f(v)
        if self.name == "i8":
            return _i8_to_f(v)
        return v.astype(np.float32)

    def from_f(self, f):
        f = np.asarray(f, np.float32)
        if self.name == "bf16":
            return _f_to_bf16(f)
        return f.astype(self.raw)

    def nan(self):
        return np.uint16(0x7FC0) if self.name == "bf16" else self.raw(np.nan)


ELEMS = {"f32": Elem("f32", np.float32, 4), "bf16": Elem("bf16", np.uint16, 2), "f16": Elem("f16", np.float16, 2)}
I8 = Elem("i8", np.int8, 1)  # kI8: a weight element only


def weight_elem(E, wf):
    """kWElem<DT, WF>: the element of w_hh's rows and of w_hr."""
    return I8 if wf == "int8" else E


# ---- memories ----------------------------------------------------------------------------------


class Global:
    """Device global memory: named flat arrays with per-element write / read records."""

    def __init__(self):
        self.a, self.m = {}, {}
        self.launch, self.phase = -1, -1

    def alloc(self, name, arr):
        a = np.ascontiguousarray(arr).reshape(-1).copy()
        n = a.size
        self.a[name] = a
        self.m[name] = {k: np.full(n, -1, np.int64) for k in ("w_launch", "w_phase", "w_block", "r_phase", "r_block")}
        self.m[name]["writes"] = np.zeros(n, np.int64)

    def begin_launch(self):
        self.launch += 1
        self.phase += 1

    def barrier(self):
        self.phase += 1

    def _idx(self, name, idx, what):
        idx = np.atleast_1d(np.asarray(idx, np.int64))
        n = self.a[name].size
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ModelError(f"{what} of global `{name}` out of bounds: index {idx.min()}..{idx.max()}, size {n}")
        return idx

    def load(self, name, idx, block, threads=None, cg=False):
        idx = self._idx(name, idx, "read")
        m = self.m[name]
        race = (m["w_phase"][idx] == self.phase) & (m["w_block"][idx] != block)
        if race.any():
            raise ModelError(f"race: block {block} reads `{name}`[{idx[race][0]}] written by block "
                             f"{m['w_block'][idx[race][0]]} in the same phase")
        stale = (m["w_launch"][idx] == self.launch) & (m["w_block"][idx] != block)
        if not cg and stale.any():
            raise ModelError(f"stale-L1 hazard: plain load of `{name}`[{idx[stale][0]}], written by block "
                             f"{m['w_block'][idx[stale][0]]} earlier in this launch (use ld.global.cg)")
        same = m["r_phase"][idx] == self.phase
        m["r_block"][idx] = np.where(same & (m["r_block"][idx] != block), -2, block)
        m["r_phase"][idx] = self.phase
        return self.a[name][idx]

    def store(self, name, idx, vals, block, threads=None):
        idx = self._idx(name, idx, "write")
        m = self.m[name]
        waw = (m["w_phase"][idx] == self.phase) & (m["w_block"][idx] != block)
        war = (m["r_phase"][idx] == self.phase) & (m["r_block"][idx] != block)
        if waw.any() or war.any():
            i = idx[waw | war][0]
            raise ModelError(f"race: block {block} writes `{name}`[{i}] that block "
                             f"{m['w_block'][i] if waw.any() else m['r_block'][i]} "
                             f"{'wrote' if waw.any() else 'read'} in the same phase")
        self.a[name][idx] = np.broadcast_to(np.asarray(vals).astype(self.a[name].dtype), idx.shape)
        m["w_launch"][idx], m["w_phase"][idx], m["w_block"][idx] = self.launch, self.phase, block
        np.add.at(m["writes"], idx, 1)

    def byte_addr(self, name, idx):
        return np.asarray(idx, np.int64) * self.a[name].itemsize  # allocations are 256-byte aligned


class Shared:
    """One block's dynamic shared memory: regions name -> (byte offset, elements, dtype[, alignment in
    bytes: default that of 4-element vectors; regions read only by scalar loads need the element's])."""

    def __init__(self, regions, total):
        self.r = {}
        spans = sorted((off, off + n * np.dtype(dt).itemsize, name) for name, (off, n, dt, *_) in regions.items())
        for (s0, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
            if e0 > s1:
                raise ModelError(f"shared regions overlap: {n0} [{s0}, {e0}) and {n1} from {s1}")
        if spans and spans[-1][1] > total:
            raise ModelError(f"shared region {spans[-1][2]} ends at {spans[-1][1]} > allocation {total}")
        for name, (off, n, dt, *align) in regions.items():
            need = align[0] if align else 4 * np.dtype(dt).itemsize
            if off % need:
                raise ModelError(f"shared region {name} at byte {off}, not {need}-byte aligned")
            self.r[name] = dict(off=off, a=np.zeros(n, dt), written=np.zeros(n, bool),
                                w_epoch=np.full(n, -1), w_thread=np.full(n, -1),
                                r_epoch=np.full(n, -1), r_thread=np.full(n, -1))
        self.epoch = 0

    def sync(self):  # __syncthreads
        self.epoch += 1

    def _idx(self, name, idx, what):
        idx = np.atleast_1d(np.asarray(idx, np.int64))
        n = self.r[name]["a"].size
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ModelError(f"{what} of shared `{name}` out of its region: index {idx.min()}..{idx.max()}, size {n}")
        return idx

    def load(self, name, idx, block, threads, cg=False):
        assert not cg, "ld.global.cg on a shared address"
        idx = self._idx(name, idx, "read")
        r = self.r[name]
        th = np.broadcast_to(np.asarray(threads), idx.shape)
        if not r["written"][idx].all():
            raise ModelError(f"block {block} reads shared `{name}`[{idx[~r['written'][idx]][0]}], never written")
        race = (r["w_epoch"][idx] == self.epoch) & (r["w_thread"][idx] != th)
        if race.any():
            raise ModelError(f"missing __syncthreads: `{name}`[{idx[race][0]}] read by thread {th[race][0]} "
                             f"in the epoch thread {r['w_thread'][idx[race][0]]} wrote it")
        same = r["r_epoch"][idx] == self.epoch
        r["r_thread"][idx] = np.where(same & (r["r_thread"][idx] != th), -2, th)
        r["r_epoch"][idx] = self.epoch
        return r["a"][idx]

    def store(self, name, idx, vals, block, threads):
        idx = self._idx(name, idx, "write")
        r = self.r[name]
        th = np.broadcast_to(np.asarray(threads), idx.shape)
        war = (r["r_epoch"][idx] == self.epoch) & (r["r_thread"][idx] != th)
        if war.any():
            raise ModelError(f"missing __syncthreads: `{name}`[{idx[war][0]}] written by thread {th[war][0]} "
                             f"in the epoch another thread read it")
        r["a"][idx] = np.broadcast_to(np.asarray(vals).astype(r["a"].dtype), idx.shape)
        r["written"][idx] = True
        r["w_epoch"][idx], r["w_thread"][idx] = self.epoch, th

    def byte_addr(self, name, idx):
        return self.r[name]["off"] + np.asarray(idx, np.int64) * self.r[name]["a"].itemsize


@dataclass(frozen=True)
class Ptr:
    """A generic pointer: memory space, array / region, element offset (int or per-thread array)."""
    space: object
    name: str
    off: object = 0

    def __add__(self, n):
        return Ptr(self.space, self.name, self.off + n)

    def load(self, i, block, threads, cg=False):
        return self.space.load(self.name, self.off + i, block, threads, cg)

    def store(self, i, vals, block, threads, mask=None):
        idx = np.broadcast_to(np.asarray(self.off + i), np.broadcast(np.asarray(self.off + i), np.asarray(vals)).shape)
        vals = np.broadcast_to(np.asarray(vals), idx.shape)
        th = np.broadcast_to(np.asarray(threads), idx.shape)
        if mask is not None:
            mask = np.broadcast_to(mask, idx.shape)
            idx, vals, th = idx[mask], vals[mask], th[mask]
        self.space.store(self.name, idx, vals, block, th)

    def load4(self, k4, block, threads, cg=False):
        """Elements off + 4*k4 .. +3 as one vector load per k4: [len(k4), 4]."""
        first = self.off + 4 * np.asarray(k4, np.int64)
        es = (self.space.a[self.name] if isinstance(self.space, Global) else self.space.r[self.name]["a"]).itemsize
        bad = self.space.byte_addr(self.name, first) % (4 * es) != 0
        if np.any(bad):
            raise ModelError(f"misaligned {4 * es}-byte vector load from `{self.name}` element {np.asarray(first)[bad][0]}")
        idx = first[:, None] + np.arange(4)
        th = np.broadcast_to(np.asarray(threads)[..., None] if np.ndim(threads) else threads, idx.shape)
        return self.space.load(self.name, idx.reshape(-1), block, th.reshape(-1), cg).reshape(idx.shape)

    def store4(self, k4, vals4, block, threads):
        first = self.off + 4 * np.asarray(k4, np.int64)
        es = (self.space.a[self.name] if isinstance(self.space, Global) else self.space.r[self.name]["a"]).itemsize
        if np.any(self.space.byte_addr(self.name, first) % (4 * es) != 0):
            raise ModelError(f"misaligned vector store to `{self.name}`")
        idx = first[:, None] + np.arange(4)
        th = np.broadcast_to(np.asarray(threads)[..., None], idx.shape)
        self.space.store(self.name, idx.reshape(-1), np.asarray(vals4).reshape(-1), block, th.reshape(-1))


# ---- the kernels' building blocks (rnn_recurrence.cu) -------------------------------------------------

@dataclass
class Args:
    G: int
    T: int
    B: int
    H: int
    P: int
    Kp: int
    Hp: int
    reverse: bool
    proj: bool
    has_bias: bool
    has_len: bool
    gmem: Global
    wf: str = "dense"  # "dense", "int8", "bsr" (WF)
    nnz: int = 0       # BSR: stored blocks, block shape, ceil(P / bk), lanes per block group
    bn: int = 1
    bk: int = 1
    bcols: int = 0
    gsz: int = 1


def sigmoidf(x):
    return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


def row_active(a, t, b, block, threads):
    if not a.has_len:
        return np.ones(np.shape(b), bool)
    return t < a.gmem.load("len", b, block, threads)


def matvec_rows(WE, w, w_gs, w_us, G, ucnt, h, ldh, nb, K4, out, ldo, uo, block, scale=None, s_gs=0):
    for r in range(G * ucnt):
        warp = r % kWarps
        g, ul = r // ucnt, r - (r // ucnt) * ucnt
        wr = w + (g * w_gs + ul * w_us)
        s = None
        if WE is I8 and BUG != "i8_no_scale":
            s = scale.load(g * s_gs + ul, block, warp * 32)[0]  # __ldg, every lane the same address
        k4 = np.arange(K4)
        lanes = warp * 32 + k4 % 32
        wv = WE.to_f(wr.load4(k4, block, lanes)).astype(np.float64)  # load_w4
        for j in range(kNB):
            if j < nb:
                hv = (h + j * ldh).load4(k4, block, lanes).astype(np.float64)
                acc = np.float32((wv * hv).sum())
                out.store(j * ldo + g * uo + ul, acc if s is None else np.float32(acc * s), block, warp * 32)


def bsr_row_range(a, row, block, th):
    crow = Ptr(a.gmem, "crow")
    br = row // a.bn
    c0, c1 = int(crow.load(br, block, th)[0]), int(crow.load(br + 1, block, th)[0])
    if BUG == "bsr_no_clamp":
        return c0, c1
    e0 = min(max(c0, 0), a.nnz)
    return e0, min(max(c1, e0), a.nnz)


def bsr_rows(E, a, G, ucnt, h, ldh, nb, out, ldo, uo, row_of, block):
    """row_of(g, ul, thread) -> (col Ptr, values Ptr, vs, e0, e1): BsrRow."""
    gsz = a.gsz
    ngrp = 32 // gsz
    for r in range(G * ucnt):
        warp = r % kWarps
        g, ul = r // ucnt, r - (r // ucnt) * ucnt
        col, v, vs, e0, e1 = row_of(g, ul, warp * 32)
        acc = np.zeros(kNB)
        for e in range(e0, e1):
            lane0 = ((e - e0) % ngrp) * gsz  # group (e - e0) % ngrp takes the entry
            c = int(col.load(e, block, warp * 32 + lane0)[0])
            if c < 0 or c >= a.bcols:
                continue
            k0 = c * a.bk
            n = a.bk if BUG == "bsr_pad_cols" else min(a.bk, a.P - k0)
            i = np.arange(n)
            lanes = warp * 32 + lane0 + i % gsz
            wv = E.to_f(v.load(e * vs + i, block, lanes)).astype(np.float64)
            for j in range(kNB):
                if j < nb:
                    acc[j] += (wv * h.load(j * ldh + k0 + i, block, lanes).astype(np.float64)).sum()
        for j in range(kNB):
            if j < nb:
                out.store(j * ldo + g * uo + ul, np.float32(acc[j]), block, warp * 32)


def cell_update(E, a, t, b, u, acc, gs, hc_row, hn, block, th):
    G = a.G
    gm = a.gmem
    active = row_active(a, t, b, block, th)
    row = t * a.B + b
    x = Ptr(gm, "xg", row * (G * a.H) + u)
    y = Ptr(gm, "y", row * a.P + u)
    hn_u = hn + (b * a.Kp + u)
    gate_stride = a.P if BUG == "xg_gate_stride_P" else a.H
    if G == 4:
        i = sigmoidf(acc.load(0, block, th) + E.to_f(x.load(0, block, th)))
        f = sigmoidf(acc.load(gs, block, th) + E.to_f(x.load(gate_stride, block, th)))
        g = np.tanh(acc.load(2 * gs, block, th) + E.to_f(x.load(2 * gate_stride, block, th)))
        o = sigmoidf(acc.load(3 * gs, block, th) + E.to_f(x.load(3 * gate_stride, block, th)))
        c = Ptr(gm, "c", b * a.H + u)
        c_new = f * c.load(0, block, th) + i * g
        h_new = o * np.tanh(c_new)
        c.store(0, c_new, block, th, mask=None if BUG == "mask_c" else active)
        if a.proj:
            Ptr(gm, "hh", b * a.Hp + u).store(0, h_new, block, th)
            return
        hn_u.store(0, np.where(active, h_new, hc_row.load(u, block, th)), block, th)
        y.store(0, E.from_f(np.where(active, h_new, 0)), block, th)
    else:
        ar, az, an = acc.load(0, block, th), acc.load(gs, block, th), acc.load(2 * gs, block, th)
        bn = np.float32(0)
        if a.has_bias:
            bias = Ptr(gm, "b_hh", u)
            ar = ar + bias.load(0, block, th)
            az = az + bias.load(a.H, block, th)
            if BUG == "gru_bias_after_r":
                bn = bias.load(2 * a.H, block, th)
            else:
                an = an + bias.load(2 * a.H, block, th)
        r = sigmoidf(E.to_f(x.load(0, block, th)) + ar)
        z = sigmoidf(E.to_f(x.load(a.H, block, th)) + az)
        n = np.tanh(E.to_f(x.load(2 * a.H, block, th)) + r * an + bn)
        h_old = hc_row.load(u, block, th)
        h_new = (1 - z) * n + z * h_old
        hn_u.store(0, np.where(active, h_new, h_old), block, th)
        y.store(0, E.from_f(np.where(active, h_new, 0)), block, th)


def proj_update(E, a, t, b, q, acc, hc, hn, block, th):
    active = row_active(a, t, b, block, th)
    i = b * a.Kp + q
    hn.store(i, np.where(active, acc, hc.load(i, block, th, cg=True)), block, th)
    Ptr(a.gmem, "y", (t * a.B + b) * a.P + q).store(0, E.from_f(np.where(active, acc, 0)), block, th)


def stage_cg(dst, src, n4, block):
    i = np.arange(n4)
    dst.store4(i, src.load4(i, block, i % kThreads, cg=BUG != "stage_plain_load"), block, i % kThreads)


# ---- persistent path ---------------------------------------------------------------------------

@dataclass
class Layout:
    h_s: int
    acc_s: int
    wr_s: int
    w_s: int
    roff_s: int
    col_s: int
    val_s: int
    total: int


def persistent_layout(bsr, G, wes, B, Kp, Hp, U, U2, E, bk):
    kmax = max(Kp, Hp)
    rows = max(G * U, U2)
    h_s = 0
    acc_s = h_s + 4 * B * kmax
    wr_s = acc_s + (4 * B * rows if BUG == "no_acc_round" else 4 * ((B * rows + 3) // 4 * 4))
    w_s = wr_s + wes * U2 * Hp
    roff_s = w_s
    col_s = roff_s + 4 * (G * U + 1)
    val_s = col_s + 4 * E
    if bsr:
        total = val_s + wes * E * (1 if BUG == "bsr_total_no_bk" else bk)
    else:
        total = w_s + wes * G * U * Kp
    return Layout(h_s, acc_s, wr_s, w_s, roff_s, col_s, val_s, total)


def bsr_stage_rows(E, a, sh, u0, ucnt, U, Ecap, roff_s, col_s, val_s, block):
    G, gm = a.G, a.gmem
    for r in range(G * U):
        g, ul = r // U, r % U
        e0, e1 = bsr_row_range(a, g * a.H + u0 + ul, block, r % kThreads) if ul < ucnt else (0, 0)
        roff_s.store(r + 1, e1 - e0, block, r % kThreads)
    if BUG != "bsr_stage_no_sync":
        sh.sync()
    n = 0
    roff_s.store(0, 0, block, 0)
    for r in range(G * U):  # thread 0
        n += min(int(roff_s.load(r + 1, block, 0)[0]), Ecap - n)
        roff_s.store(r + 1, n, block, 0)
    sh.sync()
    for r in range(G * U):
        warp = r % kWarps
        th = warp * 32
        o = int(roff_s.load(r, block, th)[0])
        n = int(roff_s.load(r + 1, block, th)[0]) - o
        if n == 0:
            continue
        g, ul = r // U, r % U
        row = g * a.H + u0 + ul
        rr = 0 if BUG == "bsr_row_in_block" else row % a.bn
        e0, _ = bsr_row_range(a, row, block, th)
        i = np.arange(n * a.bk)
        el, k = i // a.bk, i % a.bk
        e = e0 + el
        lanes = th + i % 32
        first = k == 0
        col_s.store(o + el[first], Ptr(gm, "col").load(e[first], block, lanes[first]), block, lanes[first])
        val_s.store((o + el) * a.bk + k, Ptr(gm, "w_hh").load((e * a.bn + rr) * a.bk + k, block, lanes), block, lanes)


def rnn_persistent_kernel(E, a, U, U2, Ecap, block, smem):
    G, B, H, P, Kp = a.G, a.B, a.H, a.P, a.Kp
    Hp = a.Hp if a.proj else 0
    WE = weight_elem(E, a.wf)
    bsr = a.wf == "bsr"
    gm = a.gmem
    l = persistent_layout(bsr, G, WE.es, B, Kp, Hp, U, U2, Ecap, a.bk)
    if l.total > smem:
        raise ModelError(f"layout total {l.total} > planned dynamic shared memory {smem}")
    regions = {"h_s": (l.h_s, B * max(Kp, Hp), np.float32), "acc_s": (l.acc_s, B * max(G * U, U2), np.float32),
               "wr_s": (l.wr_s, U2 * Hp, WE.raw)}
    if bsr:  # scalar loads only: element alignment
        regions.update(roff_s=(l.roff_s, G * U + 1, np.int32, 4), col_s=(l.col_s, Ecap, np.int32, 4),
                       val_s=(l.val_s, Ecap * a.bk, WE.raw, WE.es))
    else:
        regions["w_s"] = (l.w_s, G * U * Kp, WE.raw)
    sh = Shared(regions, l.total)
    h_s, acc_s, wr_s = (Ptr(sh, n) for n in ("h_s", "acc_s", "wr_s"))
    u0 = block * U
    ucnt = max(0, min(U, H - u0))
    q0 = block * U2
    qcnt = max(0, min(U2, P - q0))
    K4, H4 = Kp // 4, Hp // 4

    if bsr:
        roff_s, col_s, val_s = Ptr(sh, "roff_s"), Ptr(sh, "col_s"), Ptr(sh, "val_s")
        bsr_stage_rows(E, a, sh, u0, ucnt, U, Ecap, roff_s, col_s, val_s, block)
    elif G * ucnt * K4:
        w_s = Ptr(sh, "w_s")
        i = np.arange(G * ucnt * K4)
        r = i // K4
        k4 = i - r * K4
        g, ul = r // ucnt, r % ucnt
        vals = Ptr(gm, "w_hh").load4((g * H + u0 + ul) * Kp // 4 + k4, block, i % kThreads)
        w_s.store4((g * U + ul) * Kp // 4 + k4, vals, block, i % kThreads)
    if a.proj and qcnt * H4:
        i = np.arange(qcnt * H4)
        ql, k4 = i // H4, i % H4
        vals = Ptr(gm, "w_hr").load4((q0 + ql) * Hp // 4 + k4, block, i % kThreads)
        wr_s.store4(ql * Hp // 4 + k4, vals, block, i % kThreads)

    for step in range(a.T):
        t = a.T - 1 - step if a.reverse else step
        hc = Ptr(gm, "h", (step & 1) * B * Kp)
        hn = hc if BUG == "single_h_buffer" else Ptr(gm, "h", ((step + 1) & 1) * B * Kp)
        stage_cg(h_s, hc, B * (P // 4) if BUG == "stage_P" else B * K4, block)
        sh.sync()
        for b0 in range(0, B, kNB):
            nb = min(kNB, B - b0)
            if bsr:
                def row_of(g, ul, th):
                    r = g * U + ul
                    e0, e1 = (int(roff_s.load(r + k, block, th)[0]) for k in (0, 1))
                    return col_s, val_s, a.bk, e0, e1
                bsr_rows(E, a, G, ucnt, h_s + b0 * Kp, Kp, nb, acc_s + b0 * G * U, G * U, U, row_of, block)
            else:
                matvec_rows(WE, Ptr(sh, "w_s"), U * Kp, Kp, G, ucnt, h_s + b0 * Kp, Kp, nb, K4, acc_s + b0 * G * U,
                            G * U, U, block, Ptr(gm, "s_hh", u0), H)
        if BUG != "no_sync_after_matvec":
            sh.sync()
        n_u = U if BUG == "epilogue_U" else ucnt
        if B * n_u:
            i = np.arange(B * n_u)
            b, ul = i // n_u, i % n_u
            cell_update(E, a, t, b, u0 + ul, acc_s + (b * G * U + ul), U, h_s + b * Kp, hn, block, i % kThreads)
        if a.proj:
            if BUG != "no_proj_sync":
                sh.sync()
                yield  # grid.sync()
            stage_cg(h_s, Ptr(gm, "hh"), B * H4, block)
            sh.sync()
            for b0 in range(0, B, kNB):
                matvec_rows(WE, wr_s, 0, Hp, 1, qcnt, h_s + b0 * Hp, Hp, min(kNB, B - b0), H4, acc_s + b0 * U2, U2,
                            U2, block, Ptr(gm, "s_hr", q0), 0)
            sh.sync()
            if B * qcnt:
                i = np.arange(B * qcnt)
                b, ql = i // qcnt, i % qcnt
                proj_update(E, a, t, b, q0 + ql, acc_s.load(b * U2 + ql, block, i % kThreads), hc, hn, block,
                            i % kThreads)
        sh.sync()
        yield  # grid.sync()


def run_cooperative(kernel, blocks, gm, rng):
    """All blocks co-resident; each phase runs them in a random order up to their next grid.sync."""
    gm.begin_launch()
    gens = [kernel(blk) for blk in range(blocks)]
    while True:
        done = []
        for blk in rng.permutation(blocks):
            try:
                next(gens[blk])
                done.append(False)
            except StopIteration:
                done.append(True)
        if all(done):
            return
        if any(done):
            raise ModelError("blocks reach different numbers of grid.sync (deadlock)")
        gm.barrier()


@dataclass
class Device:  # what plan_persistent queries
    sms: int = 132
    smem_optin: int = 232448  # H100: 227 KB per block
    coop: bool = True


def bsr_max_entries(crow, G, H, bn, U, blocks):
    most = 0
    for j in range(blocks):
        u0, u1 = j * U, min(H, j * U + U)
        n = 0
        for g in range(G):
            lo, hi = g * H + u0, g * H + u1
            br = lo // bn
            while br * bn < hi:
                rows = 1 if BUG == "bsr_plan_block_rows" else min(hi, (br + 1) * bn) - max(lo, br * bn)
                n += rows * int(crow[br + 1] - crow[br])
                br += 1
        most = max(most, n)
    return most


PLAN_NONE = (0, 0, 0, 0, 0)


def plan_persistent(E, a, dev, crow_host=None):
    """Returns (why, blocks, U, U2, Ecap, smem); why None when the persistent kernel can run."""
    too_big = "shared memory"
    bsr = a.wf == "bsr"
    if a.B > kRnnPersistentMaxBatch:
        return ("batch larger than 16",) + PLAN_NONE
    if a.H < 1:
        return ("no hidden units",) + PLAN_NONE
    if not dev.coop:
        return ("no cooperative launch",) + PLAN_NONE
    if a.Kp > dev.smem_optin or a.Hp > dev.smem_optin or (bsr and a.bk > dev.smem_optin):
        return (too_big,) + PLAN_NONE
    U = max(cdiv(a.H, dev.sms), cdiv(kWarps, a.G))
    blocks = cdiv(a.H, U)
    U2 = cdiv(a.P, blocks) if a.proj else 0
    Ecap = bsr_max_entries(crow_host, a.G, a.H, a.bn, U, blocks) if bsr else 0
    if Ecap > dev.smem_optin:
        return (too_big,) + PLAN_NONE
    l = persistent_layout(bsr, a.G, weight_elem(E, a.wf).es, a.B, a.Kp, a.Hp if a.proj else 0, U, U2, Ecap, a.bk)
    if l.total > dev.smem_optin:
        return (too_big,) + PLAN_NONE
    # Not modelled: the kernel's static shared memory (sm_90: 1 KB, added to smem in the .cu) and the
    # occupancy query (one block per SM fits whenever smem is within the limit; blocks <= sms).
    assert blocks <= dev.sms
    return None, blocks, U, U2, Ecap, l.total


# ---- stepwise path -----------------------------------------------------------------------------

def rnn_step_cell_kernel(E, a, step, bx, by, grid_y):
    G, gm = a.G, a.gmem
    WE = weight_elem(E, a.wf)
    block = bx * 1_000_000 + by  # a scalar block id
    n_acc = kStepBatch * 4 * kStepUnits  # kMaxGates
    sh = Shared({"acc_s": (0, n_acc, np.float32)}, n_acc * 4)
    acc_s = Ptr(sh, "acc_s")
    u0 = bx * kStepUnits
    ucnt = min(kStepUnits, a.H - u0)
    t = a.T - 1 - step if a.reverse else step
    hc = Ptr(gm, "h", (step & 1) * a.B * a.Kp)
    hn = Ptr(gm, "h", ((step + 1) & 1) * a.B * a.Kp)
    bb = by * kStepBatch
    while bb < a.B:
        nbb = min(kStepBatch, a.B - bb)
        for b0 in range(0, nbb, kNB):
            hrow = (b0 if BUG == "step_batch_offset" else bb + b0) * a.Kp
            out = acc_s + b0 * G * kStepUnits
            if a.wf == "bsr":
                def row_of(g, ul, th):
                    row = g * a.H + u0 + ul
                    e0, e1 = bsr_row_range(a, row, block, th)
                    rr = 0 if BUG == "bsr_row_in_block" else row % a.bn
                    vs = a.bk if BUG == "bsr_vstride" else a.bn * a.bk
                    return Ptr(gm, "col"), Ptr(gm, "w_hh", rr * a.bk), vs, e0, e1
                bsr_rows(E, a, G, ucnt, hc + hrow, a.Kp, min(kNB, nbb - b0), out, G * kStepUnits, kStepUnits, row_of,
                         block)
            else:
                matvec_rows(WE, Ptr(gm, "w_hh", u0 * a.Kp), a.H * a.Kp, a.Kp, G, ucnt, hc + hrow, a.Kp,
                            min(kNB, nbb - b0), a.Kp // 4, out, G * kStepUnits, kStepUnits, block,
                            Ptr(gm, "s_hh", u0), a.H)
        sh.sync()
        i = np.arange(nbb * ucnt)
        bl, ul = i // ucnt, i % ucnt
        b = bb + bl
        cell_update(E, a, t, b, u0 + ul, acc_s + (bl * G * kStepUnits + ul), kStepUnits, hc + b * a.Kp, hn, block,
                    i % kThreads)
        if BUG != "no_step_slice_sync":
            sh.sync()
        bb += grid_y * kStepBatch


def rnn_step_proj_kernel(E, a, step, bx, by, grid_y):
    gm = a.gmem
    WE = weight_elem(E, a.wf)  # BSR's projection is dense: E
    block = bx * 1_000_000 + by  # a scalar block id
    sh = Shared({"acc_s": (0, kStepBatch * kStepProjRows, np.float32)}, kStepBatch * kStepProjRows * 4)
    acc_s = Ptr(sh, "acc_s")
    q0 = bx * kStepProjRows
    qcnt = min(kStepProjRows, a.P - q0)
    t = a.T - 1 - step if a.reverse else step
    hc = Ptr(gm, "h", (step & 1) * a.B * a.Kp)
    hn = Ptr(gm, "h", ((step + 1) & 1) * a.B * a.Kp)
    w = Ptr(gm, "w_hr", q0 * a.Hp)
    bb = by * kStepBatch
    while bb < a.B:
        nbb = min(kStepBatch, a.B - bb)
        for b0 in range(0, nbb, kNB):
            matvec_rows(WE, w, 0, a.Hp, 1, qcnt, Ptr(gm, "hh", (bb + b0) * a.Hp), a.Hp, min(kNB, nbb - b0), a.Hp // 4,
                        acc_s + b0 * kStepProjRows, kStepProjRows, kStepProjRows, block, Ptr(gm, "s_hr", q0), 0)
        sh.sync()
        i = np.arange(nbb * qcnt)
        bl, ql = i // qcnt, i % qcnt
        proj_update(E, a, t, bb + bl, q0 + ql, acc_s.load(bl * kStepProjRows + ql, block, i % kThreads), hc, hn,
                    block, i % kThreads)
        sh.sync()
        bb += grid_y * kStepBatch


def run_grid(kernel, gx, gy, gm, rng):
    gm.begin_launch()
    blocks = [(x, y) for x in range(gx) for y in range(gy)]
    for k in rng.permutation(len(blocks)):
        kernel(*blocks[k], gy)


def run_stepwise(E, a, rng):
    gy = min(cdiv(a.B, kStepBatch), MAX_GRID_Y[0])
    for step in range(a.T):
        if a.H > 0:
            run_grid(lambda bx, by, g: rnn_step_cell_kernel(E, a, step, bx, by, g), cdiv(a.H, kStepUnits), gy,
                     a.gmem, rng)
        if a.proj and a.P > 0:
            run_grid(lambda bx, by, g: rnn_step_proj_kernel(E, a, step, bx, by, g), cdiv(a.P, kStepProjRows), gy,
                     a.gmem, rng)


# ---- launcher and glue (rnn_cuda_forward, rnn_cuda.cpp) ----------------------------------------

def check_bsr_indices(crow, col, R, limit):
    """rnn_checks.cpp check_bsr_indices on the host copy: crow from 0 to nnz non-decreasing, col in [0, limit)."""
    nnz = col.size
    if crow[0] != 0:
        raise ValueError(f"expected `crow[0]` to be 0, got {crow[0]}")
    bad = np.nonzero(crow[:-1] > crow[1:])[0]
    if bad.size:
        raise ValueError(f"expected `crow` to be non-decreasing, got crow[{bad[0]}] > crow[{bad[0] + 1}]")
    if crow[R] != nnz:
        raise ValueError(f"expected `crow[-1]` to be col.size(0) = {nnz}, got {crow[R]}")
    bad = np.nonzero((col < 0) | (col >= limit))[0]
    if bad.size:
        raise ValueError(f"expected `col` entries in [0, {limit}), got col[{bad[0]}] = {col[bad[0]]}")


def forward(dtype, cell, xg, h0, c0, W, b_hh, lengths, reverse, path, dev, rng, wf="dense", validate=True):
    """The glue's operands, the launcher's path choice, the kernels; returns (outputs, path ran).

    W: dense {w_hh, w_hr}; int8 {q_hh, s_hh, q_hr, s_hr}; bsr {crow, col, values, w_hr} (raw arrays).
    validate=False skips the glue's index checks (the launcher's re-check of crow_host stays): W may
    then carry device copies crow_dev / col_dev that differ from the host's."""
    E = ELEMS[dtype]
    WE = weight_elem(E, wf)
    G = 4 if cell == "lstm" else 3
    T, B, GH = xg.shape
    H = GH // G
    w_hr = W.get("q_hr" if wf == "int8" else "w_hr")
    P = w_hr.shape[0] if w_hr is not None else H
    Kp, Hp = cdiv(P, kRnnPad) * kRnnPad, cdiv(H, kRnnPad) * kRnnPad
    crow_host = None
    if wf == "bsr":
        bn, bk = W["values"].shape[1:]
        R = G * H // bn
        if validate:
            check_bsr_indices(W["crow"], W["col"], R, cdiv(P, bk))
        crow_host = W["crow"]
        nnz = W["col"].size
        if crow_host[0] != 0 or crow_host[R] != nnz or (crow_host[:-1] > crow_host[1:]).any():
            raise ModelError("launcher: invalid crow_host (cudaErrorInvalidValue)")
    gm = Global()
    y = np.full((T, B, P), E.nan(), E.raw)
    hbuf = np.zeros((2, B, Kp), np.float32)
    hbuf[0, :, :P] = h0
    c = c0.astype(np.float32).copy() if cell == "lstm" else np.zeros((0,), np.float32)
    gm.alloc("y", y)
    gm.alloc("h", hbuf)
    gm.alloc("c", c)
    ran = "none"
    if T > 0 and B > 0 and not (H == 0 and P == 0):
        def padded(w, cols_p, raw):
            out = np.zeros((w.shape[0], cols_p), raw)
            out[:, :w.shape[1]] = w
            return out
        empty_f = np.zeros(0, np.float32)
        gm.alloc("xg", xg)
        gm.alloc("w_hr", padded(w_hr, Hp, WE.raw) if w_hr is not None else np.zeros(0, WE.raw))
        gm.alloc("s_hh", W["s_hh"] if wf == "int8" else empty_f)
        gm.alloc("s_hr", W["s_hr"] if wf == "int8" and w_hr is not None else empty_f)
        if wf == "bsr":
            gm.alloc("w_hh", W["values"])
            gm.alloc("crow", W.get("crow_dev", W["crow"]))
            gm.alloc("col", W.get("col_dev", W["col"]))
        else:
            gm.alloc("w_hh", padded(W["q_hh" if wf == "int8" else "w_hh"], Kp, WE.raw))
        gm.alloc("hh", np.zeros((B, Hp), np.float32))
        gm.alloc("b_hh", E.to_f(b_hh) if b_hh is not None else empty_f)  # glue: .to(float32)
        gm.alloc("len", lengths if lengths is not None else np.zeros(0, np.int64))
        a = Args(G, T, B, H, P, Kp, Hp, reverse, w_hr is not None, b_hh is not None, lengths is not None, gm, wf)
        if wf == "bsr":
            a.nnz, a.bn, a.bk, a.bcols = W["col"].size, bn, bk, cdiv(P, bk)
            while a.gsz < a.bk and a.gsz < 32:
                a.gsz *= 2
        why, blocks, U, U2, Ecap, smem = plan_persistent(E, a, dev, crow_host)
        if path == "persistent" and why is not None:
            raise ModelError(f"persistent path requested but not plannable: {why}")
        if path != "stepwise" and why is None:
            ran = "persistent"
            run_cooperative(lambda blk: rnn_persistent_kernel(E, a, U, U2, Ecap, blk, smem), blocks, gm, rng)
        else:
            ran = "stepwise"
            run_stepwise(E, a, rng)
        writes = gm.m["y"]["writes"]
        if writes.size and not (writes == 1).all():
            raise ModelError(f"y elements written {writes.min()}..{writes.max()} times (expected once each)")
    y = gm.a["y"].reshape(T, B, P)
    h_n = gm.a["h"].reshape(2, B, Kp)[T % 2, :, :P]
    c_n = gm.a["c"].reshape(c.shape)
    out = (E.to_f(y), E.to_f(E.from_f(h_n)))  # the glue rounds h_n and c_n to the dtype
    if cell == "lstm":
        out += (E.to_f(E.from_f(c_n)),)
    return out, ran


# ---- checks ------------------------------------------------------------------------------------

def _raw(t):
    import torch
    if t is None:
        return None
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def make_case(cell, T, B, H, P, with_len, reverse, dtype, seed, bias=True, wf="dense", block=(1, 3), density=0.5):
    """(tensors for the reference, raw arrays for forward, W for forward). int8: per-row quantized
    weights with one -128 code; bsr: blocks of w_hh zeroed at random (density kept), to_bsr, and
    garbage in the values past P (which the reference drops)."""
    import torch
    from compress.formats.sparse import to_bsr
    from compress.ops.int8 import quantize_per_token_reference
    E = ELEMS[dtype]
    tdt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(seed)
    G = 4 if cell == "lstm" else 3
    Pw = P or H

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(tdt)
    lengths = torch.randint(0, T + 1, (B,), generator=g) if with_len else None
    if lengths is not None and B > 1:
        lengths[0] = 0  # always one row that never runs
    xg, h0, c0 = r(T, B, G * H), r(B, Pw), r(B, H)
    w_hh = r(G * H, Pw, scale=0.3)
    w_hr = r(Pw, H, scale=0.3) if (cell == "lstm" and P) else None
    b_hh = r(G * H) if (cell == "gru" and bias) else None
    tensors = dict(xg=xg, h0=h0, c0=c0, w_hh=w_hh, w_hr=w_hr, b_hh=b_hh, lengths=lengths)
    W = {}
    if wf == "int8":
        for name, w in (("hh", w_hh), ("hr", w_hr)):
            q, s = quantize_per_token_reference(w.float()) if w is not None else (None, None)
            if q is not None and q.numel():
                q.view(-1)[0] = -128  # the format allows it (the quantizer never makes it)
            tensors[f"q_{name}"], tensors[f"s_{name}"] = q, s
            W[f"q_{name}"], W[f"s_{name}"] = _raw(q), _raw(s)
    elif wf == "bsr":
        bn, bk = block
        R, C = -(-w_hh.shape[0] // bn), -(-Pw // bk)
        keep = torch.rand(R, C, generator=g) < density
        mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[: w_hh.shape[0], :Pw]
        b = to_bsr(w_hh * mask.to(tdt), block)
        values = b.values.clone()
        last = b.col == C - 1
        if Pw % bk and last.any():  # garbage in the padding past P (direct callers may leave some)
            values[last, :, Pw % bk:] = 7.0
        tensors.update(crow=b.crow, col=b.col, values=values)
        W.update(crow=_raw(b.crow), col=_raw(b.col), values=_raw(values), w_hr=_raw(w_hr))
    else:
        W.update(w_hh=_raw(w_hh), w_hr=_raw(w_hr))
    arrays = {k: _raw(tensors[k]) for k in ("xg", "b_hh", "lengths")}
    for k in ("h0", "c0"):
        arrays[k] = E.to_f(_raw(tensors[k]))
    return tensors, arrays, W


def reference(cell, wf, ts, reverse):
    from compress.ops import rnn
    if wf == "int8":
        out = (rnn.lstm_layer_w8_reference(ts["xg"], ts["h0"], ts["c0"], ts["q_hh"], ts["s_hh"], ts["q_hr"],
                                           ts["s_hr"], ts["lengths"], reverse) if cell == "lstm" else
               rnn.gru_layer_w8_reference(ts["xg"], ts["h0"], ts["q_hh"], ts["s_hh"], ts["b_hh"], ts["lengths"],
                                          reverse))
    elif wf == "bsr":
        out = (rnn.lstm_layer_bsr_reference(ts["xg"], ts["h0"], ts["c0"], ts["crow"], ts["col"], ts["values"],
                                            ts["w_hr"], ts["lengths"], reverse) if cell == "lstm" else
               rnn.gru_layer_bsr_reference(ts["xg"], ts["h0"], ts["crow"], ts["col"], ts["values"], ts["b_hh"],
                                           ts["lengths"], reverse))
    elif cell == "lstm":
        out = rnn.lstm_layer_reference(ts["xg"], ts["h0"], ts["c0"], ts["w_hh"], ts["w_hr"], ts["lengths"], reverse)
    else:
        out = rnn.gru_layer_reference(ts["xg"], ts["h0"], ts["w_hh"], ts["b_hh"], ts["lengths"], reverse)
    return [o.float().numpy() for o in out]


TOL = {"f32": 1e-5, "bf16": 2 * 2 ** -7, "f16": 2 * 2 ** -10}


def check_case(cell, T, B, H, P, with_len, reverse, dtype, path, dev, seed=0, bias=True, expect=None, wf="dense",
               block=(1, 3), density=0.5):
    ts, ar, W = make_case(cell, T, B, H, P, with_len, reverse, dtype, seed, bias, wf, block, density)
    rng = np.random.default_rng(seed)
    out, ran = forward(dtype, cell, ar["xg"], ar["h0"], ar["c0"], W, ar["b_hh"], ar["lengths"], reverse, path, dev,
                       rng, wf)
    if expect is not None and ran != expect:
        raise ModelError(f"expected the {expect} path, ran {ran}")
    ref = reference(cell, wf, ts, reverse)
    tol = TOL[dtype]
    for k, (o, r) in enumerate(zip(out, ref)):
        if o.shape != r.shape:
            raise ModelError(f"output {k}: shape {o.shape} != reference {r.shape}")
        if np.isnan(o).any():
            raise ModelError(f"output {k}: NaN (unwritten element?)")
        if r.size == 0:
            continue
        err = np.abs(o - r).max()
        bound = tol * max(np.abs(r).max(), 1e-30)
        if err > bound:
            raise ModelError(f"output {k}: max |err| {err:.3g} > {bound:.3g}")
    return ran


def main_cases():
    """(label, kwargs) of every functional check of the dense weights."""
    cases = []
    small = Device(sms=3)  # few SMs: several units per block, a partial last block
    for cell in ("lstm", "gru"):
        for (T, B, H, P) in [(1, 1, 1, 0), (5, 3, 17, 0), (5, 3, 17, 7), (4, 6, 33, 0), (3, 5, 40, 7), (3, 2, 3, 2),
                             (2, 7, 10, 13), (4, 16, 9, 5)]:
            if cell == "gru" and P:
                continue
            for with_len, reverse in ((False, False), (True, True), (True, False)):
                for path, dev in (("persistent", small), ("persistent", Device(sms=132)), ("stepwise", small)):
                    cases.append((f"{cell} T{T} B{B} H{H} P{P} len{int(with_len)} rev{int(reverse)} {path} "
                                  f"sms{dev.sms}", dict(cell=cell, T=T, B=B, H=H, P=P, with_len=with_len,
                                                        reverse=reverse, dtype="f32", path=path, dev=dev)))
    for dtype in ("bf16", "f16"):
        for cell, P in (("lstm", 7), ("lstm", 0), ("gru", 0)):
            for path in ("persistent", "stepwise"):
                cases.append((f"{cell} {dtype} P{P} {path}", dict(cell=cell, T=4, B=5, H=17, P=P, with_len=True,
                                                                   reverse=False, dtype=dtype, path=path,
                                                                   dev=Device(sms=4))))
    # The stepwise batch slices: B = 37 is three slices of 16 (two with a tail).
    for cell, P in (("lstm", 5), ("gru", 0)):
        cases.append((f"{cell} B37 stepwise", dict(cell=cell, T=3, B=37, H=11, P=P, with_len=True, reverse=True,
                                                   dtype="f32", path="auto", dev=Device(), expect="stepwise")))
    # Projection smaller than the grid: blocks without projection rows; H = 0 / P = 0 with a projection.
    cases.append(("lstm P2 < blocks", dict(cell="lstm", T=3, B=3, H=40, P=2, with_len=True, reverse=False,
                                           dtype="f32", path="persistent", dev=Device(sms=10))))
    cases.append(("lstm P2 < blocks stepwise", dict(cell="lstm", T=3, B=3, H=40, P=2, with_len=True, reverse=False,
                                                    dtype="f32", path="stepwise", dev=Device(sms=10))))
    cases.append(("gru no bias", dict(cell="gru", T=3, B=3, H=9, P=0, with_len=False, reverse=False, dtype="f32",
                                      path="persistent", dev=Device(sms=2), bias=False)))
    # Auto picks persistent when it fits and stepwise when shared memory does not suffice.
    cases.append(("auto -> persistent", dict(cell="lstm", T=2, B=4, H=20, P=0, with_len=False, reverse=False,
                                             dtype="f32", path="auto", dev=Device(sms=4), expect="persistent")))
    cases.append(("auto -> stepwise (smem)", dict(cell="lstm", T=2, B=4, H=20, P=0, with_len=False, reverse=False,
                                                  dtype="f32", path="auto", dev=Device(sms=4, smem_optin=2000),
                                                  expect="stepwise")))
    return cases


def int8_cases():
    """int8 weights (and int8 projection): the dense shapes on both paths, 16-bit activations."""
    cases = []
    small = Device(sms=3)
    for cell in ("lstm", "gru"):
        for (T, B, H, P) in [(1, 1, 1, 0), (5, 3, 17, 0), (5, 3, 17, 7), (3, 5, 40, 7), (3, 2, 3, 2), (2, 7, 10, 13),
                             (3, 16, 9, 5)]:
            if cell == "gru" and P:
                continue
            for (with_len, reverse), (path, dev) in zip(((True, True), (False, False), (True, False)),
                                                        (("persistent", small), ("persistent", Device(sms=132)),
                                                         ("stepwise", small))):
                cases.append((f"int8 {cell} T{T} B{B} H{H} P{P} len{int(with_len)} rev{int(reverse)} {path} "
                              f"sms{dev.sms}", dict(cell=cell, T=T, B=B, H=H, P=P, with_len=with_len,
                                                    reverse=reverse, dtype="f32", path=path, dev=dev, wf="int8")))
    for dtype in ("bf16", "f16"):
        for cell, P in (("lstm", 7), ("gru", 0)):
            for path in ("persistent", "stepwise"):
                cases.append((f"int8 {cell} {dtype} P{P} {path}", dict(
                    cell=cell, T=4, B=5, H=17, P=P, with_len=True, reverse=False, dtype=dtype, path=path,
                    dev=Device(sms=4), wf="int8")))
    for cell, P in (("lstm", 5), ("gru", 0)):
        cases.append((f"int8 {cell} B37 stepwise", dict(cell=cell, T=2, B=37, H=11, P=P, with_len=True, reverse=True,
                                                        dtype="f32", path="auto", dev=Device(), expect="stepwise",
                                                        wf="int8")))
    # The path rule: a quarter of float32's weight bytes fits where float32 does not (H = 64, B = 1:
    # 16 units per block, 64 x 64 weights: 16 KB float32, 4 KB int8, + 0.5 KB).
    for wf, expect in (("dense", "stepwise"), ("int8", "persistent")):
        cases.append((f"{wf} auto -> {expect} (smem 6000)", dict(
            cell="lstm", T=2, B=1, H=64, P=0, with_len=False, reverse=False, dtype="f32", path="auto",
            dev=Device(sms=4, smem_optin=6000), expect=expect, wf=wf)))
    return cases


def bsr_cases():
    """Block shapes (bn divides H; bk from 1 to past P and past 32 lanes), densities (0: no stored
    block), both cells, both paths, 16-bit values, several batch slices."""
    cases = []
    small = Device(sms=3)
    shapes = [  # (cell, T, B, H, P, block, density)
        ("lstm", 4, 3, 17, 0, (1, 1), 0.5), ("lstm", 3, 3, 17, 7, (1, 3), 0.5), ("lstm", 3, 2, 17, 7, (17, 4), 0.5),
        ("lstm", 3, 5, 40, 13, (4, 5), 0.4), ("lstm", 2, 2, 40, 0, (8, 3), 0.6), ("lstm", 2, 3, 40, 7, (2, 40), 0.7),
        ("lstm", 2, 2, 10, 0, (5, 33), 1.0), ("lstm", 3, 3, 17, 0, (1, 3), 0.0), ("lstm", 2, 16, 9, 5, (3, 2), 0.5),
        ("gru", 4, 3, 17, 0, (1, 1), 0.5), ("gru", 3, 3, 40, 0, (4, 5), 0.3), ("gru", 3, 2, 12, 0, (12, 64), 1.0),
        ("gru", 2, 7, 10, 0, (2, 3), 0.0), ("gru", 3, 3, 33, 0, (11, 7), 0.5)]
    for k, (cell, T, B, H, P, block, density) in enumerate(shapes):
        with_len, reverse = (True, k % 2 == 0) if k % 3 else (False, True)
        for path, dev in (("persistent", small), ("persistent", Device(sms=132)), ("stepwise", small)):
            cases.append((f"bsr {cell} T{T} B{B} H{H} P{P} block{block} d{density} {path} sms{dev.sms}", dict(
                cell=cell, T=T, B=B, H=H, P=P, with_len=with_len, reverse=reverse, dtype="f32", path=path, dev=dev,
                wf="bsr", block=block, density=density)))
    for dtype in ("bf16", "f16"):
        for cell, P in (("lstm", 7), ("gru", 0)):
            for path in ("persistent", "stepwise"):
                cases.append((f"bsr {cell} {dtype} P{P} {path}", dict(
                    cell=cell, T=3, B=5, H=17, P=P, with_len=True, reverse=False, dtype=dtype, path=path,
                    dev=Device(sms=4), wf="bsr", block=(1, 5), density=0.5)))
    for cell, P in (("lstm", 5), ("gru", 0)):
        cases.append((f"bsr {cell} B37 stepwise", dict(cell=cell, T=2, B=37, H=12, P=P, with_len=True, reverse=True,
                                                       dtype="f32", path="auto", dev=Device(), expect="stepwise",
                                                       wf="bsr", block=(4, 3), density=0.5)))
    # The path rule on nnz: at density 0.25 the stored blocks fit where the dense weight does not.
    for wf, expect in (("dense", "stepwise"), ("bsr", "persistent")):
        cases.append((f"{wf} auto -> {expect} (smem 12000)", dict(
            cell="lstm", T=2, B=1, H=64, P=0, with_len=False, reverse=False, dtype="f32", path="auto",
            dev=Device(sms=4, smem_optin=12000), expect=expect, wf=wf, block=(4, 4), density=0.25)))
    return cases


def edge_cases():
    """H = 0 with a projection (h = 0 on active steps), P = 0 with one (c still runs), T = 0, B = 0."""
    return [
        ("lstm H0 P3", dict(cell="lstm", T=3, B=2, H=0, P=3, with_len=True, reverse=False, dtype="f32",
                            path="auto", dev=Device(), expect="stepwise")),
        ("lstm T0", dict(cell="lstm", T=0, B=2, H=5, P=0, with_len=False, reverse=False, dtype="f32", path="auto",
                         dev=Device(), expect="none")),
        ("gru B0", dict(cell="gru", T=3, B=0, H=5, P=0, with_len=False, reverse=False, dtype="f32", path="auto",
                        dev=Device(), expect="none")),
        ("int8 lstm H0 P3", dict(cell="lstm", T=3, B=2, H=0, P=3, with_len=True, reverse=False, dtype="f32",
                                 path="auto", dev=Device(), expect="stepwise", wf="int8")),
    ]


def p0_case():
    """LSTM with proj_size P = 0 (w_hr [0, H]): c runs, h and y are empty. make_case cannot build it."""
    import torch
    from compress.ops.rnn import lstm_layer_reference
    g = torch.Generator().manual_seed(3)
    T, B, H = 3, 2, 6
    xg, c0 = torch.randn(T, B, 4 * H, generator=g), torch.randn(B, H, generator=g)
    h0, w_hh, w_hr = torch.zeros(B, 0), torch.zeros(4 * H, 0), torch.zeros(0, H)
    for path in ("persistent", "stepwise"):
        out, ran = forward("f32", "lstm", xg.numpy(), h0.numpy(), c0.numpy(), dict(w_hh=w_hh.numpy(),
                           w_hr=w_hr.numpy()), None, None, False, path, Device(sms=2), np.random.default_rng(0))
        ref = lstm_layer_reference(xg, h0, c0, w_hh, w_hr)
        err = np.abs(out[2] - ref[2].numpy()).max()
        if err > 1e-5 * np.abs(ref[2].numpy()).max() or ran != path:
            raise ModelError(f"P = 0 {path}: c_n err {err}")


def int8_widen_exact():
    """Elem<kI8>::widen4 gives q exactly for all 256 codes."""
    q = np.arange(-128, 128).astype(np.int8)
    got = I8.to_f(q)
    if not np.array_equal(got, q.astype(np.float32)):
        raise ModelError(f"int8 widening wrong at q = {q[got != q.astype(np.float32)][0]}")


def bsr_defensive(seed=0):
    """Garbage device crow / col (validation skipped, host crow valid): the kernels must stay in bounds
    on both paths. The numbers are garbage too; only the bounds are checked."""
    ts, ar, W = make_case("lstm", 2, 3, 12, 7, True, False, "f32", seed, wf="bsr", block=(4, 3), density=0.5)
    rng = np.random.default_rng(seed)
    W = dict(W, crow_dev=rng.integers(-50, 50, W["crow"].shape).astype(np.int32),
             col_dev=rng.integers(-5, 8, W["col"].shape).astype(np.int32))
    with np.errstate(over="ignore"):  # garbage sums overflow exp
        for path in ("persistent", "stepwise"):
            forward("f32", "lstm", ar["xg"], ar["h0"], ar["c0"], W, None, ar["lengths"], False, path, Device(sms=2),
                    rng, "bsr", validate=False)


def bsr_glue_rejects():
    """The glue's index checks raise, naming the argument."""
    ts, ar, W = make_case("gru", 2, 2, 8, 0, False, False, "f32", 1, wf="bsr", block=(2, 3), density=0.6)
    for name, edit, msg in (("col", lambda w: w["col"].__setitem__(0, 3), "`col` entries in [0, 3)"),
                            ("col", lambda w: w["col"].__setitem__(0, -1), "`col` entries"),
                            ("crow", lambda w: w["crow"].__setitem__(-1, w["crow"][-1] + 1), "`crow[-1]`"),
                            ("crow", lambda w: w["crow"].__setitem__(1, w["crow"][2] + 1), "non-decreasing")):
        Wb = {k: v.copy() for k, v in W.items() if v is not None}
        edit(Wb)
        try:
            forward("f32", "gru", ar["xg"], ar["h0"], ar["c0"], Wb, None, None, False, "auto", Device(),
                    np.random.default_rng(0), "bsr")
        except ValueError as e:
            if msg not in str(e):
                raise ModelError(f"bad {name}: message {e!s} lacks {msg!r}")
            continue
        raise ModelError(f"bad {name} ({msg}) not rejected")


def plan_examples():
    """The examples in rnn_recurrence.cu's "Path choice" comment (H100: 132 SMs, 227 KB)."""
    def plan(B, H, P, dtype, G=4, dev=Device(), wf="dense", crow=None, block=(1, 1)):
        Kp, Hp = cdiv(P, 4) * 4, cdiv(H, 4) * 4
        a = Args(G, 1, B, H, P, Kp, Hp, False, P != H, False, False, Global(), wf, bn=block[0], bk=block[1])
        return plan_persistent(ELEMS[dtype], a, dev, crow)
    why, blocks, U, U2, E, smem = plan(16, 1024, 1024, "bf16")
    assert why is None and U == 8 and blocks == 128 and smem == 4 * (16 * 1024 + 16 * 32) + 2 * 32 * 1024, \
        (why, blocks, U, smem)
    assert plan(16, 2048, 2048, "bf16")[0] is not None
    why, blocks, U, U2, E, smem = plan(1, 2048, 2048, "bf16", wf="int8")
    assert why is None and U == 16 and smem == 4 * (2048 + 64) + 64 * 2048, (why, U, smem)
    assert plan(16, 2048, 2048, "bf16", wf="int8")[0] is not None
    assert plan(1, 2640, 2640, "f32", wf="int8")[0] is None and plan(1, 2700, 2700, "f32", wf="int8")[0] is not None
    assert plan(1, 1860, 1860, "bf16")[0] is None and plan(1, 1900, 1900, "bf16")[0] is not None
    crow = np.arange(4 * 2048 // 16 + 1) * 32  # 16 x 16 blocks, 32 of 128 per block row (density 0.25)
    why, blocks, U, U2, E, smem = plan(1, 2048, 2048, "bf16", wf="bsr", crow=crow, block=(16, 16))
    assert why is None and E == 64 * 32 and smem == 4 * (2048 + 64) + 4 * 65 + (4 + 2 * 16) * E, (why, E, smem)
    assert plan(17, 64, 64, "f32")[0] is not None
    assert plan(1, 17, 17, "f32")[1:3] == (9, 2)  # U = max(ceil(17/132), ceil(8/4)) = 2 -> 9 blocks
    assert plan(1, 17, 17, "f32", G=3)[1:3] == (6, 3)


BUGS = ["single_h_buffer", "no_proj_sync", "epilogue_U", "no_acc_round", "stage_P", "xg_gate_stride_P",
        "stage_plain_load", "no_sync_after_matvec", "gru_bias_after_r", "mask_c", "step_batch_offset",
        "no_step_slice_sync", "i8_no_scale", "i8_no_sign_flip", "bsr_pad_cols", "bsr_vstride", "bsr_row_in_block",
        "bsr_plan_block_rows", "bsr_stage_no_sync", "bsr_total_no_bk", "bsr_no_clamp"]


def bug_cases():
    """Shapes on which each planted bug shows (and the BSR defensive run)."""
    dev = Device(sms=3)
    cases = [dict(cell="lstm", T=3, B=3, H=17, P=7, with_len=True, reverse=False, dtype="f32", path="persistent",
                  dev=dev),
             dict(cell="lstm", T=3, B=3, H=17, P=0, with_len=True, reverse=True, dtype="f32", path="persistent",
                  dev=dev),
             dict(cell="gru", T=3, B=3, H=17, P=0, with_len=True, reverse=False, dtype="f32", path="persistent",
                  dev=dev),
             dict(cell="lstm", T=3, B=37, H=11, P=5, with_len=True, reverse=False, dtype="f32", path="stepwise",
                  dev=dev),
             dict(cell="gru", T=2, B=20, H=10, P=0, with_len=False, reverse=False, dtype="f32", path="stepwise",
                  dev=dev),
             dict(cell="lstm", T=2, B=3, H=12, P=7, with_len=True, reverse=False, dtype="f32", path="persistent",
                  dev=dev, wf="int8"),
             dict(cell="gru", T=2, B=5, H=9, P=0, with_len=True, reverse=False, dtype="f32", path="stepwise",
                  dev=dev, wf="int8"),
             dict(cell="lstm", T=2, B=3, H=12, P=7, with_len=True, reverse=False, dtype="f32", path="persistent",
                  dev=dev, wf="bsr", block=(4, 3), density=0.6),
             dict(cell="gru", T=2, B=5, H=12, P=0, with_len=True, reverse=False, dtype="f32", path="stepwise",
                  dev=dev, wf="bsr", block=(2, 5), density=0.6)]
    return [lambda kw=kw: check_case(**kw) for kw in cases] + [bsr_defensive]


def main():
    global BUG
    failures = 0

    def report(label, fn):
        nonlocal failures
        try:
            fn()
            print(f"ok    {label}")
        except (ModelError, AssertionError) as e:
            failures += 1
            print(f"FAIL  {label}: {e}")

    report("plan_persistent examples (rnn_recurrence.cu comment)", plan_examples)
    report("int8 widening exact for all 256 codes", int8_widen_exact)
    for label, kw in main_cases() + int8_cases() + bsr_cases() + edge_cases():
        report(label, lambda kw=kw: check_case(**kw))
    MAX_GRID_Y[0] = 1  # one block row walks every batch slice
    report("stepwise grid-y limit (grid-stride over batch slices)",
           lambda: check_case("gru", 2, 37, 9, 0, True, False, "f32", "stepwise", Device()))
    report("bsr stepwise grid-y limit",
           lambda: check_case("lstm", 2, 37, 8, 3, True, False, "f32", "stepwise", Device(), wf="bsr", block=(2, 2)))
    MAX_GRID_Y[0] = 65535
    report("lstm proj_size 0", p0_case)
    report("bsr kernels in bounds on garbage device indices", bsr_defensive)
    report("bsr glue rejects bad indices", bsr_glue_rejects)

    MAX_GRID_Y[0] = 1  # stepwise blocks walk several batch slices (acc_s reuse)
    for bug in BUGS:
        BUG = bug
        caught = []
        for case in bug_cases():
            try:
                with np.errstate(over="ignore"):  # e.g. unscaled int8 sums overflow exp
                    case()
            except ModelError as e:
                caught.append(str(e).split(":")[0])
        BUG = None
        if caught:
            print(f"ok    planted bug {bug!r} caught ({'; '.join(sorted(set(caught)))})")
        else:
            failures += 1
            print(f"FAIL  planted bug {bug!r} NOT caught")
    print("all checks passed" if not failures else f"{failures} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
