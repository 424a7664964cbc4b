"""Plain-PyTorch ports of real models, loaded offline from the packages that ship their weights;
the tests and the demo convert them with compress.quantize / fuse_rnn and compare."""
from compress.models.silero_vad import SileroVAD, load_recording, load_silero_vad

__all__ = ["SileroVAD", "load_recording", "load_silero_vad"]
