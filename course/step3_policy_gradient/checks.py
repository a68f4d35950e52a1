"""Step 3 checks: rewards, returns and the policy-gradient surrogate of policy_gradient.py, and the
REINFORCE estimate of ∇KL(q‖p) against the exact gradient over every sequence of the toy world."""

import math
from types import SimpleNamespace

import torch

import enumeration as en
import policy_gradient as pg
from grading import (Failure, call, expect_close, expect_close_hinted, expect_same_gradient,
                     expect_true, garbage_on_padding, relative_error, tensor)
from toy import sequence_world as sw

TITLE = "the policy gradient of sequence-level reverse KL, by enumeration"
EXTENSION_TITLE = "PPO's clipped surrogate"
ALLOWED_IMPORTS = {}  # policy_gradient.py and toy/sequence_world.py are this step's answers

MULTIPLIED_BY_MASK = ("multiplying by the mask keeps nan and ±inf on padding (0 · inf = nan): select the real "
                      "tokens' values with torch.where(mask, x, 0) before any arithmetic")

# the figures course/step3_policy_gradient/README.md quotes (python course/check.py --solutions 3),
# checked in --solutions mode: variance of R_t, ‖∇KL‖², variance of R_t − 1, bias of R_{t+1} alone
PAGE_FIGURES = {"variance": 11.854, "grad_norm_sq": 0.044, "variance_minus_one": 23.71, "future_only_bias": 2.581}


def _page_check(m, name, value, digits):
    if getattr(m, "is_solution", False):
        expect_close(f"the page's figure {name} (update course/step3_policy_gradient/README.md and PAGE_FIGURES "
                     "if the code changed)", value, PAGE_FIGURES[name], atol=0.6 * 10 ** -digits, rtol=0)


def _reinforce(logp, logp_teacher, mask):
    return pg.minillm_loss(logp, logp.detach(), logp_teacher, mask, single_step=False, teacher_mix_alpha=0.0,
                           length_norm=False, clip_eps=None)[0]


def solution():
    """The project's own functions (the teacher's switch)."""
    return SimpleNamespace(
        exact_reverse_kl=sw.exact_reverse_kl, token_rewards=pg.token_rewards, returns=pg.returns,
        policy_loss=lambda logp, logp_old, adv, w, mask: pg.policy_loss(logp, logp_old, adv, w, mask, clip_eps=None)[0],
        reinforce_loss=_reinforce, clipped_policy_loss=pg.policy_loss, is_solution=True)


def batch(seed=0):
    """A right-padded batch of 3 rows (5, 3 and 1 real tokens) with ±inf and garbage on padding."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    randn = lambda: torch.randn(3, 5, generator=g, dtype=torch.float64)
    logp = torch.where(mask, -randn().abs() - 0.1, -math.inf)
    logp_old = torch.where(mask, logp + 0.3 * randn(), -math.inf)
    logp_teacher = torch.where(mask, -2 * randn().abs(), -math.inf)
    advantages = torch.where(mask, randn(), 1e6)
    weights = torch.where(mask, 0.5 + torch.rand(3, 5, generator=g, dtype=torch.float64), 1e6)
    return SimpleNamespace(mask=mask, logp=logp, logp_old=logp_old, logp_teacher=logp_teacher,
                           advantages=advantages, weights=weights)


def _no_nan(what, got):
    if bool(torch.isnan(got).any()):
        at = [int(i) for i in torch.isnan(got).nonzero()[0]] if got.dim() else []
        raise Failure(f"{what}{f' at index {at}' if at else ''}: got nan; " + MULTIPLIED_BY_MASK)


def check_exact_kl(m):
    """exact_reverse_kl equals toy/sequence_world.exact_reverse_kl over all 6⁴ sequences, with its gradient"""
    world = en.make_world()
    student = en.make_student(world)
    got = tensor("exact_reverse_kl", call(m, "exact_reverse_kl", world.teacher, student, world.ys), ())
    expected_grad, expected = en.exact_gradient(world, student)
    expect_close("exact_reverse_kl", got, expected, atol=1e-10, rtol=1e-9)
    expect_true(got.requires_grad, "exact_reverse_kl returned a value with no gradient: keep it a torch "
                "expression of student.log_prob(ys)")
    grad = torch.autograd.grad(got, student.table)[0].flatten()
    expect_close("gradient of exact_reverse_kl w.r.t. the student's table", grad, expected_grad, atol=1e-10, rtol=1e-8)
    return f"KL(q‖p) = {expected:.4f} nats for the initial bigram student, over {len(world.ys)} sequences"


def check_rewards(m):
    """token_rewards equals policy_gradient.token_rewards (0 on padding, detached)"""
    b = batch()
    logp_old = b.logp_old.clone().requires_grad_()
    got = tensor("token_rewards", call(m, "token_rewards", b.logp_teacher, logp_old, b.mask), (3, 5))
    expect_close("token_rewards", got, pg.token_rewards(b.logp_teacher, b.logp_old, b.mask), atol=1e-12)
    expect_true(not got.requires_grad, "token_rewards must be constants: detach them (the reward of a rollout "
                "does not move with θ)")
    teacher, old = garbage_on_padding(b.logp_teacher, b.mask), garbage_on_padding(b.logp_old, b.mask, seed=2)
    got = tensor("token_rewards", call(m, "token_rewards", teacher, old, b.mask), (3, 5))
    _no_nan("token_rewards with ±inf, nan and ±1e30 on padding", got)
    expect_close("token_rewards with ±inf, nan and ±1e30 on padding", got,
                 pg.token_rewards(b.logp_teacher, b.logp_old, b.mask), atol=1e-12)


def check_returns(m):
    """returns equals policy_gradient.returns (γ = 1 and 0.9, with and without r_t), padding ignored"""
    b = batch(1)
    rewards = pg.token_rewards(b.logp_teacher, b.logp_old, b.mask)
    for gamma in (1.0, 0.9):
        for include_current in (True, False):
            got = call(m, "returns", rewards, b.mask, gamma=gamma, include_current=include_current)
            expect_close(f"returns(gamma={gamma}, include_current={include_current})", tensor("returns", got, (3, 5)),
                         pg.returns(rewards, b.mask, gamma=gamma, include_current=include_current), atol=1e-12)
    # rewards that are not 0 on padding (returns takes the mask: it must use it)
    rewards, mask = torch.tensor([[-1.0, -1.0, -1.0, -5.0, -5.0]]), torch.tensor([[True, True, True, False, False]])
    got = tensor("returns", call(m, "returns", rewards, mask, gamma=1.0, include_current=True), (1, 5))
    unmasked = rewards.flip(1).cumsum(1).flip(1)
    expect_close_hinted("returns of rewards [−1, −1, −1, −5, −5] with 3 real tokens (include_current=True)", got,
                        torch.tensor([[-3.0, -2.0, -1.0, 0.0, 0.0]]),
                        [(torch.where(mask, unmasked, got.detach()), "your returns add the rewards on padding: "
                          "use the mask, sum only the real tokens' rewards (torch.where(mask, rewards, 0)) and "
                          "give 0 on padding"),
                         (torch.tensor([[-3.0, -2.0, -1.0, -10.0, -5.0]]), "0 on padding: the returns of padding "
                          "positions must be 0")], atol=1e-6)
    rewards = torch.where(b.mask, torch.randn(3, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64), 0.0)
    for include_current in (True, False):
        got = tensor("returns", call(m, "returns", garbage_on_padding(rewards, b.mask), b.mask, gamma=0.9,
                                     include_current=include_current), (3, 5))
        what = f"returns(gamma=0.9, include_current={include_current}) with ±inf, nan and ±1e30 rewards on padding"
        _no_nan(what, got)
        expect_close(what, got, pg.returns(rewards, b.mask, gamma=0.9, include_current=include_current), atol=1e-12)


def _value_and_grad(fn, logp):
    leaf = logp.clone().requires_grad_()
    value = tensor("the loss", fn(leaf), ())
    if not value.requires_grad:
        raise Failure("the loss carries no gradient w.r.t. logp: build it from logp with torch operations")
    return value, torch.autograd.grad(value, leaf)[0]


def check_policy_loss(m):
    """policy_loss equals policy_gradient.policy_loss (clip_eps=None): value and gradient w.r.t. logp"""
    b = batch(2)
    got, got_grad = _value_and_grad(lambda lp: call(m, "policy_loss", lp, b.logp_old, b.advantages, b.weights,
                                                    b.mask), b.logp)
    want, want_grad = _value_and_grad(lambda lp: pg.policy_loss(lp, b.logp_old, b.advantages, b.weights, b.mask,
                                                                clip_eps=None)[0], b.logp)
    expect_close("policy_loss", got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient("gradient of policy_loss w.r.t. logp", got_grad, want_grad, atol=1e-12, rtol=1e-10)
    garbage = {k: garbage_on_padding(getattr(b, k), b.mask, seed=i)
               for i, k in enumerate(("logp", "logp_old", "advantages", "weights"))}
    got, got_grad = _value_and_grad(lambda lp: call(m, "policy_loss", torch.where(b.mask, lp, garbage["logp"]),
                                                    garbage["logp_old"], garbage["advantages"], garbage["weights"],
                                                    b.mask), b.logp)
    what = "policy_loss with ±inf, nan and ±1e30 on the padding of logp, logp_old, advantages and weights"
    _no_nan(what, got)
    expect_close(what, got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient(f"gradient of {what} w.r.t. logp", got_grad, want_grad, atol=1e-12, rtol=1e-10)
    # a shape the page does not show: 4 rows of 2 (one with no real token), γ = 0.5 returns as advantages
    g = torch.Generator().manual_seed(7)
    mask = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    logp = -torch.rand(4, 2, generator=g, dtype=torch.float64) - 0.1
    logp_old = logp + 0.2 * torch.randn(4, 2, generator=g, dtype=torch.float64)
    adv = pg.returns(torch.randn(4, 2, generator=g, dtype=torch.float64), mask, gamma=0.5)
    weights = 0.5 + torch.rand(4, 2, generator=g, dtype=torch.float64)
    got, got_grad = _value_and_grad(lambda lp: call(m, "policy_loss", lp, logp_old, adv, weights, mask), logp)
    want, want_grad = _value_and_grad(lambda lp: pg.policy_loss(lp, logp_old, adv, weights, mask, clip_eps=None)[0],
                                      logp)
    expect_close("policy_loss on [4, 2] (a row with no real token)", got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient("gradient of policy_loss on [4, 2] w.r.t. logp", got_grad, want_grad, atol=1e-12,
                         rtol=1e-10)


def check_reinforce(m):
    """reinforce_loss equals policy_gradient.minillm_loss(single_step=False, α = 0, no length norm, no clip)"""
    b = batch(3)
    got, got_grad = _value_and_grad(lambda lp: call(m, "reinforce_loss", lp, b.logp_teacher, b.mask), b.logp)
    want, want_grad = _value_and_grad(lambda lp: _reinforce(lp, b.logp_teacher, b.mask), b.logp)
    expect_close("reinforce_loss", got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient("gradient of reinforce_loss w.r.t. logp", got_grad, want_grad, atol=1e-12, rtol=1e-10)
    teacher = garbage_on_padding(b.logp_teacher, b.mask, seed=3)
    got, got_grad = _value_and_grad(lambda lp: call(m, "reinforce_loss", torch.where(b.mask, lp, garbage_on_padding(
        lp, b.mask, seed=1)), teacher, b.mask), b.logp)
    what = "reinforce_loss with ±inf, nan and ±1e30 on the padding of logp and logp_teacher"
    _no_nan(what, got)
    expect_close(what, got, want, atol=1e-12, rtol=1e-10)
    expect_same_gradient(f"gradient of {what} w.r.t. logp", got_grad, want_grad, atol=1e-12, rtol=1e-10)


def check_enumeration(m):
    """E_{y∼q}[gradient of reinforce_loss on y] equals ∇KL(q‖p), exactly, over all 6⁴ sequences"""
    world = en.make_world()
    student = en.make_student(world)
    exact, kl_value = en.exact_gradient(world, student)
    grads, prob = en.per_sequence_gradients(
        world, student, lambda r: call(m, "reinforce_loss", r.logp, r.logp_teacher, r.mask))
    mean, variance = en.mean_and_variance(grads, prob)
    expect_close("Σ_y q(y) ∇(T · reinforce_loss(y)) against ∇KL(q‖p) (flattened bigram table)", mean, exact,
                 atol=1e-10, rtol=1e-7)
    _page_check(m, "variance", variance, 3)
    _page_check(m, "grad_norm_sq", exact.norm().item() ** 2, 3)
    return (f"unbiased: relative error {relative_error(mean, exact):.1e}; the variance of a one-rollout "
            f"estimate is {variance:.2f} against ‖∇KL‖² = {exact.norm().item() ** 2:.3f}")


def check_pitfalls(m):
    """the −1 of Eq. 2 changes nothing in expectation; dropping r_t from the return (R_{t+1}) biases it"""
    world = en.make_world()
    student = en.make_student(world)
    exact, _ = en.exact_gradient(world, student)

    def surrogate(shift, include_current):
        def loss(r):
            rewards = call(m, "token_rewards", r.logp_teacher, r.logp_old, r.mask)
            adv = call(m, "returns", rewards, r.mask, include_current=include_current) + shift
            return call(m, "policy_loss", r.logp, r.logp_old, adv, torch.ones_like(adv), r.mask)
        return en.mean_and_variance(*en.per_sequence_gradients(world, student, loss))

    minus_one, var_minus_one = surrogate(-1.0, True)
    expect_close("E[gradient] with advantages R_t − 1 against ∇KL(q‖p) (E_q Σ_t ∇log q = 0)", minus_one, exact,
                 atol=1e-10, rtol=1e-7)
    future, _ = surrogate(0.0, False)
    bias = relative_error(future, exact)
    expect_true(bias > 0.05, f"with R_{{t+1}} (include_current=False) alone the expected gradient should miss "
                f"∇KL by far, got a relative error of {bias:.4f}")
    _, var_plain = surrogate(0.0, True)
    _page_check(m, "variance_minus_one", var_minus_one, 2)
    _page_check(m, "future_only_bias", bias, 3)
    return (f"R_t − 1: same mean, variance {var_minus_one:.2f} (R_t: {var_plain:.2f})\n"
            f"R_{{t+1}} without the current step's term: relative error {bias:.3f} (step 4 puts that term back)")


CHECKS = [check_exact_kl, check_rewards, check_returns, check_policy_loss, check_reinforce, check_enumeration,
          check_pitfalls]


# -----------------------------------------------------------------------------
# extension

def check_clipped(m):
    """clipped_policy_loss equals policy_gradient.policy_loss: loss, clip fraction, gradient (ε = 0.2, 0.1)"""
    b = batch(4)
    for eps in (0.2, 0.1):
        out = call(m, "clipped_policy_loss", b.logp, b.logp_old, b.advantages, b.weights, b.mask, clip_eps=eps)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise Failure(f"clipped_policy_loss must return (loss, clip_fraction), got {type(out).__name__}")
        want_loss, want_frac = pg.policy_loss(b.logp, b.logp_old, b.advantages, b.weights, b.mask, clip_eps=eps)
        expect_close(f"clip_fraction (clip_eps={eps})", tensor("clip_fraction", out[1], ()), want_frac, atol=1e-12)
        got, got_grad = _value_and_grad(lambda lp: call(m, "clipped_policy_loss", lp, b.logp_old, b.advantages,
                                                        b.weights, b.mask, clip_eps=eps)[0], b.logp)
        want, want_grad = _value_and_grad(lambda lp: pg.policy_loss(lp, b.logp_old, b.advantages, b.weights,
                                                                    b.mask, clip_eps=eps)[0], b.logp)
        expect_close(f"clipped_policy_loss (clip_eps={eps})", got, want, atol=1e-12, rtol=1e-10)
        expect_close(f"gradient of clipped_policy_loss w.r.t. logp (clip_eps={eps})", got_grad, want_grad,
                     atol=1e-12, rtol=1e-10)
    frac = pg.policy_loss(b.logp, b.logp_old, b.advantages, b.weights, b.mask, clip_eps=0.2)[1]
    return f"on this batch the clip switches off {frac.item():.0%} of the tokens' gradients at ε = 0.2"


EXTENSION = [check_clipped]
