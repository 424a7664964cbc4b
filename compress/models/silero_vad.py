"""Silero VAD (16 kHz) in plain PyTorch, with the weights the PyPI package `silero-vad` ships.

The network, read from the package's safetensors names and its TorchScript model (`silero_vad.jit`,
`_model.code`): one forward call sees C + N = 64 + 512 samples (the last 64 samples of the previous
chunk, then the new chunk) and returns one speech probability, carrying an LSTM state.

    x [B, 576] --reflect-pad right 64--> [B, 640] --stft_conv (fixed DFT basis, 256 taps, hop 128)-->
    [B, 258, 4] --magnitude of (real 129, imag 129)--> [B, 129, 4]
    --conv1 (k3 s1) relu--> [B, 128, 4] --conv2 (k3 s2) relu--> [B, 64, 2]
    --conv3 (k3 s2) relu--> [B, 64, 1] --conv4 (k3 s1) relu--> [B, 128, 1]
    --lstm_cell (h, c each [B, 128])--> h --relu, final_conv (1x1), sigmoid--> p [B]

The module and parameter names are those of the safetensors file, so its state_dict loads as is.
`lstm_cell` is a real nn.LSTMCell and the convs real nn.Conv1d: compress.fuse_rnn and
compress.quantize can swap them.
"""
from __future__ import annotations

import importlib.util
import wave
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RECORDING = Path(__file__).resolve().parent.parent / "data" / "speech_16k.wav"
PACKAGE = "silero-vad"  # the PyPI name; the import name is silero_vad
WEIGHTS = "silero_vad_16k.safetensors"


def package_file(name: str = WEIGHTS) -> Path:
    """Path of a file in the installed silero-vad package's data folder (silero_vad/data/<name>).

    Found without importing silero_vad: its __init__ calls torch.set_num_threads(1) for the whole
    process. Raises ModuleNotFoundError naming the package when it is not installed."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"Silero VAD weights: the PyPI package `{PACKAGE}` is not installed; "
                                  f"`pip install --no-deps {PACKAGE}` (its model needs only torch)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD weights: the installed `{PACKAGE}` package has no data/{name} "
                                f"(looked for {path}); this port was checked against {PACKAGE} 6.2.3")
    return path


class SileroVAD(nn.Module):
    """Silero VAD for 16 kHz audio. forward(x [B, context + chunk], state) -> (p [B], state);
    stream(audio [T]) -> p [ceil(T / chunk)] for a whole recording at batch 1."""

    sample_rate = 16000
    chunk = 512    # new samples per call (32 ms)
    context = 64   # samples of the previous chunk each call also sees
    n_fft, hop, stft_pad = 256, 128, 64  # the STFT: window, hop, reflect padding on the right

    def __init__(self):
        super().__init__()
        bins = self.n_fft // 2 + 1
        self.stft_conv = nn.Conv1d(1, 2 * bins, self.n_fft, stride=self.hop, bias=False)
        self.conv1 = nn.Conv1d(bins, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, x: Tensor, state: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """x: [B, context + chunk] = [B, 576] float audio in [-1, 1]. state: (h, c), each [B, 128], or
        None for zeros. Returns p [B] in (0, 1) and the new state."""
        if x.dim() != 2 or x.shape[-1] != self.context + self.chunk:
            raise ValueError(f"SileroVAD: expected `x` of shape [batch, {self.context + self.chunk}] (context "
                             f"{self.context} + chunk {self.chunk} samples), got {tuple(x.shape)}")
        spec = self.stft_conv(F.pad(x, (0, self.stft_pad), mode="reflect").unsqueeze(1))
        real, imag = spec.chunk(2, dim=1)
        y = torch.sqrt(real * real + imag * imag)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            y = F.relu(conv(y))
        h, c = self.lstm_cell(y.squeeze(-1), state)
        p = torch.sigmoid(self.final_conv(F.relu(h).unsqueeze(-1)))
        return p.reshape(-1), (h, c)

    @torch.no_grad()
    def stream(self, audio: Tensor) -> Tensor:
        """Speech probability of each 512-sample piece of `audio` ([T] float in [-1, 1], 16 kHz),
        one forward call per chunk at batch 1, the LSTM state carried from call to call, as the
        package's VADIterator / get_speech_timestamps do: the first chunk sees 64 zeros before it,
        each later one the last 64 samples of the previous chunk, and the last chunk is
        zero-padded to full length. Returns [ceil(T / 512)] float32."""
        if audio.dim() != 1:
            raise ValueError(f"SileroVAD.stream: expected `audio` to be 1-D [samples], got {tuple(audio.shape)}")
        chunk, context = self.chunk, self.context
        audio = audio.to(device=self.conv1.weight.device, dtype=torch.float32)
        n = -(-audio.numel() // chunk)
        audio = F.pad(audio, (context, n * chunk - audio.numel()))
        state, probs = None, []
        for i in range(n):
            p, state = self(audio[i * chunk: (i + 1) * chunk + context].unsqueeze(0), state)
            probs.append(p)
        return torch.cat(probs) if probs else audio.new_zeros(0)


# The same tensors in the package's TorchScript model (silero_vad.jit, submodule `_model`).
_JIT_NAMES = {"stft_conv.weight": "stft.forward_basis_buffer",
              **{f"conv{i + 1}.{p}": f"encoder.{i}.reparam_conv.{p}" for i in range(4) for p in ("weight", "bias")},
              **{f"lstm_cell.{p}": f"decoder.rnn.{p}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
              "final_conv.weight": "decoder.decoder.2.weight", "final_conv.bias": "decoder.decoder.2.bias"}


def load_silero_vad(path: Optional[str | Path] = None) -> SileroVAD:
    """SileroVAD in eval mode with 16 kHz weights from `path`: by default the package's
    silero_vad_16k.safetensors (found offline; ModuleNotFoundError naming the package when it is
    absent); a `.jit` path takes the weights of the package's TorchScript model instead.

    In silero-vad 6.2.3 the two files hold different weight sets (the safetensors file came with
    the package's tinygrad port; the .jit and .onnx files are the v6.2 model): on
    compress/data/speech_16k.wav they agree on 99.6 % of speech / non-speech decisions."""
    path = package_file() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_silero_vad: expected `path` to be a .safetensors or .jit file, "
                                f"got {str(path)!r}")
    if path.suffix == ".jit":
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice: this reads weights only
            warnings.simplefilter("ignore", FutureWarning)
            jit = torch.jit.load(str(path), map_location="cpu")
        weights = jit._model.state_dict()
        state = {name: weights[jit_name] for name, jit_name in _JIT_NAMES.items()}
    else:
        from safetensors.torch import load_file
        state = load_file(str(path))
    model = SileroVAD()
    model.load_state_dict(state)
    return model.eval()


def load_recording(path: Optional[str | Path] = None) -> Tensor:
    """The shipped test recording (compress/data/speech_16k.wav: 8 s of synthetic speech with pauses,
    made by compress/data/make_speech.py; Silero calls 53 % of its chunks speech), or another
    16 kHz mono 16-bit WAV, as float32 [samples] in [-1, 1)."""
    import numpy as np
    path = Path(path) if path is not None else RECORDING
    with wave.open(str(path)) as w:
        fmt = (w.getframerate(), w.getnchannels(), w.getsampwidth())
        if fmt != (16000, 1, 2):
            raise ValueError(f"load_recording: expected a 16 kHz mono 16-bit WAV, got (rate, channels, bytes) = {fmt}")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return torch.from_numpy(pcm.astype(np.float32) / 32768)
