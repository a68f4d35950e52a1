"""Step 2 checks: kl.py's token-level divergences, their closed-form gradients, skew KLs."""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import kl
from grading import call, expect_close, expect_true, tensor

TITLE = "token-level KL, reverse KL and JSD, and their gradients"
EXTENSION_TITLE = "skew KL (DistiLLM)"


def _autograd(divergence):
    """∂ Σ divergence / ∂ z_q by autograd through the project's function."""
    def grad(student_logits, teacher_logits):
        z = student_logits.detach().clone().requires_grad_()
        return torch.autograd.grad(divergence(z, teacher_logits).sum(), z)[0]
    return grad


def solution():
    """The project's own functions (the teacher's switch); the gradients by autograd through them."""
    return SimpleNamespace(forward_kl=kl.forward_kl, reverse_kl=kl.reverse_kl, jsd=kl.jsd,
                           forward_kl_grad=_autograd(kl.forward_kl), reverse_kl_grad=_autograd(kl.reverse_kl),
                           skew_forward_kl=kl.skew_forward_kl, skew_reverse_kl=kl.skew_reverse_kl)


def _logits(seed=0, shape=(3, 5, 11), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64),
            scale * torch.randn(shape, generator=g, dtype=torch.float64))


def _compare(m, name, reference, **kwargs):
    s, t = _logits()
    for tau in (1.0, 2.0):
        got = call(m, name, s, t, temperature=tau, **kwargs)
        want = reference(s, t, temperature=tau, **kwargs)
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        expect_close(f"{name}({args + ', ' if args else ''}temperature={tau}) on [3, 5, 11] logits",
                     tensor(name, got, want.shape), want, atol=1e-9, rtol=1e-7)


def check_forward(m):
    """forward_kl equals kl.forward_kl (τ = 1 and 2)"""
    _compare(m, "forward_kl", kl.forward_kl)


def check_reverse(m):
    """reverse_kl equals kl.reverse_kl (τ = 1 and 2)"""
    _compare(m, "reverse_kl", kl.reverse_kl)


def check_masked(m):
    """a masked vocabulary (-inf logits): finite where the divergence is, 0 · log 0 = 0"""
    s, t = _logits(1, (4, 6))
    s[:, :2] = t[:, :2] = -math.inf          # masked for both: contributes nothing
    t[0, 3] = -math.inf                      # the teacher alone rules out a token
    for name, reference in (("forward_kl", kl.forward_kl), ("reverse_kl", kl.reverse_kl)):
        got = tensor(name, call(m, name, s, t), (4,))
        want = reference(s, t)
        expect_close(f"{name} with logits -inf at tokens 0, 1 (both) and at token 3 of row 0 (teacher only)",
                     got, want, atol=1e-9, rtol=1e-7)
    return (f"row 0: forward KL {kl.forward_kl(s, t)[0]:.4f} (finite: p = 0 there), reverse KL "
            f"{kl.reverse_kl(s, t)[0].item()} (the student puts mass where the teacher has none)")


def check_jsd(m):
    """jsd equals kl.jsd (β = 0.1, 0.5, 0.9); JSD(0.5) ≤ log 2; JSD(β)/β -> KL(p‖q) as β -> 0"""
    for beta in (0.1, 0.5, 0.9):
        _compare(m, "jsd", kl.jsd, beta=beta)
    s, t = _logits(2, (6, 9), scale=6.0)
    half = tensor("jsd", call(m, "jsd", s, t, beta=0.5), (6,))
    expect_true(bool((half <= math.log(2) + 1e-12).all()), f"jsd(β=0.5) must stay ≤ log 2 = {math.log(2):.6f}, "
                f"got {half.max().item():.6f}")
    s, t = _logits(2, (6, 9), scale=1.0)  # the limits need β ≪ q/p at every token
    eps = 1e-5
    expect_close("jsd(β = 1e-5) / β against forward_kl (GKD's limit)", call(m, "jsd", s, t, beta=eps) / eps,
                 kl.forward_kl(s, t), atol=1e-6, rtol=1e-3)
    expect_close("jsd(β = 1 − 1e-5) / (1 − β) against reverse_kl", call(m, "jsd", s, t, beta=1 - eps) / eps,
                 kl.reverse_kl(s, t), atol=1e-6, rtol=1e-3)


def _check_grad(m, name, divergence, closed_form):
    s, t = _logits(3, (4, 7))
    got = tensor(name, call(m, name, s, t), s.shape)
    expect_close(f"{name} against autograd through kl.{divergence.__name__}", got,
                 _autograd(divergence)(s, t), atol=1e-10, rtol=1e-7)
    log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
    expect_close(f"{name} against the closed form", got, closed_form(log_q, log_p), atol=1e-10, rtol=1e-7)
    expect_close(f"{name}: sums to 0 over the vocabulary (softmax is shift-invariant)", got.sum(-1),
                 torch.zeros(4, dtype=got.dtype), atol=1e-12)


def check_forward_grad(m):
    """forward_kl_grad: q − p, equal to autograd through kl.forward_kl"""
    _check_grad(m, "forward_kl_grad", kl.forward_kl, lambda log_q, log_p: log_q.exp() - log_p.exp())


def check_reverse_grad(m):
    """reverse_kl_grad: q ⊙ (log q − log p − KL(q‖p)), equal to autograd through kl.reverse_kl"""
    def closed(log_q, log_p):
        q = log_q.exp()
        value = (q * (log_q - log_p)).sum(-1, keepdim=True)
        return q * (log_q - log_p - value)
    _check_grad(m, "reverse_kl_grad", kl.reverse_kl, closed)
    s, t = _logits(3, (4, 7))
    fwd, rev = kl.forward_kl(s, t), kl.reverse_kl(s, t)
    return ("forward KL's gradient q − p pulls every token toward the teacher's probability; reverse KL's "
            "is weighted by q: tokens the student ignores get no push\n"
            f"on this batch KL(p‖q) = {fwd.mean():.3f}, KL(q‖p) = {rev.mean():.3f} (mean over 4 positions)")


CHECKS = [check_forward, check_reverse, check_masked, check_jsd, check_forward_grad, check_reverse_grad]


# -----------------------------------------------------------------------------
# extension

def check_skew_values(m):
    """skew_forward_kl / skew_reverse_kl equal kl.skew_forward_kl / kl.skew_reverse_kl (α = 0.1, 0.5)"""
    for alpha in (0.1, 0.5):
        _compare(m, "skew_forward_kl", kl.skew_forward_kl, alpha=alpha)
        _compare(m, "skew_reverse_kl", kl.skew_reverse_kl, alpha=alpha)


def check_skew_limits(m):
    """α -> 0 gives the plain KLs; the skew KLs are bounded by log(1/α) where the plain ones explode"""
    s, t = _logits(4, (5, 8), scale=1.0)  # the limit needs α ≪ q/p at every token
    eps = 1e-7
    expect_close("skew_forward_kl(α = 1e-7) against forward_kl", call(m, "skew_forward_kl", s, t, alpha=eps),
                 kl.forward_kl(s, t), atol=1e-4, rtol=1e-4)
    expect_close("skew_reverse_kl(α = 1e-7) against reverse_kl", call(m, "skew_reverse_kl", s, t, alpha=eps),
                 kl.reverse_kl(s, t), atol=1e-4, rtol=1e-4)
    s, t = _logits(4, (5, 8), scale=8.0)
    for name in ("skew_forward_kl", "skew_reverse_kl"):
        value = tensor(name, call(m, name, s, t, alpha=0.1), (5,))
        expect_true(bool((value <= math.log(10) + 1e-9).all()),
                    f"{name}(α = 0.1) must stay ≤ log(1/α) = {math.log(10):.4f}, got {value.max().item():.4f}")
    return (f"logits ×8: forward KL up to {kl.forward_kl(s, t).max():.1f}, skew forward KL (α = 0.1) up to "
            f"{kl.skew_forward_kl(s, t, alpha=0.1).max():.2f} ≤ log 10 = {math.log(10):.2f}")


EXTENSION = [check_skew_values, check_skew_limits]
