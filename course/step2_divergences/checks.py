"""Step 2 checks: kl.py's token-level divergences, their closed-form gradients, skew KLs."""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import kl
from grading import (Failure, call, expect_close, expect_close_hinted, expect_same_gradient, expect_true, no_autograd,
                     tensor, value_and_grads)

TITLE = "token-level KL, reverse KL and JSD, and their gradients"
EXTENSION_TITLE = "skew KL (DistiLLM)"
ALLOWED_IMPORTS = {}  # kl.py is this step's answer: nothing of it may be imported


def _autograd(divergence):
    """∂ Σ divergence / ∂ z_q by autograd through the project's function."""
    def grad(student_logits, teacher_logits):
        z = student_logits.detach().clone().requires_grad_()
        return torch.autograd.grad(divergence(z, teacher_logits).sum(), z)[0]
    return grad


def _forward_kl_grad(student_logits, teacher_logits):
    """q − p: the closed form kl.py's chunked loss computes by hand (kl.py's docstring of it)."""
    return F.softmax(student_logits, -1) - F.softmax(teacher_logits, -1)


def _reverse_kl_grad(student_logits, teacher_logits):
    """q ⊙ (log q − log p − KL(q‖p)), 0 where q = 0: the closed form of kl.py's chunked loss."""
    log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    q = log_q.exp()
    ratio = torch.where(q > 0, log_q - log_p, torch.zeros_like(log_q))
    return q * (ratio - kl.reverse_kl(student_logits, teacher_logits)[..., None])


def solution():
    """The project's own functions (the teacher's switch); the gradients in closed form (kl.py computes
    them inside its chunked loss, where they cannot be called alone), checked against autograd."""
    return SimpleNamespace(forward_kl=kl.forward_kl, reverse_kl=kl.reverse_kl, jsd=kl.jsd,
                           forward_kl_grad=_forward_kl_grad, reverse_kl_grad=_reverse_kl_grad,
                           skew_forward_kl=kl.skew_forward_kl, skew_reverse_kl=kl.skew_reverse_kl)


def _logits(seed=0, shape=(3, 5, 11), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64),
            scale * torch.randn(shape, generator=g, dtype=torch.float64))


def _hints(name, s, t, tau, want, **kwargs):
    """Common mistakes, recognised by the value they give (grading.hint_for)."""
    other = {"forward_kl": ("reverse_kl", "your value is the reverse KL KL(q‖p): forward KL averages over the "
                                          "teacher's p, KL(p‖q) = Σ p (log p − log q)"),
             "reverse_kl": ("forward_kl", "your value is the forward KL KL(p‖q): reverse KL averages over the "
                                          "student's q, KL(q‖p) = Σ q (log q − log p)")}
    hints = []
    if name in other:
        hints.append((lambda: getattr(kl, other[name][0])(s, t, temperature=tau), other[name][1]))
    if name == "jsd":
        hints.append((lambda: kl.jsd(t, s, temperature=tau, **kwargs), "p and q swapped: m = β p + (1 − β) q with "
                      "p the teacher's, and β weighs KL(p‖m)"))
    if tau != 1:
        hints += [(want * tau ** 2, f"exactly τ² = {tau ** 2:g} too large: kl.py returns the divergence of the "
                   "softened distributions itself; Hinton et al.'s τ² factor is a separate switch "
                   "(kl.py's scale_by_tau2, off by default)"),
                  (want / tau ** 2, f"exactly τ² = {tau ** 2:g} too small: divide the logits by τ once, nothing else"),
                  (lambda: getattr(kl, name)(s, t, **kwargs), "your value ignores the temperature: q = softmax(z_q / τ), "
                   "p = softmax(z_p / τ)")]
    return hints


def _compare(m, name, reference, shape=(3, 5, 11), temperatures=(1.0, 2.0), seed=0, **kwargs):
    """Value and gradient (w.r.t. the student's logits, of a random weighting of the positions) of the
    learner's divergence against the project's."""
    s, t = _logits(seed, shape)
    weights = torch.rand(shape[:-1], generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    shown_shape = "[" + ", ".join(map(str, shape)) + "]"
    for tau in temperatures:
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        what = f"{name}({args + ', ' if args else ''}temperature={tau}) on {shown_shape} logits"
        got = call(m, name, s, t, temperature=tau, **kwargs)
        want = reference(s, t, temperature=tau, **kwargs)
        expect_close_hinted(what, tensor(name, got, want.shape), want, _hints(name, s, t, tau, want, **kwargs),
                            atol=1e-9, rtol=1e-7)
        _, (got_grad,) = value_and_grads(what, lambda z: call(m, name, z, t, temperature=tau, **kwargs), s,
                                         weights=weights)
        _, (want_grad,) = value_and_grads(what, lambda z: reference(z, t, temperature=tau, **kwargs), s,
                                          weights=weights)
        expect_same_gradient(f"gradient of {what} w.r.t. the student's logits", got_grad, want_grad,
                             atol=1e-9, rtol=1e-7)


def check_forward(m):
    """forward_kl equals kl.forward_kl (τ = 1 and 2), value and gradient"""
    _compare(m, "forward_kl", kl.forward_kl)


def check_reverse(m):
    """reverse_kl equals kl.reverse_kl (τ = 1 and 2), value and gradient"""
    _compare(m, "reverse_kl", kl.reverse_kl)


def _masked_logits():
    s, t = _logits(1, (4, 6))
    s[:, :2] = t[:, :2] = -math.inf          # masked for both: contributes nothing
    t[0, 3] = -math.inf                      # the teacher alone rules out a token
    s[1, 4] = -math.inf                      # the student alone rules out a token
    return s, t


MASKED = "logits -inf at tokens 0, 1 (both), token 3 of row 0 (teacher only) and token 4 of row 1 (student only)"
MASKED_DIVERGENCES = (("forward_kl", kl.forward_kl, {}), ("reverse_kl", kl.reverse_kl, {}),
                      ("jsd", kl.jsd, dict(beta=0.5)), ("jsd", kl.jsd, dict(beta=0.1)))


def check_masked(m):
    """a masked vocabulary (-inf logits): finite where the divergence is, 0 · log 0 = 0, finite gradients"""
    s, t = _masked_logits()
    for name, reference, kwargs in MASKED_DIVERGENCES:
        args = "".join(f", {k}={v}" for k, v in kwargs.items())
        got = tensor(name, call(m, name, s, t, **kwargs), (4,))
        want = reference(s, t, **kwargs)
        nan = torch.isnan(got) & ~torch.isnan(want)
        if bool(nan.any()):
            row = int(nan.nonzero()[0, 0])
            raise Failure(f"{name}({args[2:]}) with {MASKED} at index [{row}]: got nan, expected "
                          f"{want[row].item():.6g}; a token with zero probability must contribute 0 (0 · log 0 = 0): "
                          "select the log-ratio with torch.where before multiplying, since −inf − (−inf) is nan")
        expect_close(f"{name}({args[2:]}) with {MASKED}", got, want, atol=1e-9, rtol=1e-7)
        # gradients where the divergence is finite (the rows where it is infinite have none to compare)
        finite = torch.isfinite(want)
        weights = finite.double()
        _, (got_grad,) = value_and_grads(name, lambda z: torch.where(finite, call(m, name, z, t, **kwargs), 0.0), s,
                                         weights=weights)
        _, (want_grad,) = value_and_grads(name, lambda z: torch.where(finite, reference(z, t, **kwargs), 0.0), s,
                                          weights=weights)
        expect_same_gradient(f"gradient of {name}({args[2:]}) w.r.t. the student's logits, rows where it is "
                             f"finite, with {MASKED}", got_grad, want_grad, atol=1e-9, rtol=1e-7)
    return (f"row 0: forward KL {kl.forward_kl(s, t)[0]:.4f} (finite: p = 0 there), reverse KL "
            f"{kl.reverse_kl(s, t)[0].item()} (the student puts mass where the teacher has none), "
            f"JSD(0.5) {kl.jsd(s, t)[0]:.4f} (m > 0 wherever p or q is)")


def check_unseen(m):
    """shapes and temperatures the page does not show: [7], [2, 1, 3, 4], [1, 2]; τ = 0.5 and 3; float32"""
    for shape, seed in (((7,), 5), ((2, 1, 3, 4), 6), ((1, 2), 7)):
        for name, reference, kwargs in MASKED_DIVERGENCES[:3] + (("jsd", kl.jsd, dict(beta=0.3)),):
            _compare(m, name, reference, shape=shape, temperatures=(0.5, 3.0), seed=seed, **kwargs)
    s, t = (x.float() for x in _logits(8, (3, 9)))
    for name, reference, kwargs in MASKED_DIVERGENCES[:3]:
        got = tensor(name, call(m, name, s, t, **kwargs), (3,))
        expect_close(f"{name} on float32 logits [3, 9]", got, reference(s.double(), t.double(), **kwargs),
                     atol=1e-5, rtol=1e-4)


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


def _closed(m, name, s, t):
    """The learner's closed-form gradient, run with autograd off and its entry points refused."""
    with no_autograd(name):
        return tensor(name, call(m, name, s, t), s.shape)


def _check_grad(m, name, divergence, closed_form):
    s, t = _logits(3, (4, 7))
    got = _closed(m, name, s, t)
    expect_close(f"{name} against autograd through kl.{divergence.__name__}", got,
                 _autograd(divergence)(s, t), atol=1e-10, rtol=1e-7)
    log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
    expect_close(f"{name} against the closed form", got, closed_form(log_q, log_p), atol=1e-10, rtol=1e-7)
    expect_close(f"{name}: sums to 0 over the vocabulary (softmax is shift-invariant)", got.sum(-1),
                 torch.zeros(4, dtype=got.dtype), atol=1e-12)
    for shape, seed in (((9,), 9), ((2, 3, 2, 5), 10)):
        s, t = _logits(seed, shape)
        expect_close(f"{name} on [{', '.join(map(str, shape))}] logits, against autograd through "
                     f"kl.{divergence.__name__}", _closed(m, name, s, t), _autograd(divergence)(s, t),
                     atol=1e-10, rtol=1e-7)
    s, t = _masked_logits()
    finite = torch.isfinite(divergence(s, t))
    got = _closed(m, name, s, t)[finite]
    want = _autograd(lambda z, tt: torch.where(finite, divergence(z, tt), 0.0))(s, t)[finite]
    if bool(torch.isnan(got).any()):
        raise Failure(f"{name} with {MASKED}: got nan where the divergence is finite; a masked token has "
                      "q = 0 and gradient 0: clean log q − log p where q = 0 (torch.where) before multiplying")
    expect_close(f"{name} with {MASKED}, rows where the divergence is finite", got, want, atol=1e-10, rtol=1e-7)


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


CHECKS = [check_forward, check_reverse, check_jsd, check_masked, check_unseen, check_forward_grad, check_reverse_grad]


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
