"""cujagged.torch: the differentiable ops as autograd Functions, checked with
torch.autograd.gradcheck (float64, CPU backend) and against cujagged's own results."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import lengths, make_offsets

torch = pytest.importorskip("torch")
cjt = pytest.importorskip("cujagged.torch")

import cujagged as cj  # noqa: E402
from cujagged import rowwise  # noqa: E402


def _parts(lens, cols, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(sum(lens), cols, generator=g, dtype=torch.float64).to(dtype).to(device)
    off = torch.from_numpy(make_offsets(lens)).to(device)
    return v.requires_grad_(), off


ROW_OPS = ["softmax", "log_softmax", "sum", "cumsum"]
NONEMPTY_OPS = ["mean", "logsumexp"]  # an empty row gives NaN / -inf: no finite differences


@settings(max_examples=10)
@given(lengths(max_rows=5, max_len=6), st.sampled_from(ROW_OPS + NONEMPTY_OPS),
       st.integers(0, 2**16))
def test_row_ops_gradcheck(lens, op, seed):
    if op in NONEMPTY_OPS:
        lens = [n + 1 for n in lens]
    v, off = _parts(lens, 2, seed)
    f = getattr(cjt, op)
    assert torch.autograd.gradcheck(lambda a: f(a, off), (v,))
    ref = getattr(rowwise, op)(cj.JaggedArray(v.detach().numpy(), off.numpy()))
    got = f(v, off).detach().numpy()
    np.testing.assert_allclose(got, ref.values if hasattr(ref, "values") else ref)


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum_options_gradcheck(exclusive, reverse):
    v, off = _parts([3, 0, 4, 1], 2, 1)
    assert torch.autograd.gradcheck(
        lambda a: cjt.cumsum(a, off, exclusive=exclusive, reverse=reverse), (v,))


@settings(max_examples=10)
@given(lengths(max_rows=5, max_len=6), st.integers(1, 4), st.integers(1, 4),
       st.integers(0, 2**16))
def test_bmm_gradcheck(lens, K, N, seed):
    x, off = _parts(lens, K, seed)
    y = torch.randn(len(lens), K, N, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cjt.jagged_dense_bmm(a, off, b), (x, y))
    z, _ = _parts(lens, N, seed + 1)
    assert torch.autograd.gradcheck(lambda a, b: cjt.jagged_jagged_bmm(a, b, off), (x, z))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias_heads", [None, 1, 2])
def test_attention_gradcheck(causal, bias_heads):
    g = torch.Generator().manual_seed(7)
    off, koff = torch.tensor([0, 3, 3, 8]), torch.tensor([0, 4, 6, 7])

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    q, k, v = r(8, 2, 32), r(7, 1, 32), r(7, 1, 32)
    inputs = (q, k, v) + ((r(3, bias_heads, 6, 5),) if bias_heads else ())

    def f(q, k, v, bias=None):
        return cjt.jagged_flash_attention(q, k, v, off, kv_offsets=koff, causal=causal,
                                          bias=bias, max_seq_len=4)

    assert torch.autograd.gradcheck(f, inputs)
    # self-attention (k, v with q's offsets) through the same path
    assert torch.autograd.gradcheck(
        lambda q: cjt.jagged_flash_attention(q, q, q, off, causal=causal), (r(8, 1, 32),))


@settings(max_examples=8)
@given(lengths(max_rows=4, max_len=5), st.integers(0, 2**16))
def test_jagged2_gradcheck(lens, seed):
    x, off = _parts(lens, 3, seed)
    y, _ = _parts(lens, 3, seed + 1)
    n = int(cjt.jagged2_offsets(off)[-1])
    assert n == sum(L * L for L in lens)
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, 2, generator=g, dtype=torch.float64).requires_grad_()
    m1 = torch.randn(n, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: cjt.jagged_jagged_bmm_jagged_out(a, b, off),
                                    (x, y))
    assert torch.autograd.gradcheck(lambda a, b: cjt.array_jagged_bmm_jagged_out(a, b, off),
                                    (m1, y))
    for axis in (0, 1):
        assert torch.autograd.gradcheck(lambda a: cjt.jagged2_softmax(a, off, axis=axis),  # noqa: B023
                                        (m,))
    assert torch.autograd.gradcheck(lambda a: cjt.jagged_self_subtraction(a, off), (x,))
    with pytest.raises(ValueError, match="y_values must have the items"):
        cjt.jagged_jagged_bmm_jagged_out(x, y[:-1] if len(y) else torch.zeros(1, 3), off)
    with pytest.raises(ValueError, match=r"offsets must be \[B\+1\]"):
        cjt.jagged2_softmax(m, torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="m_values must hold one L_b x L_b matrix"):
        cjt.jagged2_softmax(m[:-1] if n else torch.zeros(1, dtype=torch.float64), off)


def test_bf16_backward_and_max_length_hint():
    v, off = _parts([3, 0, 4], 4, 2, dtype=torch.bfloat16)
    out = cjt.softmax(v, off, max_length=4)
    assert out.dtype == torch.bfloat16 and out.shape == v.shape
    out.sum().backward()
    assert v.grad.dtype == torch.bfloat16 and v.grad.shape == v.shape


def test_errors():
    v, off = _parts([2, 1], 2, 0)
    with pytest.raises(TypeError, match="values must be a torch tensor"):
        cjt.softmax(v.detach().numpy(), off)
    with pytest.raises(TypeError, match="y must be a torch tensor"):
        cjt.jagged_dense_bmm(v, off, np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="offsets"):
        cjt.sum(v, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="y_values"):
        cjt.jagged_jagged_bmm(v, v[:2], off)
    # host offsets are checked even with the max_length hint (it skips only a CUDA sync)
    with pytest.raises(ValueError, match="offsets"):
        cjt.softmax(v, torch.tensor([0, 2, 60]), max_length=55)
    with pytest.raises(ValueError, match="non-decreasing"):
        cjt.softmax(v, torch.tensor([0, 2, 1, 3]), max_length=2)
    with pytest.raises(ValueError, match="max_length must be None or an integer"):
        cjt.sum(v, off, max_length=-3)


def test_first_order_only_and_in_place_edits():
    v, off = _parts([2, 0, 3], 2, 0)
    g, = torch.autograd.grad(cjt.softmax(v, off).pow(2).sum(), v, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()  # a second derivative would be silently wrong: it raises instead
    v.grad = None
    w = v * 1
    out = cjt.sum(w, off)
    out.mul_(2)  # allowed, as for torch.sum: the backward keeps no values
    w.mul_(3)  # (after out was computed from it: out's gradient does not see this)
    out.sum().backward()
    torch.testing.assert_close(v.grad, torch.full_like(v, 2.0))


@pytest.mark.gpu
def test_gpu_matches_cpu():
    """CUDA tensors: the same values and gradients as on the CPU, on torch's current stream."""
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    lens = [5, 0, 17, 1]
    for op in ROW_OPS:
        vc, oc = _parts(lens, 3, 4, dtype=torch.float32)
        vg, og = _parts(lens, 3, 4, dtype=torch.float32, device="cuda")
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            outg = getattr(cjt, op)(vg, og)
            outg.sum().backward()
        s.synchronize()
        outc = getattr(cjt, op)(vc, oc)
        outc.sum().backward()
        torch.testing.assert_close(outg.cpu(), outc, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(vg.grad.cpu(), vc.grad, rtol=1e-5, atol=1e-5)
    qc, oc = _parts(lens, 64, 5, dtype=torch.float32)
    qc = qc.detach().reshape(-1, 1, 64).requires_grad_()
    qg = qc.detach().cuda().requires_grad_()
    cjt.jagged_flash_attention(qg, qg, qg, oc.cuda(), causal=True).sum().backward()
    cjt.jagged_flash_attention(qc, qc, qc, oc, causal=True).sum().backward()
    torch.testing.assert_close(qg.grad.cpu(), qc.grad, rtol=1e-4, atol=1e-4)
    # bf16: the CUDA backward, given the O and LSE the adapter saved
    from cujagged import jagged_flash_attention_backward

    qb = qc.detach().to("cuda", torch.bfloat16).requires_grad_()
    ob = cjt.jagged_flash_attention(qb, qb, qb, oc.cuda(), causal=True)
    w = torch.randn_like(ob)
    (ob * w).sum().backward()
    as64 = [t.detach().cpu().double().numpy() for t in (w, qb, ob)]
    ref = jagged_flash_attention_backward(as64[0], as64[1], as64[1], as64[1], oc.numpy(),
                                          causal=True, out=as64[2],
                                          lse=np.zeros((len(as64[1]), 1), np.float32))
    want = torch.from_numpy(ref[0] + ref[1] + ref[2])
    err = (qb.grad.double().cpu() - want).norm() / want.norm()
    assert err < 1e-2, err


def test_a_small_model_trains():
    """The adapter inside an nn.Module: attention over each user's history, a jagged matmul and
    mean pooling; a few Adam steps on a fixed batch lower the loss (float32, CPU backend)."""
    torch.manual_seed(0)
    lens = [5, 0, 9, 3, 12, 1]
    off = torch.from_numpy(make_offsets(lens))
    T, B, D, H = sum(lens), len(lens), 64, 2

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(D, 3 * D)
            self.w = torch.nn.Parameter(torch.randn(B, D, 8) / D ** 0.5)
            self.head = torch.nn.Linear(8, 1)

        def forward(self, x):
            q, k, v = self.qkv(x).reshape(T, 3, H, D // H).unbind(1)
            a = cjt.jagged_flash_attention(q, k, v, off, causal=True).reshape(T, D)
            z = cjt.jagged_dense_bmm(a + x, off, self.w)
            lens_ = (off[1:] - off[:-1]).clamp(min=1).unsqueeze(1)
            pooled = cjt.sum(z, off) / lens_
            return self.head(torch.tanh(pooled)).squeeze(1)

    x = torch.randn(T, D)
    target = torch.randn(B)
    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


# ---- each op's own backward on a fixed batch, a non-default attention
# scale, once_differentiable on every Function, device / max_length / operand type checks,
# jagged2 offsets in int64 ----------------------------------------------------------------
@pytest.mark.parametrize("op", ROW_OPS + NONEMPTY_OPS)
def test_each_row_op_gradcheck_on_a_fixed_batch(op):
    """Every row-wise op against finite differences on one fixed batch (int32 offsets, two
    columns), so that no op (log_softmax's backward, say) depends on Hypothesis drawing it."""
    v, off = _parts([3, 1, 4], 2, 11)
    off = off.to(torch.int32)
    assert torch.autograd.gradcheck(lambda a: getattr(cjt, op)(a, off), (v,))


def test_attention_gradcheck_with_a_scale():
    """A non-default ``scale`` reaches the backward as well as the forward (float64, causal
    cross-attention with a truncating ``max_seq_len``)."""
    g = torch.Generator().manual_seed(3)
    off, koff = torch.tensor([0, 3, 3, 8]), torch.tensor([0, 4, 6, 7])
    q, k, v = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
               for s in ((8, 2, 32), (7, 1, 32), (7, 1, 32)))
    assert torch.autograd.gradcheck(
        lambda q, k, v: cjt.jagged_flash_attention(q, k, v, off, kv_offsets=koff, scale=0.3,
                                                   causal=True, max_seq_len=4), (q, k, v))


def test_every_function_refuses_a_second_derivative():
    """The row ops, the jagged matmuls, attention and the jagged2 ops are once_differentiable:
    their gradients taken with create_graph=True require grad, and differentiating them again
    raises torch's once_differentiable error (without the mark the gradients would silently be
    constants, and second derivatives through them 0)."""
    v, off = _parts([2, 0, 3], 2, 0)
    y = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 1, 32, dtype=torch.float64, requires_grad=True)
    cases = [(lambda: cjt.softmax(v, off), (v,)),
             (lambda: cjt.jagged_dense_bmm(v, off, y), (v, y)),
             (lambda: cjt.jagged_flash_attention(q, q, q, off), (q,)),
             (lambda: cjt.jagged_self_subtraction(v, off), (v,))]
    for f, inputs in cases:
        grads = torch.autograd.grad(f().pow(2).sum(), inputs, create_graph=True)
        assert all(g.requires_grad for g in grads)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            torch.stack([g.sum() for g in grads]).sum().backward()


def test_operand_device_max_length_and_attention_operand_checks():
    """offsets or a dense operand on another device than values is a TypeError naming it (the
    meta device stands in for a GPU); ``max_length=True`` is not the hint 1; a NumPy ``bias`` or
    ``kv_offsets`` of attention is a TypeError naming it."""
    v, off = _parts([2, 1], 2, 0)
    with pytest.raises(TypeError, match="offsets is on meta but values on cpu"):
        cjt.softmax(v, off.to("meta"))
    with pytest.raises(TypeError, match="y is on meta but values on cpu"):
        cjt.jagged_dense_bmm(v, off, torch.ones(2, 2, 2, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="max_length must be None or an integer"):
        cjt.softmax(v, off, max_length=True)
    q = torch.randn(3, 1, 32, dtype=torch.float64)
    with pytest.raises(TypeError, match="bias must be a torch tensor"):
        cjt.jagged_flash_attention(q, q, q, off, bias=np.zeros((2, 1, 2, 2)))
    with pytest.raises(TypeError, match="kv_offsets must be a torch tensor"):
        cjt.jagged_flash_attention(q, q, q, off, kv_offsets=np.array([0, 2, 3]))


def test_jagged2_offsets_are_int64_for_int32_offsets():
    """jagged2_offsets squares the lengths in int64: a row of 50000 items has 2.5e9 jagged2
    items, past int32 (int32 offsets must not make int32 jagged2 offsets)."""
    got = cjt.jagged2_offsets(torch.tensor([0, 2, 2, 50002], dtype=torch.int32))
    assert got.dtype == torch.int64
    assert got.tolist() == [0, 4, 4, 4 + 50000 ** 2]


def test_attention_offsets_errors_name_the_argument_and_hints_are_checked():
    """Malformed ``offsets`` / ``kv_offsets`` are refused naming which (and of which operand);
    ``max_length`` / ``kv_max_length`` are longest-row hints: checked on CPU tensors, refused
    when not integers, and ``kv_max_length`` without ``kv_offsets`` is an error; correct hints
    change nothing."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(8, 2, 32, generator=g, dtype=torch.float64)
    k = torch.randn(7, 1, 32, generator=g, dtype=torch.float64)
    off, koff = torch.tensor([0, 3, 3, 8]), torch.tensor([0, 4, 6, 7])
    with pytest.raises(ValueError, match=r"^offsets \(of q\): .*"):
        cjt.jagged_flash_attention(q, k, k, torch.tensor([0, 5, 3, 8]), kv_offsets=koff)
    with pytest.raises(ValueError, match=r"^kv_offsets \(of k\): .*"):
        cjt.jagged_flash_attention(q, k, k, off, kv_offsets=torch.tensor([0, 4, 6, 9]))
    with pytest.raises(ValueError, match="kv_max_length must be None or an integer"):
        cjt.jagged_flash_attention(q, k, k, off, kv_offsets=koff, kv_max_length=2.0)
    with pytest.raises(ValueError, match="kv_max_length is the longest row of kv_offsets"):
        cjt.jagged_flash_attention(q, q, q, off, kv_max_length=5)
    with pytest.raises(ValueError, match="k has 7 rows but q has 8; give kv_offsets"):
        cjt.jagged_flash_attention(q, k, k, off)
    with pytest.raises(ValueError, match=r"^kv_offsets \(of k\): .*max_length"):
        cjt.jagged_flash_attention(q, k, k, off, kv_offsets=koff, kv_max_length=3)
    want = cjt.jagged_flash_attention(q, k, k, off, kv_offsets=koff, causal=True)
    got = cjt.jagged_flash_attention(q, k, k, off, kv_offsets=koff, causal=True, max_length=5,
                                     kv_max_length=4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_offsets_are_validated_once_per_tensor(monkeypatch):
    """CUDA offsets tensors are validated once (one device sync each) and their structure kept:
    a forward + backward through the adapter validates each offsets array in its first forward
    only; a second step over the same tensors, or one with longest-row hints, validates
    nothing; an in-place change of an offsets tensor (torch's version counter), a new tensor
    or another stream validates again. Gradients are equal across the paths (cross-attention,
    bf16), and a row op shares the cache."""
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    calls = []
    real = cj.JaggedArray._validate
    monkeypatch.setattr(cj.JaggedArray, "_validate",
                        lambda self, given: calls.append(given) or real(self, given))
    g = torch.Generator().manual_seed(9)
    lq, lk = [3, 0, 70, 1], [5, 2, 64, 0]
    off = torch.from_numpy(make_offsets(lq)).cuda()
    koff = torch.from_numpy(make_offsets(lk)).cuda().to(torch.int32)

    def step(**hints):
        g.manual_seed(9)
        q, k, v = (torch.randn(n, h, 64, generator=g).to("cuda", torch.bfloat16)
                   .requires_grad_() for n, h in ((sum(lq), 2), (sum(lk), 1), (sum(lk), 1)))
        calls.clear()
        out = cjt.jagged_flash_attention(q, k, v, hints.pop("off", off),
                                         kv_offsets=hints.pop("koff", koff), **hints)
        n_fwd = len(calls)
        out.float().square().sum().backward()
        return out, [t.grad for t in (q, k, v)], (n_fwd, len(calls) - n_fwd)

    out, grads, n = step()
    assert n == (2, 0)
    # (each case's arguments made when it runs: koff's in-place change only then)
    for name, kw, want in (("again", dict, (0, 0)),
                           ("hinted", lambda: dict(max_length=70, kv_max_length=64), (0, 0)),
                           ("in-place", lambda: dict(koff=koff.add_(0)), (1, 0)),
                           ("new tensor", lambda: dict(off=off.clone()), (1, 0))):
        out2, grads2, n = step(**kw())
        assert n == want, name
        torch.testing.assert_close(out2, out, rtol=0, atol=0)
        for a, b in zip(grads2, grads):
            assert a.abs().sum() > 0
            # (dq's float32 atomics may add in another order: a bf16 rounding may flip an ulp)
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)
    vals = torch.randn(sum(lq), 3, device="cuda")
    calls.clear()
    cjt.softmax(vals, off)
    cjt.sum(vals, off)
    assert len(calls) == 0  # (off was validated by the attention above, on this stream)
    with torch.cuda.stream(torch.cuda.Stream()):
        calls.clear()
        step()
        assert len(calls) == 2
