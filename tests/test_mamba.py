"""Mamba temporal context: torch scan vs the definition, closed forms, backend selection, the kernel call
plumbing (with a stand-in kernel), MambaBlock/MambaContext behaviour, and the GPU equivalence check
(skipped unless CUDA and mamba_ssm are both present).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from distsleep.models import mamba
from distsleep.models.common import count_parameters
from distsleep.models.mamba import (
    MambaBlock,
    MambaContext,
    MambaKernelUnavailable,
    cuda_kernels_available,
    equivalence_report,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
    selective_scan_torch,
)

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(b=2, d=5, n=3, l=7, *, dtype=torch.float64, seed=0, with_D=True, with_z=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    inp = {
        "u": rnd(b, d, l),
        # positive step sizes of Mamba's range when no softplus is applied
        "delta": 0.05 + 0.2 * torch.rand(b, d, l, generator=g, dtype=dtype),
        "A": -torch.exp(rnd(d, n)),
        "B": rnd(b, n, l),
        "C": rnd(b, n, l),
        "D": rnd(d) if with_D else None,
        "z": rnd(b, d, l) if with_z else None,
        "delta_bias": 0.3 * rnd(d) if with_bias else None,
    }
    return inp


def _run_with_grads(fn, inp, softplus, grad_out=None):
    leaves = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in inp.items()}
    out = fn(**leaves, delta_softplus=softplus)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    out.backward(grad_out)
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return out, grads


OPTION_CASES = [
    pytest.param(dict(with_D=False, with_z=False, with_bias=False), False, id="plain"),
    pytest.param(dict(with_D=True, with_z=False, with_bias=False), False, id="D"),
    pytest.param(dict(with_D=False, with_z=True, with_bias=False), False, id="z"),
    pytest.param(dict(with_D=False, with_z=False, with_bias=True), True, id="bias+softplus"),
    pytest.param(dict(with_D=False, with_z=False, with_bias=False), True, id="softplus"),
    pytest.param(dict(with_D=True, with_z=True, with_bias=True), True, id="all"),
]


@pytest.mark.parametrize("options, softplus", OPTION_CASES)
def test_torch_scan_matches_reference_float64(options, softplus):
    inp = _inputs(**options)
    out_ref, g_ref = _run_with_grads(selective_scan_reference, inp, softplus)
    out_t, g_t = _run_with_grads(selective_scan_torch, inp, softplus)
    assert out_t.dtype == torch.float64 and out_t.shape == inp["u"].shape
    torch.testing.assert_close(out_t, out_ref, atol=1e-10, rtol=1e-10)
    assert set(g_t) == set(g_ref) == {k for k in INPUT_NAMES if inp[k] is not None}
    for name in g_ref:
        torch.testing.assert_close(g_t[name], g_ref[name], atol=1e-10, rtol=1e-10, msg=f"grad {name}")
        assert g_ref[name].abs().max() > 0, f"grad {name} is identically zero: the comparison proves nothing"


def test_torch_scan_matches_reference_float32_at_block_scale():
    # Sizes and magnitudes of a MambaBlock with a 20-epoch context; float32 in, float32 computation.
    inp = _inputs(b=3, d=32, n=16, l=20, dtype=torch.float32, seed=3)
    inp["A"] = -torch.arange(1, 17, dtype=torch.float32).repeat(32, 1)
    out_ref, g_ref = _run_with_grads(selective_scan_reference, inp, True)
    out_t, g_t = _run_with_grads(selective_scan_torch, inp, True)
    scale = out_ref.abs().max()
    assert (out_t - out_ref).abs().max() <= 1e-5 * max(1.0, scale)
    for name in g_ref:
        err = (g_t[name] - g_ref[name]).abs().max()
        assert err <= 1e-5 * max(1.0, g_ref[name].abs().max()), f"grad {name}: {err}"


def test_torch_scan_gradcheck():
    inp = _inputs(b=1, d=2, n=2, l=4, seed=5)
    names = list(INPUT_NAMES)
    args = tuple(inp[k].clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(lambda *a: selective_scan_torch(*a, delta_softplus=True), args)


def test_closed_form_constant_input():
    # d = n = 1, constant u, delta, B, C: h_t = r h_{t-1} + delta*B*u with r = exp(delta*A), h_{-1} = 0, so
    # h_t = delta*B*u (1 - r^(t+1)) / (1 - r). With D, z, bias and softplus on top.
    L, u0, a, b0, c0, d0, z0 = 6, 2.0, -0.7, 1.5, -0.4, 0.3, 0.8
    raw, bias = 0.2, -0.1
    delta = math.log1p(math.exp(raw + bias))  # softplus
    r = math.exp(delta * a)
    t = torch.arange(L, dtype=torch.float64)
    h = delta * b0 * u0 * (1 - r ** (t + 1)) / (1 - r)
    expected = (c0 * h + d0 * u0) * z0 / (1 + math.exp(-z0))
    args = dict(
        u=torch.full((1, 1, L), u0, dtype=torch.float64),
        delta=torch.full((1, 1, L), raw, dtype=torch.float64),
        A=torch.tensor([[a]], dtype=torch.float64),
        B=torch.full((1, 1, L), b0, dtype=torch.float64),
        C=torch.full((1, 1, L), c0, dtype=torch.float64),
        D=torch.tensor([d0], dtype=torch.float64),
        z=torch.full((1, 1, L), z0, dtype=torch.float64),
        delta_bias=torch.tensor([bias], dtype=torch.float64),
        delta_softplus=True,
    )
    for fn in (selective_scan_reference, selective_scan_torch, selective_scan):
        torch.testing.assert_close(fn(**args)[0, 0], expected, atol=1e-12, rtol=1e-12)
    # and the first steps by hand: y_0 = C*delta*B*u, y_1 = C*(r+1)*delta*B*u (no D, z)
    y = selective_scan_torch(**{**args, "D": None, "z": None})[0, 0]
    assert y[0].item() == pytest.approx(c0 * delta * b0 * u0, rel=1e-12)
    assert y[1].item() == pytest.approx(c0 * (r + 1) * delta * b0 * u0, rel=1e-12)


def test_zero_A_is_a_cumulative_sum():
    # With A = 0 nothing decays: h_t = sum_{s<=t} delta_s B_s u_s, y_t = <C_t, h_t>.
    inp = _inputs(b=2, d=4, n=3, l=9, with_D=False, with_z=False, with_bias=False, seed=7)
    inp["A"] = torch.zeros_like(inp["A"])
    y = selective_scan_torch(**inp)
    h = torch.cumsum(torch.einsum("bdl,bnl->bdnl", inp["delta"] * inp["u"], inp["B"]), dim=-1)
    expected = torch.einsum("bdnl,bnl->bdl", h, inp["C"])
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)


def test_return_last_state_and_dtype():
    inp = _inputs(b=2, d=4, n=3, l=5, with_D=False, with_z=False, seed=2)
    out_r, h_r = selective_scan_reference(**inp, delta_softplus=True, return_last_state=True)
    out_t, h_t = selective_scan_torch(**inp, delta_softplus=True, return_last_state=True)
    assert h_t.shape == (2, 4, 3)
    torch.testing.assert_close(h_t, h_r)
    torch.testing.assert_close(out_t[..., -1], (h_t * inp["C"][:, None, :, -1]).sum(-1))
    # bf16 in: computed in float32, returned in bf16 (as the kernel does)
    inp16 = {k: v.to(torch.bfloat16) for k, v in inp.items() if v is not None}
    out16 = selective_scan_torch(**inp16, delta_softplus=True)
    assert out16.dtype == torch.bfloat16
    ref32 = selective_scan_reference(**{k: v.float() for k, v in inp16.items()}, delta_softplus=True)
    torch.testing.assert_close(out16.float(), ref32, atol=2e-2, rtol=1e-2)


def test_shape_validation():
    inp = _inputs(with_D=False, with_z=False, with_bias=False)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_torch(**{**inp, "B": inp["B"][:, :, :-1]})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_torch(**{**inp, "A": inp["A"][:-1]})
    with pytest.raises(ValueError, match="D must be"):
        selective_scan_torch(**{**inp, "D": torch.ones(2, dtype=torch.float64)})


# ------------------------------------------------------------------------------------------ backends


def test_backend_resolution_on_this_machine():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("triton", cpu)
    with pytest.raises(MambaKernelUnavailable, match="backend='cuda' cannot be used: .*needs CUDA tensors"):
        resolve_backend("cuda", cpu)
    importable = mamba._load_kernel()[0] is not None
    assert cuda_kernels_available() == (torch.cuda.is_available() and importable)


def test_backend_resolution_logic(monkeypatch):
    # Pretend the "cpu" device can take the kernel to exercise every branch without a GPU.
    monkeypatch.setattr(mamba, "_device_supports_kernel", lambda device: True)
    cpu = torch.device("cpu")
    monkeypatch.setattr(mamba, "_load_kernel", lambda: (None, "ModuleNotFoundError: No module named 'mamba_ssm'"))
    assert resolve_backend("auto", cpu, torch.float32) == "torch"
    with pytest.raises(MambaKernelUnavailable, match="mamba_ssm is not importable.*pip install mamba-ssm"):
        resolve_backend("cuda", cpu, torch.float32)
    monkeypatch.setattr(mamba, "_load_kernel", lambda: (selective_scan_reference, None))
    assert resolve_backend("auto", cpu, torch.float32) == "cuda"
    assert resolve_backend("auto", cpu, torch.bfloat16) == "cuda"
    assert resolve_backend("torch", cpu, torch.float32) == "torch"
    assert resolve_backend("auto", cpu, torch.float64) == "torch"  # the kernel has no float64
    with pytest.raises(MambaKernelUnavailable, match="float64"):
        resolve_backend("cuda", cpu, torch.float64)


def test_auto_on_cpu_never_calls_the_kernel(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("kernel path taken on CPU")

    monkeypatch.setattr(mamba, "_kernel_scan", boom)
    inp = _inputs(dtype=torch.float32)
    torch.testing.assert_close(selective_scan(**inp, backend="auto"), selective_scan_torch(**inp))
    block = MambaBlock(8, backend="auto")
    block(torch.randn(2, 5, 8))


def test_cuda_backend_without_kernel_raises_clearly():
    block = MambaBlock(8, backend="cuda")
    with pytest.raises(MambaKernelUnavailable, match="backend='cuda' cannot be used"):
        block(torch.randn(2, 5, 8))
    with pytest.raises(MambaKernelUnavailable):
        selective_scan(**_inputs(dtype=torch.float32), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        MambaBlock(8, backend="gpu")


class _FakeKernel:
    """Stands in for mamba_ssm's selective_scan_fn on CPU: checks the dtypes the real kernel requires,
    records the calls, and computes the definition."""

    def __init__(self):
        self.calls = 0

    def __call__(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                 return_last_state=False):
        self.calls += 1
        assert A.dtype == torch.float32 and (D is None or D.dtype == torch.float32)
        assert delta_bias is None or delta_bias.dtype == torch.float32
        assert delta.dtype == B.dtype == C.dtype == u.dtype and (z is None or z.dtype == u.dtype)
        assert B.shape == (u.shape[0], A.shape[1], u.shape[2]) and C.shape == B.shape
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def test_kernel_plumbing_and_report_with_stand_in_kernel(monkeypatch, capsys):
    fake = _FakeKernel()
    monkeypatch.setattr(mamba, "_load_kernel", lambda: (fake, None))
    monkeypatch.setattr(mamba, "_device_supports_kernel", lambda device: True)
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=4)
    x = torch.randn(2, 6, 16)
    outs, grads = {}, {}
    for backend in ("torch", "cuda"):
        block.backend = backend
        block.zero_grad()
        out = block(x)
        out.square().sum().backward()
        outs[backend] = out
        grads[backend] = {n: p.grad.clone() for n, p in block.named_parameters()}
    assert fake.calls == 1
    torch.testing.assert_close(outs["cuda"], outs["torch"], atol=1e-5, rtol=1e-5)
    for name in grads["torch"]:
        torch.testing.assert_close(grads["cuda"][name], grads["torch"][name], atol=1e-5, rtol=1e-4, msg=name)

    # The whole report runs end to end (here "kernel" = reference loop, so it must pass).
    report = equivalence_report(device="cpu", seed=1)
    assert report["ok"], report
    assert report["max_rel_err"] < 1e-5
    scan = report["scan_full_b4_d64_n16_l20"]
    assert set(scan) == {"forward", *(f"grad_{k}" for k in INPUT_NAMES)}
    assert report["mamba_context_bidir_d64_l20"]["grad_params_worst"]["param"]
    assert mamba.main(["cpu"]) == 0
    assert '"ok": true' in capsys.readouterr().out


def test_report_detects_a_wrong_kernel(monkeypatch):
    # A kernel that drops the D skip must fail the tolerance: the report can fail.
    def wrong(u, delta, A, B, C, D=None, **kw):
        return selective_scan_reference(u, delta, A, B, C, None, **kw)

    monkeypatch.setattr(mamba, "_load_kernel", lambda: (wrong, None))
    monkeypatch.setattr(mamba, "_device_supports_kernel", lambda device: True)
    report = equivalence_report(device="cpu")
    assert not report["ok"]
    assert not report["scan_full_b4_d64_n16_l20"]["forward"]["ok"]
    assert report["scan_plain_b2_d8_n4_l20"]["forward"]["ok"]  # no D there


def test_main_explains_why_it_cannot_run(capsys):
    if cuda_kernels_available():
        pytest.skip("kernel available: main() runs the real report")
    assert mamba.main([]) == 2
    err = capsys.readouterr().err
    assert "equivalence report not run" in err
    assert "torch.cuda.is_available() is False" in err or "mamba_ssm is not importable" in err


# ------------------------------------------------------------------------------------------ modules


def test_block_initialisation():
    torch.manual_seed(0)
    block = MambaBlock(64, d_state=16)
    assert block.d_inner == 128 and block.dt_rank == 4
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
    assert dt.max() / dt.min() > 10  # log-uniform over two decades, not a constant
    torch.testing.assert_close(-torch.exp(block.A_log), -torch.arange(1, 17.0).repeat(128, 1))
    torch.testing.assert_close(block.D, torch.ones(128))
    assert block.dt_proj.weight.abs().max() <= 4**-0.5
    assert block.in_proj.bias is None and block.out_proj.bias is None
    # 6 d² + d_inner (d_conv + 1 + 2 dt_rank + 1 + 3 d_state + 1) for expand = 2
    assert count_parameters(block).total == 6 * 64**2 + 128 * (4 + 1 + 2 * 4 + 1 + 3 * 16 + 1) == 32640


def test_context_shape_and_backend_switch():
    torch.manual_seed(0)
    ctx = MambaContext(32, n_layers=2, d_state=8)
    x = torch.randn(3, 20, 32)
    y = ctx(x)
    assert y.shape == (3, 20, 32) and torch.isfinite(y).all()
    assert ctx.backend == "auto"
    assert ctx.set_backend("torch").backend == "torch"
    assert all(b.backend == "torch" for b in ctx.blocks()) and len(ctx.blocks()) == 2
    assert len(MambaContext(32, n_layers=3, bidirectional=True).blocks()) == 6
    with pytest.raises(ValueError):
        MambaContext(32, n_layers=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_context_causality(bidirectional):
    torch.manual_seed(0)
    ctx = MambaContext(16, n_layers=2, d_state=4, bidirectional=bidirectional).eval()
    x = torch.randn(2, 20, 16)
    t0 = 9
    x2 = x.clone()
    x2[:, t0 + 1 :] += torch.randn(2, 20 - t0 - 1, 16)
    with torch.no_grad():
        y, y2 = ctx(x), ctx(x2)
    past = (y2[:, : t0 + 1] - y[:, : t0 + 1]).abs().max().item()
    future = (y2[:, t0 + 1 :] - y[:, t0 + 1 :]).abs().max().item()
    assert future > 1e-2
    if bidirectional:
        assert past > 1e-3, "the reverse direction should carry later epochs back"
    else:
        assert past <= 1e-6, f"causal context leaked future epochs into the past ({past})"


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    ctx = MambaContext(16, n_layers=2, d_state=4, bidirectional=True)
    x = torch.randn(2, 12, 16, requires_grad=True)
    w = torch.randn(2, 12, 16)
    (ctx(x) * w).sum().backward()
    missing = [n for n, p in ctx.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, missing
    assert x.grad.abs().max() > 0


def test_dropout_only_in_training():
    torch.manual_seed(0)
    ctx = MambaContext(16, n_layers=1, d_state=4, dropout=0.5)
    x = torch.randn(2, 8, 16)
    ctx.eval()
    torch.testing.assert_close(ctx(x), ctx(x))
    ctx.train()
    assert not torch.allclose(ctx(x), ctx(x))


def _gpu_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "GPU equivalence: torch.cuda.is_available() is False"
    fn, err = mamba._load_kernel()
    if fn is None:
        return f"GPU equivalence: mamba_ssm not importable ({err})"
    return None


@pytest.mark.skipif(_gpu_skip_reason() is not None, reason=str(_gpu_skip_reason()))
def test_gpu_equivalence():
    report = equivalence_report("cuda", seed=0)
    bad = {name: e for name, e in mamba._flatten(report) if not e["ok"]}
    assert report["ok"] and not bad, bad
    assert report["max_rel_err"] <= 1e-4
