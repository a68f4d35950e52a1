"""
Tests for kl.py: every divergence against an independent float64 computation, the closed-form
gradients (q − p, q ⊙ (log q − log p − KL)), the exact ATKD identity and split, numerical edge
cases, and the chunked loss against the plain one in value and gradient.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import kl

NAMES = sorted(kl.DIVERGENCES)


def random_logits(*shape, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def reference(name, s, t, temperature=1.0, scale_by_tau2=False, beta=0.5, alpha=0.1):
    """Explicit sums over probabilities in float64 (no log_softmax, no shared code with kl.py)."""
    q = torch.softmax(s.double() / temperature, -1)
    p = torch.softmax(t.double() / temperature, -1)

    def kl_sum(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    value = {
        'forward_kl': lambda: kl_sum(p, q),
        'reverse_kl': lambda: kl_sum(q, p),
        'jsd': lambda: beta * kl_sum(p, beta * p + (1 - beta) * q)
        + (1 - beta) * kl_sum(q, beta * p + (1 - beta) * q),
        'skew_forward_kl': lambda: kl_sum(p, alpha * p + (1 - alpha) * q),
        'skew_reverse_kl': lambda: kl_sum(q, alpha * q + (1 - alpha) * p),
        'tvd': lambda: 0.5 * (p - q).abs().sum(-1),
    }[name]()
    return value * temperature ** 2 if scale_by_tau2 else value


def extra_kwargs(name, beta=0.3, alpha=0.2):
    return {'jsd': {'beta': beta}, 'skew_forward_kl': {'alpha': alpha},
            'skew_reverse_kl': {'alpha': alpha}}.get(name, {})


def log_space_reference(name, s, t, beta=0.5, alpha=0.1):
    """The same definitions from float64 log-probabilities, for logits where exp underflows."""
    log_q, log_p = F.log_softmax(s.double(), -1), F.log_softmax(t.double(), -1)

    def kl_logs(log_a, log_b):
        return torch.where(log_a > -math.inf, log_a.exp() * (log_a - log_b), 0.0).sum(-1)

    def mix(log_a, log_b, w):
        return torch.logaddexp(log_a + math.log(w), log_b + math.log(1 - w))

    return {
        'forward_kl': lambda: kl_logs(log_p, log_q),
        'reverse_kl': lambda: kl_logs(log_q, log_p),
        'jsd': lambda: beta * kl_logs(log_p, mix(log_p, log_q, beta))
        + (1 - beta) * kl_logs(log_q, mix(log_p, log_q, beta)),
        'skew_forward_kl': lambda: kl_logs(log_p, mix(log_p, log_q, alpha)),
        'skew_reverse_kl': lambda: kl_logs(log_q, mix(log_q, log_p, alpha)),
        'tvd': lambda: 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1),
    }[name]()

# -----------------------------------------------------------------------------
# divergences


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('temperature,scale', [(1.0, False), (2.0, True), (0.5, False)])
def test_divergence_matches_explicit_sums(name, temperature, scale):
    s, t = random_logits(3, 4, 11, seed=1), random_logits(3, 4, 11, seed=2)
    kw = extra_kwargs(name)
    got = kl.divergence(name, s, t, temperature=temperature, scale_by_tau2=scale, **kw)
    want = reference(name, s, t, temperature, scale, **kw)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_kl_matches_torch_kl_div():
    s, t = random_logits(5, 13, seed=3), random_logits(5, 13, seed=4)
    log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
    forward = F.kl_div(log_q, log_p, reduction='none', log_target=True).sum(-1)
    backward = F.kl_div(log_p, log_q, reduction='none', log_target=True).sum(-1)
    torch.testing.assert_close(kl.forward_kl(s, t), forward, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl.reverse_kl(s, t), backward, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('name', NAMES)
def test_divergence_of_a_distribution_with_itself_is_zero(name):
    t = random_logits(4, 9, seed=5, scale=5.0)
    value = kl.divergence(name, t + 3.0, t, **extra_kwargs(name))  # logits shift: same softmax
    torch.testing.assert_close(value, torch.zeros(4, dtype=torch.float64), atol=1e-13, rtol=0)


def test_jsd_limits_recover_forward_and_reverse_kl():
    # m = βp + (1−β)q: the KL(q||m) term is O(β²) as β -> 0, so JSD/β -> KL(p||q);
    # symmetrically JSD/(1−β) -> KL(q||p) as β -> 1 (GKD, arXiv 2306.13649).
    s, t = random_logits(6, 10, seed=6), random_logits(6, 10, seed=7)
    eps = 1e-6
    torch.testing.assert_close(kl.jsd(s, t, beta=eps) / eps, kl.forward_kl(s, t), rtol=1e-4, atol=0)
    torch.testing.assert_close(kl.jsd(s, t, beta=1 - eps) / eps, kl.reverse_kl(s, t), rtol=1e-4, atol=0)
    # and the opposite pairing is far off, so the test can tell the two ends apart
    assert not torch.allclose(kl.jsd(s, t, beta=eps) / eps, kl.reverse_kl(s, t), rtol=1e-2)
    half = kl.jsd(s, t, beta=0.5)
    torch.testing.assert_close(half, kl.jsd(t, s, beta=0.5), rtol=1e-12, atol=0)
    assert (half > 0).all() and (half < math.log(2)).all()


def test_skew_kl_endpoints():
    s, t = random_logits(4, 8, seed=8), random_logits(4, 8, seed=9)
    torch.testing.assert_close(kl.skew_forward_kl(s, t, alpha=0.0), kl.forward_kl(s, t))
    torch.testing.assert_close(kl.skew_reverse_kl(s, t, alpha=0.0), kl.reverse_kl(s, t))
    torch.testing.assert_close(kl.skew_forward_kl(s, t, alpha=1.0), torch.zeros(4, dtype=torch.float64))
    # skewing toward p bounds KL(p || αp + (1−α)q) by log(1/α)
    assert (kl.skew_forward_kl(s, t * 50, alpha=0.1) < math.log(10)).all()


@pytest.mark.parametrize('temperature,scale', [(1.0, False), (2.0, True), (0.5, False)])
def test_forward_kl_gradient_is_q_minus_p(temperature, scale):
    s, t = random_logits(3, 7, seed=10).requires_grad_(), random_logits(3, 7, seed=11)
    kl.forward_kl(s, t, temperature, scale).sum().backward()
    q, p = torch.softmax(s.detach() / temperature, -1), torch.softmax(t / temperature, -1)
    factor = temperature if scale else 1 / temperature  # d(z/τ)/dz = 1/τ, times τ² if scaled
    torch.testing.assert_close(s.grad, factor * (q - p), rtol=1e-10, atol=1e-12)


def test_reverse_kl_gradient_closed_form():
    s, t = random_logits(3, 7, seed=12).requires_grad_(), random_logits(3, 7, seed=13)
    value = kl.reverse_kl(s, t)
    value.sum().backward()
    q, p = torch.softmax(s.detach(), -1), torch.softmax(t, -1)
    want = q * (q.log() - p.log() - value.detach()[:, None])
    torch.testing.assert_close(s.grad, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('name', NAMES)
def test_gradcheck_divergences(name):
    s, t = random_logits(2, 5, seed=14).requires_grad_(), random_logits(2, 5, seed=15).requires_grad_()
    kw = dict(extra_kwargs(name), temperature=1.5, scale_by_tau2=True)
    assert torch.autograd.gradcheck(lambda a, b: kl.divergence(name, a, b, **kw), (s, t))


@pytest.mark.parametrize('name', NAMES)
def test_extreme_and_masked_logits_stay_finite(name):
    s = random_logits(4, 12, seed=16, dtype=torch.float32)
    t = random_logits(4, 12, seed=17, dtype=torch.float32)
    s[0, 0], s[1, :] = 1e4, -1e4      # a saturated softmax and a row of huge negative logits
    s[1, 3] = 1e4
    t[2, 5], t[3, :6] = 1e4, -1e4
    s[:, -3:] = -math.inf              # masked vocabulary, shared by both models
    t[:, -3:] = -math.inf
    t[0, 4] = -math.inf                # the teacher alone masks a token: fine for all but reverse-type KL
    s.requires_grad_()
    if name in ('reverse_kl', 'skew_reverse_kl'):
        s.data[0, 4] = -math.inf
    value = kl.divergence(name, s, t)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(s.grad).all()
    assert (s.grad[:, -3:] == 0).all()
    torch.testing.assert_close(value.double(), log_space_reference(name, s.detach(), t), rtol=1e-5, atol=1e-5)
    if name == 'reverse_kl':  # row 0 of the student is one-hot on token 0: KL(q||p) = −log p(0)
        assert value[0].item() == pytest.approx(-F.log_softmax(t[0].double(), -1)[0].item(), rel=1e-6)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', ['forward_kl', 'jsd', 'tvd'])
def test_half_precision_inputs_are_upcast(dtype, name):
    s, t = random_logits(3, 50, seed=18).to(dtype), random_logits(3, 50, seed=19).to(dtype)
    value = kl.divergence(name, s, t)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, kl.divergence(name, s.float(), t.float()), rtol=0, atol=0)
    torch.testing.assert_close(value.double(), reference(name, s, t), rtol=1e-5, atol=1e-6)


def test_masked_mean():
    values = torch.tensor([[1.0, 2.0, math.inf], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, True, False]])
    assert kl.masked_mean(values, mask).item() == pytest.approx(8 / 3)
    assert kl.masked_mean(values[1], None).item() == pytest.approx(5.0)
    assert kl.masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_bad_arguments_raise_value_error():
    s, t = random_logits(2, 5), random_logits(2, 6)
    with pytest.raises(ValueError, match='same shape'):
        kl.forward_kl(s, t)
    with pytest.raises(ValueError, match='temperature'):
        kl.reverse_kl(s, s, temperature=0)
    with pytest.raises(ValueError, match='unknown divergence'):
        kl.divergence('kl', s, s)
    with pytest.raises(ValueError, match='beta'):
        kl.jsd(s, s, beta=1.0)
    with pytest.raises(ValueError, match='mask'):
        kl.masked_mean(torch.ones(3), torch.ones(2, dtype=torch.bool))

# -----------------------------------------------------------------------------
# ATKD


def non_target_softmax(logits, targets):
    """p̂ computed directly: a softmax over the non-target logits only (float64)."""
    rows = []
    for row, g in zip(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1)):
        keep = torch.arange(row.numel()) != g
        rows.append(torch.softmax(row[keep], -1))
    return torch.stack(rows)


@pytest.mark.parametrize('reverse', [False, True])
def test_atkd_parts_match_direct_definitions_and_identity(reverse):
    s, t = random_logits(4, 3, 9, seed=20), random_logits(4, 3, 9, seed=21)
    targets = torch.randint(0, 9, (4, 3), generator=torch.Generator().manual_seed(22))
    tkd, dkd, u = kl.atkd_parts(s, t, targets, reverse=reverse)
    q, p = torch.softmax(s, -1), torch.softmax(t, -1)
    q_g, p_g = q.gather(-1, targets[..., None])[..., 0], p.gather(-1, targets[..., None])[..., 0]
    q_hat, p_hat = non_target_softmax(s, targets), non_target_softmax(t, targets)
    a_g, b_g, a_hat, b_hat = (q_g, p_g, q_hat, p_hat) if reverse else (p_g, q_g, p_hat, q_hat)
    want_tkd = a_g * (a_g / b_g).log() + (1 - a_g) * ((1 - a_g) / (1 - b_g)).log()
    want_dkd = (a_hat * (a_hat / b_hat).log()).sum(-1).reshape(4, 3)
    torch.testing.assert_close(tkd, want_tkd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dkd, want_dkd, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(u, 1 - p_g, rtol=1e-10, atol=1e-12)  # the teacher's, both ways
    # the exact decomposition: KL = TKD + (1 − a(g))·DKD
    whole = kl.reverse_kl(s, t) if reverse else kl.forward_kl(s, t)
    torch.testing.assert_close(tkd + (1 - a_g) * dkd, whole, rtol=1e-12, atol=1e-12)


def test_atkd_parts_stable_when_teacher_is_almost_certain():
    # p(g) = 1 − ~1e-17: 1 − p(g) is 0 in float32 if formed by subtraction
    s = random_logits(5, 20, seed=23, dtype=torch.float32)
    t = random_logits(5, 20, seed=24, dtype=torch.float32)
    targets = torch.tensor([0, 3, 7, 19, 10])
    t[torch.arange(5), targets] = 45.0
    s.requires_grad_()
    tkd, dkd, u = kl.atkd_parts(s, t, targets)
    (tkd + dkd).sum().backward()
    assert torch.isfinite(s.grad).all()
    p64 = F.log_softmax(t.double(), -1)
    u_want = torch.stack([torch.logsumexp(torch.cat([row[:g], row[g + 1:]]), 0)
                          for row, g in zip(p64, targets)]).exp()
    assert (u > 0).all()
    torch.testing.assert_close(u.double(), u_want, rtol=1e-5, atol=0)
    p_hat, q_hat = non_target_softmax(t, targets), non_target_softmax(s, targets)
    want_dkd = (p_hat * (p_hat / q_hat).log()).sum(-1)
    torch.testing.assert_close(dkd.double(), want_dkd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tkd + u * dkd, kl.forward_kl(s, t), rtol=1e-5, atol=1e-5)


def test_atkd_degenerate_rows_are_finite():
    # all non-target logits -inf: p̂ is undefined, DKD is taken as 0; ignore-index targets give 0
    s = random_logits(3, 6, seed=25, dtype=torch.float32)
    t = random_logits(3, 6, seed=26, dtype=torch.float32)
    t[0, 1:] = -math.inf
    s[1, 2], t[1, 2] = 1e4, -1e4
    s.requires_grad_()
    targets = torch.tensor([0, 2, -1])
    tkd, dkd, u = kl.atkd_parts(s, t, targets)
    (tkd + dkd).sum().backward()
    assert torch.isfinite(tkd).all() and torch.isfinite(dkd).all() and torch.isfinite(s.grad).all()
    assert dkd[0].item() == 0 and u[0].item() == 0 and tkd[2].item() == 0 and dkd[2].item() == 0
    torch.testing.assert_close(tkd[0], -F.log_softmax(s[0].detach(), -1)[0])  # KL(onehot||b^q)


def hand_made_batch():
    # teacher p(g) = 0.9, 0.6, 0.8, 0.7 (target 0 everywhere), so u = 0.1, 0.4, 0.2, 0.3
    p = torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.7, 0.1, 0.2]],
                     dtype=torch.float64)
    return random_logits(4, 3, seed=27), p.log(), torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize('reverse', [False, True])
def test_atkd_loss_batch_split_by_hand(reverse):
    s, t, targets = hand_made_batch()
    tkd, dkd, u = kl.atkd_parts(s, t, targets, reverse=reverse)
    torch.testing.assert_close(u, torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64))
    lam = 0.2
    # median of u = 0.25: easy = tokens 0, 2; hard = tokens 1, 3
    want = lam * (dkd[0] + dkd[2]) / 2 + (1 - lam) * (tkd[1] + dkd[1] + tkd[3] + dkd[3]) / 2
    got = kl.atkd_loss(s, t, targets, None, hard_fraction=0.5, lam=lam, reverse=reverse)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # mask out token 3 (its target may be an ignore index): median of {0.1, 0.4, 0.2} = 0.2 and
    # only u strictly below it is easy: easy = {0}, hard = {1, 2}
    mask = torch.tensor([True, True, True, False])
    got = kl.atkd_loss(s, t, torch.tensor([0, 0, 0, -1]), mask, hard_fraction=0.5, lam=lam, reverse=reverse)
    want = lam * dkd[0] + (1 - lam) * (tkd[1] + dkd[1] + tkd[2] + dkd[2]) / 2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # a hard share of 0.25 moves the threshold to the 0.75-quantile 0.325: easy = {0, 2, 3}
    got = kl.atkd_loss(s, t, targets, None, hard_fraction=0.25, lam=lam, reverse=reverse)
    want = lam * (dkd[0] + dkd[2] + dkd[3]) / 3 + (1 - lam) * (tkd[1] + dkd[1])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_atkd_loss_with_all_u_equal_has_no_easy_tokens():
    s, t = random_logits(5, 4, seed=28), torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64).repeat(5, 1)
    targets = torch.zeros(5, dtype=torch.long)
    tkd, dkd, _ = kl.atkd_parts(s, t, targets)
    got = kl.atkd_loss(s, t, targets, None, lam=0.2)
    torch.testing.assert_close(got, 0.8 * (tkd + dkd).mean(), rtol=1e-12, atol=0)
    empty = kl.atkd_loss(s, t, targets, torch.zeros(5, dtype=torch.bool))
    assert empty.item() == 0.0


def sequence_batch():
    """Two sequences, target 0 everywhere: A (tokens 0-3, an even count) with u = 0.1, 0.4, 0.2, 0.3
    and B (tokens 4-8, an odd count) with u = 0.5, 0.05, 0.9, 0.6, 0.3."""
    u = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.5, 0.05, 0.9, 0.6, 0.3], dtype=torch.float64)
    p = torch.stack([1 - u, u / 3, 2 * u / 3], -1)
    return random_logits(9, 3, seed=29), p.log(), torch.zeros(9, dtype=torch.long), torch.tensor([0] * 4 + [1] * 5)


@pytest.mark.parametrize('reverse', [False, True])
def test_atkd_sequence_split_is_the_repositorys_median_rule(reverse):
    s, t, targets, seq = sequence_batch()
    tkd, dkd, u = kl.atkd_parts(s, t, targets, reverse=reverse)
    # the repository's threshold: torch.median, the lower middle value of an even count
    assert torch.median(u[:4]).item() == pytest.approx(0.2) and torch.median(u[4:]).item() == pytest.approx(0.5)
    lam = 0.2
    # A: median 0.2 -> easy {0} (u = 0.1), hard {1, 2, 3}; B: median 0.5 -> easy {5, 8}, hard {4, 6, 7}
    loss_a = lam * dkd[0] + (1 - lam) * (tkd + dkd)[[1, 2, 3]].mean()
    loss_b = lam * dkd[[5, 8]].mean() + (1 - lam) * (tkd + dkd)[[4, 6, 7]].mean()
    got = kl.atkd_loss(s, t, targets, None, lam=lam, reverse=reverse, sequence_ids=seq)
    torch.testing.assert_close(got, (loss_a + loss_b) / 2, rtol=1e-12, atol=0)
    # the batch option: one interpolated median over all nine u = 0.3 -> easy {0, 2, 5}
    want = lam * dkd[[0, 2, 5]].mean() + (1 - lam) * (tkd + dkd)[[1, 3, 4, 6, 7, 8]].mean()
    torch.testing.assert_close(kl.atkd_loss(s, t, targets, None, lam=lam, reverse=reverse), want, rtol=1e-12, atol=0)
    # token order and the sequences' ids do not matter
    perm = torch.tensor([7, 2, 0, 5, 8, 1, 4, 6, 3])
    shuffled = kl.atkd_loss(s[perm], t[perm], targets[perm], None, lam=lam, reverse=reverse,
                            sequence_ids=torch.tensor([9, 5])[seq[perm]])
    torch.testing.assert_close(shuffled, got, rtol=1e-12, atol=0)


def test_atkd_sequence_split_other_hard_shares_and_small_sequences():
    s, t, targets, seq = sequence_batch()
    tkd, dkd, u = kl.atkd_parts(s, t, targets)
    lam = 0.3
    # hard share 0.25: threshold at the lower 0.75-quantile, rank floor(0.75 (n − 1)):
    # A: rank 2 of (0.1, 0.2, 0.3, 0.4) = 0.3 -> hard {1, 3}; B: rank 3 of (0.05, 0.3, 0.5, 0.6, 0.9) = 0.6 -> hard {6, 7}
    loss_a = lam * dkd[[0, 2]].mean() + (1 - lam) * (tkd + dkd)[[1, 3]].mean()
    loss_b = lam * dkd[[4, 5, 8]].mean() + (1 - lam) * (tkd + dkd)[[6, 7]].mean()
    got = kl.atkd_loss(s, t, targets, None, hard_fraction=0.25, lam=lam, sequence_ids=seq)
    torch.testing.assert_close(got, (loss_a + loss_b) / 2, rtol=1e-12, atol=0)
    assert torch.quantile(u[:4], 0.75, interpolation='lower').item() == pytest.approx(0.3)
    # one-token and two-token sequences: the token alone is hard, and so are both of two (the median
    # is the lower u and easy needs u strictly below it): no easy term
    mask = torch.tensor([True, False, False, False, True, True, False, False, False])
    got = kl.atkd_loss(s, t, targets, mask, lam=lam, sequence_ids=seq)
    want = ((1 - lam) * (tkd + dkd)[0] + (1 - lam) * (tkd + dkd)[[4, 5]].mean()) / 2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_atkd_loss_gradcheck_and_bad_targets():
    s, t, targets = hand_made_batch()
    s.requires_grad_()
    for reverse in (False, True):
        assert torch.autograd.gradcheck(lambda x: kl.atkd_loss(x, t, targets, None, reverse=reverse), (s,))
    with pytest.raises(ValueError, match='targets must lie'):
        kl.atkd_loss(s, t, torch.tensor([0, 0, 0, -1]), None)

# -----------------------------------------------------------------------------
# chunked loss


def kd_problem(n=30, d=6, vocab=40, seed=30, lead=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if lead is None else lead
    hidden = torch.randn(*shape, d, generator=g).requires_grad_()
    head = (torch.randn(vocab, d, generator=g) * 0.7).requires_grad_()
    teacher_hidden = torch.randn(*shape, 5, generator=g)
    teacher_head = torch.randn(vocab, 5, generator=g)
    mask = torch.rand(*shape, generator=g) > 0.3
    targets = torch.randint(0, vocab, shape, generator=g).masked_fill(~mask, -1)
    return hidden, head, teacher_hidden, teacher_head, mask, targets


def loss_and_grads(fn, hidden, head, *args, **kwargs):
    hidden.grad = head.grad = None
    loss = fn(hidden, head, *args, **kwargs)
    loss.backward()
    return loss.detach(), hidden.grad.clone(), head.grad.clone()


CHUNKED_CASES = {
    'forward_kl': dict(),
    'forward_kl_tau2_scaled': dict(temperature=2.0, div_kwargs={'scale_by_tau2': True}),
    'reverse_kl_tau07': dict(divergence='reverse_kl', temperature=0.7),
    'jsd_beta03': dict(divergence='jsd', div_kwargs={'beta': 0.3}),
    'skew_reverse_kl': dict(divergence='skew_reverse_kl'),
    'tvd': dict(divergence='tvd'),
    'atkd': dict(atkd=True),
    'atkd_reverse_k03': dict(atkd=True, atkd_reverse=True, atkd_hard_fraction=0.3, atkd_lam=0.4, temperature=1.5),
    'ce_plus_forward_kl': dict(ce_weight=0.5, kd_weight=0.5),
    'ce_plus_reverse_kl_tau2': dict(ce_weight=0.3, kd_weight=0.7, divergence='reverse_kl', temperature=2.0),
    'ce_plus_atkd': dict(ce_weight=0.5, kd_weight=0.5, atkd=True),
}


@pytest.mark.parametrize('case', sorted(CHUNKED_CASES))
@pytest.mark.parametrize('teacher', ['logits', 'hidden'])
def test_chunked_equals_plain(case, teacher):
    hidden, head, teacher_hidden, teacher_head, mask, targets = kd_problem()
    if teacher == 'logits':
        teacher_kw = dict(teacher_logits=teacher_hidden @ teacher_head.T)
    else:
        teacher_kw = dict(teacher_hidden=teacher_hidden, teacher_head_weight=teacher_head)
    kwargs = dict(CHUNKED_CASES[case], mask=mask, targets=targets, **teacher_kw)
    want = loss_and_grads(kl.plain_kd_loss, hidden, head, **kwargs)
    for chunk_size in (7, 30, 64):  # 7 does not divide N = 30
        got = loss_and_grads(kl.chunked_kd_loss, hidden, head, chunk_size=chunk_size, **kwargs)
        for a, b in zip(got, want):  # fp32 round-off is relative to the largest entry
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    assert want[0].item() > 0


def test_chunked_equals_plain_per_sequence_with_eos_left_out():
    hidden, head, teacher_hidden, teacher_head, mask, targets = kd_problem()
    eos = 39
    targets[::3] = torch.where(mask[::3], eos, targets[::3])  # every third valid target is EOS
    seq = torch.arange(30) // 7                               # sequences of 7, 7, 7, 7 and 2 tokens
    mask[28], targets[28], mask[29], targets[29] = True, eos, False, -1  # the last holds only an EOS target
    teacher_logits = teacher_hidden @ teacher_head.T
    kwargs = dict(teacher_logits=teacher_logits, mask=mask, targets=targets, atkd=True, atkd_sequence_ids=seq,
                  atkd_eos_id=eos, ce_weight=0.4, kd_weight=0.6)
    want = loss_and_grads(kl.plain_kd_loss, hidden, head, **kwargs)
    for chunk_size in (4, 30):
        got = loss_and_grads(kl.chunked_kd_loss, hidden, head, chunk_size=chunk_size, **kwargs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    # the same as CE over every valid token plus ATKD over the non-EOS ones, sequence by sequence
    logits = (hidden @ head.T).detach()
    ce = F.cross_entropy(logits[mask], targets[mask])
    keep = mask & (targets != eos)
    assert 0 < keep.sum() < mask.sum()
    atkd = kl.atkd_loss(logits, teacher_logits, targets, keep, sequence_ids=seq)
    torch.testing.assert_close(want[0], 0.4 * ce + 0.6 * atkd, rtol=1e-5, atol=0)
    # four sequences count: the fifth has no ATKD token; a loss per sequence averaged over the four
    tkd, dkd, u = kl.atkd_parts(logits, teacher_logits, targets.clamp(min=0))
    per_seq = []
    for j in range(4):
        rows = keep & (seq == j)
        hard = rows & (u >= torch.median(u[rows]))
        per_seq.append(0.2 * dkd[rows & ~hard].sum() / (rows & ~hard).sum().clamp(min=1)
                       + 0.8 * (tkd + dkd)[hard].sum() / hard.sum())
    torch.testing.assert_close(atkd, torch.stack(per_seq).mean(), rtol=1e-5, atol=0)


def test_chunked_matches_an_independent_plain_computation():
    hidden, head, teacher_hidden, teacher_head, mask, targets = kd_problem()
    teacher_logits = teacher_hidden @ teacher_head.T
    loss = kl.chunked_kd_loss(hidden, head, teacher_logits, mask=mask, targets=targets, chunk_size=8,
                              ce_weight=0.5, kd_weight=0.5)
    logits = hidden @ head.T
    q, p = torch.softmax(logits.double(), -1), torch.softmax(teacher_logits.double(), -1)
    per_token = 0.5 * F.cross_entropy(logits.double(), targets.clamp(min=0), reduction='none') \
        + 0.5 * (p * (p.log() - q.log())).sum(-1)
    want = per_token[mask].mean()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)
    got = torch.autograd.grad(loss, (hidden, head))
    for a, b in zip(got, torch.autograd.grad(want, (hidden, head))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_chunked_with_leading_batch_dims_and_frozen_head():
    hidden, head, teacher_hidden, teacher_head, mask, targets = kd_problem(lead=(3, 10))
    head.requires_grad_(False)
    kwargs = dict(teacher_logits=teacher_hidden @ teacher_head.T, mask=mask, divergence='jsd')
    grads = []
    for fn in (kl.chunked_kd_loss, kl.plain_kd_loss):
        hidden.grad = None
        fn(hidden, head, chunk_size=4, **kwargs).backward()
        grads.append(hidden.grad.clone())
    assert grads[0].shape == (3, 10, 6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        value = kl.chunked_kd_loss(hidden, head, chunk_size=4, **kwargs)
    assert value.grad_fn is None
    torch.testing.assert_close(value, kl.plain_kd_loss(hidden, head, **kwargs), rtol=1e-5, atol=1e-7)


def test_chunked_cross_entropy_alone_needs_no_teacher():
    hidden, head, _, _, mask, targets = kd_problem()
    got = loss_and_grads(kl.chunked_kd_loss, hidden, head, mask=mask, targets=targets, ce_weight=1.0,
                         kd_weight=0.0, chunk_size=9)
    hidden.grad = head.grad = None
    want = F.cross_entropy(hidden[mask] @ head.T, targets[mask])
    want.backward()
    torch.testing.assert_close(got[0], want.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], hidden.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[2], head.grad, rtol=1e-5, atol=1e-7)


def test_chunked_gradient_scales_with_the_upstream_gradient():
    hidden, head, teacher_hidden, teacher_head, mask, targets = kd_problem()
    kwargs = dict(teacher_logits=teacher_hidden @ teacher_head.T, mask=mask, chunk_size=8)
    once = loss_and_grads(kl.chunked_kd_loss, hidden, head, **kwargs)
    hidden.grad = head.grad = None
    (3.0 * kl.chunked_kd_loss(hidden, head, **kwargs)).backward()
    torch.testing.assert_close(hidden.grad, 3.0 * once[1])
    torch.testing.assert_close(head.grad, 3.0 * once[2])


def test_chunked_float64_exact_and_bf16_under_autocast():
    hidden, head, teacher_hidden, teacher_head, mask, targets = kd_problem()
    h64, w64 = hidden.detach().double().requires_grad_(), head.detach().double().requires_grad_()
    kwargs = dict(teacher_logits=(teacher_hidden @ teacher_head.T).double(), mask=mask, targets=targets,
                  ce_weight=0.5, kd_weight=0.5, divergence='reverse_kl')
    got = loss_and_grads(kl.chunked_kd_loss, h64, w64, chunk_size=7, **kwargs)
    want = loss_and_grads(kl.plain_kd_loss, h64, w64, **kwargs)
    for a, b in zip(got, want):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    kwargs['teacher_logits'] = kwargs['teacher_logits'].float()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = loss_and_grads(kl.chunked_kd_loss, hidden, head, chunk_size=7, **kwargs)
        want = loss_and_grads(kl.plain_kd_loss, hidden, head, **kwargs)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=0)
    for a, b in zip(got[1:], want[1:]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.02, atol=1e-3)


def test_chunked_bad_arguments():
    hidden, head, teacher_hidden, teacher_head, mask, targets = kd_problem()
    teacher_logits = teacher_hidden @ teacher_head.T
    with pytest.raises(ValueError, match='exactly one'):
        kl.chunked_kd_loss(hidden, head)
    with pytest.raises(ValueError, match='targets are required'):
        kl.chunked_kd_loss(hidden, head, teacher_logits, ce_weight=0.5)
    with pytest.raises(ValueError, match='targets must lie'):
        kl.chunked_kd_loss(hidden, head, teacher_logits, targets=targets, atkd=True)
    with pytest.raises(ValueError, match='teacher_logits'):
        kl.chunked_kd_loss(hidden, head, teacher_logits[:, :-1])
    with pytest.raises(ValueError, match='unknown divergence'):
        kl.chunked_kd_loss(hidden, head, teacher_logits, divergence='kl')
    with pytest.raises(ValueError, match='chunk_size'):
        kl.chunked_kd_loss(hidden, head, teacher_logits, chunk_size=0)
    with pytest.raises(ValueError, match='both 0'):
        kl.chunked_kd_loss(hidden, head, teacher_logits, kd_weight=0.0)
    loss = kl.chunked_kd_loss(hidden, head, teacher_logits)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='one backward'):
        loss.backward()
