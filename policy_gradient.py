"""
MiniLLM: sequence-level reverse KL minimised by policy gradient.

Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models" (arXiv 2306.08543), §2.
The student q_θ minimises L(θ) = KL(q_θ‖p) = E_{y∼q_θ}[log q_θ(y|x) − log p(y|x)], the reverse KL
between whole responses, and the gradient is estimated from responses the student samples itself.

Pure functions on tensors (the models, the sampling and the optimiser live in rollout.py,
sampling.py and train.py). Conventions:

- All per-token tensors are [B, T] over *response* positions (T = longest response in the batch), and
  `mask` [B, T] (bool) marks real response tokens, right-padded: L_b = mask[b].sum() at 0 .. L_b − 1.
- Log-probs are of the sampled tokens y_t: `logp_teacher` = log p(y_t|·), `logp_old` = log q_old(y_t|·)
  (the frozen student that generated the rollout), `logp` = log q_θ(y_t|·) (current student, with
  grad), `logp_mix` = log p̃(y_t|·) with p̃ = α p + (1 − α) q_old (the distribution actually sampled).
  Under a sampling temperature or top-k / top-p, q is the student's sampling distribution (its
  tempered, filtered softmax; rollout.py), as in the reference code; p stays the teacher at τ = 1.
- Indexing: code positions are 0-based, t = 0 .. L − 1; the paper's 1-based index is t + 1 and its
  T is L. Every docstring formula below is written with the code's 0-based t.
- Averaging: every loss term is a mean over the minibatch's valid response tokens,
  Σ_{b,t valid} (·) / Σ mask, as in the reference code. The true gradient of KL(q_θ‖p) is a sum over
  positions per sequence; the token mean rescales it by 1 / (mean response length), the same for
  every term, so the terms stay balanced.

The paper's stabilisers are switches of `minillm_loss` (the ablations of its Table 4):
single-step decomposition, teacher-mixed sampling with importance weights, length normalisation,
and PPO-style ratio clipping. Where the public reference code differs from the paper
(microsoft/LMOps, minillm/) the choice is `returns_mode='paper' | 'reference'` plus the small options below.
"""

import inspect
import math

import torch
import torch.nn.functional as F

import chunked
from kl import masked_mean, reverse_kl

RETURNS_MODES = ("paper", "reference")
IMPORTANCE_LEVELS = ("token", "sequence")


def _check_mask(mask, *tensors):
    """Validate the [B, T] bool, right-padded response mask and that `tensors` share its shape."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError("mask must be a [B, T] bool tensor marking response tokens (True = real token)")
    for x in tensors:
        if x.shape != mask.shape:
            raise ValueError(f"expected a [B, T] tensor shaped like the mask {tuple(mask.shape)}, "
                             f"got {tuple(x.shape)}")
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("mask must be right-padded (each row: real tokens first, then padding)")


def _upcast(x):
    """bf16/fp16 logits are upcast to fp32 for the loss; fp32/fp64 are left alone."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# -----------------------------------------------------------------------------
# rewards

def token_rewards(logp_teacher, logp_old, mask):
    """Per-token reward, MiniLLM §2.2 (policy gradient): r_t = log p(y_t|y_<t,x) − log q_old(y_t|y_<t,x).

    The student's log-prob is that of the rollout policy, so rewards are constants (detached).
    0 on padding.
    """
    _check_mask(mask, logp_teacher, logp_old)
    r = (logp_teacher - logp_old).detach()
    return torch.where(mask, r, torch.zeros_like(r))


def scale_and_clip_rewards(rewards, mask, scale=None, clip=None):
    """Reward scaling of the MiniLLM reference code (not in the paper): r ← clip(r / scale, −clip, clip).

    The reference scripts use scale = 0.5 (rewards doubled) and clip = 100. None disables either.
    """
    _check_mask(mask, rewards)
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"reward scale must be > 0, got {scale}")
        rewards = rewards / scale
    if clip is not None:
        if clip <= 0:
            raise ValueError(f"reward clip must be > 0, got {clip}")
        rewards = rewards.clamp(-clip, clip)
    return torch.where(mask, rewards, torch.zeros_like(rewards))


# -----------------------------------------------------------------------------
# returns

def returns(rewards, mask, gamma=1.0, include_current=False):
    """Discounted returns, MiniLLM §2.2: R_t = Σ_{t' ≥ t} γ^(t'−t) r_t'  (include_current=True),
    or the future-only R_{t+1} = Σ_{t' > t} γ^(t'−t−1) r_t'  (include_current=False, the long-term
    term of the single-step decomposition). The paper uses γ = 1. Sums stop at the row's last real
    token; the last token has R_{t+1} = 0 (no future). 0 on padding.
    """
    _check_mask(mask, rewards)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    running = torch.zeros_like(r[:, 0])
    from_t = []
    for t in reversed(range(r.size(1))):
        running = r[:, t] + gamma * running
        from_t.append(running)
    out = torch.stack(from_t[::-1], dim=1)  # R_t, including r_t
    if not include_current:  # R_{t+1} is R_t shifted left by one
        out = torch.cat([out[:, 1:], torch.zeros_like(out[:, :1])], dim=1)
    return torch.where(mask, out, torch.zeros_like(out))


def remaining_tokens(mask, include_current=False):
    """Number of real response tokens after position t (L − t − 1), or from t on (L − t). [B, T] long."""
    _check_mask(mask)
    m = mask.long()
    lengths = m.sum(dim=1, keepdim=True)
    after = lengths - m.cumsum(dim=1)
    return torch.where(mask, after + m if include_current else after, torch.zeros_like(after))


def length_normalized_returns(rewards, mask, gamma=1.0, include_current=False):
    """Length normalisation, MiniLLM §2.2 ('Length Normalization'):
    R^Norm_{t+1} = (1 / (L − t − 1)) Σ_{t'=t+1}^{L−1} r_t'  (0-based t, L real tokens in the row),
    the mean of the future rewards. Rewards are mostly negative (log p − log q averages −KL), so a plain
    sum grows more negative with every extra token and favours short responses; a mean does not.

    The paper writes the denominator T − t − 1 with a sum over t' = t+1..T; read with 1-based t that
    would divide T − t terms by T − t − 1 (and by 0 at t = T − 1). We divide by the number of terms
    summed, which is the paper's T − t − 1 when t is 0-based. At the last token there is no future:
    R^Norm = 0. With include_current=True it is the mean of r_t .. r_{L−1}, divided by L − t (the
    reference code's 'T − t + 1' in 1-based indexing). With γ < 1 the discounted sum is divided by
    the same count, as in the reference code.
    """
    summed = returns(rewards, mask, gamma=gamma, include_current=include_current)
    count = remaining_tokens(mask, include_current=include_current).to(summed.dtype)
    return torch.where(count > 0, summed / count.clamp(min=1), torch.zeros_like(summed))


def whiten(values, mask, eps=1e-8, include_padding=False, width=None):
    """Advantage whitening (reference code, LMOps minillm/minillm/utils.py `whiten`):
    (A − mean) / sqrt(var + eps), with the population variance.

    include_padding=False: mean and variance over the valid tokens only. include_padding=True: over
    every entry of the padded [B, width] buffer, padding counted as the 0 it holds there, as the
    reference code does (its advantages are 0 on padding, and it pads every response to
    max_length − max_prompt_length); `width` (≥ T, default T) is that buffer's width, the entries
    past T being padding. 0 on padding.
    """
    _check_mask(mask, values)
    n_valid = mask.sum()
    if n_valid == 0:
        return torch.zeros_like(values)
    width = values.shape[1] if width is None else width
    if width < values.shape[1]:
        raise ValueError(f"width {width} must be at least the tensor's {values.shape[1]} positions")
    n = values.shape[0] * width if include_padding else n_valid
    v = torch.where(mask, values, torch.zeros_like(values))
    mean = v.sum() / n
    var = ((torch.where(mask, values - mean, torch.zeros_like(values)) ** 2).sum()
           + (n - n_valid) * mean ** 2) / n  # each padding entry: (0 − mean)²
    return torch.where(mask, (values - mean) * torch.rsqrt(var + eps), torch.zeros_like(values))


def reference_returns(rewards, mask, gamma=0.95, include_current=True, length_norm=True, whitened=True,
                      include_padding=False, width=None):
    """Long-term advantage of the MiniLLM reference code (microsoft/LMOps, minillm/minillm/losses.py
    `_get_advantages_and_returns`; differs from the paper):
    A_t = whiten( Σ_{t' ≥ t} γ^(t'−t) r_t' / (L − t) ), with γ = 0.95; L − t is the number of remaining
    tokens including t (1-based: T − t + 1); whitening (`whiten`) over the valid tokens, or with
    include_padding over the padded [B, width] buffer as the reference code.

    include_current=False uses the future-only return divided by the future count (L − t − 1), for
    use with the single-step term; the reference code itself always includes r_t.
    """
    if length_norm:
        a = length_normalized_returns(rewards, mask, gamma=gamma, include_current=include_current)
    else:
        a = returns(rewards, mask, gamma=gamma, include_current=include_current)
    return whiten(a, mask, include_padding=include_padding, width=width) if whitened else a


def compute_advantages(rewards, mask, returns_mode="paper", length_norm=True, gamma=None,
                       include_current=False, whitened=True, include_padding=False, width=None):
    """Long-term advantages for `policy_loss`, detached.

    'paper': R_{t+1} (or R_t), optionally length-normalised, γ default 1.
    'reference': discounted (γ default 0.95), optionally length-normalised, then whitened
    (whitened=False: not yet; `whiten` later) over the valid tokens or, with include_padding, the
    padded [B, width] buffer. Whitening statistics depend on the batch they are taken over: the
    reference code takes them over each PPO minibatch, across its data-parallel ranks (rollout.py
    does the same); `minillm_loss` takes them over its own minibatch when given no advantages.
    """
    if returns_mode not in RETURNS_MODES:
        raise ValueError(f"returns_mode must be one of {RETURNS_MODES}, got {returns_mode!r}")
    if returns_mode == "paper":
        gamma = 1.0 if gamma is None else gamma
        fn = length_normalized_returns if length_norm else returns
        a = fn(rewards, mask, gamma=gamma, include_current=include_current)
    else:
        gamma = 0.95 if gamma is None else gamma
        a = reference_returns(rewards, mask, gamma=gamma, include_current=include_current,
                              length_norm=length_norm, whitened=whitened, include_padding=include_padding,
                              width=width)
    return a.detach()


# -----------------------------------------------------------------------------
# teacher-mixed sampling and importance weights

def teacher_mix_log_probs(teacher_logits, student_logits, alpha):
    """Teacher-mixed sampling distribution, MiniLLM §2.2 ('Teacher-Mixed Sampling'):
    log p̃ = log(α softmax(z_p) + (1 − α) softmax(z_q)), over the last (vocabulary) dim.

    Computed as logaddexp(log α + log p, log(1 − α) + log q), stable and finite wherever either
    distribution has mass. The paper uses α = 0.2; α = 0 is the plain student.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"teacher_mix_alpha must be in [0, 1], got {alpha}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher and student logits must have the same shape, got "
                         f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}")
    log_q = F.log_softmax(_upcast(student_logits), dim=-1)
    log_p = F.log_softmax(_upcast(teacher_logits), dim=-1)
    if alpha == 0.0:
        return log_q
    if alpha == 1.0:
        return log_p
    return torch.logaddexp(log_p + math.log(alpha), log_q + math.log1p(-alpha))


def importance_weights(logp_old, logp_mix, mask, clip=None):
    """Per-token importance weight, MiniLLM §2.2 ('Teacher-Mixed Sampling'):
    w_t = q_old(y_t|y_<t,x) / p̃(y_t|y_<t,x), a token-level stand-in for the sequence ratio
    q(y)/p̃(y) chosen for lower variance (it makes the estimator biased; see the tests).

    Detached; optional upper clip; 1 on padding.
    """
    _check_mask(mask, logp_old, logp_mix)
    w = torch.exp((logp_old - logp_mix).detach())
    if clip is not None:
        w = w.clamp(max=clip)
    return torch.where(mask, w, torch.ones_like(w))


def sequence_importance_weights(logp_old, logp_mix, mask, clip=None):
    """Exact sequence-level importance weight W(y) = q_old(y|x) / p̃(y|x) = Π_t w_t, broadcast to every
    real token of the row. Unbiased for y ∼ p̃, but its variance grows exponentially with the length,
    which is why the paper uses per-token weights. Detached; optional upper clip; 1 on padding.
    """
    _check_mask(mask, logp_old, logp_mix)
    log_ratio = torch.where(mask, (logp_old - logp_mix).detach(), torch.zeros_like(logp_old))
    w = torch.exp(log_ratio.sum(dim=1, keepdim=True)).expand_as(log_ratio)
    if clip is not None:
        w = w.clamp(max=clip)
    return torch.where(mask, w, torch.ones_like(w))


# -----------------------------------------------------------------------------
# the loss terms

def single_step_loss(student_logits, teacher_logits, mask, weights=None):
    """Single-step term, MiniLLM §2.2 ('Single-Step Decomposition'):
    (∇L)_Single = E_y Σ_t ∇ KL(q_t‖p_t), with KL(q_t‖p_t) = Σ_v q_t(v) (log q_t(v) − log p_t(v)) over
    the whole vocabulary at each sampled prefix (kl.reverse_kl).

    Gradient flows through the student logits only (teacher detached; the prefix is data). `weights`
    [B, T] (detached) are the paper's importance weights w_t; the reference code uses none.
    Returns the mean over valid tokens of w_t · KL(q_t‖p_t).
    """
    _check_mask(mask)
    if student_logits.shape[:2] != mask.shape or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student/teacher logits must be [B, T, V] with [B, T] = {tuple(mask.shape)}, "
                         f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    kl = reverse_kl(student_logits, teacher_logits.detach())
    if weights is not None:
        _check_mask(mask, weights)
        kl = kl * weights.detach()
    return masked_mean(kl, mask)


def policy_loss(logp, logp_old, advantages, weights, mask, clip_eps=0.2):
    """Long-term term with PPO clipping, MiniLLM §2.2 ((∇L)_Long and 'ratio clipping'):
    L_Long = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)),  ρ_t = exp(log q_θ − log q_old) · w_t.

    A (advantages, e.g. R_{t+1}) and w are detached. At θ = θ_old and without clipping the gradient is
    −mean_t w_t A_t ∇ log q_θ(y_t|·), the importance-weighted (∇L)_Long. As in the reference code the
    clip acts on the weighted ratio, so at θ = θ_old a token with w outside [1 − ε, 1 + ε] and an
    advantage pushing it further out gets no gradient. clip_eps=None disables clipping.

    Returns (loss, clip_fraction): the fraction of valid tokens whose gradient the clip switched off.
    """
    _check_mask(mask, logp, logp_old, advantages, weights)
    # where(), not a multiply by the mask: padding log-probs may be ±inf, and 0 · inf is nan
    log_ratio = torch.where(mask, logp - logp_old.detach(), torch.zeros_like(logp))
    ratio = torch.exp(log_ratio) * weights.detach()
    adv = advantages.detach()
    surrogate = -adv * ratio
    clip_fraction = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if clip_eps is not None:
        if clip_eps <= 0:
            raise ValueError(f"clip_eps must be > 0 (or None to disable clipping), got {clip_eps}")
        clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
        clip_fraction = masked_mean((clipped > surrogate).to(logp.dtype), mask).detach()
        surrogate = torch.maximum(surrogate, clipped)
    return masked_mean(surrogate, mask), clip_fraction


def pretrain_mix_loss(lm_loss, kd_loss=None, kd_ratio=0.5):
    """L_PT of MiniLLM §2.2 as in the reference code: (1 − r) · LM loss + r · word-level KD loss on the
    pre-training corpus, r = kd_ratio = 0.5 (word-level KD). Without kd_loss it is the LM loss.
    """
    if kd_loss is None:
        return lm_loss
    if not 0.0 <= kd_ratio <= 1.0:
        raise ValueError(f"kd_ratio must be in [0, 1], got {kd_ratio}")
    return (1.0 - kd_ratio) * lm_loss + kd_ratio * kd_loss


def minillm_loss(logp, logp_old, logp_teacher, mask, student_logits=None, teacher_logits=None,
                 logp_mix=None, *, single_step=True, teacher_mix_alpha=0.2, length_norm=True,
                 returns_mode="paper", gamma=None, clip_eps=0.2, single_step_weighted=True,
                 reward_scale=None, reward_clip=None, weight_clip=None, include_current=None,
                 importance="token", advantages=None):
    """MiniLLM loss for one rollout minibatch, MiniLLM §2.2: L = L_Long(clipped) + L_Single
    (L_PT is added by train.py). Each term is a mean over the minibatch's valid response tokens.

    Switches (the paper's Table 4 ablations and the reference-code choices):
      single_step          add L_Single (needs student_logits, teacher_logits [B, T, V]).
      teacher_mix_alpha    > 0: the rollout was drawn from p̃ = α p + (1 − α) q_old; weight by
                           w = q_old / p̃ (needs logp_mix). 0: weights are all 1.
      length_norm          average the return over the tokens it sums (R^Norm).
      returns_mode         'paper' (γ = 1) or 'reference' (γ = 0.95, whitened).
      include_current      None: R_t (with r_t) when single_step=False, so the long-term term alone
                           estimates the full gradient; R_{t+1} (future only) when single_step=True,
                           since L_Single supplies the current step exactly. Applied in both modes;
                           the reference code itself always includes r_t (pass True to match it).
      single_step_weighted weight L_Single by w_t (paper) or not (reference code).
      reward_scale/clip    reference code: 0.5 / 100. weight_clip: upper clip on w.
      importance           'token' (paper) or 'sequence' (exact Π_t w_t, unbiased, high variance).
      advantages           precomputed [B, T] advantages (e.g. from `compute_advantages` on the whole
                           rollout batch); otherwise computed here from the minibatch's rewards.

    Returns (loss, stats); stats are detached 0-dim tensors: reward (mean r_t), advantage, weight,
    ratio (mean q_θ/q_old), clip_frac, loss_long, loss_single.
    """
    _check_mask(mask, logp, logp_old, logp_teacher)
    if single_step and (student_logits is None or teacher_logits is None):
        raise ValueError("single_step=True needs student_logits and teacher_logits [B, T, V]")
    rewards, advantages, weights = _minillm_inputs(
        logp_old, logp_teacher, mask, logp_mix, single_step=single_step, teacher_mix_alpha=teacher_mix_alpha,
        length_norm=length_norm, returns_mode=returns_mode, gamma=gamma, reward_scale=reward_scale,
        reward_clip=reward_clip, weight_clip=weight_clip, include_current=include_current, importance=importance,
        advantages=advantages)
    loss_long, clip_frac = policy_loss(logp, logp_old, advantages, weights, mask, clip_eps=clip_eps)
    loss = loss_long
    loss_single = torch.zeros_like(loss_long)
    if single_step:
        loss_single = single_step_loss(student_logits, teacher_logits, mask,
                                       weights=weights if single_step_weighted else None)
        loss = loss + loss_single
    return loss, _minillm_stats(rewards, advantages, weights, mask, logp.detach(), logp_old, clip_frac,
                                loss_long, loss_single)


def _minillm_inputs(logp_old, logp_teacher, mask, logp_mix, *, single_step, teacher_mix_alpha, length_norm,
                    returns_mode, gamma, reward_scale, reward_clip, weight_clip, include_current, importance,
                    advantages):
    """(rewards, advantages, importance weights) of minillm_loss, all detached [B, T]."""
    if importance not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance must be one of {IMPORTANCE_LEVELS}, got {importance!r}")
    if include_current is None:
        include_current = not single_step
    rewards = token_rewards(logp_teacher, logp_old, mask)
    if reward_scale is not None or reward_clip is not None:
        rewards = scale_and_clip_rewards(rewards, mask, scale=reward_scale, clip=reward_clip)
    if advantages is None:
        advantages = compute_advantages(rewards, mask, returns_mode=returns_mode, length_norm=length_norm,
                                        gamma=gamma, include_current=include_current)
    else:
        _check_mask(mask, advantages)
    if teacher_mix_alpha < 0 or teacher_mix_alpha > 1:
        raise ValueError(f"teacher_mix_alpha must be in [0, 1], got {teacher_mix_alpha}")
    if teacher_mix_alpha == 0:
        return rewards, advantages, torch.ones_like(logp_old)
    if logp_mix is None:
        raise ValueError("teacher_mix_alpha > 0 needs logp_mix = log p̃(y_t) of the sampled tokens")
    weight_fn = importance_weights if importance == "token" else sequence_importance_weights
    return rewards, advantages, weight_fn(logp_old, logp_mix, mask, clip=weight_clip)


def _minillm_stats(rewards, advantages, weights, mask, logp, logp_old, clip_frac, loss_long, loss_single):
    """minillm_loss's stats: means over the valid tokens of r_t, A_t, w_t and q_θ/q_old; the clip fraction, the terms."""
    with torch.no_grad():
        ratio = torch.exp(torch.where(mask, logp - logp_old, torch.zeros_like(logp)))
        means = {k: masked_mean(x, mask) for k, x in
                 (("reward", rewards), ("advantage", advantages), ("weight", weights), ("ratio", ratio))}
        return {**means, "clip_frac": clip_frac, "loss_long": loss_long.detach(), "loss_single": loss_single.detach()}


# -----------------------------------------------------------------------------
# the same loss from hidden states, chunk by chunk

def chunked_minillm_loss(hidden, head_weight, tokens, logp_old, logp_teacher, mask, teacher_logits=None,
                         logp_mix=None, *, teacher_hidden=None, teacher_head_weight=None, teacher_index=None,
                         policy=None, chunk_size=1024, single_step=True, single_step_weighted=True, clip_eps=0.2,
                         **switches):
    """minillm_loss (same value, gradients and stats) from the student's hidden states [B, T, d] and
    lm_head [V, d] instead of its logits: the logits of the valid response tokens exist only
    chunk_size rows at a time, and each chunk's gradient w.r.t. them is folded into the gradients of
    hidden and head_weight at once, so no [B, T, V] student logits are kept for backward (as
    kl.chunked_kd_loss does for KD). Per token the loss is

        l_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)) + w_t KL(q_t‖p_t),
        ρ_t = exp(log q_θ(y_t) − log q_old(y_t)) w_t

    (policy_loss, single_step_loss), whose gradient w.r.t. the logits z_t is, with q = softmax(z_t),
    g_t = ∂l_t/∂ log q_θ(y_t) = −A_t ρ_t where the clip is off (else 0) and KL = KL(q_t‖p_t):
    ∂l_t/∂z_t = g_t (onehot(y_t) − q) + w_t q ⊙ (log q − log p − KL).

    tokens [B, T]: the sampled y_t. The teacher (at the valid tokens only) is teacher_logits [..., V]
    read at rows `teacher_index` [N] of teacher_logits.reshape(-1, V) (default: the valid positions
    of mask, for teacher_logits [B, T, V]), or teacher_hidden [B, T, d_t] with teacher_head_weight
    [V, d_t]. `policy(z) -> log-probs`: the student's sampling distribution when it is not
    softmax(z) (rollout.sampling_logits: temperature, top-k / top-p); its chunks go through autograd.
    Other switches as minillm_loss. One backward per forward.
    """
    _check_mask(mask, tokens, logp_old, logp_teacher)
    if hidden.shape[:2] != mask.shape or head_weight.dim() != 2 or head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"need hidden [B, T, d] with [B, T] = {tuple(mask.shape)} and head_weight [V, d], got "
                         f"{tuple(hidden.shape)} and {tuple(head_weight.shape)}")
    if single_step and (teacher_logits is None) == (teacher_hidden is None or teacher_head_weight is None):
        raise ValueError("single_step=True needs the teacher: teacher_logits, or teacher_hidden with "
                         "teacher_head_weight (exactly one of the two)")
    if clip_eps is not None and clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0 (or None to disable clipping), got {clip_eps}")
    rewards, advantages, weights = _minillm_inputs(logp_old, logp_teacher, mask, logp_mix, single_step=single_step,
                                                   **_minillm_defaults(switches))
    flat = mask.reshape(-1).nonzero().squeeze(1)  # the N valid tokens, row by row
    n = max(flat.numel(), 1)  # the token mean's denominator
    at = {k: x.reshape(-1)[flat] for k, x in (('y', tokens), ('old', logp_old), ('adv', advantages), ('w', weights))}
    kl_w = at['w'] if single_step_weighted else torch.ones_like(at['w'])
    mm_dtype, loss_dtype = chunked.matmul_dtype(hidden), chunked.loss_dtype(hidden)
    teacher_at = chunked.teacher_rows(teacher_logits, teacher_hidden, teacher_head_weight, mm_dtype=mm_dtype,
                                      index=flat if teacher_index is None or teacher_logits is None else teacher_index)
    teacher_chunk = lambda rows: teacher_at(rows).to(loss_dtype)  # noqa: E731
    parts = dict(logp=[], clipped=[], long=0.0, single=0.0)

    def long_term(logp, rows):
        """This chunk's share of L_Long and its derivative w.r.t. log q_θ(y_t) (policy_loss's clip)."""
        ratio = torch.exp(logp - at['old'][rows]) * at['w'][rows]
        surrogate = -at['adv'][rows] * ratio
        clipped = -at['adv'][rows] * ratio.clamp(1 - clip_eps, 1 + clip_eps) if clip_eps else surrogate
        clip_on = clipped > surrogate
        parts['logp'].append(logp.detach())
        parts['clipped'].append(clip_on)
        return torch.where(clip_on, clipped, surrogate).sum() / n, torch.where(clip_on, 0.0, surrogate.detach()) / n

    def closed_form(z, rows):
        """(∂ chunk loss / ∂z) by the formula above, reusing z's buffer (3 [C, V] buffers in all)."""
        y, a = at['y'][rows, None], kl_w[rows, None] / n
        q, log_q = chunked.softmax_and_log_softmax_(z, loss_dtype)
        long, g = long_term(log_q.gather(-1, y).squeeze(-1), rows)
        parts['long'] += long
        if single_step:
            # teacher_at's rows are a copy or a fresh matmul: its log-softmax may take their buffer
            kl, diff = chunked.reverse_kl_(q, log_q, chunked.log_softmax_as(teacher_at(rows), loss_dtype))
            parts['single'] += (a.squeeze(1) * kl).sum()
            grad = diff.sub_(kl[:, None]).mul_(a).sub_(g[:, None]).mul_(q)
        else:
            grad = q.mul_(-g[:, None])
        return grad.scatter_add_(-1, y, g[:, None])

    def by_autograd(z, rows):
        """The same for a `policy` (filtered, tempered): autograd on this chunk's logits alone."""
        with torch.enable_grad():
            z.requires_grad_()
            log_q = torch.log_softmax(policy(z), -1)
            long, _ = long_term(log_q.gather(-1, at['y'][rows, None]).squeeze(-1), rows)
            single = (kl_w[rows] / n * reverse_kl(log_q, teacher_chunk(rows))).sum() if single_step else 0.0
            parts['long'] += long.detach()
            parts['single'] += single.detach() if single_step else 0.0
            return torch.autograd.grad(long + single, z)[0]

    def chunk_grad(z, rows, want_grad):
        # the closed form upcasts bf16 logits inside its first log-softmax (one pass less over [C, V])
        return by_autograd(z.to(loss_dtype), rows) if policy is not None else closed_form(z, rows)

    def total():
        return torch.as_tensor(parts['long'] + parts['single'], dtype=loss_dtype, device=hidden.device)

    h = hidden.reshape(-1, hidden.shape[-1])[flat]
    loss = chunked.head_loss(h, head_weight, chunk_grad, total, chunk_size, mm_dtype)
    logp = torch.zeros_like(logp_old).reshape(-1)
    logp[flat] = torch.cat(parts['logp'] or [logp_old[:0, 0]]).to(logp_old.dtype)
    clip_frac = torch.cat(parts['clipped'] or [mask[:0, 0]]).to(loss_dtype).sum() / n
    loss_long, loss_single = (torch.as_tensor(parts[k], dtype=loss_dtype, device=mask.device)
                              for k in ('long', 'single'))
    return loss, _minillm_stats(rewards, advantages, weights, mask, logp.view_as(logp_old), logp_old, clip_frac,
                                loss_long, loss_single)


def _minillm_defaults(switches):
    """minillm_loss's keyword defaults (read from its signature) for the switches chunked_minillm_loss passes on."""
    allowed = {k: p.default for k, p in inspect.signature(minillm_loss).parameters.items() if p.kind == p.KEYWORD_ONLY
               and k not in ("single_step", "single_step_weighted", "clip_eps")}
    unknown = set(switches) - set(allowed)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
    return {**allowed, **switches}
