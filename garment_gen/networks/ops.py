"""Convolutions for the StyleGAN2 networks, with a faster weight gradient on CPU.

On CPU, PyTorch's (oneDNN) convolution computes the *weight* gradient of a 3x3
conv at 30-65 % of the machine's fp32 matmul speed, against 100-130 % for the
forward pass and the input gradient in channels-last layout (measured on a 2-core
x86 machine, see ``bench/bench_stylegan2.py``). In a GAN training step a third of
the FLOPs are weight gradients, so :func:`conv2d` and :func:`conv_transpose2d`
route CPU training through :class:`_Conv`: the forward pass and the input
gradient stay with oneDNN (channels-last), the weight gradient is one matmul over
an explicit patch matrix (im2col) built from the channels-last activations,
chunked over the batch so the patch matrix stays under :data:`IM2COL_CHUNK_BYTES`.

Everywhere else (CUDA, no grad, tracing/ONNX export) they are plain
``F.conv2d`` / ``F.conv_transpose2d``. Results agree with PyTorch's own
gradients to float32 rounding (``tests/unit/test_stylegan2.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "conv2d",
    "conv_transpose2d",
    "to_channels_last",
    "set_cpu_fast_path",
    "IM2COL_CHUNK_BYTES",
]

#: Upper bound on one im2col block (bytes); the batch is processed in chunks below it.
IM2COL_CHUNK_BYTES = 256 << 20
#: Narrowest conv (min of its in/out channels) sent through the custom path: below it the
#: layout conversions and im2col copies cost more than they save (a 128-channel net trains
#: 7 % slower through it), so such convs stay plain ``F.conv2d``.
FAST_MIN_CHANNELS = 256
#: Narrowest patch matrix (k * k * channels) for which the im2col weight gradient is used.
IM2COL_MIN_COLUMNS = 2304

_CL = torch.channels_last
_ENABLED = True


def set_cpu_fast_path(enabled: bool) -> bool:
    """Turn the CPU training path on or off (benchmarks compare both); returns the old value."""
    global _ENABLED
    old, _ENABLED = _ENABLED, bool(enabled)
    return old


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout (a no-op when it already is, or is not 4-D)."""
    return x.contiguous(memory_format=_CL) if x.ndim == 4 else x


def _use_custom(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _ENABLED
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and min(weight.shape[0], weight.shape[1]) >= FAST_MIN_CHANNELS
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
    )


def _patches(t: torch.Tensor, k: int, stride: int, out_h: int, out_w: int) -> torch.Tensor:
    """``t [n, H, W, C]`` (NHWC) -> ``[n * out_h * out_w, k * k * C]`` rows of ``k x k`` windows
    at ``stride``, ordered (ky, kx, c): ``row[(i, j)] = t[:, s*i + ky, s*j + kx, :]``."""
    n, _, _, c = t.shape
    if k == 1 and stride == 1:
        return t.reshape(n * out_h * out_w, c)
    cols = torch.empty(n, out_h, out_w, k, k, c, dtype=t.dtype, device=t.device)
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    for ky in range(k):
        for kx in range(k):
            cols[:, :, :, ky, kx, :].copy_(
                t[:, ky : ky + span_h : stride, kx : kx + span_w : stride]
            )
    return cols.view(n * out_h * out_w, k * k * c)


def _weight_grad(a: torch.Tensor, b: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """``patches(b)^T @ a2d`` summed over the batch in chunks -> ``[k * k * C, M]``.

    Conv: ``a`` = grad_out ``[B, Ho, Wo, O]``, ``b`` = padded input ``[B, Hp, Wp, C]``.
    Transposed conv: ``a`` = input ``[B, H, W, C]``, ``b`` = grad_out ``[B, Hy, Wy, O]``.
    Both NHWC. The tall patch matrix goes first: ``[9C, K] @ [K, M]`` runs 5-20 %
    faster than ``[M, K] @ [K, 9C]`` on CPU BLAS at these shapes.
    """
    n, out_h, out_w, m = a.shape
    c = b.shape[-1]
    per_sample = out_h * out_w * k * k * c * b.element_size()
    step = max(1, IM2COL_CHUNK_BYTES // max(1, per_sample))
    out = None
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        lhs = _patches(b[s0:s1], k, stride, out_h, out_w).t()
        rhs = a[s0:s1].reshape(-1, m)
        out = torch.mm(lhs, rhs) if out is None else out.addmm_(lhs, rhs)
    return out


class _Conv(torch.autograd.Function):
    """conv2d / conv_transpose2d (square kernel, symmetric padding, groups=1) on CPU:
    oneDNN forward and input gradient, im2col-matmul weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int, transposed: bool):
        x = to_channels_last(x)
        if transposed:
            y = F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding)
        else:
            y = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, transposed, bias is not None)
        return to_channels_last(y)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, transposed, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad = to_channels_last(grad)
        gx = gw = gb = None
        k = weight.shape[-1]
        # im2col pays off when the patch matrix is wide (>= 256 channels of 3x3 patches) or
        # free (1x1); below that oneDNN's channels-last weight gradient is as fast or faster.
        im2col = need_w and (k == 1 or weight.shape[1] * k * k >= IM2COL_MIN_COLUMNS)
        mask = [bool(need_x), bool(need_w) and not im2col, False]
        if any(mask):
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                [stride, stride],
                [padding, padding],
                [1, 1],
                transposed,
                [0, 0],
                1,
                mask,
            )
        if im2col:
            g_nhwc = grad.permute(0, 2, 3, 1)
            x_nhwc = x.permute(0, 2, 3, 1)
            if transposed:
                if padding:
                    g_nhwc = F.pad(g_nhwc, (0, 0, padding, padding, padding, padding))
                # weight [C_in, C_out, k, k]: dW[c, o, ky, kx] = sum x[c, i, j] g[o, s*i+ky, s*j+kx]
                gw = _weight_grad(x_nhwc, g_nhwc, k, stride)  # [k*k*C_out, C_in]
                gw = gw.view(k, k, weight.shape[1], weight.shape[0]).permute(3, 2, 0, 1)
            else:
                if padding:
                    x_nhwc = F.pad(x_nhwc, (0, 0, padding, padding, padding, padding))
                gw = _weight_grad(g_nhwc, x_nhwc, k, stride)  # [k*k*C_in, C_out]
                gw = gw.view(k, k, weight.shape[1], weight.shape[0]).permute(3, 2, 0, 1)
        if gw is not None:
            gw = gw.contiguous()
        if need_b and has_bias:
            gb = grad.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """``F.conv2d`` (groups=1, square kernel); on CPU training, channels-last with the im2col weight gradient."""
    if _use_custom(x, weight):
        return _Conv.apply(x, weight, bias, stride, padding, False)
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


def conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """``F.conv_transpose2d`` (groups=1, square kernel, no output padding); see :func:`conv2d`."""
    if _use_custom(x, weight):
        return _Conv.apply(x, weight, bias, stride, padding, True)
    return F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding)
