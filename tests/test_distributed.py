"""compress under torch.distributed on the CPU (gloo, 2 processes started here): pruned training under
DDP and FSDP2 against single-process training, converted inference modules on every rank, and each
claim of docs/distributed.md (what fails, and how).

The two ranks run this file as a script (`python tests/test_distributed.py --rank R ...`): each runs
every scenario once and saves what it saw to rank<R>.pt; the tests compare those records with the
same computation done here in one process. A rank that hangs is killed after TIMEOUT seconds.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.nn import Int8Linear

WORLD = 2
STEPS = 4
PER_RANK = 3   # rows of each batch per rank; the single-process run takes all WORLD * PER_RANK
TIMEOUT = 150  # seconds for the whole 2-process run; a hang fails instead of blocking CI


# ------------------------------------------------------------ what both ranks and this process compute

def pruned_mlp() -> nn.Sequential:
    """12 -> 24 -> 16 -> 4, layers 0 and 4 pruned unstructured (60%), layer 2 to 2:4: masks kept as
    parametrizations (compress.prune)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4))
    compress.prune(m, 0.6, filter_fn=lambda mod, name: name != "2")
    compress.prune(m, structure="2:4", filter_fn=lambda mod, name: name == "2")
    return m


def lstm_model() -> nn.Module:
    """nn.LSTM(6, 8) + linear head, the LSTM swapped for compress's FusedLSTM (compress.fuse_rnn)."""
    torch.manual_seed(1)
    m = _LSTMHead()
    compress.fuse_rnn(m)
    return m


class _LSTMHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(6, 8), nn.Linear(8, 4)

    def forward(self, x):  # x [T, B, 6] -> [B, 4]
        return self.head(self.rnn(x)[0][-1])


def batches(shape_x, n_out, seed=2):
    """STEPS global batches (x, y); each rank trains on its PER_RANK slice of the batch dim."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape_x, generator=g), torch.randn(WORLD * PER_RANK, n_out, generator=g))
            for _ in range(STEPS)]


def mlp_batches():
    return batches((WORLD * PER_RANK, 12), 4)


def lstm_batches():
    return batches((5, WORLD * PER_RANK, 6), 4, seed=3)


def local(x, rank, dim=0):
    return x if rank is None else x.chunk(WORLD, dim)[rank]


def train(model, data, rank=None, batch_dim=0, params=None):
    """SGD with momentum, mean-squared error; rank None: the whole batch (single process)."""
    opt = torch.optim.SGD(params if params is not None else model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for x, y in data:
        loss = F.mse_loss(model(local(x, rank, batch_dim)), local(y, rank))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def linears(m):
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.Linear)}


def effective_weights(m):
    """Each nn.Linear's weight as forward sees it (original * mask for a pruned one)."""
    return {n: mod.weight.detach().clone() for n, mod in linears(m).items()}


def masks(m):
    return {n: mod.parametrizations.weight[0].mask.clone() for n, mod in linears(m).items()}


def probe_input():
    return torch.randn(7, 12, generator=torch.Generator().manual_seed(4))


def converted(trained: nn.Module) -> dict:
    """Inference conversions of a trained pruned MLP: masks baked in (prune.remove), then CSR (2:4 for
    layer 2), or int8 (w8a8, dynamic). Returns {kind: model}."""
    # a fresh pruned model, not copy.deepcopy(trained): a deep copy shares torch's generated
    # Parametrized<Linear> class, and removing the copy's parametrization deletes the class's `weight`
    # property, breaking the original too (torch.nn.utils.parametrize)
    base = pruned_mlp()
    base.load_state_dict(trained.state_dict())
    compress.prune.remove(base)
    sparse = copy.deepcopy(base)
    compress.sparsify(sparse, format="csr", filter_fn=lambda mod, name: name != "2")
    compress.sparsify(sparse, format="2:4", filter_fn=lambda mod, name: name == "2")
    quant = copy.deepcopy(base)
    compress.quantize(quant)
    return {"sparse": sparse, "int8": quant}


def converted_outputs(models: dict) -> dict:
    with torch.no_grad():
        return {k: m(probe_input()) for k, m in models.items()}


def frozen_backbone_model(trained: nn.Module) -> nn.Module:
    """Fine-tuning a head on a compressed, frozen backbone: layers 0-2 of `trained` sparsified, layer 4
    quantized (modules with buffers only), then a fresh trainable nn.Linear."""
    conv = converted(trained)
    torch.manual_seed(5)
    return nn.Sequential(conv["sparse"][:4], conv["int8"][4], nn.ReLU(), nn.Linear(4, 4))


def int8_layer() -> Int8Linear:
    torch.manual_seed(6)
    return Int8Linear.from_float(nn.Linear(12, 8))


def single_process_reference():
    """What the ranks compute, in one process over whole batches."""
    mlp = pruned_mlp()
    mlp_losses = train(mlp, mlp_batches())
    lstm = lstm_model()
    train(lstm, lstm_batches(), batch_dim=1)
    head = frozen_backbone_model(pruned_mlp())
    train(head, mlp_batches(), params=head[3].parameters())
    return {"mlp": mlp, "mlp_losses": mlp_losses, "lstm": lstm, "head": head}


# --------------------------------------------------------------------------------- the rank worker

def _attempt(fn):
    """("ok", result) or ("error", exception type name, message): a claim's outcome, recorded."""
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - the record says which
        return ("error", type(e).__name__, str(e).splitlines()[0] if str(e) else "")


def worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    rec = {}

    # DDP: pruned training, masks kept, then conversion on each rank.
    mlp = pruned_mlp()
    initial_masks = masks(mlp)
    ddp = DDP(mlp)
    rec["ddp_losses"] = train(ddp, mlp_batches(), rank)
    rec["ddp_weights"] = effective_weights(mlp)
    rec["ddp_masks"], rec["initial_masks"] = masks(mlp), initial_masks
    rec["ddp_state"] = {k: v.clone() for k, v in mlp.state_dict().items()}
    rec["ddp_converted"] = converted_outputs(converted(mlp))
    rec["ddp_of_converted"] = _attempt(lambda: DDP(converted(mlp)["int8"]))
    # gradual pruning between DDP steps: every rank ranks the same weights, so gets the same masks
    pruner = compress.GradualPruner(mlp, final_sparsity=0.8, steps=2, filter_fn=lambda mod, name: name != "2")
    for step in mlp_batches()[:2]:
        pruner.step()
        train(ddp, [step], rank)
    rec["ddp_gradual_weights"], rec["ddp_gradual_masks"] = effective_weights(mlp), masks(mlp)
    # a frozen converted backbone (int8 / sparse buffers) with a trainable head, under DDP
    head = frozen_backbone_model(pruned_mlp())
    train(DDP(head), mlp_batches(), rank, params=head[3].parameters())
    rec["ddp_head"] = {k: v.clone() for k, v in head[3].state_dict().items()}
    fused = lstm_model()
    train(DDP(fused), lstm_batches(), rank, batch_dim=1)
    rec["ddp_fused_lstm_state"] = {k: v.clone() for k, v in fused.state_dict().items()}

    # FSDP2 (fully_shard): pruned training, per layer and at the root.
    mesh = init_device_mesh("cpu", (WORLD,))
    mlp = pruned_mlp()
    for lin in linears(mlp).values():
        fully_shard(lin, mesh=mesh)
    fully_shard(mlp, mesh=mesh)
    rec["fsdp_param_types"] = sorted({type(p).__name__ for p in mlp.parameters()})
    rec["fsdp_losses"] = train(mlp, mlp_batches(), rank)
    full = get_model_state_dict(mlp, options=StateDictOptions(full_state_dict=True))
    rec["fsdp_state"] = {k: v.clone() for k, v in full.items()}
    # what does not work on the sharded model (docs/distributed.md)
    rec["fsdp_weight_outside_forward"] = _attempt(lambda: mlp[0].weight)
    rec["fsdp_prune_again"] = _attempt(lambda: compress.prune(mlp, 0.7))
    rec["fsdp_quantize"] = _attempt(lambda: compress.quantize(mlp))
    rec["fsdp_sparsify"] = _attempt(lambda: compress.sparsify(mlp, format="csr"))
    rec["fsdp_remove"] = _attempt(lambda: compress.prune.remove(mlp))
    torch.manual_seed(1)
    rnn = nn.Sequential(nn.LSTM(6, 8))
    fully_shard(rnn, mesh=mesh)
    rec["fsdp_fuse_rnn"] = _attempt(lambda: compress.fuse_rnn(rnn))
    # what to do instead: the full state dict into an unsharded copy, then convert
    plain = pruned_mlp()
    plain.load_state_dict(full)
    rec["fsdp_converted"] = converted_outputs(converted(plain))
    # FusedLSTM under fully_shard: trains, parameters sharded
    fused = lstm_model()
    fully_shard(fused, mesh=mesh)
    train(fused, lstm_batches(), rank, batch_dim=1)
    rec["fsdp_fused_lstm_state"] = {k: v.clone() for k, v in get_model_state_dict(
        fused, options=StateDictOptions(full_state_dict=True)).items()}
    # converted inference modules under fully_shard: buffers stay plain, replicated tensors
    conv = converted(pruned_mlp())
    for kind, model in conv.items():
        fully_shard(model, mesh=mesh)
        rec[f"fsdp_{kind}_buffers"] = sorted({type(b).__name__ for b in model.buffers()})
        with torch.no_grad():
            rec[f"fsdp_{kind}_out"] = model(probe_input())
    # ...and a frozen converted backbone with a trainable head under fully_shard
    head = frozen_backbone_model(pruned_mlp())
    fully_shard(head, mesh=mesh)
    train(head, mlp_batches(), rank, params=head[3].parameters())
    rec["fsdp_head"] = {k: v.full_tensor().clone() for k, v in head[3].state_dict().items()}

    # DTensor arguments: the ops have no sharding rule
    q = int8_layer()
    rec["dtensor_input"] = _attempt(lambda: q(distribute_tensor(probe_input(), mesh, [Shard(0)])))
    qd = copy.deepcopy(q)
    qd.weight = distribute_tensor(qd.weight, mesh, [Replicate()])
    rec["dtensor_weight"] = _attempt(lambda: qd(probe_input()))
    a = torch.randint(-128, 128, (4, 6), dtype=torch.int8)
    rec["dtensor_op"] = _attempt(lambda: compress.ops.int8_mm(distribute_tensor(a, mesh, [Replicate()]),
                                                              distribute_tensor(a.t(), mesh, [Replicate()])))
    rec["dtensor_local"] = q(distribute_tensor(probe_input(), mesh, [Shard(0)]).to_local())

    torch.save(rec, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Runs the 2 ranks once for the module; returns their records [rank0, rank1]."""
    d = tmp_path_factory.mktemp("dist")
    env = dict(os.environ)
    if sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no dependence on the host name resolving
    procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), "--init", f"file://{d}/store",
                               "--out", str(d)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for r in range(WORLD)]
    logs, failed = [], False
    for r, p in enumerate(procs):
        try:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            logs.append(p.communicate()[0])
            pytest.fail(f"rank {r} did not finish within {TIMEOUT} s (hang?); its output:\n{logs[-1][-3000:]}")
        failed |= p.returncode != 0
    if failed:
        pytest.fail("\n".join(f"rank {r} exit status {p.returncode}:\n{log[-3000:]}"
                              for r, (p, log) in enumerate(zip(procs, logs))))
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)  # as the ranks (conftest restores the count after each test)
    return single_process_reference()


def assert_close(a, b, what, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def test_ddp_pruned_training_matches_single_process(ranks, single):
    ref = effective_weights(single["mlp"])
    for r, rec in enumerate(ranks):
        for name, w in rec["ddp_weights"].items():
            assert_close(w, ref[name], f"rank {r} layer {name}")
            assert torch.equal(w, ranks[0]["ddp_weights"][name]), f"ranks differ in layer {name}"
    # the global loss is the mean of the ranks' losses (equal batch halves)
    ddp_loss = [(a + b) / 2 for a, b in zip(ranks[0]["ddp_losses"], ranks[1]["ddp_losses"])]
    assert_close(torch.tensor(ddp_loss), torch.tensor(single["mlp_losses"]), "loss")
    initial = effective_weights(pruned_mlp())
    assert all(not torch.allclose(ref[n], initial[n]) for n in ref)  # it trained: every layer moved


def test_ddp_keeps_masks_on_every_rank(ranks):
    for r, rec in enumerate(ranks):
        for name, mask in rec["ddp_masks"].items():
            assert torch.equal(mask, rec["initial_masks"][name]), f"rank {r}: mask of layer {name} changed"
            assert not mask.all() and mask.any()
            w = rec["ddp_weights"][name]
            assert torch.all(w[~mask] == 0), f"rank {r}: pruned weights of layer {name} moved"
            assert torch.all(w[mask] != 0)


def test_ddp_converted_modules_on_each_rank(ranks, single):
    # Each rank's converted model gives the output of the same conversion done here from rank 0's
    # trained weights (bit for bit: same kernels, one thread), and close to the single-process model's.
    trained = pruned_mlp()
    trained.load_state_dict(ranks[0]["ddp_state"])
    here = converted_outputs(converted(trained))
    sp = converted_outputs(converted(single["mlp"]))
    for r, rec in enumerate(ranks):
        for kind, out in rec["ddp_converted"].items():
            assert torch.equal(out, here[kind]), f"rank {r} {kind}"
    assert_close(here["sparse"], sp["sparse"], "sparse vs single-process training")
    # int8: weights equal to ~1e-6 can round to a neighbouring int8 step (1/127 of a row's max)
    assert_close(here["int8"], sp["int8"], "int8 vs single-process training", rtol=0.05, atol=0.02)


def test_ddp_gradual_pruning(ranks):
    r0 = ranks[0]
    for name, mask in r0["ddp_gradual_masks"].items():
        if name == "2":  # the 2:4 layer, left out of the gradual pruning
            assert torch.equal(mask, r0["initial_masks"][name])
        else:
            assert mask.sum() < r0["initial_masks"][name].sum(), f"layer {name} was not pruned further"
        for r, rec in enumerate(ranks):
            assert torch.equal(rec["ddp_gradual_masks"][name], mask), f"rank {r}: other mask in layer {name}"
            assert torch.equal(rec["ddp_gradual_weights"][name], r0["ddp_gradual_weights"][name])
            assert torch.all(rec["ddp_gradual_weights"][name][~mask] == 0)


def test_ddp_refuses_a_model_without_parameters(ranks):
    # An all-converted model holds buffers only: nothing for DDP to synchronise; run it unwrapped.
    for rec in ranks:
        status, kind, msg = rec["ddp_of_converted"]
        assert (status, kind) == ("error", "RuntimeError") and "doesn't have any parameter" in msg, \
            rec["ddp_of_converted"]


def test_ddp_frozen_converted_backbone_trainable_head(ranks, single):
    ref = single["head"][3].state_dict()
    for r, rec in enumerate(ranks):
        for k, v in rec["ddp_head"].items():
            assert_close(v, ref[k], f"rank {r} head {k}", rtol=1e-4, atol=1e-5)


# The recurrences' gradients are sums over steps and batch rows, taken in another order when each
# rank sums its half; four momentum steps carry that to a few 1e-5 relative on small weights.
RNN_RTOL, RNN_ATOL = 1e-4, 1e-5


def test_ddp_fused_lstm_training(ranks, single):
    ref = single["lstm"].state_dict()
    for r, rec in enumerate(ranks):
        for k, v in rec["ddp_fused_lstm_state"].items():
            assert_close(v, ref[k], f"rank {r} {k}", RNN_RTOL, RNN_ATOL)


def test_fsdp2_pruned_training_matches_single_process(ranks, single):
    ref = single["mlp"].state_dict()
    loss = [(a + b) / 2 for a, b in zip(ranks[0]["fsdp_losses"], ranks[1]["fsdp_losses"])]
    assert_close(torch.tensor(loss), torch.tensor(single["mlp_losses"]), "loss")
    for r, rec in enumerate(ranks):
        assert rec["fsdp_param_types"] == ["DTensor"]
        for k, v in rec["fsdp_state"].items():
            if k.endswith(".mask"):
                assert torch.equal(v, ranks[0]["initial_masks"][k.split(".")[0]]), f"rank {r}: mask {k} changed"
            else:
                assert_close(v, ref[k], f"rank {r} {k}")
        m = pruned_mlp()
        m.load_state_dict(rec["fsdp_state"])
        for name, mod in linears(m).items():
            assert torch.all(mod.weight[~masks(m)[name]] == 0)


def test_fsdp2_sharded_pruned_model_refuses_pruning_and_conversion(ranks):
    # A pruned layer's weight is original (a sharded DTensor) * mask (a plain buffer): outside forward
    # torch refuses the product, so re-pruning, prune.remove and the conversions fail on the sharded
    # model, with torch's error; fuse_rnn fails copying sharded weights into plain ones.
    for rec in ranks:
        for key in ("fsdp_weight_outside_forward", "fsdp_prune_again", "fsdp_quantize", "fsdp_sparsify",
                    "fsdp_remove", "fsdp_fuse_rnn"):
            status, kind, msg = rec[key]
            assert (status, kind) == ("error", "RuntimeError"), (key, rec[key])
            assert "mixed torch.Tensor and DTensor" in msg, (key, msg)


def test_fsdp2_convert_after_gathering_full_state(ranks, single):
    m = pruned_mlp()
    m.load_state_dict(ranks[0]["fsdp_state"])
    here = converted_outputs(converted(m))
    for r, rec in enumerate(ranks):
        for kind, out in rec["fsdp_converted"].items():
            assert torch.equal(out, here[kind]), f"rank {r} {kind}"


def test_fsdp2_fused_lstm_training(ranks, single):
    ref = single["lstm"].state_dict()
    for r, rec in enumerate(ranks):
        for k, v in rec["fsdp_fused_lstm_state"].items():
            assert_close(v, ref[k], f"rank {r} {k}", RNN_RTOL, RNN_ATOL)


def test_fsdp2_converted_modules_keep_plain_buffers(ranks):
    here = converted_outputs(converted(pruned_mlp()))
    for r, rec in enumerate(ranks):
        for kind in ("sparse", "int8"):
            assert rec[f"fsdp_{kind}_buffers"] == ["Tensor"], rec[f"fsdp_{kind}_buffers"]
            assert torch.equal(rec[f"fsdp_{kind}_out"], here[kind]), f"rank {r} {kind}"


def test_fsdp2_frozen_converted_backbone_trainable_head(ranks, single):
    ref = single["head"][3].state_dict()
    for r, rec in enumerate(ranks):
        for k, v in rec["fsdp_head"].items():
            assert_close(v, ref[k], f"rank {r} head {k}", rtol=1e-4, atol=1e-5)


def test_dtensor_arguments_raise(ranks):
    # all arguments DTensors: no sharding rule for the op; some: torch refuses the mix (a w8a8
    # Int8Linear on a DTensor input hands w8a8_linear a DTensor x and plain weight buffers)
    for rec in ranks:
        status, kind, msg = rec["dtensor_op"]
        assert (status, kind) == ("error", "NotImplementedError"), rec["dtensor_op"]
        assert "compress.int8_mm.default does not have a sharding strategy" in msg, msg
        for key in ("dtensor_input", "dtensor_weight"):
            status, kind, msg = rec[key]
            assert (status, kind) == ("error", "RuntimeError"), (key, rec[key])
            assert "compress.w8a8_linear.default got mixed torch.Tensor and DTensor" in msg, (key, msg)


def test_dtensor_to_local_works(ranks):
    # The way around: the module on each rank's local shard (row-sharded input, replicated weights).
    q = int8_layer()
    for r, rec in enumerate(ranks):
        assert torch.equal(rec["dtensor_local"], q(probe_input().chunk(WORLD)[r]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    try:
        worker(a.rank, a.init, a.out)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)  # do not wait for the other rank in the process group's teardown


if __name__ == "__main__":
    main()
