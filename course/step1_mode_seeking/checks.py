"""Step 1 checks: the 2D mixture's density and the forward / reverse KL losses of toy/mode_seeking_2d.py."""

import copy
import math
from types import SimpleNamespace

import torch

from grading import (Failure, call, cosine, expect_close, expect_same_gradient, expect_true, relative_error, tensor,
                     value_and_grads)
from toy import mode_seeking_2d as ms

TITLE = "forward vs reverse KL on a 2D mixture"
EXTENSION_TITLE = "the score-function (REINFORCE) estimator of reverse KL"
ALLOWED_IMPORTS = {}  # toy/mode_seeking_2d.py is this step's answer

MODE_STD, RADIUS = 0.5, 3.0


def solution():
    """The project's own functions (the teacher's switch)."""
    def mixture_log_prob(x, means, log_stds, logits):
        return ms.GaussianMixture2D(means, log_stds, logits, covariance="diag").log_prob(x)
    return SimpleNamespace(mixture_log_prob=mixture_log_prob, forward_kl_loss=ms.forward_kl_loss,
                           reverse_kl_reparam_loss=ms.reverse_kl_reparam_loss,
                           reverse_kl_score_function_loss=ms.reverse_kl_score_function_loss)


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _loss_and_grads(loss_fn, teacher, student, n, seed, what):
    """(value, [grads]) of loss_fn(teacher, copy of student, n, generator(seed))."""
    student = copy.deepcopy(student)
    value = loss_fn(teacher, student, n, torch.Generator().manual_seed(seed))
    value = tensor(f"{what}'s value", value, ())
    if not value.requires_grad:
        raise Failure(f"{what} returned a value with no gradient: build it from student.log_prob "
                      "(and the draws) with torch operations, no .detach() or .item()")
    grads = torch.autograd.grad(value, _params(student), allow_unused=True)
    return value, [torch.zeros_like(p) if g is None else g for p, g in zip(_params(student), grads)]


def _compare_with_project(m, name, project_fn, note):
    teacher = ms.make_teacher()
    student = ms.make_student(n_components=2, seed=1, init_std=0.8)
    with torch.no_grad():
        student.off_diag.fill_(0.3)
        student.logits.copy_(torch.tensor([0.4, -0.2]))
    got, got_grads = _loss_and_grads(lambda *a: call(m, name, *a), teacher, student, 512, 7, name)
    want, want_grads = _loss_and_grads(project_fn, teacher, student, 512, 7, project_fn.__name__)
    expect_close(f"{name} (n=512, seed 7)", got, want, atol=1e-5, rtol=1e-5)
    names = ["mean", "log_diag", "off_diag", "logits"]
    for pname, g, w in zip(names, got_grads, want_grads):
        expect_close(f"gradient of {name} w.r.t. student.{pname}", g, w, atol=1e-4, rtol=1e-4)
    return note.format(value=got.item())


def check_log_prob(m):
    """mixture_log_prob equals GaussianMixture2D.log_prob (diagonal covariances), also 100 σ away; gradients"""
    g = torch.Generator().manual_seed(0)
    means = 2 * torch.randn(3, 2, generator=g)
    log_stds = 0.3 * torch.randn(3, 2, generator=g)
    logits = torch.randn(3, generator=g)
    x = torch.cat([3 * torch.randn(40, 2, generator=g), torch.tensor([[150.0, -150.0]])])
    got = call(m, "mixture_log_prob", x, means, log_stds, logits)
    want = solution().mixture_log_prob(x, means, log_stds, logits)
    tensor("mixture_log_prob", got, (41,))
    expect_true(bool(torch.isfinite(got[-1])), f"mixture_log_prob far from every component (x = (150, −150)) "
                f"gave {got[-1].item()}, expected {want[-1].item():.6g}: use torch.logsumexp, not log(sum(exp))")
    expect_close("mixture_log_prob", got, want, atol=1e-4, rtol=1e-5)
    # its gradient w.r.t. the points and every parameter (fitting a mixture needs all four), float64
    args = [a.double() for a in (x[:-1], means, log_stds, logits)]
    weights = torch.rand(40, generator=g, dtype=torch.float64)
    _, got_grads = value_and_grads("mixture_log_prob", lambda *a: call(m, "mixture_log_prob", *a), *args,
                                   weights=weights)
    _, want_grads = value_and_grads("mixture_log_prob", solution().mixture_log_prob, *args, weights=weights)
    for name, got_g, want_g in zip(("x", "means", "log_stds", "logits"), got_grads, want_grads):
        expect_same_gradient(f"gradient of mixture_log_prob w.r.t. {name}", got_g, want_g, atol=1e-9, rtol=1e-7)
    # other sizes than the page's: one component, five components in one point
    for k, n, seed in ((1, 6, 1), (5, 1, 2)):
        g = torch.Generator().manual_seed(seed)
        args = (torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(k, 2, generator=g, dtype=torch.float64),
                0.5 * torch.randn(k, 2, generator=g, dtype=torch.float64), torch.randn(k, generator=g, dtype=torch.float64))
        expect_close(f"mixture_log_prob of {n} points under {k} components",
                     tensor("mixture_log_prob", call(m, "mixture_log_prob", *args), (n,)),
                     solution().mixture_log_prob(*args), atol=1e-9, rtol=1e-7)


def check_forward_loss(m):
    """forward_kl_loss: the value and gradient of toy/mode_seeking_2d.forward_kl_loss (same draws)"""
    return _compare_with_project(m, "forward_kl_loss", ms.forward_kl_loss,
                                 "−E_p log q = {value:.4f} for a 2-component student")


def check_reverse_loss(m):
    """reverse_kl_reparam_loss: the value and gradient of toy/mode_seeking_2d.reverse_kl_reparam_loss"""
    return _compare_with_project(m, "reverse_kl_reparam_loss", ms.reverse_kl_reparam_loss,
                                 "KL(q‖p) ≈ {value:.4f} for a 2-component student")


def check_closed_forms(m):
    """closed forms for a student sitting on one of the teacher's 4 modes: KL(q‖p) = log 4, −E_p log q"""
    teacher = ms.make_teacher(4, RADIUS, MODE_STD)
    on_mode = ms.GaussianMixture2D(teacher.mean[:1].clone(), math.log(MODE_STD))
    rev = call(m, "reverse_kl_reparam_loss", teacher, on_mode, 4096, torch.Generator().manual_seed(0))
    # q is one of p's four equal, far-apart components: log q − log p = log 4 at every x
    expect_close("reverse_kl_reparam_loss of the on-mode student (closed form log 4)",
                 tensor("reverse_kl_reparam_loss", rev, ()), math.log(4), atol=1e-3, rtol=0)
    # −E_p log q = log(2πσ²) + E_p‖x − μ‖² / (2σ²),
    # with E_p‖x − μ‖² = mean_k ‖μ_k − μ‖² + 2σ²
    sq = ((teacher.mean - teacher.mean[0]) ** 2).sum(-1).mean().item()
    expected = math.log(2 * math.pi * MODE_STD ** 2) + (sq + 2 * MODE_STD ** 2) / (2 * MODE_STD ** 2)
    fwd = call(m, "forward_kl_loss", teacher, on_mode, 20000, torch.Generator().manual_seed(0))
    # its standard error at n = 20000 is 0.19 (measured over 20 seeds)
    expect_close("forward_kl_loss of the on-mode student, n = 20000 (closed form, ± 4 standard errors)",
                 tensor("forward_kl_loss", fwd, ()), expected, atol=0.8, rtol=0)
    fwd_kl = expected - (math.log(2 * math.pi * MODE_STD ** 2) + 1 + math.log(4))  # minus the entropy of p
    return (f"KL(q‖p) = {rev.item():.4f} (log 4 = {math.log(4):.4f}); −E_p log q = {fwd.item():.2f} "
            f"(closed form {expected:.2f}), so KL(p‖q) ≈ {fwd_kl:.1f}: the on-mode student is a reverse-KL "
            "optimum and a terrible forward-KL fit")


def _fit(loss_fn, teacher, student, steps=300, lr=0.05, batch_size=256, seed=0):
    """Adam on loss_fn, as toy/mode_seeking_2d.fit does (fewer steps)."""
    student = copy.deepcopy(student)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(_params(student), lr=lr)
    for _ in range(steps):
        loss = loss_fn(teacher, student, batch_size, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return student.requires_grad_(False)


def check_fits(m):
    """fitting one Gaussian: forward KL matches the teacher's moments, reverse KL sits on one mode"""
    teacher, init = ms.make_teacher(4, RADIUS, MODE_STD), ms.make_student(seed=0)
    fwd = _fit(lambda *a: call(m, "forward_kl_loss", *a), teacher, init)
    rev = _fit(lambda *a: call(m, "reverse_kl_reparam_loss", *a), teacher, init)
    # forward-KL optimum of a Gaussian: the teacher's mean (0, 0) and covariance (σ² + R²/2) I
    moment_std = math.sqrt(MODE_STD ** 2 + RADIUS ** 2 / 2)
    fwd_std = fwd.log_diag.exp()[0]
    expect_close("forward-KL fit: mean (teacher's mean (0, 0), ± 0.25)", fwd.mean[0], torch.zeros(2), atol=0.25)
    expect_close(f"forward-KL fit: std per axis (teacher's, √(σ² + R²/2) = {moment_std:.3f}, ± 0.15)",
                 fwd_std, torch.full((2,), moment_std), atol=0.15)
    nearest = teacher.mean[(teacher.mean - rev.mean[0]).norm(dim=-1).argmin()]
    expect_close("reverse-KL fit: mean (the nearest teacher mode, ± 0.15)", rev.mean[0], nearest, atol=0.15)
    expect_close(f"reverse-KL fit: std per axis (a mode's, {MODE_STD}, ± 0.05)", rev.log_diag.exp()[0],
                 torch.full((2,), MODE_STD), atol=0.05)
    fm, rm = ms.metrics(teacher, fwd), ms.metrics(teacher, rev)
    return (f"forward KL: mean ({fwd.mean[0, 0]:+.2f}, {fwd.mean[0, 1]:+.2f}), std {fwd_std.mean():.2f}, "
            f"mass within 2σ of a mode {fm['mass_near_modes']:.2f}, E_q[log p] {fm['teacher_logp']:.2f}\n"
            f"reverse KL: mean ({rev.mean[0, 0]:+.2f}, {rev.mean[0, 1]:+.2f}), std "
            f"{rev.log_diag.exp()[0].mean():.2f}, mass within 2σ of a mode {rm['mass_near_modes']:.2f}, "
            f"E_q[log p] {rm['teacher_logp']:.2f}")


CHECKS = [check_log_prob, check_forward_loss, check_reverse_loss, check_closed_forms, check_fits]


# -----------------------------------------------------------------------------
# extension

def check_score_function_loss(m):
    """reverse_kl_score_function_loss: the value and gradient of the project's (same draws)"""
    return _compare_with_project(m, "reverse_kl_score_function_loss", ms.reverse_kl_score_function_loss,
                                 "surrogate value {value:.4f} (not a KL: only its gradient means something)")


def check_score_function_unbiased(m):
    """its gradient estimates the same ∇KL(q‖p) as the pathwise one (n = 20000, cosine > 0.99)"""
    teacher, student = ms.make_teacher(), ms.make_student(seed=0)
    _, score = _loss_and_grads(lambda *a: call(m, "reverse_kl_score_function_loss", *a),
                               teacher, student, 20000, 10, "reverse_kl_score_function_loss")
    _, path = _loss_and_grads(ms.reverse_kl_reparam_loss, teacher, student, 20000, 0, "reverse_kl_reparam_loss")
    score, path = torch.cat([g.flatten() for g in score]), torch.cat([g.flatten() for g in path])
    c, e = cosine(score, path), relative_error(score, path)
    # measured over 3 seeds: cosine ≥ 0.9989, relative error ≤ 0.047
    expect_true(c > 0.99 and e < 0.15, f"score-function gradient vs pathwise gradient: cosine {c:.4f} "
                f"(expected > 0.99), relative error {e:.3f} (expected < 0.15)")
    return f"cosine {c:.4f}, relative L2 difference {e:.3f} (both unbiased; they differ by sampling noise)"


EXTENSION = [check_score_function_loss, check_score_function_unbiased]
