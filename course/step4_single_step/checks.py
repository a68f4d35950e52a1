"""Step 4 checks: policy_gradient.single_step_loss and the decomposed MiniLLM gradient; its exact mean
and variance over every toy sequence against plain REINFORCE (the variance is measured, not assumed)."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F

import enumeration as en
import policy_gradient as pg
from grading import Failure, call, expect_close, expect_same_gradient, garbage_on_padding, relative_error, tensor

TITLE = "the single-step decomposition and its variance"
EXTENSION_TITLE = "length normalisation"
# what the exercise may import from the project: step 2's divergences and step 3's pieces
ALLOWED_IMPORTS = {"kl": {"forward_kl", "reverse_kl", "jsd", "masked_mean"},
                   "policy_gradient": {"token_rewards", "returns", "policy_loss", "masked_mean"}}

# the figures course/step4_single_step/README.md quotes (python course/check.py --solutions 4);
# checked in --solutions mode, so that the page and the code cannot drift apart
PAGE_FIGURES = {0: (11.854, 6.222), 40: (0.373, 0.810)}   # exact steps -> (REINFORCE, decomposed) variance
PAGE_LENGTH_NORM_BIAS = 1.130


def _decomposed(logp, logp_teacher, mask, student_logits, teacher_logits, length_norm=False):
    return pg.minillm_loss(logp, logp.detach(), logp_teacher, mask, student_logits, teacher_logits,
                           single_step=True, teacher_mix_alpha=0.0, length_norm=length_norm, clip_eps=None)[0]


def _reinforce(logp, logp_teacher, mask):
    return pg.minillm_loss(logp, logp.detach(), logp_teacher, mask, single_step=False, teacher_mix_alpha=0.0,
                           length_norm=False, clip_eps=None)[0]


def solution():
    """The project's own functions (the teacher's switch)."""
    return SimpleNamespace(single_step_loss=pg.single_step_loss, decomposed_loss=_decomposed,
                           length_normalized_returns=lambda rewards, mask: pg.length_normalized_returns(rewards, mask),
                           is_solution=True)


def batch(seed=0, vocab=7):
    """Right-padded rollouts (5, 3 and 1 real tokens): logits, sampled tokens and the teacher's logits."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    student = 1.5 * torch.randn(3, 5, vocab, generator=g, dtype=torch.float64)
    teacher = 2.5 * torch.randn(3, 5, vocab, generator=g, dtype=torch.float64)
    y = torch.randint(vocab, (3, 5), generator=g)
    weights = torch.where(mask, 0.5 + torch.rand(3, 5, generator=g, dtype=torch.float64), 1e6)
    return SimpleNamespace(mask=mask, student=student, teacher=teacher, y=y, weights=weights,
                           logp_teacher=F.log_softmax(teacher, -1).gather(-1, y[..., None]).squeeze(-1))


def _value_and_grad(fn, logits):
    leaf = logits.clone().requires_grad_()
    value = tensor("the loss", fn(leaf), ())
    if not value.requires_grad:
        raise Failure("the loss carries no gradient w.r.t. the student's logits: build it with torch operations")
    return value, torch.autograd.grad(value, leaf)[0]


def check_single_step(m):
    """single_step_loss equals policy_gradient.single_step_loss (with and without weights), value and gradient"""
    b = batch()
    for weights in (None, b.weights):
        label = "with weights" if weights is not None else "without weights"
        got, got_grad = _value_and_grad(lambda z: call(m, "single_step_loss", z, b.teacher, b.mask, weights=weights),
                                        b.student)
        want, want_grad = _value_and_grad(lambda z: pg.single_step_loss(z, b.teacher, b.mask, weights=weights),
                                          b.student)
        expect_close(f"single_step_loss {label}", got, want, atol=1e-12, rtol=1e-10)
        expect_same_gradient(f"gradient of single_step_loss {label} w.r.t. the student's logits", got_grad,
                             want_grad, atol=1e-12, rtol=1e-10)
    # another vocabulary and batch than the page's, weights of ±1e30 on padding
    b = batch(5, vocab=4)
    weights = garbage_on_padding(b.weights, b.mask, seed=3).nan_to_num(nan=1e30, posinf=1e30, neginf=-1e30)
    got, got_grad = _value_and_grad(lambda z: call(m, "single_step_loss", z, b.teacher, b.mask, weights=weights),
                                    b.student)
    want, want_grad = _value_and_grad(lambda z: pg.single_step_loss(z, b.teacher, b.mask, weights=b.weights),
                                      b.student)
    what = "single_step_loss (vocabulary 4) with weights ±1e30 on padding"
    expect_close(what, got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient(f"gradient of {what} w.r.t. the student's logits", got_grad, want_grad, atol=1e-12,
                         rtol=1e-10)


def check_decomposed(m):
    """decomposed_loss equals policy_gradient.minillm_loss(single_step=True, α = 0, ...), value and gradient"""
    b = batch(1)

    def through(fn):
        def loss(z):
            logp = F.log_softmax(z, -1).gather(-1, b.y[..., None]).squeeze(-1)
            return fn(logp, b.logp_teacher, b.mask, z, b.teacher)
        return loss
    got, got_grad = _value_and_grad(through(lambda *a: call(m, "decomposed_loss", *a)), b.student)
    want, want_grad = _value_and_grad(through(_decomposed), b.student)
    expect_close("decomposed_loss", got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient("gradient of decomposed_loss w.r.t. the student's logits (through logp and the "
                         "single-step term)", got_grad, want_grad, atol=1e-12, rtol=1e-10)
    # ±inf, nan and ±1e30 on the padding of logp and logp_teacher
    teacher = garbage_on_padding(b.logp_teacher, b.mask, seed=1)

    def garbled(z):
        logp = F.log_softmax(z, -1).gather(-1, b.y[..., None]).squeeze(-1)
        return call(m, "decomposed_loss", garbage_on_padding(logp, b.mask, seed=2), teacher, b.mask, z, b.teacher)
    got, got_grad = _value_and_grad(garbled, b.student)
    what = "decomposed_loss with ±inf, nan and ±1e30 on the padding of logp and logp_teacher"
    expect_close(what, got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient(f"gradient of {what}", got_grad, want_grad, atol=1e-12, rtol=1e-10)


def _student_decomposed(m):
    return lambda r: call(m, "decomposed_loss", r.logp, r.logp_teacher, r.mask, r.student_logits, r.teacher_logits)


def check_unbiased(m):
    """E_{y∼q}[gradient of decomposed_loss on y] equals ∇KL(q‖p), exactly, over all 6⁴ sequences"""
    world = en.make_world()
    student = en.make_student(world)
    exact, _ = en.exact_gradient(world, student)
    mean, _ = en.mean_and_variance(*en.per_sequence_gradients(world, student, _student_decomposed(m)))
    expect_close("Σ_y q(y) ∇(T · decomposed_loss(y)) against ∇KL(q‖p)", mean, exact, atol=1e-10, rtol=1e-7)
    return f"unbiased: relative error {relative_error(mean, exact):.1e}"


def check_variance(m):
    """the variance of a one-rollout estimate, exactly: decomposed vs REINFORCE, far from and near the optimum"""
    world = en.make_world()
    lines = []
    for steps in (0, 40):
        student = en.make_student(world, exact_steps=steps)
        _, kl_value = en.exact_gradient(world, student)
        reinforce, prob = en.per_sequence_gradients(
            world, student, lambda r: _reinforce(r.logp, r.logp_teacher, r.mask))
        decomposed, _ = en.per_sequence_gradients(world, student, _student_decomposed(m))
        single, _ = en.per_sequence_gradients(world, student, lambda r: call(
            m, "single_step_loss", r.student_logits, r.teacher_logits, r.mask))
        var = {name: en.mean_and_variance(g, prob)[1] for name, g in (
            ("reinforce", reinforce), ("decomposed", decomposed), ("current, closed form", single),
            ("current, sampled", reinforce - (decomposed - single)), ("future", decomposed - single))}
        _, want = en.mean_and_variance(*en.per_sequence_gradients(
            world, student, lambda r: _decomposed(r.logp, r.logp_teacher, r.mask, r.student_logits, r.teacher_logits)))
        expect_close(f"variance of the decomposed estimate ({steps} exact steps)", var["decomposed"], want,
                     atol=1e-9, rtol=1e-7)
        if getattr(m, "is_solution", False):
            page = PAGE_FIGURES[steps]
            for name, figure, value in (("REINFORCE", page[0], var["reinforce"]), ("decomposed", page[1], want)):
                expect_close(f"the page's {name} variance at {steps} exact steps (update "
                             "course/step4_single_step/README.md and PAGE_FIGURES if the code changed)",
                             value, figure, atol=1e-3, rtol=0)
        ratio = var["reinforce"] / var["decomposed"]
        change = f"{ratio:.2f}× lower" if ratio > 1 else f"{1 / ratio:.2f}× higher"
        lines.append(f"{steps:>2} exact steps, KL(q‖p) = {kl_value:.3f}: REINFORCE {var['reinforce']:.3f}, "
                     f"decomposed {var['decomposed']:.3f} ({change}); "
                     f"current step sampled {var['current, sampled']:.3f} vs closed form "
                     f"{var['current, closed form']:.3f}, future {var['future']:.3f}")
    return "\n".join(lines)


CHECKS = [check_single_step, check_decomposed, check_unbiased, check_variance]


# -----------------------------------------------------------------------------
# extension

def check_length_norm(m):
    """length_normalized_returns equals policy_gradient.length_normalized_returns on rows of 5, 3 and 1 tokens"""
    b = batch(2)
    rewards = torch.where(b.mask, torch.randn(3, 5, generator=torch.Generator().manual_seed(3),
                                              dtype=torch.float64), 0.0)
    got = tensor("length_normalized_returns", call(m, "length_normalized_returns", rewards, b.mask), (3, 5))
    expect_close("length_normalized_returns", got, pg.length_normalized_returns(rewards, b.mask), atol=1e-12)
    got = tensor("length_normalized_returns", call(m, "length_normalized_returns", garbage_on_padding(rewards, b.mask),
                                                 b.mask), (3, 5))
    expect_close("length_normalized_returns with ±inf, nan and ±1e30 rewards on padding", got,
                 pg.length_normalized_returns(rewards, b.mask), atol=1e-12)
    constant = torch.where(b.mask, -0.7, 0.0).double()
    got = call(m, "length_normalized_returns", constant, b.mask)
    want = torch.where(b.mask & (pg.remaining_tokens(b.mask) > 0), -0.7, 0.0).double()
    expect_close("length_normalized_returns of constant rewards −0.7 (−0.7 wherever a future exists)", got, want,
                 atol=1e-12)


def check_length_norm_bias(m):
    """length-normalised returns in the decomposed gradient: its expected value, measured against ∇KL"""
    world = en.make_world()
    student = en.make_student(world)
    exact, _ = en.exact_gradient(world, student)

    def loss(r):
        rewards = pg.token_rewards(r.logp_teacher, r.logp_old, r.mask)
        adv = call(m, "length_normalized_returns", rewards, r.mask).detach()
        return (pg.single_step_loss(r.student_logits, r.teacher_logits, r.mask)
                + pg.policy_loss(r.logp, r.logp_old, adv, torch.ones_like(adv), r.mask, clip_eps=None)[0])
    mean, _ = en.mean_and_variance(*en.per_sequence_gradients(world, student, loss))
    want, _ = en.mean_and_variance(*en.per_sequence_gradients(world, student, lambda r: _decomposed(
        r.logp, r.logp_teacher, r.mask, r.student_logits, r.teacher_logits, length_norm=True)))
    expect_close("E[gradient] with length-normalised returns", mean, want, atol=1e-10, rtol=1e-7)
    bias = relative_error(mean, exact)
    if getattr(m, "is_solution", False):
        expect_close("the page's figure for the bias of length normalisation (update the page if the code "
                     "changed)", bias, PAGE_LENGTH_NORM_BIAS, atol=1e-3, rtol=0)
    return (f"relative error against ∇KL(q‖p): {bias:.3f} on sequences that all have 4 tokens (the paper adds it "
            "against a bias toward short responses, which this world cannot have)")


EXTENSION = [check_length_norm, check_length_norm_bias]
