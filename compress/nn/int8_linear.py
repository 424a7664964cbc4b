"""Int8Linear: nn.Linear with an int8 weight (per-output-channel scales), and QATLinear, its
trainable fake-quantized stand-in for quantization-aware fine-tuning.

Modes:
  "w8a8"   activations quantized per row at run time (or with a static calibrated scale), int8 GEMM
           with the dequant and bias fused (ops.w8a8_linear; with a static scale ops.int8_linear)
  "w8a16"  weight-only: activations stay float (ops.w8a16_linear); for small batches
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from compress import ops

MODES = ("w8a8", "w8a16")


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"Int8Linear: expected `mode` in {MODES}, got {mode!r}")


class Int8Linear(nn.Module):
    """Same call as nn.Linear(in_features, out_features): input [..., in_features] (any leading
    dims, empty batches too) -> [..., out_features] in the input's float dtype.

    Buffers: weight int8 [out, in]; weight_scale float32 [out]; bias float [out] (if bias);
    smooth float32 [in] (SmoothQuant divisor, all ones unless calibrated); input_scale float32 []
    (static activation scale; 0 means dynamic per-row quantization).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "w8a8",
                 device=None, dtype=None):
        super().__init__()
        _check_mode(mode)
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype or torch.float32, device=device)
                             if bias else None)
        self.register_buffer("smooth", torch.ones(in_features, dtype=torch.float32, device=device))
        self.register_buffer("input_scale", torch.zeros((), dtype=torch.float32, device=device))
        self._has_smooth = self._has_static = False

    @classmethod
    def from_float(cls, linear: nn.Linear, mode: str = "w8a8", smooth: Tensor | None = None,
                   input_scale: float | None = None) -> "Int8Linear":
        """Quantize `linear`'s weight per output channel (symmetric, absmax / 127).

        smooth: optional SmoothQuant factors s [in]: the weight is scaled by s per input channel
        and inputs are divided by s at run time. input_scale: optional static activation scale
        (w8a8 only) instead of per-row dynamic quantization."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_float: expected an nn.Linear, got {type(linear).__name__}")
        _check_mode(mode)
        w = linear.weight.detach()
        if w.device.type == "meta":
            raise ValueError("Int8Linear.from_float: the weight is on the meta device (not materialised)")
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, mode, device=w.device)
        wf = w.float()
        if smooth is not None:
            m.smooth.copy_(smooth.float())
            wf = wf * smooth.float().to(w.device)[None, :]
        q, s = ops.quantize_per_token(wf)
        m.weight.copy_(q)
        m.weight_scale.copy_(s)
        if linear.bias is not None:
            m.bias = linear.bias.detach().clone()
        if input_scale is not None:
            if mode != "w8a8":
                raise ValueError("Int8Linear.from_float: `input_scale` applies to mode='w8a8' only")
            m.input_scale.fill_(float(input_scale))
        m._refresh_flags()
        return m

    def _apply(self, fn, recurse=True):
        # .half() / .to(bfloat16) would cast the float32 scales too; the kernels need them float32.
        super()._apply(fn, recurse)
        for name in ("weight_scale", "smooth", "input_scale"):
            setattr(self, name, getattr(self, name).float())
        return self

    def dequantized_weight(self) -> Tensor:
        """The float weight this module computes with: weight * weight_scale / smooth."""
        return self.weight.float() * self.weight_scale[:, None] / self.smooth[None, :]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear: expected input with last dimension in_features = {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"Int8Linear: expected a floating-point input, got {x.dtype}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.mode == "w8a16":
            if x2.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                x2 = x2.float()
            out = ops.w8a16_linear(x2, self.weight, self.weight_scale, self.bias)
            return out.reshape(*lead, self.out_features).to(x.dtype)
        xs = x2 / self.smooth.to(x2.dtype) if self._has_smooth else x2
        if xs.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            xs = xs.float()
        if self._has_static:
            s = self.input_scale
            q = torch.clamp(torch.round(xs.float() / s), -127, 127).to(torch.int8)
            scale = s.expand(q.shape[0]).contiguous()
            out = ops.int8_linear(q, scale, self.weight, self.weight_scale, self.bias, xs.dtype)
        else:  # dynamic per-row: quantization, GEMM and dequant in one op (fused where it pays)
            out = ops.w8a8_linear(xs, self.weight, self.weight_scale, self.bias)
        return out.reshape(*lead, self.out_features).to(x.dtype)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh_flags()

    def _refresh_flags(self):
        # Decided once per (re)load, not per call: a data-dependent branch in forward would break
        # torch.compile(fullgraph=True).
        self._has_smooth = not bool(torch.all(self.smooth == 1))
        self._has_static = bool(self.input_scale > 0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mode={self.mode}" + (", smoothquant" if self._has_smooth else "") +
                (", static activation scale" if self._has_static else ""))


def _fake_quant_rows(w: Tensor) -> Tensor:
    """Symmetric per-row int8 round trip with a straight-through gradient."""
    scale = w.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127
    q = torch.clamp(torch.round(w / scale), -127, 127) * scale
    return w + (q - w).detach()


class QATLinear(nn.Linear):
    """nn.Linear that simulates Int8Linear's numerics while training (fake-quantized weight per
    output channel and, for w8a8, activations per row; straight-through gradients). A later
    compress.quantize(model) turns it into a real Int8Linear with the learned weights."""

    def __init__(self, in_features, out_features, bias=True, mode="w8a8", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        _check_mode(mode)
        self.mode = mode

    @classmethod
    def from_float(cls, linear: nn.Linear, mode: str = "w8a8") -> "QATLinear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, mode,
                device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(linear.weight)
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        return m

    def forward(self, x: Tensor) -> Tensor:
        w = _fake_quant_rows(self.weight)
        if self.mode == "w8a8":
            x = _fake_quant_rows(x)
        return nn.functional.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode} (fake-quantized)"
