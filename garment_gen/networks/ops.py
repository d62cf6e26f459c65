"""Convolutions for the StyleGAN2 networks, with a faster CPU training path.

On CPU, PyTorch's (oneDNN) convolution computes the *weight* gradient of a 3x3
conv at 30-65 % of the machine's fp32 matmul speed, against 100-120 % for the
forward pass and the input gradient in channels-last layout (measured on a 2-core
x86 machine, see ``bench/bench_convs.py``). In a GAN training step a third of the
FLOPs are weight gradients. So :func:`conv2d` and :func:`conv_transpose2d` route
CPU fp32 training of wide convs (>= :data:`FAST_MIN_CHANNELS`) through :class:`_Conv`:

* stride-1, pad-1 3x3 convs on even maps of >= :data:`WINOGRAD_MIN_PIXELS` pixels
  run by Winograd F(2x2, 3x3) in all three passes (forward, input gradient as the
  flipped-kernel conv, weight gradient from the saved input tiles): 16 matmuls over
  2x2-output tiles, 2.25x fewer multiplies than the direct conv. Their no-grad
  forward (generation, the D step's fakes) takes the same route;
* the other convs keep oneDNN's forward and input gradient (channels-last), and
  their weight gradient is one matmul over an explicit patch matrix (im2col) built
  from the channels-last activations, chunked over the batch so the patch matrix
  stays under :data:`IM2COL_CHUNK_BYTES`.

Everywhere else (CUDA, other dtypes, autocast, narrow convs, tracing/ONNX export,
``torch.compile``, and double backward, i.e. ``create_graph=True`` for R1 and
path length) they are plain ``F.conv2d`` / ``F.conv_transpose2d`` or PyTorch's
differentiable backward. Results agree with PyTorch's own to float32 rounding
(Winograd: ~3e-6 relative; ``tests/unit/test_ops.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "conv2d",
    "eager_cpu",
    "conv_transpose2d",
    "to_channels_last",
    "set_cpu_fast_path",
    "IM2COL_CHUNK_BYTES",
    "WINOGRAD_MIN_PIXELS",
]

#: Upper bound on one im2col block (bytes); the batch is processed in chunks below it.
IM2COL_CHUNK_BYTES = 256 << 20
#: Narrowest conv (min of its in/out channels) sent through the custom path: below it the
#: layout conversions and im2col copies cost more than they save (a 128-channel net trains
#: 7 % slower through it), so such convs stay plain ``F.conv2d``.
FAST_MIN_CHANNELS = 256
#: Narrowest patch matrix (k * k * channels) for which the im2col weight gradient is used.
IM2COL_MIN_COLUMNS = 2304
#: Smallest feature map (height * width) on which stride-1 3x3 convs use Winograd F(2x2, 3x3);
#: below it the transforms cost more than the 2.25x fewer multiplies save.
WINOGRAD_MIN_PIXELS = 256

_CL = torch.channels_last
_ENABLED = True


def _is_compiling() -> bool:
    """``torch.compiler.is_compiling()`` (torch >= 2.3; ``torch._dynamo``'s before)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()


def _cpu_autocast() -> bool:
    """Whether CPU autocast is on (``is_autocast_enabled`` takes a device type from torch 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


def set_cpu_fast_path(enabled: bool) -> bool:
    """Turn the CPU training path on or off (benchmarks compare both); returns the old value."""
    global _ENABLED
    old, _ENABLED = _ENABLED, bool(enabled)
    return old


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout (a no-op when it already is, or is not 4-D)."""
    return x.contiguous(memory_format=_CL) if x.ndim == 4 else x


def eager_cpu(x: torch.Tensor) -> bool:
    """``x`` is on CPU and the code runs eagerly (not traced, scripted, exported or compiled):
    where a layout choice made for oneDNN's speed is safe to take."""
    return (
        x.device.type == "cpu"
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
        and not _is_compiling()
    )


def _cpu_fp32_eager(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A wide fp32 conv on CPU, run eagerly (not traced, scripted, exported, compiled or autocast)."""
    return (
        _ENABLED
        and x.dtype == torch.float32
        and min(weight.shape[0], weight.shape[1]) >= FAST_MIN_CHANNELS
        and eager_cpu(x)
        and not _cpu_autocast()
    )


def _use_custom(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and _cpu_fp32_eager(x, weight)
    )


def _use_winograd_inference(x, weight, stride, padding) -> bool:
    """No-grad forward of a wide CPU conv that Winograd computes."""
    return (
        not torch.is_grad_enabled()
        and winograd_applies(x, weight, stride, padding)
        and _cpu_fp32_eager(x, weight)
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


# --------------------------------------------------------------------------- Winograd F(2x2, 3x3)
#
# A stride-1, pad-1 3x3 conv computed on 4x4 input tiles (stride 2) that each give a 2x2
# output tile: y = A^T [ (G g G^T) . (B^T d B) ] A, summed over input channels. The channel
# sums are 16 matmuls of [tiles, C] @ [C, O], 2.25x fewer multiplies than the direct conv;
# the tile transforms are additions. Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks" (2016). fp32 results differ from the direct conv by ~3e-6 relative.

_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
#: Kernel flip (input gradient) permutes the transformed rows: G flip(g) = P G g.
_FLIP = (3, 1, 2, 0)
_FLIP16 = [4 * _FLIP[i // 4] + _FLIP[i % 4] for i in range(16)]
_GG_CACHE: dict = {}


def _gg(like: torch.Tensor) -> torch.Tensor:
    """``kron(G, G)`` ``[16, 9]``: the kernel transform, as a matrix on flattened 3x3 kernels."""
    key = (like.device, like.dtype)
    if key not in _GG_CACHE:
        g = torch.tensor(_G, dtype=torch.float64)
        _GG_CACHE[key] = torch.kron(g, g).to(device=like.device, dtype=like.dtype)
    return _GG_CACHE[key]


def winograd_applies(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> bool:
    """Whether :func:`conv2d` computes this conv with Winograd (3x3, stride 1, pad 1, even size)."""
    h, w = x.shape[-2:]
    return (
        weight.shape[-1] == 3
        and weight.shape[-2] == 3
        and stride == 1
        and padding == 1
        and h % 2 == 0
        and w % 2 == 0
        and h * w >= WINOGRAD_MIN_PIXELS
    )


def _wino_kernel(weight: torch.Tensor) -> torch.Tensor:
    """``[O, C, 3, 3]`` -> ``U [16, O, C]`` (``G g G^T`` for every channel pair)."""
    o, c = weight.shape[:2]
    w9 = weight.reshape(o * c, 9)
    return torch.mm(_gg(weight), w9.t()).view(16, o, c)


def _wino_kernel_grad(du: torch.Tensor) -> torch.Tensor:
    """``dU [16, O, C]`` -> kernel gradient ``[O, C, 3, 3]`` (the transpose of :func:`_wino_kernel`)."""
    _, o, c = du.shape
    return torch.mm(du.view(16, o * c).t(), _gg(du)).view(o, c, 3, 3)


def _wino_tiles(x: torch.Tensor) -> torch.Tensor:
    """NHWC ``[B, H, W, C]`` -> ``V [16, B * H/2 * W/2, C]``: ``B^T d B`` of every 4x4 tile
    of the zero-padded input (B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1]])."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    d = [xp[:, r : r + h : 2] for r in range(4)]  # tile row r of every tile row: [n, h2, w+2, c]
    t = torch.empty(4, n, h2, w + 2, c, dtype=x.dtype, device=x.device)
    torch.sub(d[0], d[2], out=t[0])
    torch.add(d[1], d[2], out=t[1])
    torch.sub(d[2], d[1], out=t[2])
    torch.sub(d[1], d[3], out=t[3])
    v = torch.empty(4, 4, n, h2, w2, c, dtype=x.dtype, device=x.device)
    for r in range(4):
        e = [t[r][:, :, k : k + w : 2] for k in range(4)]
        torch.sub(e[0], e[2], out=v[r, 0])
        torch.add(e[1], e[2], out=v[r, 1])
        torch.sub(e[2], e[1], out=v[r, 2])
        torch.sub(e[1], e[3], out=v[r, 3])
    return v.view(16, n * h2 * w2, c)


def _wino_untile(m: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """``M [16, tiles, O]`` -> channels-last ``[n, O, h, w]``: ``A^T m A`` of every tile
    (A^T = [[1, 1, 1, 0], [0, 1, -1, -1]])."""
    o = m.shape[-1]
    h2, w2 = h // 2, w // 2
    m = m.view(4, 4, n, h2, w2, o)
    s = torch.empty(2, 4, n, h2, w2, o, dtype=m.dtype, device=m.device)
    for r in range(4):
        torch.add(m[r, 0], m[r, 1], out=s[0, r]).add_(m[r, 2])
        torch.sub(m[r, 1], m[r, 2], out=s[1, r]).sub_(m[r, 3])
    out = torch.empty((n, o, h, w), dtype=m.dtype, device=m.device, memory_format=_CL)
    y = out.permute(0, 2, 3, 1).view(n, h2, 2, w2, 2, o)
    for k in range(2):
        torch.add(s[k, 0], s[k, 1], out=y[:, :, 0, :, k]).add_(s[k, 2])
        torch.sub(s[k, 1], s[k, 2], out=y[:, :, 1, :, k]).sub_(s[k, 3])
    return out


def _wino_grad_tiles(g: torch.Tensor) -> torch.Tensor:
    """NHWC output gradient ``[n, h, w, O]`` -> ``Z [16, tiles, O]`` = ``A dy A^T`` per 2x2 tile
    (the transpose of :func:`_wino_untile`)."""
    n, h, w, o = g.shape
    h2, w2 = h // 2, w // 2
    gv = g.reshape(n, h2, 2, w2, 2, o)
    y0, y1 = gv[:, :, 0], gv[:, :, 1]  # [n, h2, w2, 2, o]
    t = torch.empty(4, n, h2, w2, 2, o, dtype=g.dtype, device=g.device)
    t[0].copy_(y0)
    torch.add(y0, y1, out=t[1])
    torch.sub(y0, y1, out=t[2])
    torch.neg(y1, out=t[3])
    z = torch.empty(4, 4, n, h2, w2, o, dtype=g.dtype, device=g.device)
    for r in range(4):
        a, b = t[r][..., 0, :], t[r][..., 1, :]
        z[r, 0].copy_(a)
        torch.add(a, b, out=z[r, 1])
        torch.sub(a, b, out=z[r, 2])
        torch.neg(b, out=z[r, 3])
    return z.view(16, n * h2 * w2, o)


def _wino_conv(v: torch.Tensor, u: torch.Tensor, n: int, h: int, w: int, flip: bool = False):
    """Channel sums ``M[i] = V[i] @ U[i]^T`` (or, for the input gradient, ``V[i] @ U[flip(i)]``:
    the flipped, transposed kernel), then the output transform -> channels-last NCHW."""
    cols = u.shape[2] if flip else u.shape[1]
    m = torch.empty(16, v.shape[1], cols, dtype=v.dtype, device=v.device)
    for i in range(16):
        torch.mm(v[i], u[_FLIP16[i]] if flip else u[i].t(), out=m[i])
    return _wino_untile(m, n, h, w)


def _wino_weight_grad(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``dU[i] = Z[i]^T @ V[i]`` -> kernel gradient ``[O, C, 3, 3]``."""
    du = torch.empty(16, z.shape[2], v.shape[2], dtype=v.dtype, device=v.device)
    for i in range(16):
        torch.mm(z[i].t(), v[i], out=du[i])
    return _wino_kernel_grad(du)


def _winograd_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """3x3 stride-1 pad-1 conv by Winograd; ``x`` any layout -> (channels-last output, tiles V,
    transformed kernel U)."""
    xn = to_channels_last(x).permute(0, 2, 3, 1)
    v, u = _wino_tiles(xn), _wino_kernel(weight)
    y = _wino_conv(v, u, *xn.shape[:3])
    if bias is not None:
        y.add_(bias.view(1, -1, 1, 1))
    return y, v, u


class _Conv(torch.autograd.Function):
    """conv2d / conv_transpose2d (square kernel, symmetric padding, groups=1) on CPU:
    oneDNN forward and input gradient, im2col-matmul weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int, transposed: bool):
        x = to_channels_last(x)
        v = u = None
        ctx.wino = not transposed and winograd_applies(x, weight, stride, padding)
        if ctx.wino:
            y, v, u = _winograd_forward(x, weight, bias)
            # the backward needs V for the weight gradient and U for the input gradient only
            v = v if ctx.needs_input_grad[1] else None
            u = u if ctx.needs_input_grad[0] else None
        elif transposed:
            y = F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding)
        else:
            y = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        ctx.save_for_backward(x, weight, v, u)
        ctx.conf = (stride, padding, transposed, bias is not None)
        return to_channels_last(y)

    @staticmethod
    def backward(ctx, grad):
        x, weight, v, u = ctx.saved_tensors
        stride, padding, transposed, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad = to_channels_last(grad)
        gx = gw = gb = None
        if ctx.wino and not torch.is_grad_enabled():
            # Winograd both ways (a double backward, create_graph=True, takes the
            # differentiable path below instead)
            gn = grad.permute(0, 2, 3, 1)
            if need_x:
                gx = _wino_conv(_wino_tiles(gn), u, *gn.shape[:3], flip=True)
            if need_w:
                gw = _wino_weight_grad(_wino_grad_tiles(gn), v)
            if need_b and has_bias:
                gb = grad.sum(dim=(0, 2, 3))
            return gx, gw, gb, None, None, None
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
    if _use_winograd_inference(x, weight, stride, padding):
        return _winograd_forward(x, weight, bias)[0]
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
