"""Step 5 checks: teacher-mixed sampling and importance weights of policy_gradient.py; the bias and
variance of the gradient under p̃ with no weights, per-token weights and sequence weights, exactly."""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import enumeration as en
import policy_gradient as pg
from grading import (Failure, call, cosine, expect_close, expect_close_hinted, expect_same_gradient, expect_true,
                     garbage_on_padding, relative_error, tensor)

TITLE = "teacher-mixed sampling and its importance weights"
EXTENSION_TITLE = "sequence-level importance weights"
# what the exercise may import from the project: step 2's divergences, steps 3 and 4's pieces
ALLOWED_IMPORTS = {"kl": {"forward_kl", "reverse_kl", "jsd", "masked_mean"},
                   "policy_gradient": {"token_rewards", "returns", "policy_loss", "single_step_loss", "masked_mean"}}

ALPHA = 0.2
LABELS = {"none": "no weights (w = 1)", "token": "per-token w_t", "sequence": "sequence W(y)"}
# the figures course/step5_teacher_mix/README.md quotes (python course/check.py --solutions 5),
# checked in --solutions mode: exact steps -> (relative error, cosine, variance) per weighting
PAGE_FIGURES = {0: {"none": (0.387, 0.942, 7.278), "token": (0.662, 0.985, 6.260), "sequence": (0.0, 1.0, 6.701)},
                40: {"none": (2.133, -0.069, 2.394), "token": (1.368, 0.923, 0.653), "sequence": (0.0, 1.0, 0.443)}}


def _mixed(logp, logp_teacher, logp_mix, mask, student_logits, teacher_logits, importance="token"):
    return pg.minillm_loss(logp, logp.detach(), logp_teacher, mask, student_logits, teacher_logits, logp_mix,
                           single_step=True, teacher_mix_alpha=ALPHA, importance=importance, length_norm=False,
                           clip_eps=None)[0]


def _unweighted(r):
    return pg.minillm_loss(r.logp, r.logp_old, r.logp_teacher, r.mask, r.student_logits, r.teacher_logits,
                           single_step=True, teacher_mix_alpha=0.0, length_norm=False, clip_eps=None)[0]


def solution():
    """The project's own functions (the teacher's switch)."""
    return SimpleNamespace(teacher_mix_log_probs=pg.teacher_mix_log_probs, importance_weights=pg.importance_weights,
                           mixed_decomposed_loss=_mixed, sequence_importance_weights=pg.sequence_importance_weights,
                           is_solution=True)


def batch(seed=0, vocab=7):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    student = 1.5 * torch.randn(3, 5, vocab, generator=g, dtype=torch.float64)
    teacher = 2.5 * torch.randn(3, 5, vocab, generator=g, dtype=torch.float64)
    y = torch.randint(vocab, (3, 5), generator=g)
    take = lambda lp: lp.gather(-1, y[..., None]).squeeze(-1)
    logp_old = torch.where(mask, take(F.log_softmax(student, -1)), -math.inf)
    logp_mix = torch.where(mask, take(pg.teacher_mix_log_probs(teacher, student, ALPHA)), -math.inf)
    return SimpleNamespace(mask=mask, student=student, teacher=teacher, y=y, take=take, logp_old=logp_old,
                           logp_mix=logp_mix, logp_teacher=take(F.log_softmax(teacher, -1)))


def check_mixture(m):
    """teacher_mix_log_probs equals policy_gradient.teacher_mix_log_probs (α = 0, 0.2, 0.5, 1; a masked token)"""
    b = batch()
    teacher = b.teacher.clone()
    teacher[0, 0, 3] = -math.inf  # a token the teacher rules out: p̃ still gives it (1 − α) q
    for alpha in (0.0, ALPHA, 0.5, 1.0):
        got = tensor(f"teacher_mix_log_probs(α={alpha})", call(m, "teacher_mix_log_probs", teacher, b.student, alpha),
                     b.student.shape)
        want = pg.teacher_mix_log_probs(teacher, b.student, alpha)
        expect_close_hinted(f"teacher_mix_log_probs(α={alpha})", got, want,
                            [(lambda: pg.teacher_mix_log_probs(b.student, teacher, alpha), "α weighs the teacher: "
                              "p̃ = α p + (1 − α) q, yours is α q + (1 − α) p")], atol=1e-12, rtol=1e-10)
        if 0 < alpha < 1:  # its gradient w.r.t. the student's logits (the mixture is built from q)
            weights = torch.rand(b.student.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            weights[0, 0, 3] = 0.0
            grads = []
            for fn in (lambda z: call(m, "teacher_mix_log_probs", teacher, z, alpha),
                       lambda z: pg.teacher_mix_log_probs(teacher, z, alpha)):
                z = b.student.clone().requires_grad_()
                value = tensor("teacher_mix_log_probs", fn(z))
                if not value.requires_grad:
                    raise Failure(f"teacher_mix_log_probs(α={alpha}) carries no gradient w.r.t. the student's "
                                  "logits: build it with torch operations")
                grads.append(torch.autograd.grad((torch.where(weights > 0, value, 0.0) * weights).sum(), z)[0])
            expect_same_gradient(f"gradient of teacher_mix_log_probs(α={alpha}) w.r.t. the student's logits",
                                 grads[0], grads[1], atol=1e-12, rtol=1e-10)
    ends = (F.log_softmax(b.student, -1), F.log_softmax(teacher, -1))
    for alpha, end in zip((0.0, 1.0), ends):
        expect_close(f"teacher_mix_log_probs(α={alpha}) is log {'q' if alpha == 0 else 'p'}",
                     call(m, "teacher_mix_log_probs", teacher, b.student, alpha), end, atol=1e-12)


def check_weights(m):
    """importance_weights equals policy_gradient.importance_weights (1 on padding, clip, detached)"""
    b = batch(1)
    logp_old = b.logp_old.clone().requires_grad_()
    for clip in (None, 1.1):
        got = tensor("importance_weights", call(m, "importance_weights", logp_old, b.logp_mix, b.mask, clip=clip),
                     (3, 5))
        want = pg.importance_weights(b.logp_old, b.logp_mix, b.mask, clip=clip)
        expect_close_hinted(f"importance_weights(clip={clip})", got, want,
                            [(torch.where(b.mask, 1 / want, 1.0), "the reciprocal ratio: w = q_old / p̃ (the "
                              "student's probability over the one the tokens were drawn from), yours is p̃ / q_old"),
                             (torch.where(b.mask, (b.logp_old - b.logp_mix).exp(), 0.0), "1 on padding, not 0"),
                             (torch.where(b.mask, b.logp_old - b.logp_mix, 1.0), "the log of the ratio: take exp")],
                            atol=1e-12, rtol=1e-10)
        expect_true(not got.requires_grad, "importance_weights must be constants: detach them")
    garbage = garbage_on_padding(b.logp_old, b.mask, seed=1), garbage_on_padding(b.logp_mix, b.mask, seed=3)
    got = tensor("importance_weights", call(m, "importance_weights", *garbage, b.mask, clip=None), (3, 5))
    expect_close("importance_weights with ±inf, nan and ±1e30 on the padding of logp_old and logp_mix", got,
                 pg.importance_weights(b.logp_old, b.logp_mix, b.mask), atol=1e-12, rtol=1e-10)
    w = pg.importance_weights(b.logp_old, b.logp_mix, b.mask)
    return (f"w_t ranges over [{w[b.mask].min():.3f}, {w[b.mask].max():.3f}] here; it can never exceed "
            f"1 / (1 − α) = {1 / (1 - ALPHA):.2f}, since p̃ ≥ (1 − α) q")


def _value_and_grad(fn, logits):
    leaf = logits.clone().requires_grad_()
    value = tensor("the loss", fn(leaf), ())
    if not value.requires_grad:
        raise Failure("the loss carries no gradient w.r.t. the student's logits: build it with torch operations")
    return value, torch.autograd.grad(value, leaf)[0]


def check_mixed_loss(m):
    """mixed_decomposed_loss equals policy_gradient.minillm_loss(teacher_mix_alpha=0.2, ...), value and gradient"""
    b = batch(2)

    def through(fn):
        def loss(z):
            logp = b.take(F.log_softmax(z, -1))
            return fn(logp, b.logp_teacher, b.logp_mix, b.mask, z, b.teacher)
        return loss
    got, got_grad = _value_and_grad(through(lambda *a: call(m, "mixed_decomposed_loss", *a)), b.student)
    want, want_grad = _value_and_grad(through(_mixed), b.student)
    expect_close("mixed_decomposed_loss", got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient("gradient of mixed_decomposed_loss w.r.t. the student's logits", got_grad, want_grad,
                         atol=1e-12, rtol=1e-10)
    teacher, mix = garbage_on_padding(b.logp_teacher, b.mask, seed=1), garbage_on_padding(b.logp_mix, b.mask, seed=2)

    def garbled(z):
        logp = garbage_on_padding(b.take(F.log_softmax(z, -1)), b.mask, seed=3)
        return call(m, "mixed_decomposed_loss", logp, teacher, mix, b.mask, z, b.teacher)
    got, got_grad = _value_and_grad(garbled, b.student)
    what = "mixed_decomposed_loss with ±inf, nan and ±1e30 on the padding of logp, logp_teacher and logp_mix"
    expect_close(what, got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient(f"gradient of {what}", got_grad, want_grad, atol=1e-12, rtol=1e-10)


def _figures(world, student, loss_fn, exact):
    """(relative error, cosine, variance) of a one-rollout estimate drawn from p̃, exactly."""
    mean, variance = en.mean_and_variance(*en.per_sequence_gradients(world, student, loss_fn, alpha=ALPHA))
    return mean, (relative_error(mean, exact), cosine(mean, exact), variance)


def _measure(m, weightings, page_check=True):
    world = en.make_world()
    lines = []
    for steps in (0, 40):
        student = en.make_student(world, exact_steps=steps)
        exact, kl_value = en.exact_gradient(world, student)
        row = []
        for name, loss_fn, reference in weightings:
            mean, figures = _figures(world, student, loss_fn, exact)
            if reference is not None:
                want, _ = _figures(world, student, reference, exact)
                expect_close(f"E_p̃[gradient] with {LABELS[name]} ({steps} exact steps) against the project's",
                             mean, want, atol=1e-10, rtol=1e-7)
            if page_check and getattr(m, "is_solution", False):
                expect_close(f"the page's figures for {LABELS[name]} at {steps} exact steps (relative error, "
                             "cosine, variance; update course/step5_teacher_mix/README.md and PAGE_FIGURES if the "
                             "code changed)", torch.tensor(figures), torch.tensor(PAGE_FIGURES[steps][name]),
                             atol=1e-3, rtol=0)
            row.append(f"{LABELS[name]}: rel. error {figures[0]:.3f}, cosine {figures[1]:.3f}, "
                       f"variance {figures[2]:.3f}")
        lines.append(f"{steps} exact steps (KL(q‖p) = {kl_value:.3f}), α = {ALPHA}:")
        lines += [f"  {line}" for line in row]
    return lines


def check_bias(m):
    """rollouts from p̃ (α = 0.2): the bias of per-token weights, measured exactly over all 6⁴ sequences"""
    student_loss = lambda r: call(m, "mixed_decomposed_loss", r.logp, r.logp_teacher, r.logp_mix, r.mask,
                                  r.student_logits, r.teacher_logits)
    project_loss = lambda r: _mixed(r.logp, r.logp_teacher, r.logp_mix, r.mask, r.student_logits, r.teacher_logits)
    lines = _measure(m, [("none", _unweighted, None), ("token", student_loss, project_loss)])
    return "\n".join(lines) + "\n(relative error and cosine of E_p̃[estimate] against ∇KL(q‖p); both biased)"


CHECKS = [check_mixture, check_weights, check_mixed_loss, check_bias]


# -----------------------------------------------------------------------------
# extension

def check_sequence_weights(m):
    """sequence_importance_weights equals policy_gradient.sequence_importance_weights (1 on padding, clip)"""
    b = batch(3)
    for clip in (None, 1.5):
        got = tensor("sequence_importance_weights",
                     call(m, "sequence_importance_weights", b.logp_old, b.logp_mix, b.mask, clip=clip), (3, 5))
        expect_close(f"sequence_importance_weights(clip={clip})", got,
                     pg.sequence_importance_weights(b.logp_old, b.logp_mix, b.mask, clip=clip), atol=1e-12, rtol=1e-10)
    garbage = garbage_on_padding(b.logp_old, b.mask, seed=1), garbage_on_padding(b.logp_mix, b.mask, seed=3)
    got = tensor("sequence_importance_weights", call(m, "sequence_importance_weights", *garbage, b.mask), (3, 5))
    expect_close("sequence_importance_weights with ±inf, nan and ±1e30 on the padding of logp_old and logp_mix", got,
                 pg.sequence_importance_weights(b.logp_old, b.logp_mix, b.mask), atol=1e-12, rtol=1e-10)


def check_sequence_unbiased(m):
    """with sequence weights the estimate is unbiased under p̃; its variance beside the per-token one's"""
    def sequence_loss(r):
        w = call(m, "sequence_importance_weights", r.logp_old, r.logp_mix, r.mask)
        rewards = pg.token_rewards(r.logp_teacher, r.logp_old, r.mask)
        adv = pg.returns(rewards, r.mask)
        return (pg.single_step_loss(r.student_logits, r.teacher_logits, r.mask, weights=w)
                + pg.policy_loss(r.logp, r.logp_old, adv, w, r.mask, clip_eps=None)[0])
    project_loss = lambda r: _mixed(r.logp, r.logp_teacher, r.logp_mix, r.mask, r.student_logits, r.teacher_logits,
                                    importance="sequence")
    token_loss = lambda r: _mixed(r.logp, r.logp_teacher, r.logp_mix, r.mask, r.student_logits, r.teacher_logits)
    world = en.make_world()
    student = en.make_student(world)
    exact, _ = en.exact_gradient(world, student)
    mean, _ = _figures(world, student, sequence_loss, exact)
    expect_close("E_p̃[gradient with sequence weights] against ∇KL(q‖p)", mean, exact, atol=1e-10, rtol=1e-7)
    lines = _measure(m, [("token", token_loss, None), ("sequence", sequence_loss, project_loss)])
    t = world.ys.shape[1]
    return "\n".join(lines) + (f"\nW(y) ≤ (1 / (1 − α))^T: {(1 / (1 - ALPHA)) ** t:.2f} at T = {t} here, "
                               f"{(1 / (1 - ALPHA)) ** 256:.1e} at T = 256 (MiniLLM's longest responses)")


EXTENSION = [check_sequence_weights, check_sequence_unbiased]
