"""The CPU training path of the networks' convolutions must give PyTorch's own results."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from garment_gen.networks import ops
from garment_gen.networks.stylegan2 import Discriminator, Generator, ToRGB, _fir2d, _fir_matrix


@pytest.fixture(autouse=True)
def _small_convs_take_the_fast_path(monkeypatch):
    """These tests use a few channels; the networks send only >= 256-channel convs."""
    monkeypatch.setattr(ops, "FAST_MIN_CHANNELS", 1)


@pytest.fixture(params=["winograd", "direct"])
def winograd(request, monkeypatch) -> bool:
    """Run a test with Winograd on every even-sized stride-1 3x3 conv, and with it off."""
    on = request.param == "winograd"
    monkeypatch.setattr(ops, "WINOGRAD_MIN_PIXELS", 1 if on else 10**9)
    return on


@pytest.fixture
def winograd_calls(monkeypatch) -> list[tuple]:
    """Records the shape of every Winograd input transform (forward and input gradient)."""
    calls: list[tuple] = []
    real = ops._wino_tiles

    def spy(x):
        calls.append(tuple(x.shape))
        return real(x)

    monkeypatch.setattr(ops, "_wino_tiles", spy)
    return calls


CASES = [
    # (name, in_ch, out_ch, size, kernel, stride, padding, transposed, bias)
    ("3x3", 5, 7, 9, 3, 1, 1, False, True),
    ("3x3 even size", 5, 7, 8, 3, 1, 1, False, True),
    ("3x3 stride 2", 5, 7, 9, 3, 2, 0, False, True),
    ("1x1", 5, 7, 8, 1, 1, 0, False, False),
    ("transposed stride 2", 5, 7, 5, 3, 2, 0, True, False),
    ("transposed stride 2 pad 1", 5, 7, 5, 3, 2, 1, True, True),
]


def _run(fn, x, w, b, grad_out=None, create_graph=False):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = fn(x, w, b)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    inputs = [x, w] + ([] if b is None else [b])
    grads = torch.autograd.grad(y, inputs, grad_out, create_graph=create_graph)
    return y, grads, grad_out, inputs


def _fns(stride, padding, transposed):
    if transposed:
        ref = lambda x, w, b: F.conv_transpose2d(x, w, b, stride=stride, padding=padding)  # noqa: E731
        new = lambda x, w, b: ops.conv_transpose2d(x, w, b, stride=stride, padding=padding)  # noqa: E731
    else:
        ref = lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding)  # noqa: E731
        new = lambda x, w, b: ops.conv2d(x, w, b, stride=stride, padding=padding)  # noqa: E731
    return ref, new


def _tensors(cin, cout, size, k, transposed, bias, batch=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, size, size, generator=g)
    w = torch.randn(*((cin, cout) if transposed else (cout, cin)), k, k, generator=g)
    b = torch.randn(cout, generator=g) if bias else None
    return x, w, b


@pytest.mark.parametrize(
    "min_columns,chunk_bytes",
    [(1, ops.IM2COL_CHUNK_BYTES), (1, 1), (10**9, ops.IM2COL_CHUNK_BYTES)],
    ids=["im2col-one-chunk", "im2col-per-sample", "onednn-weight-grad"],
)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fast_path_matches_pytorch(case, min_columns, chunk_bytes, winograd, monkeypatch) -> None:
    monkeypatch.setattr(ops, "IM2COL_MIN_COLUMNS", min_columns)
    monkeypatch.setattr(ops, "IM2COL_CHUNK_BYTES", chunk_bytes)
    _, cin, cout, size, k, stride, padding, transposed, bias = case
    x, w, b = _tensors(cin, cout, size, k, transposed, bias)
    ref, new = _fns(stride, padding, transposed)
    y_ref, g_ref, grad_out, _ = _run(ref, x, w, b)
    y_new, g_new, _, _ = _run(new, x, w, b, grad_out)
    assert y_new.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-5, atol=1e-5)
    assert len(g_new) == len(g_ref)
    for a, e in zip(g_new, g_ref, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_only_the_needed_gradients_are_computed() -> None:
    x, w, b = _tensors(4, 6, 8, 3, False, True)
    w.requires_grad_()
    y = ops.conv2d(x, w, b, padding=1)  # x needs no grad: weight gradient only
    (gw,) = torch.autograd.grad(y.square().sum(), [w])
    y_ref = F.conv2d(x, w, b, padding=1)
    (gw_ref,) = torch.autograd.grad(y_ref.square().sum(), [w])
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-4)


def test_plain_ops_outside_cpu_training(monkeypatch) -> None:
    x, w, b = _tensors(4, 6, 8, 3, False, True)
    w.requires_grad_()
    with torch.no_grad():
        y = ops.conv2d(x, w, b, padding=1)
    assert y.grad_fn is None and y.is_contiguous()  # plain F.conv2d: layout unchanged
    assert ops.conv2d(x, w, b, padding=1).grad_fn.name().startswith("_ConvBackward")
    old = ops.set_cpu_fast_path(False)
    try:
        assert ops.conv2d(x, w, b, padding=1).grad_fn.name() == "ConvolutionBackward0"
    finally:
        ops.set_cpu_fast_path(old)
    monkeypatch.setattr(ops, "FAST_MIN_CHANNELS", 8)  # narrower convs stay plain
    assert ops.conv2d(x, w, b, padding=1).grad_fn.name() == "ConvolutionBackward0"


@pytest.mark.parametrize("min_columns", [1, 10**9], ids=["im2col", "onednn-weight-grad"])
def test_double_backward_matches_pytorch(min_columns, winograd, monkeypatch) -> None:
    """R1 and path length differentiate through gradients: the fast path must support it."""
    monkeypatch.setattr(ops, "IM2COL_MIN_COLUMNS", min_columns)
    x, w, b = _tensors(4, 6, 8, 3, False, True)
    results = []
    for fn in _fns(1, 1, False):
        y, (gx, gw, gb), _, inputs = _run(fn, x, w, b, torch.ones(3, 6, 8, 8), create_graph=True)
        penalty = gx.square().sum()
        (d_w,) = torch.autograd.grad(penalty, [inputs[1]])
        results.append(d_w)
    assert results[1].abs().sum() > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-3)


def test_eager_cpu_is_false_when_traced() -> None:
    """Layout choices made for oneDNN's speed stay out of traced / exported graphs."""
    seen = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(ops.eager_cpu(t))
        return t * 2

    x = torch.randn(2, 3)
    fn(x)
    torch.jit.trace(fn, (x,), check_trace=False)  # the check would run fn twice more
    assert seen == [True, False]


def test_fir2d_channels_last_matches_nchw() -> None:
    x = torch.randn(2, 5, 8, 8)
    for mat in (
        _fir_matrix(8, 8, offset=1, stride=1, gain=1.0),
        _fir_matrix(8, 4, offset=1, stride=2, gain=1.0),
    ):
        y = _fir2d(x, mat)
        y_cl = _fir2d(x.contiguous(memory_format=torch.channels_last), mat)
        assert y_cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-6)


def test_torgb_channels_last_matches_nchw() -> None:
    torch.manual_seed(0)
    layer = ToRGB(6, 3, w_dim=8)
    x, w = torch.randn(2, 6, 4, 4), torch.randn(2, 8)
    torch.testing.assert_close(
        layer(x.contiguous(memory_format=torch.channels_last), w), layer(x, w), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("min_columns", [1, 10**9], ids=["im2col", "onednn-weight-grad"])
def test_gan_step_gradients_agree_with_plain_pytorch(min_columns, winograd, monkeypatch) -> None:
    """G loss, D loss and D's R1 penalty give the same parameter gradients on both paths."""
    monkeypatch.setattr(ops, "IM2COL_MIN_COLUMNS", min_columns)
    kw = dict(channel_base=256, channel_max=16)
    torch.manual_seed(0)
    G = Generator(32, z_dim=16, w_dim=16, mapping_layers=2, style_mixing_prob=0.0, **kw)
    D = Discriminator(32, **kw)
    z, real = torch.randn(4, 16), torch.randn(4, 3, 32, 32)

    def grads(fast: bool) -> list[torch.Tensor]:
        old = ops.set_cpu_fast_path(fast)
        try:
            G.zero_grad(set_to_none=True)
            D.zero_grad(set_to_none=True)
            fake = G(z, noise_mode="const")
            F.softplus(-D(fake)).mean().backward()
            r = real.detach().requires_grad_()
            logits = D(r)
            (gr,) = torch.autograd.grad(logits.sum(), [r], create_graph=True)
            (F.softplus(logits).mean() + gr.square().sum() * 5.0).backward()
            return [
                p.grad.clone() for p in [*G.parameters(), *D.parameters()] if p.grad is not None
            ]
        finally:
            ops.set_cpu_fast_path(old)

    fast, plain = grads(True), grads(False)
    assert len(fast) == len(plain) > 20
    for a, e in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("size", [(8, 8), (6, 10), (2, 2)], ids=["8x8", "6x10", "2x2"])
def test_winograd_matches_the_direct_conv_every_way(size, winograd_calls, monkeypatch) -> None:
    """Forward, input and weight gradient, and the no-grad forward, on even sizes (incl. non-square)."""
    monkeypatch.setattr(ops, "WINOGRAD_MIN_PIXELS", 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, *size, generator=g)
    w, b = torch.randn(7, 5, 3, 3, generator=g), torch.randn(7, generator=g)
    ref, new = _fns(1, 1, False)
    y_ref, g_ref, grad_out, _ = _run(ref, x, w, b)
    y_new, g_new, _, _ = _run(new, x, w, b, grad_out)
    assert len(winograd_calls) == 2  # forward and input gradient both went through Winograd
    assert y_new.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-5, atol=1e-5)
    for a, e in zip(g_new, g_ref, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        y_inf = ops.conv2d(x, w, b, padding=1)
    assert len(winograd_calls) == 3
    torch.testing.assert_close(y_inf, y_ref, rtol=1e-5, atol=1e-5)


def test_winograd_only_where_it_applies(winograd_calls, monkeypatch) -> None:
    """Odd sizes, strides, other paddings and small maps take the direct conv."""
    monkeypatch.setattr(ops, "WINOGRAD_MIN_PIXELS", 64)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    for shape, stride, pad in [((2, 3, 9, 9), 1, 1), ((2, 3, 8, 8), 2, 1), ((2, 3, 8, 8), 1, 0)]:
        ops.conv2d(torch.randn(shape), w, stride=stride, padding=pad).sum().backward()
    ops.conv2d(torch.randn(2, 3, 6, 6), w, padding=1).sum().backward()  # 36 < 64 pixels
    assert winograd_calls == []
    ops.conv2d(torch.randn(2, 3, 8, 8), w, padding=1).sum().backward()
    assert winograd_calls == [(2, 8, 8, 3)]  # forward only: x needs no gradient


def test_winograd_saves_only_what_the_backward_needs() -> None:
    """Frozen weights (the encoder stage) keep no tiles; an input without grad keeps no kernel."""
    old = ops.WINOGRAD_MIN_PIXELS
    ops.WINOGRAD_MIN_PIXELS = 1
    try:
        x = torch.randn(2, 3, 8, 8)
        w = torch.randn(4, 3, 3, 3)
        y = ops.conv2d(x.requires_grad_(), w, padding=1)
        saved = y.grad_fn.saved_tensors
        assert saved[2] is None and saved[3] is not None  # no V, but U
        y = ops.conv2d(x.detach(), w.requires_grad_(), padding=1)
        saved = y.grad_fn.saved_tensors
        assert saved[2] is not None and saved[3] is None
    finally:
        ops.WINOGRAD_MIN_PIXELS = old


def test_autocast_keeps_pytorchs_own_conv(monkeypatch) -> None:
    """Under CPU autocast the conv must run in bf16 as autocast asks, not in our fp32 path."""
    monkeypatch.setattr(ops, "WINOGRAD_MIN_PIXELS", 1)
    x, w, b = _tensors(4, 6, 8, 3, False, True)
    w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.conv2d(x, w, b, padding=1)
        with torch.no_grad():
            y_inf = ops.conv2d(x, w, b, padding=1)
    assert y.dtype == y_inf.dtype == torch.bfloat16
    assert y.grad_fn.name() == "ConvolutionBackward0"


def test_torch_compile_sees_plain_convs(monkeypatch) -> None:
    """Under ``torch.compile`` the convs are plain ops: a full graph, no break at our Python code."""
    monkeypatch.setattr(ops, "WINOGRAD_MIN_PIXELS", 1)
    x, w, b = _tensors(4, 6, 8, 3, False, True)
    w.requires_grad_()
    fn = torch.compile(
        lambda x, w, b: ops.conv2d(x, w, b, padding=1), backend="eager", fullgraph=True
    )
    y = fn(x, w, b)
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=1), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fn(x, w, b), y, rtol=1e-5, atol=1e-5)
