"""compress.prune, GradualPruner, distill_loss: masks, structures, scopes, schedules."""
import pytest
import torch
from torch import nn

import compress
from compress.pruning import WeightMask


def model3():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 40), nn.ReLU(), nn.Linear(40, 8))


def zero_frac(w):
    return (w == 0).float().mean().item()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_unstructured_layer_scope_hits_sparsity_in_each_layer(sparsity):
    m = model3()
    dense = [l.weight.detach().clone() for l in m if isinstance(l, nn.Linear)]
    report = compress.prune(m, sparsity)
    for lin, w0, e in zip([l for l in m if isinstance(l, nn.Linear)], dense, report.converted):
        w = lin.weight.detach()
        assert abs(zero_frac(w) - sparsity) < 1 / w.numel() + 1e-9
        assert e.details["sparsity"] == pytest.approx(zero_frac(w), abs=1e-4)
        kept = w != 0
        # magnitude criterion: every kept weight is at least as large as every pruned one
        assert w0[kept].abs().min() >= w0[~kept].abs().max()
        assert torch.equal(w[kept], w0[kept])


def test_global_scope_one_threshold():
    m = model3()
    with torch.no_grad():
        m[0].weight *= 10  # layer 0 much larger: a global threshold prunes it less
    report = compress.prune(m, 0.6, scope="global")
    assert compress.sparsity_of(m) == pytest.approx(0.6, abs=1e-3)
    s = [e.details["sparsity"] for e in report.converted]
    assert s[0] < 0.6 < min(s[1], s[2])
    kept_min = min(l.weight[l.weight != 0].abs().min() for l in m if isinstance(l, nn.Linear))
    assert kept_min > 0


def test_2_4_keeps_two_largest_of_each_four():
    m = nn.Linear(16, 6)
    w0 = m.weight.detach().clone()
    report = compress.prune(nn.Sequential(m), structure="2:4")
    w = m.weight.detach()
    groups, g0 = w.reshape(6, 4, 4), w0.reshape(6, 4, 4)
    assert ((groups != 0).sum(-1) == 2).all()
    kept_vals = g0.abs().sort(-1, descending=True).values[..., :2]
    assert torch.equal(groups.abs().sort(-1, descending=True).values[..., :2], kept_vals)
    assert report.converted[0].details["sparsity"] == 0.5


def test_2_4_skips_layers_it_cannot_prune():
    m = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 3))
    r = compress.prune(m, structure="2:4")
    assert "divisible by 4, got 6" in r["0"].reason and r["1"].converted


@pytest.mark.parametrize("block", [(4, 8), (16, 16), (5, 7)])
def test_block_zeroes_whole_blocks(block):
    m = nn.Linear(37, 45)
    compress.prune(nn.Sequential(m), 0.75, structure="block", block=block)
    w = m.weight.detach()
    bn, bk = block
    for i in range(0, 45, bn):
        for j in range(0, 37, bk):
            blk = w[i:i + bn, j:j + bk]
            assert (blk == 0).all() or (blk != 0).all()
    assert zero_frac(w) == pytest.approx(0.75, abs=0.06)


def test_channel_zeroes_rows():
    m = nn.Linear(20, 30)
    compress.prune(nn.Sequential(m), 0.4, structure="channel")
    rows_zero = (m.weight == 0).all(dim=1)
    assert int(rows_zero.sum()) == 12
    assert ((m.weight != 0).all(dim=1) | rows_zero).all()


def test_masks_survive_training_with_any_optimizer():
    m = model3()
    compress.prune(m, 0.8)
    masks = [l.weight.detach() == 0 for l in m if isinstance(l, nn.Linear)]
    for opt in (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
                torch.optim.AdamW(m.parameters(), lr=1e-2)):
        for _ in range(5):
            opt.zero_grad()
            m(torch.randn(16, 64)).pow(2).mean().backward()
            opt.step()
    for lin, mask in zip([l for l in m if isinstance(l, nn.Linear)], masks):
        assert (lin.weight.detach()[mask] == 0).all()


def test_remove_makes_it_permanent_and_state_dict_round_trips():
    m = model3()
    compress.prune(m, 0.5)
    sd = m.state_dict()
    assert any(k.endswith("parametrizations.weight.0.mask") for k in sd)
    m2 = model3()
    compress.prune(m2, 0.1)  # same structure, other masks: load restores the saved ones
    m2.load_state_dict(sd)
    x = torch.randn(4, 64)
    assert torch.equal(m(x), m2(x))
    out = m(x)
    assert compress.prune.remove(m) == 3
    assert type(m[0]) is nn.Linear and not any(isinstance(x, WeightMask) for x in m.modules())
    assert torch.equal(m(x), out)


def test_prune_compiles():
    m = model3()
    compress.prune(m, 0.5)
    x = torch.randn(3, 64)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x))


def test_bad_arguments():
    m = model3()
    with pytest.raises(ValueError, match="`structure`"):
        compress.prune(m, structure="4:8")
    with pytest.raises(ValueError, match="`scope`"):
        compress.prune(m, scope="model")
    with pytest.raises(ValueError, match="`sparsity`"):
        compress.prune(m, 1.0)


@pytest.mark.parametrize("schedule", ["cubic", "linear"])
def test_gradual_pruner_schedule(schedule):
    m = model3()
    pruner = compress.GradualPruner(m, final_sparsity=0.9, steps=10, schedule=schedule)
    seen = []
    for _ in range(12):
        pruner.step()
        seen.append(compress.sparsity_of(m))
    assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))
    assert seen[9] == pytest.approx(0.9, abs=1e-3) and seen[-1] == pytest.approx(0.9, abs=1e-3)
    if schedule == "cubic":  # front-loaded: most of the pruning happens early
        assert pruner.sparsity_at(3) > 0.9 * 0.6
        assert pruner.sparsity_at(5) == pytest.approx(0.9 * (1 - 0.5 ** 3))


def test_distill_loss():
    t = torch.randn(8, 10)
    assert compress.distill_loss(t.clone(), t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(8, 10, requires_grad=True)
    loss = compress.distill_loss(s, t, 4.0)
    loss.backward()
    assert loss.item() > 0 and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="`teacher_logits`"):
        compress.distill_loss(s, t[:4], 2.0)


def test_recipe_prune_then_finetune_with_distillation_recovers_accuracy():
    """The documented recipe (README): prune, then fine-tune against the task loss plus distillation
    from the dense teacher; masks stay while training."""
    torch.manual_seed(0)
    x = torch.randn(2048, 32)
    y = (x[:, :4].sum(1) > 0).long() + (x[:, 4:8].sum(1) > 0).long()
    teacher = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 3))
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(x), y).backward()
        opt.step()
    acc = lambda m: (m(x).argmax(1) == y).float().mean().item()  # noqa: E731
    dense_acc = acc(teacher)
    student = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 3))
    student.load_state_dict(teacher.state_dict())
    compress.prune(student, 0.8)
    pruned_acc = acc(student)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    with torch.no_grad():
        t_logits = teacher(x)
    for _ in range(300):
        opt.zero_grad()
        logits = student(x)
        (nn.functional.cross_entropy(logits, y) + compress.distill_loss(logits, t_logits, 2.0)).backward()
        opt.step()
    assert compress.sparsity_of(student) == pytest.approx(0.8, abs=1e-3)
    recovered = acc(student)
    assert recovered > dense_acc - 0.05 and recovered - pruned_acc > 0.5 * (dense_acc - pruned_acc), (
        dense_acc, pruned_acc, recovered)


# ---------------------------------------------------------------------------------------------- RNNs

class _RNNModel(nn.Module):
    def __init__(self, fused=False):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 32)
        self.lstm = nn.LSTM(32, 32, num_layers=2, proj_size=16)
        self.cell = nn.GRUCell(16, 32)
        if fused:
            compress.fuse_rnn(self)

    def forward(self, x):
        y, _ = self.lstm(self.lin(x))
        return self.cell(y[-1])


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
@pytest.mark.parametrize("structure", ["unstructured", "block", "2:4"])
def test_rnn_weights_pruned_and_masks_survive_training(fused, structure):
    m = _RNNModel(fused)
    report = compress.prune(m, 0.5, structure=structure, block=(8, 8))
    names = {e.name for e in report.converted}
    assert names == {"lin", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_hr_l0", "lstm.weight_ih_l1",
                     "lstm.weight_hh_l1", "lstm.weight_hr_l1", "cell.weight_ih", "cell.weight_hh"}
    masks = {e.name: (getattr(m.get_submodule(e.name.rsplit(".", 1)[0]), e.name.rsplit(".", 1)[1]) == 0).clone()
             for e in report.converted if "." in e.name}
    assert all(0.45 <= mk.float().mean() <= 0.55 for mk in masks.values())
    x = torch.randn(5, 3, 16)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()
    for name, mk in masks.items():
        mod, p = name.rsplit(".", 1)
        w = getattr(m.get_submodule(mod), p)
        assert torch.all(w[mk] == 0), name                 # pruned weights stay zero
        assert torch.all(w[~mk] != 0), name                # the rest trained (and is nonzero)
    out = m(x)
    assert compress.prune.remove(m) == 9
    assert torch.allclose(m(x), out, rtol=1e-5, atol=1e-6)  # the forward used the masked weights


def test_rnn_block_pruning_keeps_blocks_within_gates():
    lstm = nn.LSTM(24, 16)  # weight_hh [64, 16]: gates of 16 rows, blocks of 8 rows never straddle them
    holder = nn.Sequential()
    holder.add_module("rnn", lstm)
    compress.prune(holder, 0.5, structure="block", block=(8, 4))
    w = lstm.weight_hh_l0.detach()
    blocks = (w.reshape(8, 8, 4, 4) != 0).any(-1).any(1)  # [row blocks, col blocks]
    assert torch.equal(blocks.repeat_interleave(8, 0).repeat_interleave(4, 1), w != 0)
    assert compress.sparsity_of(holder) == pytest.approx(0.5, abs=0.05)


def test_rnn_filter_fn_and_global_scope():
    m = _RNNModel()
    report = compress.prune(m, 0.6, scope="global", filter_fn=lambda mod, name: name != "cell")
    assert report["cell"].reason == "excluded by filter_fn" and not report["cell"].converted
    assert (m.cell.weight_hh != 0).all()
    pruned = [getattr(m.lstm, n) for n in ("weight_ih_l0", "weight_hh_l0", "weight_hr_l0")] + [m.lin.weight]
    assert 0.3 < sum(int((w == 0).sum()) for w in pruned) / sum(w.numel() for w in pruned) <= 0.65


def test_remove_on_a_deep_copy_leaves_the_original_pruned():
    import copy
    m = model3()
    compress.prune(m, 0.5)
    c = copy.deepcopy(m)
    assert compress.prune.remove(c) == 3
    x = torch.randn(4, 64)
    assert torch.equal(m(x), c(x))                      # the original still works, masks and all
    assert isinstance(m[0].parametrizations.weight[0], WeightMask)
    assert type(c[0]) is nn.Linear and (m[0].weight == 0).float().mean() == 0.5
