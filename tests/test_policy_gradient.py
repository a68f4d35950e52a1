"""Tests for policy_gradient.py (MiniLLM): hand-computed cases and exact gradients by enumeration."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import policy_gradient as pg
from policy_gradient import (
    compute_advantages,
    importance_weights,
    length_normalized_returns,
    minillm_loss,
    policy_loss,
    pretrain_mix_loss,
    reference_returns,
    remaining_tokens,
    returns,
    scale_and_clip_rewards,
    sequence_importance_weights,
    single_step_loss,
    teacher_mix_log_probs,
    token_rewards,
    whiten,
)

# two rows: rewards 1, 2, 3 (length 3) and 4, 5 (length 2), padded to T = 4
REWARDS = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])


def close(a, b, tol=1e-9):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=0)


# -----------------------------------------------------------------------------
# hand-computed small cases

def test_token_rewards_zero_on_padding():
    lp_t = torch.tensor([[-1.0, -2.0, 7.0], [-0.5, float("-inf"), float("nan")]])
    lp_o = torch.tensor([[-3.0, -1.0, 9.0], [-0.25, -1.0, 3.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert close(token_rewards(lp_t, lp_o, mask), [[2.0, -1.0, 0.0], [-0.25, 0.0, 0.0]])


def test_returns_by_hand():
    # future only, γ = 1: R_{t+1}
    assert close(returns(REWARDS, MASK), [[5, 3, 0, 0], [5, 0, 0, 0]])
    # including r_t: R_t
    assert close(returns(REWARDS, MASK, include_current=True), [[6, 5, 3, 0], [9, 5, 0, 0]])
    # γ = 0.5: row 0 R_t = 3, 2 + 1.5, 1 + 1.75; row 1 R_t = 5, 4 + 2.5
    assert close(returns(REWARDS, MASK, gamma=0.5, include_current=True), [[2.75, 3.5, 3, 0], [6.5, 5, 0, 0]])
    assert close(returns(REWARDS, MASK, gamma=0.5), [[3.5, 3, 0, 0], [5, 0, 0, 0]])


def test_returns_ignore_rewards_on_padding():
    dirty = REWARDS.clone()
    dirty[~MASK] = 100.0
    assert close(returns(dirty, MASK, include_current=True), returns(REWARDS, MASK, include_current=True))


def test_length_normalized_returns_by_hand():
    assert close(remaining_tokens(MASK), [[2, 1, 0, 0], [1, 0, 0, 0]])
    assert close(remaining_tokens(MASK, include_current=True), [[3, 2, 1, 0], [2, 1, 0, 0]])
    # mean of the future rewards; the last token has no future -> 0
    assert close(length_normalized_returns(REWARDS, MASK), [[2.5, 3, 0, 0], [5, 0, 0, 0]])
    # mean of r_t .. r_{L-1}
    assert close(length_normalized_returns(REWARDS, MASK, include_current=True), [[2, 2.5, 3, 0], [4.5, 5, 0, 0]])


def test_whiten_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    s = 1 / math.sqrt(2 / 3 + 1e-8)  # mean 2, population variance 2/3 over the 3 valid tokens
    assert close(whiten(values, mask), [[-s, 0.0, s, 0.0]])


def test_reference_returns_by_hand():
    # γ = 0.95, include r_t, divided by remaining tokens L − t:
    # row 0: t2 = 3/1, t1 = (2 + 0.95·3)/2 = 2.425, t0 = (1 + 0.95·4.85)/3; row 1: t1 = 5, t0 = (4 + 0.95·5)/2
    expected = torch.tensor([[5.6075 / 3, 2.425, 3.0, 0.0], [4.375, 5.0, 0.0, 0.0]], dtype=torch.float64)
    raw = reference_returns(REWARDS, MASK, whitened=False)
    assert close(raw, expected)
    valid = expected[MASK]
    mean, std = valid.mean(), valid.var(unbiased=False).add(1e-8).sqrt()
    assert close(reference_returns(REWARDS, MASK), torch.where(MASK, (expected - mean) / std, 0.0))
    # future-only variant: discounted future return / number of future tokens
    assert close(reference_returns(REWARDS, MASK, include_current=False, whitened=False),
                 [[(2 + 0.95 * 3) / 2, 3.0, 0, 0], [5.0, 0, 0, 0]])
    a = compute_advantages(REWARDS, MASK, returns_mode="reference", include_current=True)
    assert close(a[MASK].mean(), 0.0, 1e-12) and close(a[MASK].var(unbiased=False), 1.0, 1e-6)


def test_reference_whitening_over_the_padded_buffer_by_hand():
    """The reference code whitens the [B, W] buffer, padding included as zeros, every response padded
    to W = max_length − max_prompt_length (LMOps minillm/minillm/losses.py, utils.py whiten)."""
    raw = reference_returns(REWARDS, MASK, whitened=False)
    W = 6  # two more padding columns than the tensor holds
    entries = [raw[b, t].item() if t < 4 and MASK[b, t] else 0.0 for b in range(2) for t in range(W)]
    mean = sum(entries) / 12
    var = sum((x - mean) ** 2 for x in entries) / 12
    want = torch.where(MASK, (raw - mean) / math.sqrt(var + 1e-8), 0.0)
    assert close(reference_returns(REWARDS, MASK, include_padding=True, width=W), want, 1e-12)
    assert close(compute_advantages(REWARDS, MASK, "reference", include_current=True, include_padding=True,
                                    width=W), want, 1e-12)
    # width = T: the tensor's own padding only (3 of 8 entries)
    entries = [raw[b, t].item() for b in range(2) for t in range(4)]
    mean = sum(entries) / 8
    var = sum((x - mean) ** 2 for x in entries) / 8
    assert close(whiten(raw, MASK, include_padding=True), torch.where(MASK, (raw - mean) / math.sqrt(var + 1e-8), 0.0))
    # the valid-token whitening moves the mean of the valid tokens to 0; over the padding it does not
    assert close(whiten(raw, MASK)[MASK].mean(), 0.0, 1e-12) and want[MASK].mean() > 0.5
    with pytest.raises(ValueError, match="width"):
        whiten(raw, MASK, include_padding=True, width=3)


def test_rollout_minibatch_whitening_is_the_same_for_any_split_over_ranks():
    """rollout.whitened_advantages: statistics over the whole PPO minibatch, whichever rank's share."""
    from types import SimpleNamespace
    from rollout import whitened_advantages
    torch.manual_seed(5)
    lengths = torch.tensor([3, 1, 4, 2, 4, 2])
    mask = torch.arange(4)[None, :] < lengths[:, None]
    buf = dict(advantages=torch.where(mask, torch.randn(6, 4, dtype=torch.float64), 0.0), mask=mask)
    minibatch = [4, 0, 5, 2]
    for padded in (True, False):
        cfg = SimpleNamespace(whiten_padding=padded, max_new_tokens=7)
        whole = whitened_advantages(cfg, buf, minibatch, minibatch)
        halves = torch.cat([whitened_advantages(cfg, buf, minibatch[:2], minibatch),
                            whitened_advantages(cfg, buf, minibatch[2:], minibatch)])
        assert close(halves, whole, 0)
        values = [buf['advantages'][i, t].item() for i in minibatch for t in range(lengths[i])]
        n = 4 * 7 if padded else len(values)  # 4 rows padded to max_new_tokens = 7, or the valid tokens
        mean = sum(values) / n
        var = (sum((x - mean) ** 2 for x in values) + (n - len(values)) * mean ** 2) / n
        want = torch.where(mask[minibatch], (buf['advantages'][minibatch] - mean) / math.sqrt(var + 1e-8), 0.0)
        assert close(whole, want, 1e-12)
    # one rank's rows whitened alone (what per-rank statistics gave) differ
    assert not close(whitened_advantages(cfg, buf, minibatch[:2], None), whole[:2], 1e-3)


def test_reward_scale_and_clip_by_hand():
    r = torch.tensor([[-300.0, 1.0, 50.0, 7.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert close(scale_and_clip_rewards(r, mask, scale=0.5, clip=100.0), [[-100.0, 2.0, 100.0, 0.0]])
    assert close(scale_and_clip_rewards(r, mask, scale=0.5), [[-600.0, 2.0, 100.0, 0.0]])


def test_importance_weights_by_hand():
    logp_old = torch.log(torch.tensor([[0.5, 0.1, 0.3], [0.2, 0.2, 0.9]]))
    logp_mix = torch.log(torch.tensor([[0.25, 0.2, 0.3], [0.4, 0.1, 0.1]]))
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert close(importance_weights(logp_old, logp_mix, mask), [[2.0, 0.5, 1.0], [0.5, 2.0, 1.0]], 1e-6)
    assert close(importance_weights(logp_old, logp_mix, mask, clip=1.5), [[1.5, 0.5, 1.0], [0.5, 1.5, 1.0]], 1e-6)
    # sequence level: product over the row's real tokens, on every real token
    assert close(sequence_importance_weights(logp_old, logp_mix, mask), [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], 1e-6)
    logp_mix2 = logp_mix.clone()
    logp_mix2[0, 0] = math.log(0.125)
    assert close(sequence_importance_weights(logp_old, logp_mix2, mask)[0], [2.0, 2.0, 2.0], 1e-6)


def test_policy_loss_clipping_by_hand():
    # at θ = θ_old the ratio is the weight w; ε = 0.2
    w = torch.tensor([[1.5, 1.5, 0.5, 1.0]], dtype=torch.float64)
    adv = torch.tensor([[2.0, -2.0, 1.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True]])
    logits = torch.zeros(1, 4, 3, dtype=torch.float64, requires_grad=True)
    logp = F.log_softmax(logits, -1)[..., 0]
    loss, clip_frac = policy_loss(logp, logp.detach(), adv, w, mask, clip_eps=0.2)
    # token 0: A > 0, ρ = 1.5 > 1.2 -> clipped: −2·1.2; token 1: A < 0 -> unclipped −(−2)·1.5;
    # token 2: A > 0, ρ = 0.5 -> the max picks the unclipped −0.5; token 3: ρ = 1 -> −3
    assert close(loss, (-2.4 + 3.0 - 0.5 - 3.0) / 4)
    assert close(clip_frac, 0.25)
    loss.backward()
    # only the clipped token 0 gets no gradient
    g = logits.grad.abs().sum(-1)[0]
    assert g[0] == 0 and (g[1:] > 0).all()


def test_policy_loss_gradient_at_old_policy():
    """∇ policy_loss at θ = θ_old without clipping = −mean_t(w·A·∇ log q(y_t)), ∂ log q(y)/∂z = onehot(y) − q."""
    torch.manual_seed(0)
    B, T, V = 3, 5, 7
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    y = torch.randint(V, (B, T))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    logp = F.log_softmax(logits, -1).gather(-1, y[..., None]).squeeze(-1)
    w = torch.rand(B, T, dtype=torch.float64) * 2
    adv = torch.randn(B, T, dtype=torch.float64)
    loss, _ = policy_loss(logp, logp.detach(), adv, w, mask, clip_eps=None)
    (grad,) = torch.autograd.grad(loss, logits)
    q = F.softmax(logits.detach(), -1)
    dlogq = F.one_hot(y, V).double() - q
    expected = -(w * adv * mask / mask.sum())[..., None] * dlogq
    assert close(grad, expected, 1e-12)


def test_single_step_loss_value_and_gradient_path():
    torch.manual_seed(1)
    B, T, V = 2, 3, 5
    s = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    w = torch.tensor([[1.0, 2.0, 0.5], [3.0, 9.0, 9.0]], dtype=torch.float64)
    q, logq, logp = F.softmax(s, -1), F.log_softmax(s, -1), F.log_softmax(t, -1)
    kl = (q * (logq - logp)).sum(-1).detach()
    assert close(single_step_loss(s, t, mask), kl[mask].mean())
    loss = single_step_loss(s, t, mask, weights=w)
    assert close(loss, (kl * w)[mask].sum() / 4)
    loss.backward()
    assert t.grad is None and s.grad[1, 1:].abs().sum() == 0 and s.grad[mask].abs().sum() > 0


def test_teacher_mix_log_probs():
    torch.manual_seed(2)
    t = torch.randn(4, 6)
    s = torch.randn(4, 6)
    t[:, 0] = float("-inf")  # a token only the student can produce
    t[:, 1] = s[:, 1] = float("-inf")  # a token nobody can produce
    alpha = 0.2
    lp = teacher_mix_log_probs(t, s, alpha)
    expected = alpha * F.softmax(t, -1) + (1 - alpha) * F.softmax(s, -1)
    assert torch.allclose(lp.exp(), expected, atol=1e-6)
    assert torch.isfinite(lp[:, 0]).all() and (lp[:, 1] == float("-inf")).all()
    assert torch.allclose(teacher_mix_log_probs(t, s, 0.0), F.log_softmax(s, -1))
    assert teacher_mix_log_probs(t.bfloat16(), s.bfloat16(), alpha).dtype == torch.float32
    with pytest.raises(ValueError):
        teacher_mix_log_probs(t, s, 1.5)


def test_length_normalisation_bounds_long_sequences():
    torch.manual_seed(3)
    lengths = [10, 40, 160]
    T = max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    rewards = torch.where(mask, -0.5 + 0.3 * torch.randn(len(lengths), T, dtype=torch.float64), 0.0)
    max_abs_r = rewards.abs().max()
    normed = length_normalized_returns(rewards, mask)
    plain = returns(rewards, mask)
    # averages stay within the largest reward, whatever the length
    assert normed.abs().max() <= max_abs_r + 1e-12
    # sums grow with the length: the first-token return is about −0.5·(L − 1)
    first = plain[:, 0].abs()
    assert first[0] < first[1] < first[2] and first[2] > 40 > max_abs_r


def test_bad_inputs_raise():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="right-padded"):
        returns(lp, torch.tensor([[False, True, True], [True, True, True]]))
    with pytest.raises(ValueError, match="bool"):
        returns(lp, torch.ones(2, 3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="returns_mode"):
        minillm_loss(lp, lp, lp, mask, single_step=False, teacher_mix_alpha=0.0, returns_mode="ppo")
    with pytest.raises(ValueError, match="logp_mix"):
        minillm_loss(lp, lp, lp, mask, single_step=False, teacher_mix_alpha=0.2)
    with pytest.raises(ValueError, match="student_logits"):
        minillm_loss(lp, lp, lp, mask, teacher_mix_alpha=0.0)


def test_pretrain_mix_loss():
    assert pretrain_mix_loss(torch.tensor(2.0)) == 2.0
    assert pretrain_mix_loss(torch.tensor(2.0), torch.tensor(4.0)) == 3.0
    assert close(pretrain_mix_loss(torch.tensor(2.0), torch.tensor(4.0), kd_ratio=0.25), 2.5)


@pytest.mark.parametrize("mode", ["paper", "reference"])
@pytest.mark.parametrize("single_step", [True, False])
def test_minillm_loss_combines_its_parts(mode, single_step):
    """total = policy_loss(advantages with r_t iff not single_step) + weighted single-step term."""
    torch.manual_seed(4)
    B, T, V = 3, 4, 5
    s = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, T, V, dtype=torch.float64)
    y = torch.randint(V, (B, T))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    take = lambda lp: lp.gather(-1, y[..., None]).squeeze(-1)
    logp = take(F.log_softmax(s, -1))
    logp_old = logp.detach() + 0.1 * torch.randn(B, T, dtype=torch.float64)
    logp_teacher = take(F.log_softmax(t, -1))
    logp_mix = take(teacher_mix_log_probs(t, s.detach(), 0.2))
    loss, stats = minillm_loss(logp, logp_old, logp_teacher, mask, s, t, logp_mix, single_step=single_step,
                               returns_mode=mode, reward_scale=0.5, reward_clip=100.0)
    rewards = scale_and_clip_rewards(token_rewards(logp_teacher, logp_old, mask), mask, 0.5, 100.0)
    adv = compute_advantages(rewards, mask, returns_mode=mode, include_current=not single_step)
    w = importance_weights(logp_old, logp_mix, mask)
    expected, clip_frac = policy_loss(logp, logp_old, adv, w, mask)
    if single_step:
        expected = expected + single_step_loss(s, t, mask, weights=w)
    assert close(loss, expected, 1e-12)
    assert close(stats["weight"], w[mask].mean()) and close(stats["clip_frac"], clip_frac)
    assert close(stats["reward"], rewards[mask].mean())


# -----------------------------------------------------------------------------
# exact gradients on an enumerable toy: vocabulary 3, length 3, tabular student and teacher

V, T = 3, 3
ALL = torch.tensor(list(itertools.product(range(V), repeat=T)))  # the 27 sequences
N_PREFIX = 1 + V + V * V


def prefix_index(y):
    """[N, T] tokens -> [N, T] row of the table holding the logits for the prefix y_<t."""
    zero = torch.zeros_like(y[:, 0])
    return torch.stack([zero, 1 + y[:, 0], 1 + V + V * y[:, 0] + y[:, 1]], dim=1)


def take(log_probs, y):
    return log_probs.gather(-1, y[..., None]).squeeze(-1)


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(5)
    theta = torch.randn(N_PREFIX, V, generator=g, dtype=torch.float64)
    teacher = 2.0 * torch.randn(N_PREFIX, V, generator=g, dtype=torch.float64)
    return theta, teacher


def exact_gradient(theta, teacher):
    """∇_θ KL(q_θ‖p) = ∇ Σ_y q(y)(log q(y) − log p(y)) by enumeration and autograd."""
    theta = theta.clone().requires_grad_()
    logq = take(F.log_softmax(theta[prefix_index(ALL)], -1), ALL).sum(1)
    logp = take(F.log_softmax(teacher[prefix_index(ALL)], -1), ALL).sum(1)
    (grad,) = torch.autograd.grad((logq.exp() * (logq - logp)).sum(), theta)
    return grad


def rollout_tensors(theta, teacher, y, alpha):
    """What train.py hands minillm_loss for sequences y, plus the log-prob of y under p̃."""
    s_logits = theta[prefix_index(y)]
    t_logits = teacher[prefix_index(y)]
    logp = take(F.log_softmax(s_logits, -1), y)
    logp_mix = take(teacher_mix_log_probs(t_logits, s_logits.detach(), alpha), y)
    logp_teacher = take(F.log_softmax(t_logits, -1), y)
    return logp, logp_teacher, logp_mix, s_logits, t_logits


def expected_gradient(theta, teacher, alpha=0.0, **kwargs):
    """Σ_y p̃(y) ∇(T · minillm_loss on y alone): the estimator's exact expectation under the sampler p̃
    (= q_θ for α = 0). T undoes the per-token mean, giving the per-sequence sum."""
    theta = theta.clone().requires_grad_()
    logp, logp_teacher, logp_mix, s_logits, t_logits = rollout_tensors(theta, teacher, ALL, alpha)
    sample_prob = logp_mix.sum(1).exp().detach()
    mask = torch.ones(1, T, dtype=torch.bool)
    total = 0.0
    for i in range(len(ALL)):
        row = slice(i, i + 1)
        loss, _ = minillm_loss(logp[row], logp[row].detach(), logp_teacher[row], mask, s_logits[row],
                               t_logits[row], logp_mix[row], teacher_mix_alpha=alpha, clip_eps=None,
                               length_norm=False, returns_mode="paper", gamma=1.0, **kwargs)
        total = total + sample_prob[i] * T * loss
    (grad,) = torch.autograd.grad(total, theta)
    return grad


def cosine(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_exact_expectation_single_step_and_reinforce(toy):
    theta, teacher = toy
    exact = exact_gradient(theta, teacher)
    assert exact.norm() > 0.1
    decomposed = expected_gradient(theta, teacher, single_step=True)  # L_Single + R_{t+1} term
    reinforce = expected_gradient(theta, teacher, single_step=False)  # R_t term alone
    assert close(decomposed, exact, 1e-6)
    assert close(reinforce, exact, 1e-6)
    # the wrong pairings are biased: single-step with R_t counts the current step twice,
    # REINFORCE with R_{t+1} drops it
    assert rel_err(expected_gradient(theta, teacher, single_step=True, include_current=True), exact) > 0.05
    assert rel_err(expected_gradient(theta, teacher, single_step=False, include_current=False), exact) > 0.05


def test_exact_expectation_of_the_minus_one_form(toy):
    """The paper's −E Σ_t (R_t − 1) ∇log q: the −1 comes from ∇(q log q) and has zero mean."""
    theta, teacher = toy
    exact = exact_gradient(theta, teacher)
    th = theta.clone().requires_grad_()
    logp, logp_teacher, _, _, _ = rollout_tensors(th, teacher, ALL, 0.0)
    mask = torch.ones_like(logp, dtype=torch.bool)
    r_t = returns(token_rewards(logp_teacher, logp.detach(), mask), mask, include_current=True)
    seq_q = logp.sum(1).exp().detach()
    ones = torch.ones_like(logp)
    for adv, tol in ((r_t - 1.0, 1e-6), (-torch.ones_like(r_t), None)):
        per_token, _ = policy_loss(logp, logp.detach(), adv * seq_q[:, None] * len(ALL), ones, mask, clip_eps=None)
        (g,) = torch.autograd.grad(T * per_token, th, retain_graph=True)
        if tol is None:  # the −1 term alone: E Σ_t ∇log q = 0
            assert g.abs().max() < 1e-12
        else:
            assert close(g, exact, tol)


def test_monte_carlo_estimate_converges(toy):
    theta, teacher = toy
    exact = exact_gradient(theta, teacher)
    g = torch.Generator().manual_seed(6)
    n = 20000
    y = torch.zeros(n, T, dtype=torch.long)
    for t in range(T):  # the prefix index at t only reads y_<t, already drawn
        probs = F.softmax(theta[prefix_index(y)[:, t]], -1)
        y[:, t] = torch.multinomial(probs, 1, generator=g).squeeze(1)
    th = theta.clone().requires_grad_()
    logp, logp_teacher, _, s_logits, t_logits = rollout_tensors(th, teacher, y, 0.0)
    mask = torch.ones(n, T, dtype=torch.bool)
    cos = {}
    for single_step in (True, False):
        loss, _ = minillm_loss(logp, logp.detach(), logp_teacher, mask, s_logits, t_logits,
                               single_step=single_step, teacher_mix_alpha=0.0, clip_eps=None,
                               length_norm=False, returns_mode="paper")
        (grad,) = torch.autograd.grad(T * loss, th, retain_graph=True)
        cos[single_step] = cosine(grad, exact)
    print(f"\nMC ({n} samples) cosine with the exact gradient: single-step {cos[True]:.4f}, "
          f"REINFORCE {cos[False]:.4f}")
    assert cos[True] > 0.99
    assert cos[False] > 0.99


def test_teacher_mixed_sampling_bias(toy):
    """α = 0.2: exact sequence weights Π_t q/p̃ keep the estimator unbiased; the paper's per-token
    weights do not. Bias measured exactly by enumeration under p̃ (figures for the README)."""
    theta, teacher = toy
    alpha = 0.2
    exact = exact_gradient(theta, teacher)
    for single_step in (True, False):
        unbiased = expected_gradient(theta, teacher, alpha, single_step=single_step, importance="sequence")
        assert close(unbiased, exact, 1e-6)
    paper = expected_gradient(theta, teacher, alpha, single_step=True, importance="token")
    reference = expected_gradient(theta, teacher, alpha, single_step=True, importance="token",
                                  single_step_weighted=False)
    reinforce = expected_gradient(theta, teacher, alpha, single_step=False, importance="token")
    figures = {name: (rel_err(g, exact), cosine(g, exact))
               for name, g in (("paper", paper), ("unweighted single-step", reference), ("REINFORCE", reinforce))}
    print(f"\nper-token importance weights, α = {alpha}, vocab {V}, length {T}:")
    for name, (e, c) in figures.items():
        print(f"  {name:24s} relative L2 error {e:.4f}, cosine {c:.4f}")
    # the three share one expectation: E_{y_t∼p̃}[w_t] = 1 makes the single-step weight vanish in
    # expectation, and E_{y_t∼p̃}[w_t r_t ∇log q] = −∇KL(q_t‖p_t) is the single-step term itself.
    # The bias is that prefixes and futures are drawn from p̃, not q; only the variance differs.
    assert close(paper, reference, 1e-9) and close(paper, reinforce, 1e-9)
    # measured (deterministic: float64 enumeration of a fixed-seed toy)
    e, c = figures["paper"]
    assert e == pytest.approx(0.2399, abs=1e-3) and c == pytest.approx(0.9782, abs=1e-3)


# -----------------------------------------------------------------------------
# the rollout phase's log-probs are those of the distribution sampled (rollout.py with tiny models)

def rollout_setup(tiny_instruct, *flags):
    import train
    from configurator import configure
    from dataset import InstructSet
    from model import GPT, GPTConfig
    from components.parallel import Runtime
    from rollout import PromptOrder
    cfg = configure(train.DEFAULTS, ['--method=minillm', '--rollout_size=6', '--rollout_batch_size=3',
                                     '--max_new_tokens=5', '--block_size=32', '--device=cpu', '--dtype=float32',
                                     f'--data_dir={tiny_instruct}', *flags])
    cfg.rank, cfg.world_size = 0, 1
    data = InstructSet(tiny_instruct, 'train')
    rt = Runtime(eot=data.eot, chunked=cfg.chunked_loss is True)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=32)).eval())
    return cfg, rt, data, models, PromptOrder(len(data), 0)


@pytest.mark.parametrize("flags", [["--gen_temperature=0.7", "--gen_top_k=5", "--teacher_mix_alpha=0.0"],
                                   ["--gen_temperature=1.3", "--gen_top_p=0.8", "--teacher_mix_alpha=0.0"],
                                   ["--gen_temperature=0.6", "--teacher_mix_alpha=0.2"],
                                   ["--gen_temperature=0.6", "--teacher_mix_alpha=0.2", "--chunked_loss=True"]])
def test_rollout_logprobs_are_those_of_the_sampled_distribution(tiny_instruct, flags):
    from sampling import last_position_logits
    from sampling import next_token_logprobs
    from rollout import collect_rollouts, minillm_micro_loss
    cfg, rt, data, (student, teacher), order = rollout_setup(tiny_instruct, *flags)
    buf = collect_rollouts(cfg, rt, student, teacher, data, order, torch.Generator().manual_seed(3))
    top_k, alpha = cfg.gen_top_k or None, cfg.teacher_mix_alpha
    plain_old = []
    for j, (p, r) in enumerate(buf['rows']):
        for t, token in enumerate(r):  # replay the generation one step at a time, without padding
            x = torch.tensor([p + r[:t]])
            with torch.no_grad():
                s, te = (m(x, head_fn=last_position_logits) for m in (student, teacher))
            sampled_q = next_token_logprobs(s, cfg.gen_temperature, top_k, cfg.gen_top_p)[0, token]
            sampled = next_token_logprobs([s, te], cfg.gen_temperature, top_k, cfg.gen_top_p, alpha)[0, token]
            assert torch.isfinite(sampled_q)  # a sampled token lies in the student's support
            assert buf['logp_old'][j, t].item() == pytest.approx(sampled_q.item(), abs=1e-5)
            assert buf['logp_mix'][j, t].item() == pytest.approx(sampled.item(), abs=1e-5)
            assert buf['logp_teacher'][j, t].item() == pytest.approx(torch.log_softmax(te, -1)[0, token].item(), abs=1e-5)
            plain_old.append(torch.log_softmax(s, -1)[0, token].item())
    mask = buf['mask']
    assert not torch.allclose(buf['logp_old'][mask], torch.tensor(plain_old), atol=1e-2)  # not the τ = 1 softmax
    # the ratio q_θ / q_old of the loss uses the same distribution: 1 at θ = θ_old
    student.train()
    _, _, stats = minillm_micro_loss(cfg, rt, student, teacher, buf, [0, 1, 2, 3], [0, 1, 2, 3, 4, 5])
    assert stats['ratio'].item() == pytest.approx(1.0, abs=1e-5)


def test_teacher_mixing_with_top_k_or_top_p_is_refused(tiny_instruct, tmp_path):
    import train
    from configurator import UserError
    for flag in ("--gen_top_k=5", "--gen_top_p=0.9"):
        with pytest.raises(UserError, match="teacher_mix_alpha > 0 needs gen_top_k=0 and gen_top_p=1"):
            train.main(['--method=minillm', f'--data_dir={tiny_instruct}', f'--out_dir={tmp_path}', '--device=cpu',
                        '--teacher_mix_alpha=0.2', flag])


# -----------------------------------------------------------------------------
# the chunked loss: minillm_loss from hidden states, chunk by chunk

@pytest.mark.parametrize("switches", [dict(), dict(single_step_weighted=False), dict(single_step=False),
                                      dict(teacher_mix_alpha=0.0, clip_eps=None),
                                      dict(returns_mode="reference", importance="sequence", reward_scale=0.5)])
@pytest.mark.parametrize("filtered", [False, True])
def test_chunked_minillm_loss_equals_minillm_loss(switches, filtered):
    """Value, gradients w.r.t. hidden states and lm_head, and every stat, for any chunking and
    each way of giving the teacher (logits, logits read through an index, hidden states + head)."""
    from sampling import filtered_logprobs
    g = torch.Generator().manual_seed(0)
    B, T, d, V = 3, 5, 8, 13
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    hidden = torch.randn(B, T, d, generator=g, dtype=torch.float64).requires_grad_()
    head = torch.randn(V, d, generator=g, dtype=torch.float64).requires_grad_()
    t_hidden = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    t_head = torch.randn(V, d, generator=g, dtype=torch.float64)
    tokens = torch.randint(V, (B, T), generator=g)
    policy = (lambda z: filtered_logprobs(z, 0.7, 6, None).double()) if filtered else None
    if filtered:  # sampled tokens lie in the student's top-k set
        tokens = (hidden.detach() @ head.detach().T).topk(6, -1).indices[..., 0]
    gather = lambda z: torch.log_softmax(z, -1).gather(-1, tokens[..., None]).squeeze(-1)
    s_logits = hidden @ head.T
    s_policy = policy(s_logits) if filtered else s_logits
    logp_old = gather(s_policy.detach()) + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    logp_teacher = gather(t_hidden @ t_head.T)
    logp_mix = torch.logaddexp(logp_old + math.log(0.8), logp_teacher + math.log(0.2))
    kw = dict(logp_mix=logp_mix, **switches)
    ref, ref_stats = pg.minillm_loss(gather(s_policy), logp_old, logp_teacher, mask, s_policy, t_hidden @ t_head.T, **kw)
    ref_grads = torch.autograd.grad(ref, [hidden, head])
    flat_teacher = (t_hidden @ t_head.T)[mask]                      # [N, V], read through teacher_index
    teachers = [dict(teacher_logits=t_hidden @ t_head.T), dict(teacher_hidden=t_hidden, teacher_head_weight=t_head),
                dict(teacher_logits=torch.cat([flat_teacher.flip(0), flat_teacher[:2]]),
                     teacher_index=torch.arange(flat_teacher.shape[0]).flip(0))]
    for chunk, teacher in [(1, teachers[0]), (4, teachers[1]), (100, teachers[2]), (2, teachers[2])]:
        loss, stats = pg.chunked_minillm_loss(hidden, head, tokens, logp_old, logp_teacher, mask, policy=policy,
                                              chunk_size=chunk, **teacher, **kw)
        grads = torch.autograd.grad(loss, [hidden, head])
        assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-12), (chunk, loss, ref)
        for a, b in zip(grads, ref_grads):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), chunk
        for k in ref_stats:
            assert torch.allclose(stats[k].double(), ref_stats[k].double(), atol=1e-12), k
    assert ref_grads[1].abs().sum() > 0 and (ref_stats["clip_frac"] > 0 or switches.get("clip_eps", 0.2) is None)
    with pytest.raises(ValueError, match="needs the teacher"):
        pg.chunked_minillm_loss(hidden, head, tokens, logp_old, logp_teacher, mask, logp_mix=logp_mix, single_step=True)


def test_chunked_minillm_loss_keeps_no_vocabulary_sized_tensor_for_backward():
    """What autograd saves for backward, by shape: the plain loss keeps [B, T, V] logits and their
    softmaxes; the chunked loss keeps nothing with a vocabulary axis (its gradients are folded in
    during the forward)."""
    g = torch.Generator().manual_seed(1)
    B, T, d, V = 2, 6, 4, 97
    mask = torch.ones(B, T, dtype=torch.bool)
    hidden = torch.randn(B, T, d, generator=g).requires_grad_()
    head = torch.randn(V, d, generator=g).requires_grad_()
    teacher, tokens = torch.randn(B, T, V, generator=g), torch.randint(V, (B, T), generator=g)
    old = torch.log_softmax(hidden.detach() @ head.detach().T, -1).gather(-1, tokens[..., None]).squeeze(-1)

    def saved_shapes(fn):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            fn()
        return shapes
    plain = saved_shapes(lambda: pg.minillm_loss(
        torch.log_softmax(hidden @ head.T, -1).gather(-1, tokens[..., None]).squeeze(-1), old, old, mask,
        hidden @ head.T, teacher, logp_mix=old))
    chunked = saved_shapes(lambda: pg.chunked_minillm_loss(hidden, head, tokens, old, old, mask, teacher, logp_mix=old,
                                                           chunk_size=4))
    assert (B, T, V) in plain
    assert not [s for s in chunked if V in s], chunked
