"""Silero VAD (compress.models.silero_vad) on a shipped recording: the port matches the package's
TorchScript model, fuse_rnn keeps the probabilities, int8 quantize keeps the decisions.

Needs the PyPI package silero-vad (the test command installs it with --no-deps). It is looked up
with find_spec, not imported: `import silero_vad` calls torch.set_num_threads(1) for the process.
"""
import copy
import importlib.util

import pytest
import torch
from torch import nn

import compress
from compress.models.silero_vad import RECORDING, SileroVAD, load_recording, load_silero_vad, package_file

needs_silero = pytest.mark.skipif(importlib.util.find_spec("silero_vad") is None,
                                  reason="needs the PyPI package silero-vad (the test command installs it)")


@pytest.fixture(scope="module")
def audio():
    return load_recording()


@pytest.fixture(scope="module")
def model():
    return load_silero_vad()


@pytest.fixture(scope="module")
def probs(model, audio):
    return model.stream(audio)


def stream_jit(jit, audio: torch.Tensor) -> torch.Tensor:
    """The package's own streaming: its forward keeps the 64-sample context and the state."""
    jit.reset_states()
    n = -(-audio.numel() // 512)
    audio = torch.nn.functional.pad(audio, (0, n * 512 - audio.numel()))
    with torch.no_grad():
        return torch.cat([jit(audio[i * 512:(i + 1) * 512].unsqueeze(0), 16000).reshape(-1) for i in range(n)])


def decisions_kept(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got > 0.5) == (ref > 0.5)).float().mean().item()


@needs_silero
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_port_matches_package_jit(audio, probs):
    path = package_file("silero_vad.jit")
    try:
        jit = torch.jit.load(str(path)).eval()
    except Exception as e:  # a TorchScript file a later torch cannot read
        pytest.skip(f"{path} does not load under torch {torch.__version__}: {e}")
    ref = stream_jit(jit, audio)
    got = load_silero_vad(path).stream(audio)
    assert got.shape == ref.shape == (-(-audio.numel() // 512),)
    # Same weights, same ops: measured 0.0 (torch 2.14 CPU); 1e-4 leaves room for other kernels.
    diff = (got - ref).abs().max().item()
    assert diff <= 1e-4, f"port vs silero_vad.jit: max |dp| {diff:.2e}"
    # The safetensors weights are another set (see load_silero_vad); they must still decide alike.
    assert decisions_kept(probs, ref) >= 0.98


@needs_silero
def test_recording_has_speech_and_pauses(probs):
    speech = (probs > 0.5).float().mean().item()
    unsure = ((probs > 0.3) & (probs < 0.7)).float().mean().item()
    assert 0.25 <= speech <= 0.75, f"speech fraction {speech:.2f}: the recording no longer mixes both classes"
    assert unsure <= 0.05, f"{unsure:.1%} of chunks have 0.3 < p < 0.7"


@needs_silero
def test_fuse_rnn_keeps_probabilities(model, audio, probs):
    fused = copy.deepcopy(model)
    report = compress.fuse_rnn(fused)
    assert [e.name for e in report.converted] == ["lstm_cell"], report
    assert isinstance(fused.lstm_cell, compress.nn.FusedLSTMCell)
    got = fused.stream(audio)
    diff = (got - probs).abs().max().item()
    assert diff <= 1e-4, f"fuse_rnn: max |dp| {diff:.2e} over {len(probs)} chunks"


@needs_silero
def test_int8_quantize_keeps_decisions(model, audio, probs):
    quantized = copy.deepcopy(model)
    report = compress.quantize(quantized)
    # Silero has no nn.Linear: the int8 work is the LSTM cell.
    assert "lstm_cell" in [e.name for e in report.converted], f"quantize left the LSTM cell alone:\n{report}"
    assert type(quantized.lstm_cell) is not nn.LSTMCell
    kept = decisions_kept(quantized.stream(audio), probs)
    assert kept >= 0.98, f"int8: {kept:.1%} of {len(probs)} speech / non-speech decisions kept"


def test_batch_rows_are_independent():
    torch.manual_seed(0)
    m = SileroVAD().eval()
    x = 0.1 * torch.randn(3, 576)
    state = (torch.randn(3, 128), torch.randn(3, 128))
    with torch.no_grad():
        p, (h, c) = m(x, state)
        for i in range(3):
            pi, (hi, ci) = m(x[i:i + 1], (state[0][i:i + 1], state[1][i:i + 1]))
            torch.testing.assert_close(torch.cat([pi, hi[0], ci[0]]), torch.cat([p[i:i + 1], h[i], c[i]]))


def test_bad_inputs_raise():
    m = SileroVAD()
    with pytest.raises(ValueError, match=r"shape \[batch, 576\]"):
        m(torch.zeros(1, 512))
    with pytest.raises(ValueError, match="1-D"):
        m.stream(torch.zeros(2, 512))
    with pytest.raises(FileNotFoundError, match="`path`"):
        load_silero_vad("no/such/file.safetensors")


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="silero-vad"):
        load_silero_vad()
