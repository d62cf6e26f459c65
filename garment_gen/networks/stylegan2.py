"""StyleGAN2 generator and discriminator in plain PyTorch.

Written for this project from the StyleGAN2 papers' description (Karras et al.
2020, "Analyzing and Improving the Image Quality of StyleGAN"): skip generator,
residual discriminator, modulated/demodulated convolutions, equalised learning
rate, [1, 3, 3, 1] low-pass resampling, minibatch standard deviation.

Every op is a stock PyTorch op (conv, transposed conv, matmul, elementwise), so
the networks run anywhere PyTorch runs, need nothing compiled at import and
trace cleanly under ``torch.compile``.

Images are float NCHW, roughly in ``[-1, 1]`` (the generator has no tanh);
``ws`` are ``[B, num_ws, w_dim]``.

Speed notes (measured on a 2-core CPU, see ``bench/bench_stylegan2.py``):

* CPU training runs the wide convs through :mod:`garment_gen.networks.ops`:
  channels-last activations (oneDNN's forward and input gradient are 10-40 %
  faster than in NCHW); stride-1 3x3 convs on maps of 16x16 and up by Winograd
  F(2x2, 3x3) in all three passes (2.25x fewer multiplies: 1.2-2.0x the matmul's
  effective rate); the strided convs' weight gradient as one im2col matmul
  (oneDNN's runs at 30-65 % of the matmul speed). The blur and toRGB below keep
  the channels-last layout, so no layout copies happen between layers.

* The [1, 3, 3, 1] blur is separable, so it runs as two small matmuls against
  banded matrices built once per layer (padding folded in). That is 2-3x faster
  than a depthwise 4x4 conv on CPU, forward and backward, and is fine on GPU.
* Upsampling convs are a stride-2 transposed conv followed by the blur (a
  quarter of the FLOPs of "upsample then 3x3 conv"); downsampling convs are the
  blur followed by a stride-2 conv.
* Modulation is applied to activations ("non-fused" path) by default: at 512
  channels a per-sample weight tensor is larger than a sample's activations at
  <= 32 px, so the grouped-conv path moves more memory and its grouped kernels
  are slower on CPU. The grouped path stays available (``fused_modconv=True``).
* The leaky-ReLU gain sqrt(2) and the residual 1/sqrt(2) are folded into the
  next layer's per-channel scale (styles, or equalised-lr weight gain), which
  saves one full activation pass per layer forward and backward.
* toRGB (1x1, no demodulation) is a batched matmul with per-sample weights.
* Bias, noise and activation are applied in place on conv outputs (their
  producers do not need them for backward), saving allocations of ~30 MB
  tensors at 64 px that otherwise page-fault on every step.

Same weights, same images as NVlabs' StyleGAN2-ADA and rosinality's stylegan2-pytorch in
float32 (:mod:`garment_gen.convert` maps their files onto :class:`Generator`; parity is tested
in ``tests/test_convert.py``). Two details differ in form only: the equalised-lr weight gain is
folded into the styles *before* demodulation (rosinality's order), so the demodulation epsilon
(1e-8) meets a sum ``in_channels * 9`` times smaller than in NVlabs' code (a relative change of
about 5e-9 / mean(style^2), far below float32 rounding for working styles); and conv clamping
is before the folded gain unless ``clamp_after_gain=True`` (see :class:`Generator`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from garment_gen.data.aspect import DEFAULT_ASPECT, frame_size, parse_aspect
from garment_gen.errors import ConfigError
from garment_gen.networks.ops import conv2d, conv_transpose2d, eager_cpu
from garment_gen.networks.serialization import ModelFileError as GeneratorFileError

__all__ = [
    "Generator",
    "SynthesisNetwork",
    "Discriminator",
    "GeneratorFileError",
    "export_generator",
    "load_generator",
]

_LRELU_SLOPE = 0.2
_LRELU_GAIN = math.sqrt(2.0)
_FIR_TAPS = (1.0, 3.0, 3.0, 1.0)  # normalised to sum 1 below
_NOISE_MODES = ("random", "const", "none")


class StyleGANConfigError(ConfigError, ValueError):
    """Invalid network hyper-parameter (also a ``ValueError``)."""


# --------------------------------------------------------------------------- helpers


def _check_resolution(resolution: Any, lo: int = 32, hi: int = 1024) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise StyleGANConfigError(
            f"resolution must be an int power of two in [{lo}, {hi}], got {resolution!r}"
        )
    if resolution < lo or resolution > hi or resolution & (resolution - 1):
        raise StyleGANConfigError(
            f"resolution must be a power of two in [{lo}, {hi}], got {resolution}"
        )
    return resolution


def _check_aspect(aspect: Any) -> str:
    try:
        parse_aspect(aspect)
    except ValueError as exc:
        raise StyleGANConfigError(f"aspect={aspect!r}: {exc}") from None
    return aspect


def _check_positive(**values: Any) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise StyleGANConfigError(f"{name} must be a positive int, got {v!r}")


def _fir_matrix(n_in: int, n_out: int, offset: int, stride: int, gain: float) -> torch.Tensor:
    """Banded ``[n_out, n_in]`` matrix: ``y[o] = gain * sum_j f[j] * x[stride*o + j - offset]``.

    ``f`` is the normalised [1, 3, 3, 1] filter; out-of-range ``x`` count as zero,
    so zero padding is folded into the matrix.
    """
    taps = torch.tensor(_FIR_TAPS, dtype=torch.float64)
    taps = taps / taps.sum() * gain
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        for j in range(len(_FIR_TAPS)):
            i = stride * o + j - offset
            if 0 <= i < n_in:
                m[o, i] += taps[j]
    return m.float()


def _upsample_matrix(n_in: int, gain: float) -> torch.Tensor:
    """``[2 n_in, n_in]``: zero-insertion upsampling by 2 followed by the FIR filter (centred)."""
    taps = torch.tensor(_FIR_TAPS, dtype=torch.float64)
    taps = taps / taps.sum() * gain
    m = torch.zeros(2 * n_in, n_in, dtype=torch.float64)
    for o in range(2 * n_in):
        for i in range(n_in):
            j = 2 * i - o + 2
            if 0 <= j < len(_FIR_TAPS):
                m[o, i] = taps[j]
    return m.float()


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _fir2d(x: torch.Tensor, mat: torch.Tensor, mat_w: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the separable filter ``mat`` (``[n_out, n_in]``) to both spatial axes of ``x``
    (``mat`` along H, ``mat_w`` along W when the image is not square).

    NCHW ``x``: two matmuls on the trailing axes. Channels-last ``x`` (the CPU
    training layout, see :mod:`garment_gen.networks.ops`): the same two matmuls on
    the NHWC view, so the result stays channels-last without a layout copy.
    """
    mat_w = mat if mat_w is None else mat_w
    if _is_channels_last(x):
        b, c, h, w = x.shape
        y = torch.matmul(mat_w, x.permute(0, 2, 3, 1).reshape(b * h, w, c))  # along W
        y = torch.matmul(mat, y.reshape(b, h, -1))  # along H
        return y.view(b, mat.shape[0], mat_w.shape[0], c).permute(0, 3, 1, 2)
    x = torch.matmul(x, mat_w.t())  # along W
    return torch.matmul(mat, x)  # along H (mat broadcasts over N, C)


def _fir_kernel(gain: float) -> torch.Tensor:
    """``[4, 4]`` kernel of the separable [1, 3, 3, 1] filter (normalised), ``gain`` per axis."""
    taps = torch.tensor(_FIR_TAPS, dtype=torch.float64)
    taps = taps / taps.sum() * gain
    return torch.outer(taps, taps).float()


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, pad: int, stride: int = 1) -> torch.Tensor:
    """Correlate every channel of ``x`` with ``kernel [k, k]`` (zero padding ``pad``).

    Padding beyond 1 is added by ``F.pad`` first: oneDNN's NCHW depthwise kernels ran 4-6x
    slower with padding 2 than with 1 at 64 px (54 against 9-13 ms for 16 x 64 channels).
    """
    c = x.shape[1]
    if pad > 1:
        x = F.pad(x, [pad - 1] * 4)
        pad = 1
    weight = kernel.to(x.dtype).expand(c, 1, *kernel.shape).contiguous()
    return F.conv2d(x, weight, padding=pad, stride=stride, groups=c)


class _Blur(torch.autograd.Function):
    """:func:`_depthwise` with its input gradient computed as a *forward* depthwise correlation.

    The [1, 3, 3, 1] kernel is symmetric, so the input gradient of a stride-1 correlation with
    padding ``p`` is the correlation of the output gradient with the same kernel and padding
    ``k - 1 - p``; of a stride-2 one, the transposed conv. PyTorch's own depthwise backward
    on NCHW tensors took 55-72 ms at 64 px where the forward correlation takes 9-14 ms. The
    backward is itself differentiable (R1 and path length take double backward through it).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, pad: int, stride: int):
        ctx.save_for_backward(kernel)
        ctx.pad, ctx.stride, ctx.size = pad, stride, x.shape[-2:]
        return _depthwise(x, kernel, pad, stride)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kernel,) = ctx.saved_tensors
        k = kernel.shape[-1]
        if ctx.stride == 1:
            gx = _Blur.apply(grad, kernel, k - 1 - ctx.pad, 1)
        else:
            c = grad.shape[1]
            out = [(n - 1) * ctx.stride - 2 * ctx.pad + k for n in grad.shape[-2:]]
            extra = [ctx.size[0] - out[0], ctx.size[1] - out[1]]
            weight = kernel.to(grad.dtype).expand(c, 1, k, k).contiguous()
            gx = F.conv_transpose2d(
                grad, weight, stride=ctx.stride, padding=ctx.pad, output_padding=extra, groups=c
            )
        return gx, None, None, None


def _blur(x: torch.Tensor, kernel: torch.Tensor, pad: int, stride: int = 1) -> torch.Tensor:
    """Depthwise [1, 3, 3, 1] filter of ``x [B, C, H, W]`` (any layout, kept), zero padding ``pad``.

    Same values as :func:`_fir2d` with the matching banded matrix; 2-6x faster on CPU, forward
    and backward (the kernel's 16 taps instead of a dense matrix). The custom backward
    (:class:`_Blur`) is used only where a gradient is taken in eager CPU code; traced,
    scripted, exported or compiled graphs and no-grad passes see the plain depthwise conv.
    """
    if torch.is_grad_enabled() and eager_cpu(x):
        return _Blur.apply(x, kernel, pad, stride)
    if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return _depthwise(x, kernel, pad, stride)
    # traced / exported: every channel as its own image through one 1-channel conv, so the
    # kernel's shape is known to the graph (ONNX cannot take a kernel expanded to x's channels)
    n, c, h, w = x.shape
    out = F.conv2d(
        x.reshape(-1, 1, h, w), kernel.to(x.dtype)[None, None], padding=pad, stride=stride
    )
    return out.reshape(n, c, out.shape[-2], out.shape[-1])


def _lrelu_(x: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """In-place leaky ReLU(0.2) *without* its sqrt(2) gain (the gain is folded into the consumer).

    Only for tensors whose producer does not need them for backward (conv,
    addcmul, add outputs): in place saves an allocation and a memory pass.
    """
    x = F.leaky_relu(x, _LRELU_SLOPE, inplace=True)
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate.

    Weights are stored ``N(0, 1) / lr_mul`` and scaled at run time by
    ``lr_mul / sqrt(in_features)``; the bias by ``lr_mul``. ``activation='lrelu'``
    applies leaky ReLU(0.2) times ``act_gain`` (sqrt(2) by default).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str | None = None,
        weight_gain: float = 1.0,
        act_gain: float = _LRELU_GAIN,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = weight_gain * lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul
        self.activation = activation
        self.act_gain = act_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, _LRELU_SLOPE)
            if self.act_gain != 1.0:
                x = x * self.act_gain
        return x


# --------------------------------------------------------------------------- synthesis


class ModulatedConv(nn.Module):
    """Modulated, demodulated 3x3 conv + noise + bias + leaky ReLU (one synthesis layer).

    ``forward(x, w)``: ``x [B or 1, in_ch, H, W]`` (half the output's size when ``up``),
    ``w [B, w_dim]`` -> ``[B, out_ch, resolution, width]`` (``width`` = ``resolution`` unless
    the image is not square).
    The output omits the activation's sqrt(2) gain; the consumer applies it
    through ``in_gain`` (see the module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: bool = False,
        in_gain: float = 1.0,
        conv_clamp: float | None = None,
        width: int | None = None,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up = resolution, up
        self.width = resolution if width is None else int(width)
        self.in_gain = in_gain
        self.conv_clamp = conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(resolution, self.width))
        if up:
            # transposed conv gives 2n+1 samples; pad 1 each side, 4-tap filter, gain 2 per axis
            self.register_buffer("blur", _fir_kernel(2.0), persistent=False)

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused: bool = False
    ) -> torch.Tensor:
        batch = w.shape[0]
        styles = self.affine(w) * self.weight_gain  # [B, I], equalised-lr gain folded in
        # demodulation: d[b, o] = 1 / sqrt(sum_{i,k} (W[o,i,k] * s[b,i])^2)
        wsq = self.weight.square().sum(dim=(2, 3))  # [O, I]
        dcoefs = torch.rsqrt(torch.matmul(styles.square(), wsq.t()) + 1e-8)  # [B, O]
        if fused:
            weight = self.weight.unsqueeze(0) * (styles * self.in_gain)[:, None, :, None, None]
            weight = weight * dcoefs[:, :, None, None, None]
            x = x.expand(batch, -1, -1, -1).reshape(1, batch * self.in_channels, *x.shape[2:])
            if self.up:
                weight = weight.transpose(1, 2).reshape(
                    batch * self.in_channels, self.out_channels, 3, 3
                )
                x = F.conv_transpose2d(x, weight, stride=2, groups=batch)
                x = _blur(x, self.blur, pad=1)
            else:
                weight = weight.reshape(batch * self.out_channels, self.in_channels, 3, 3)
                x = F.conv2d(x, weight, padding=1, groups=batch)
            x = x.reshape(batch, self.out_channels, *x.shape[2:])
            x = x.add_(self.bias.view(1, -1, 1, 1))
        else:
            x = x * (styles * self.in_gain)[:, :, None, None]
            if self.up:
                x = conv_transpose2d(x, self.weight.transpose(0, 1), stride=2)
                x = _blur(x, self.blur, pad=1)
            else:
                x = conv2d(x, self.weight, padding=1)
            x = torch.addcmul(self.bias.view(1, -1, 1, 1), x, dcoefs[:, :, None, None])
        if noise_mode == "random":
            noise = torch.randn(
                batch, 1, self.resolution, self.width, device=x.device, dtype=x.dtype
            )
            x = x.add_(noise * self.noise_strength)
        elif noise_mode == "const":
            x = x.add_(self.noise_const * self.noise_strength)
        return _lrelu_(x, self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation, plus bias: features -> RGB.

    ``forward(x [B, C, H, W], w [B, w_dim]) -> [B, img_channels, H, W]``.
    Runs as one batched matmul with per-sample weights (no activation pass).
    """

    def __init__(
        self,
        in_channels: int,
        img_channels: int,
        w_dim: int,
        in_gain: float = 1.0,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.scale = in_gain / math.sqrt(in_channels)
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, c, h, wd = x.shape
        styles = self.affine(w) * self.scale  # [B, C]
        weight = self.weight.unsqueeze(0) * styles.unsqueeze(1)  # [B, img, C]
        if _is_channels_last(x):
            xn = x.permute(0, 2, 3, 1).reshape(b, h * wd, c)  # a view
            out = torch.baddbmm(self.bias.view(1, 1, -1), xn, weight.transpose(1, 2))
            out = out.view(b, h, wd, -1).permute(0, 3, 1, 2)
        else:
            out = torch.baddbmm(self.bias.view(1, -1, 1), weight, x.reshape(b, c, h * wd))
            out = out.reshape(b, -1, h, wd)
        if self.conv_clamp is not None:
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        return out


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (up-conv,) conv, toRGB, running-image upsample."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None,
        clamp_after_gain: bool = False,
        width: int | None = None,
    ):
        super().__init__()
        self.resolution = resolution
        self.width = resolution if width is None else int(width)
        self.first = in_channels == 0
        # The convs' outputs lack the leaky ReLU's sqrt(2) gain (folded into their consumers):
        # clamping them at conv_clamp / sqrt(2) is clamping the gained activations at conv_clamp.
        act_clamp = conv_clamp
        if conv_clamp is not None and clamp_after_gain:
            act_clamp = conv_clamp / _LRELU_GAIN
        if self.first:
            # kept [1, C, r, r] and broadcast by the modulation, never expanded to the batch
            self.const = nn.Parameter(torch.randn(1, out_channels, resolution, self.width))
            self.conv0 = None
            self.conv1 = ModulatedConv(
                out_channels, out_channels, w_dim, resolution, conv_clamp=act_clamp, width=width
            )
        else:
            self.conv0 = ModulatedConv(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                up=True,
                in_gain=_LRELU_GAIN,
                conv_clamp=act_clamp,
                width=width,
            )
            self.conv1 = ModulatedConv(
                out_channels,
                out_channels,
                w_dim,
                resolution,
                in_gain=_LRELU_GAIN,
                conv_clamp=act_clamp,
                width=width,
            )
            self.register_buffer(
                "img_up", _upsample_matrix(resolution // 2, gain=2.0), persistent=False
            )
            # the running image's upsampling along W when the image is not square
            up_w = _upsample_matrix(self.width // 2, gain=2.0) if self.width != resolution else None
            self.register_buffer("img_up_w", up_w, persistent=False)
        self.torgb = ToRGB(
            out_channels, img_channels, w_dim, in_gain=_LRELU_GAIN, conv_clamp=conv_clamp
        )
        self.num_conv = 1 if self.first else 2

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str,
        fused: bool,
        feature: torch.Tensor | None = None,
        channels_last: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first:
            const = self.const
            if channels_last:  # every later layer keeps the layout of its input
                const = const.contiguous(memory_format=torch.channels_last)
            x = self.conv1(const, ws[:, 0], noise_mode, fused)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, fused)
            x = self.conv1(x, ws[:, 1], noise_mode, fused)
        if feature is not None:
            # Injected feature map (encoders' fused features): added to the block's activations,
            # which then feed both its toRGB and the next block.
            x = x + feature.to(x.dtype)
        rgb = self.torgb(x, ws[:, self.num_conv])
        img = rgb if img is None else _fir2d(img, self.img_up, self.img_up_w) + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    """``ws [B, num_ws, w_dim]`` -> image ``[B, img_channels, resolution, width]``, roughly ``[-1, 1]``.

    ``aspect`` ``"W:H"`` (:mod:`garment_gen.data.aspect`): ``"1:1"`` square, ``"3:4"`` portrait,
    whose constant input is 4 x 3 and whose blocks are ``r x 3r/4``. Blocks are named by their
    height ``r`` (``block_resolutions``, ``channels``, the keys of injected ``features``);
    ``block_sizes[r]`` is ``(r, width)``. W+ (``num_ws``) does not depend on the aspect.

    Each ws row drives one layer (W+): block at 4 px uses rows 0 (conv) and 1
    (toRGB); block ``k`` above it uses rows ``2k-1``, ``2k`` (convs) and ``2k+1``
    (toRGB, shared with the next block's first conv).
    """

    def __init__(
        self,
        resolution: int,
        w_dim: int,
        img_channels: int,
        channel_base: int,
        channel_max: int,
        conv_clamp: float | None = None,
        clamp_after_gain: bool = False,
        aspect: str = DEFAULT_ASPECT,
    ):
        super().__init__()
        self.resolution = resolution
        self.w_dim = w_dim
        self.aspect = aspect
        log2 = int(math.log2(resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        self.block_sizes = {r: frame_size(r, aspect) for r in self.block_resolutions}
        self.width = self.block_sizes[resolution][1]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.channels = channels  # activation channels of the block at each resolution
        self.blocks = nn.ModuleList()
        self.ws_index: list[int] = []
        idx = 0
        for r in self.block_resolutions:
            in_ch = 0 if r == 4 else channels[r // 2]
            blk = SynthesisBlock(
                in_ch,
                channels[r],
                w_dim,
                r,
                img_channels,
                conv_clamp,
                clamp_after_gain,
                width=self.block_sizes[r][1],
            )
            self.blocks.append(blk)
            self.ws_index.append(idx)
            idx += blk.num_conv
        self.num_ws = idx + 1

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool | None = None,
        features: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Render ``ws [B, num_ws, w_dim]``. ``noise_mode``: 'random' | 'const' | 'none'.

        ``fused_modconv``: None picks the path measured faster -- activation scaling
        (see module docs); True forces the grouped-conv path (per-sample weights).
        ``features``: optional feature maps to inject, ``{r: [B, channels[r], *block_sizes[r]]}``,
        each added to the activations of the block at ``r`` (after its convs, before its toRGB
        and the next block). Without them the network is exactly StyleGAN2's.
        """
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [B, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if noise_mode not in _NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {_NOISE_MODES}, got {noise_mode!r}")
        fused = bool(fused_modconv) if fused_modconv is not None else False
        features = features or {}
        unknown = set(features) - set(self.block_resolutions)
        if unknown:
            raise ValueError(f"no synthesis block at resolution(s) {sorted(unknown)}")
        # Without autograd on CPU (the D step's fakes, sampling) the network runs channels-last:
        # oneDNN's convs, transposed convs and depthwise blurs are 10-40 % faster in that layout
        # (the whole no-grad forward 10-20 %). Training keeps NCHW: the weight gradients are
        # slower channels-last, and they outweigh the forward's gain.
        cl = not fused and not torch.is_grad_enabled() and eager_cpu(ws)
        x = img = None
        for blk, idx in zip(self.blocks, self.ws_index, strict=True):
            feat = features.get(blk.resolution)
            x, img = blk(x, img, ws[:, idx : idx + blk.num_conv + 1], noise_mode, fused, feat, cl)
        return img.contiguous() if cl else img


# --------------------------------------------------------------------------- generator


def class_onehot(c: Any, c_dim: int, n: int, device: torch.device) -> torch.Tensor:
    """Class labels as one-hot rows ``[n, c_dim]`` float: ``c`` is a ``[n]`` tensor or list of
    indices, or already ``[n, c_dim]`` (one-hot or soft). Raises ``ValueError`` naming the problem."""
    if not torch.is_tensor(c):
        c = torch.as_tensor(c, device=device)
    if c.ndim == 2:
        if c.shape != (n, c_dim):
            raise ValueError(
                f"c must be [{n}] class indices or [{n}, {c_dim}], got {list(c.shape)}"
            )
        return c.to(device=device, dtype=torch.float32)
    if c.ndim != 1 or c.shape[0] != n or c.is_floating_point():
        raise ValueError(f"c must be [{n}] class indices or [{n}, {c_dim}], got {list(c.shape)}")
    if n and (int(c.min()) < 0 or int(c.max()) >= c_dim):
        raise ValueError(
            f"class index out of range: got {int(c.min())}..{int(c.max())}, expected 0..{c_dim - 1}"
        )
    return F.one_hot(c.to(device=device, dtype=torch.long), c_dim).to(torch.float32)


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class Generator(nn.Module):
    """StyleGAN2 generator (skip architecture): ``z [B, z_dim]`` -> image ``[B, img_channels, R, W]``.

    ``W`` = ``R`` unless ``aspect`` (``"W:H"``) is not ``"1:1"``: ``"3:4"`` draws portrait
    images ``R`` high and ``3R/4`` wide from a 4 x 3 constant (``width``).

    ``mapping(z) -> ws [B, num_ws, w_dim]`` and ``synthesis(ws) -> image`` are
    exposed separately so encoders can write W+ codes directly. Images are
    roughly in ``[-1, 1]`` (no tanh, like StyleGAN2).

    Channels at resolution ``r`` are ``min(channel_base // r, channel_max)``.
    All weights use the equalised learning rate; the mapping network's by
    ``mapping_lr_mul`` too. ``w_avg`` tracks the mean W for truncation.

    ``conv_clamp`` (None: off) limits activations to ``[-conv_clamp, conv_clamp]``: toRGB
    outputs, and conv outputs *before* the leaky ReLU's folded sqrt(2) gain (garment_gen's
    convention, the default), or after it with ``clamp_after_gain=True`` (NVlabs'
    StyleGAN2-ADA convention, set by :mod:`garment_gen.convert` for their networks).

    ``c_dim > 0`` makes it class-conditional (StyleGAN2-ADA's way): a linear embedding of the
    one-hot class, normalised like ``z``, is concatenated to ``z`` before the mapping network;
    ``class_names`` (``c_dim`` strings) name the classes. ``mapping``/``forward`` then take
    ``c`` (class indices ``[B]`` or one-hot ``[B, c_dim]``); without it every row draws a class
    at random (so code written for an unconditional generator still samples the whole data).
    """

    def __init__(
        self,
        resolution: int,
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        mapping_lr_mul: float = 0.01,
        channel_base: int = 16384,
        channel_max: int = 512,
        img_channels: int = 3,
        style_mixing_prob: float = 0.9,
        w_avg_beta: float = 0.995,
        conv_clamp: float | None = None,
        clamp_after_gain: bool = False,
        aspect: str = DEFAULT_ASPECT,
        c_dim: int = 0,
        class_names: list[str] | tuple[str, ...] | None = None,
    ):
        super().__init__()
        _check_resolution(resolution)
        aspect = _check_aspect(aspect)
        if isinstance(c_dim, bool) or not isinstance(c_dim, int) or c_dim < 0:
            raise StyleGANConfigError(f"c_dim must be an int >= 0, got {c_dim!r}")
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if len(class_names) != c_dim or len(set(class_names)) != c_dim:
                raise StyleGANConfigError(
                    f"class_names must be {c_dim} distinct names (c_dim={c_dim}), got {class_names}"
                )
        _check_positive(
            z_dim=z_dim,
            w_dim=w_dim,
            mapping_layers=mapping_layers,
            channel_base=channel_base,
            channel_max=channel_max,
            img_channels=img_channels,
        )
        if not 0.0 <= float(style_mixing_prob) <= 1.0:
            raise StyleGANConfigError(
                f"style_mixing_prob must be in [0, 1], got {style_mixing_prob}"
            )
        if not 0.0 <= float(w_avg_beta) <= 1.0:
            raise StyleGANConfigError(f"w_avg_beta must be in [0, 1], got {w_avg_beta}")
        if channel_base // resolution < 1:
            raise StyleGANConfigError(
                f"channel_base={channel_base} gives no channels at resolution {resolution}; use >= {resolution}"
            )
        self._kwargs: dict[str, Any] = dict(
            resolution=int(resolution),
            z_dim=int(z_dim),
            w_dim=int(w_dim),
            mapping_layers=int(mapping_layers),
            mapping_lr_mul=float(mapping_lr_mul),
            channel_base=int(channel_base),
            channel_max=int(channel_max),
            img_channels=int(img_channels),
            style_mixing_prob=float(style_mixing_prob),
            w_avg_beta=float(w_avg_beta),
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            clamp_after_gain=bool(clamp_after_gain),
            aspect=aspect,
            c_dim=int(c_dim),
            class_names=None if class_names is None else list(class_names),
        )
        self.c_dim, self.class_names = int(c_dim), class_names
        self.resolution, self.z_dim, self.w_dim, self.img_channels = (
            resolution,
            z_dim,
            w_dim,
            img_channels,
        )
        self.style_mixing_prob = float(style_mixing_prob)
        self.w_avg_beta = float(w_avg_beta)
        dims = [z_dim + (w_dim if c_dim else 0)] + [w_dim] * mapping_layers
        if c_dim:
            self.class_embed = EqualLinear(c_dim, w_dim)
        self.mapping_net = nn.Sequential(
            *[
                EqualLinear(dims[i], dims[i + 1], lr_mul=mapping_lr_mul, activation="lrelu")
                for i in range(mapping_layers)
            ]
        )
        self.synthesis = SynthesisNetwork(
            resolution,
            w_dim,
            img_channels,
            channel_base,
            channel_max,
            conv_clamp,
            bool(clamp_after_gain),
            aspect,
        )
        self.aspect, self.width = aspect, self.synthesis.width
        self.num_ws = self.synthesis.num_ws
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild this generator (plain Python values)."""
        return dict(self._kwargs)

    @property
    def config(self) -> dict[str, Any]:
        return self.get_config()

    def mapping(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
        c: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``z [B, z_dim]`` -> ``ws [B, num_ws, w_dim]`` (the same w on every row).

        ``update_w_avg`` (training) moves ``w_avg`` toward the batch mean w.
        Truncation pulls rows ``< truncation_cutoff`` (all when None) toward
        ``w_avg``: ``w_avg + psi * (w - w_avg)``. ``c``: the classes of a conditional
        generator (see the class docstring; ignored when ``c_dim == 0``).
        """
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {list(z.shape)}")
        x = _unit_rms(z)
        if self.c_dim:
            x = torch.cat([x, _unit_rms(self.class_embed(self.onehot(c, z.shape[0], z.device)))], 1)
        w = self.mapping_net(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(
                    w.detach().mean(dim=0).to(self.w_avg.dtype).lerp(self.w_avg, self.w_avg_beta)
                )
        ws = w.unsqueeze(1).expand(-1, self.num_ws, -1)
        if truncation_psi != 1:
            w_avg = self.w_avg.to(ws.dtype)
            if truncation_cutoff is None:
                ws = w_avg.lerp(ws, truncation_psi)
            else:
                head = w_avg.lerp(ws[:, :truncation_cutoff], truncation_psi)
                ws = torch.cat([head, ws[:, truncation_cutoff:]], dim=1)
        return ws

    def onehot(self, c: Any, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``c`` (indices ``[n]``, one-hot ``[n, c_dim]`` or None: random classes) as one-hot
        ``[n, c_dim]``; ``ValueError`` for a wrong shape or index."""
        if c is None:
            c = torch.randint(0, self.c_dim, (n,), device=device)
        return class_onehot(c, self.c_dim, n, torch.device(device))

    def class_index(self, name: str) -> int:
        """The index of class ``name``; ``ValueError`` listing the classes when unknown."""
        names = self.class_names or [str(i) for i in range(self.c_dim)]
        if str(name) not in names:
            known = ", ".join(names) if names else "none: this generator is not class-conditional"
            raise ValueError(f"unknown class {name!r}; the generator's classes: {known}")
        return names.index(str(name))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        update_w_avg: bool = False,
        fused_modconv: bool | None = None,
        c: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``z [B, z_dim]`` -> image ``[B, img_channels, R, W]``, roughly ``[-1, 1]``.

        In training mode with ``style_mixing_prob > 0``, each sample, with that
        probability, takes its ws from a second z from a random layer onward (same class).
        """
        if self.c_dim:
            c = self.onehot(c, z.shape[0], z.device)
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg, c=c)
        if self.training and self.style_mixing_prob > 0:
            ws2 = self.mapping(torch.randn_like(z), truncation_psi, truncation_cutoff, c=c)
            batch = z.shape[0]
            cutoff = torch.randint(1, self.num_ws, (batch, 1), device=z.device)
            mix = torch.rand(batch, 1, device=z.device) < self.style_mixing_prob
            cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, self.num_ws))
            layer = torch.arange(self.num_ws, device=z.device).unsqueeze(0)
            ws = torch.where((layer >= cutoff).unsqueeze(-1), ws2, ws)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)


def export_generator(g: Generator, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``g`` to ``path`` (``generator.pt``) with the one save contract
    (:func:`garment_gen.networks.serialization.save_model`)."""
    from garment_gen.networks.serialization import save_model

    return save_model(g, path, meta=meta)


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> Generator:
    """Rebuild a :class:`Generator` from ``generator.pt`` (eval mode, frozen).

    A garment model file (``garment_model.pt``) gives its generator: new encoders can be
    trained over the generator of a shipped model.

    Raises :class:`GeneratorFileError` (a ``ValueError``) naming ``path`` when the file is
    missing, damaged or another kind of model.
    """
    from garment_gen.networks.serialization import load_model

    module = load_model(path, ("generator", "garment_model"), map_location)[0]
    return module if isinstance(module, Generator) else module.generator


# --------------------------------------------------------------------------- discriminator


class EqualConv2d(nn.Module):
    """Conv with equalised learning rate; optional blur-then-stride-2 downsampling.

    ``in_gain`` multiplies the input (folded into the weight scale), so a
    preceding activation's gain costs nothing. ``activation='lrelu'`` applies
    leaky ReLU(0.2) *without* its sqrt(2) gain (folded into the next layer).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        resolution: int,
        down: bool = False,
        bias: bool = True,
        activation: str | None = None,
        in_gain: float = 1.0,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = in_gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.kernel_size, self.down, self.activation = kernel_size, down, activation
        self.conv_clamp = conv_clamp
        if down:
            # 1x1: blur with the sample grid shifted half a pixel, keeping every other sample
            # (pad 1, stride 2); 3x3: pad 2, blur (n + 1 samples), and the stride-2 3x3 conv
            # then lands on n / 2 outputs
            self.blur_pad, self.blur_stride = (1, 2) if kernel_size == 1 else (2, 1)
            self.register_buffer("blur", _fir_kernel(1.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.weight_gain
        if self.down:
            x = _blur(x, self.blur, self.blur_pad, self.blur_stride)
            if self.kernel_size == 1:
                x = conv2d(x, weight, self.bias)
            else:
                x = conv2d(x, weight, self.bias, stride=2)
        else:
            x = conv2d(x, weight, self.bias, padding=self.kernel_size // 2)
        if self.activation == "lrelu":
            x = _lrelu_(x, self.conv_clamp)
        return x


class DiscriminatorBlock(nn.Module):
    """Residual block ``[B, C, r, r] -> [B, C', r/2, r/2]``: two 3x3 convs + blurred 1x1 skip, summed / sqrt(2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        in_gain: float,
        conv_clamp: float | None,
    ):
        super().__init__()
        self.conv0 = EqualConv2d(
            in_channels,
            in_channels,
            3,
            resolution,
            activation="lrelu",
            in_gain=in_gain,
            conv_clamp=conv_clamp,
        )
        # conv1 output gain sqrt(2) * sqrt(1/2) = 1; the skip carries the 1/sqrt(2)
        self.conv1 = EqualConv2d(
            in_channels,
            out_channels,
            3,
            resolution,
            down=True,
            activation="lrelu",
            in_gain=_LRELU_GAIN,
            conv_clamp=conv_clamp,
        )
        self.skip = EqualConv2d(
            in_channels,
            out_channels,
            1,
            resolution,
            down=True,
            bias=False,
            in_gain=in_gain * math.sqrt(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x)
        x = self.conv1(self.conv0(x))
        return y.add_(x)  # the skip conv's output is not needed by its backward


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Append ``num_channels`` feature maps holding the std-dev over sample groups.

    ``x [B, C, H, W] -> [B, C + num_channels, H, W]``. The group size is
    ``min(group_size, B)``, lowered to the largest divisor of ``B`` when ``B`` is
    not a multiple; sample ``n`` is grouped with samples ``n +- k * B/G``.
    """
    b, c, h, w = x.shape
    g = max(1, min(group_size, b))
    while b % g:
        g -= 1
    f = num_channels
    if c % f:
        raise ValueError(f"mbstd_num_channels={f} must divide the channel count {c}")
    y = x.reshape(g, b // g, f, c // f, h, w).float()
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [B/G, F, C/F, H, W]
    y = y.mean(dim=(2, 3, 4)).to(x.dtype)  # [B/G, F]
    y = y.reshape(1, b // g, f, 1, 1).expand(g, -1, -1, h, w).reshape(b, f, h, w)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: image ``[B, img_channels, R, W]`` in ``[-1, 1]`` -> logits ``[B, 1]``.

    ``W`` = ``R`` unless ``aspect`` is not ``"1:1"`` (``"3:4"``: the blocks halve ``R x 3R/4``
    down to 4 x 3, and the epilogue's linear layer reads the 4 x 3 map).

    ``c_dim > 0`` makes it class-conditional by projection (Miyato & Koyama 2018, as in
    StyleGAN2-ADA): the last layer gives ``cmap_dim`` features whose dot product with a
    (unit-RMS) embedding of the class, over ``sqrt(cmap_dim)``, is the logit; ``c`` is then
    required.
    """

    def __init__(
        self,
        resolution: int,
        img_channels: int = 3,
        channel_base: int = 16384,
        channel_max: int = 512,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
        aspect: str = DEFAULT_ASPECT,
        c_dim: int = 0,
        cmap_dim: int = 64,
    ):
        super().__init__()
        _check_resolution(resolution)
        aspect = _check_aspect(aspect)
        if isinstance(c_dim, bool) or not isinstance(c_dim, int) or c_dim < 0:
            raise StyleGANConfigError(f"c_dim must be an int >= 0, got {c_dim!r}")
        _check_positive(
            cmap_dim=cmap_dim,
            img_channels=img_channels,
            channel_base=channel_base,
            channel_max=channel_max,
            mbstd_group_size=mbstd_group_size,
        )
        if (
            isinstance(mbstd_num_channels, bool)
            or not isinstance(mbstd_num_channels, int)
            or mbstd_num_channels < 0
        ):
            raise StyleGANConfigError(
                f"mbstd_num_channels must be an int >= 0, got {mbstd_num_channels!r}"
            )
        if channel_base // resolution < 1:
            raise StyleGANConfigError(
                f"channel_base={channel_base} gives no channels at resolution {resolution}; use >= {resolution}"
            )
        self.resolution, self.img_channels = resolution, img_channels
        self.aspect, self.width = aspect, frame_size(resolution, aspect)[1]
        self.mbstd_group_size, self.mbstd_num_channels = mbstd_group_size, mbstd_num_channels
        self._kwargs: dict[str, Any] = dict(
            resolution=int(resolution),
            img_channels=int(img_channels),
            channel_base=int(channel_base),
            channel_max=int(channel_max),
            mbstd_group_size=int(mbstd_group_size),
            mbstd_num_channels=int(mbstd_num_channels),
            conv_clamp=None if conv_clamp is None else float(conv_clamp),
            aspect=aspect,
            c_dim=int(c_dim),
            cmap_dim=int(cmap_dim),
        )
        self.c_dim, self.cmap_dim = int(c_dim), int(cmap_dim)
        log2 = int(math.log2(resolution))
        block_res = [2**i for i in range(log2, 2, -1)]
        channels = {r: min(channel_base // r, channel_max) for r in block_res + [4]}
        if mbstd_num_channels and channels[4] % mbstd_num_channels:
            raise StyleGANConfigError(
                f"mbstd_num_channels={mbstd_num_channels} must divide the 4x4 channel count {channels[4]}"
            )
        self.from_rgb = EqualConv2d(
            img_channels, channels[resolution], 1, resolution, activation="lrelu"
        )
        blocks = []
        for i, r in enumerate(block_res):
            in_gain = _LRELU_GAIN if i == 0 else 1.0  # fromRGB output lacks its activation gain
            blocks.append(DiscriminatorBlock(channels[r], channels[r // 2], r, in_gain, conv_clamp))
        self.blocks = nn.ModuleList(blocks)
        c4 = channels[4]
        self.epilogue_conv = EqualConv2d(
            c4 + mbstd_num_channels, c4, 3, 4, activation="lrelu", conv_clamp=conv_clamp
        )
        self.fc = EqualLinear(
            c4 * 4 * frame_size(4, aspect)[1],
            c4,
            activation="lrelu",
            weight_gain=_LRELU_GAIN,
            act_gain=1.0,
        )
        self.out = EqualLinear(c4, cmap_dim if c_dim else 1, weight_gain=_LRELU_GAIN)
        if c_dim:
            self.class_embed = EqualLinear(c_dim, cmap_dim)

    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild this discriminator (plain Python values)."""
        return dict(self._kwargs)

    def embed(self, img: torch.Tensor) -> torch.Tensor:
        """The part with no trainable parameters: none here, the image itself."""
        return img

    def score(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of :meth:`embed`'s output (the whole network)."""
        return self(img, c)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``img [B, img_channels, R, W]`` float in ``[-1, 1]`` -> logits ``[B, 1]``
        (``c``: the classes, indices ``[B]`` or one-hot, when ``c_dim > 0``)."""
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, self.resolution, self.width):
            raise ValueError(
                f"img must be [B, {self.img_channels}, {self.resolution}, {self.width}], got {list(img.shape)}"
            )
        x = self.from_rgb(img)
        for blk in self.blocks:
            x = blk(x)
        if self.mbstd_num_channels:
            x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = self.epilogue_conv(x)
        x = self.fc(x.flatten(1))
        return project_class(self.out(x), class_map(self, c, x.shape[0], x.device))


def class_map(disc: nn.Module, c: Any, n: int, device: torch.device) -> torch.Tensor | None:
    """The unit-RMS class embedding ``[n, cmap_dim]`` of a conditional discriminator (None when
    ``disc.c_dim == 0``); computed once per call of the discriminator, shared by its scales."""
    if not disc.c_dim:
        return None
    if c is None:
        raise ValueError("this discriminator is class-conditional (c_dim > 0): pass c")
    return _unit_rms(disc.class_embed(class_onehot(c, disc.c_dim, n, device)))


def project_class(feats: torch.Tensor, cmap: torch.Tensor | None) -> torch.Tensor:
    """A conditional discriminator's logits: ``feats [B, cmap_dim, ...]`` dotted with
    :func:`class_map`'s ``cmap`` over ``sqrt(cmap_dim)`` -> ``[B, 1, ...]``; ``feats`` itself
    when ``cmap`` is None (unconditional)."""
    if cmap is None:
        return feats
    cmap = cmap.reshape(*cmap.shape, *([1] * (feats.ndim - 2)))
    return (feats * cmap).sum(dim=1, keepdim=True) * (1.0 / math.sqrt(cmap.shape[1]))
