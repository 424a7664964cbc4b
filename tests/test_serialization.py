"""compress.save / compress.load: safetensors round trips of converted models, clear failures."""
import pytest
import torch
from torch import nn

import compress
from compress.nn import Int8Linear, SparseLinear


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))


def converted():
    m = make()
    compress.prune(m, 0.75, filter_fn=lambda mod, n: n == "2")
    compress.sparsify(m, format="csr")
    compress.quantize(m, filter_fn=lambda mod, n: n == "0")
    return m


def test_round_trip_into_an_unconverted_skeleton(tmp_path):
    m = converted()
    x = torch.randn(5, 32)
    path = tmp_path / "m.safetensors"
    compress.save(m, path)
    assert path.read_bytes()[:8] != b"\x80\x02\x8a\nl\xfc\x9c"  # not a pickle
    skeleton = make()
    out = compress.load(skeleton, path)
    assert out is skeleton and isinstance(skeleton[0], Int8Linear) and isinstance(skeleton[2], SparseLinear)
    assert type(skeleton[4]) is nn.Linear
    assert torch.equal(skeleton(x), m(x))


def test_round_trip_into_a_converted_model(tmp_path):
    m = converted()
    compress.save(m, tmp_path / "m.safetensors")
    other = converted()
    with torch.no_grad():
        other[4].weight.zero_()
    compress.load(other, tmp_path / "m.safetensors")
    x = torch.randn(3, 32)
    assert torch.equal(other(x), m(x))


@pytest.mark.cuda
def test_cpu_saved_gpu_loaded(tmp_path):
    m = converted()
    compress.save(m, tmp_path / "m.safetensors")
    g = compress.load(make(), tmp_path / "m.safetensors", device="cuda")
    x = torch.randn(3, 32)
    torch.testing.assert_close(g(x.cuda()).cpu(), m(x), rtol=1e-4, atol=1e-4)


def test_mismatched_file_leaves_model_unchanged(tmp_path):
    m = converted()
    compress.save(m, tmp_path / "m.safetensors")
    wrong = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(ValueError, match="out_features=16 in the model but 32 in the file"):
        compress.load(wrong, tmp_path / "m.safetensors")
    assert type(wrong[0]) is nn.Linear and all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())
    short = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
    with pytest.raises(ValueError, match="does not match the model"):
        compress.load(short, tmp_path / "m.safetensors")
    assert type(short[0]) is nn.Linear


def test_corrupted_file(tmp_path):
    m = converted()
    path = tmp_path / "m.safetensors"
    compress.save(m, path)
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    skeleton = make()
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        compress.load(skeleton, path)
    assert type(skeleton[0]) is nn.Linear
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not written by compress.save"):
        compress.load(skeleton, tmp_path / "plain.safetensors")


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lstm = nn.LSTM(16, 32, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(64, 32)
        self.cell = nn.LSTMCell(32, 32)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.cell(y[-1])[0]


def test_int8_and_sparse_rnns_round_trip_into_an_unconverted_skeleton(tmp_path):
    from compress.nn import Int8LSTM, Int8LSTMCell, SparseGRU
    m = _Recurrent()
    compress.prune(m, 0.8, structure="block", block=(16, 16), filter_fn=lambda mod, n: n == "gru")
    compress.prune.remove(m)
    compress.sparsify(m, format="bsr", block=(16, 16), filter_fn=lambda mod, n: n == "gru")
    compress.quantize(m, filter_fn=lambda mod, n: n != "gru")
    assert isinstance(m.lstm, Int8LSTM) and isinstance(m.gru, SparseGRU) and isinstance(m.cell, Int8LSTMCell)
    path = tmp_path / "rnn.safetensors"
    compress.save(m, path)
    skeleton = _Recurrent()
    compress.load(skeleton, path)
    assert [type(c) for c in (skeleton.lstm, skeleton.gru, skeleton.cell)] == [Int8LSTM, SparseGRU, Int8LSTMCell]
    x = torch.randn(5, 3, 16)
    with torch.no_grad():
        assert torch.equal(skeleton(x), m(x))
    # a skeleton whose RNN has another size is refused before anything changes
    bad = _Recurrent()
    bad.lstm = nn.LSTM(16, 48, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="'lstm' has hidden_size=48 in the model but 32 in the file"):
        compress.load(bad, path)
    assert type(bad.lstm) is nn.LSTM and type(bad.gru) is nn.GRU
