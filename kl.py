"""
Token-level divergences between a teacher p and a student q, ATKD, and a chunked KD loss.

Pure functions on tensors; each names its paper. Argument order is always
(student_logits, teacher_logits), shapes [..., V]; every divergence returns [...] (the
vocabulary axis reduced). Everything is computed in log space in fp32 (fp64 stays fp64),
with 0·log 0 = 0 so that -inf logits (a masked vocabulary) give finite values and gradients.
A term is infinite only when the divergence truly is: e.g. forward KL where the teacher
puts mass on a token the student has masked to -inf.
"""

import math

import torch
import torch.nn.functional as F

import chunked

# -----------------------------------------------------------------------------
# token-level divergences


def _log_probs(student_logits, teacher_logits, temperature):
    """(log q, log p) = log_softmax(z / τ) (Hinton et al., arXiv 1503.02531, §2, Eq. 1), in fp32 for bf16/fp16."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape [..., V]")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    log_q = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    return log_q, log_p


def _kl_from_logs(log_a, log_b):
    """KL(a||b) = Σ_v a(v) (log a(v) − log b(v)) over the last axis, with 0·log 0 = 0."""
    a = log_a.exp()
    # the where keeps -inf - -inf = nan out of both the value and the gradient
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * diff).sum(-1)


def _log_mixture(log_a, log_b, w):
    """log(w·a + (1−w)·b) elementwise, by logaddexp; w in [0, 1]."""
    if w == 0:
        return log_b
    if w == 1:
        return log_a
    # logaddexp(-inf, -inf) has a nan gradient, so such entries are routed around it
    some_mass = (log_a > -math.inf) | (log_b > -math.inf)
    zero = torch.zeros_like(log_a)
    mixed = torch.logaddexp(torch.where(some_mass, log_a, zero) + math.log(w),
                            torch.where(some_mass, log_b, zero) + math.log1p(-w))
    return torch.where(some_mass, mixed, log_a)


def _scaled(value, temperature, scale_by_tau2):
    return value * temperature ** 2 if scale_by_tau2 else value


def forward_kl(student_logits, teacher_logits, temperature=1.0, scale_by_tau2=False):
    """Forward KL (word-level KD: Hinton et al., arXiv 1503.02531; Kim & Rush, arXiv 1606.07947 §3.1):
    KL(p||q) = Σ_v p(v) (log p(v) − log q(v)); ∂/∂z_q = q − p."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _scaled(_kl_from_logs(log_p, log_q), temperature, scale_by_tau2)


def reverse_kl(student_logits, teacher_logits, temperature=1.0, scale_by_tau2=False):
    """Reverse KL (MiniLLM, arXiv 2306.08543 §2, per token): KL(q||p) = Σ_v q(v) (log q(v) − log p(v))."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    return _scaled(_kl_from_logs(log_q, log_p), temperature, scale_by_tau2)


def jsd(student_logits, teacher_logits, beta=0.5, temperature=1.0, scale_by_tau2=False):
    """Generalised JSD(β) (GKD: Agarwal et al., arXiv 2306.13649):
    m = β p + (1−β) q; β KL(p||m) + (1−β) KL(q||m).

    Limits: JSD(β)/β -> KL(p||q) as β -> 0 and JSD(β)/(1−β) -> KL(q||p) as β -> 1, since the
    other term vanishes like β² (resp. (1−β)²); β = 0.5 is the symmetric JSD, at most log 2.
    """
    if not 0 < beta < 1:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}; use forward_kl/reverse_kl for the ends")
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    log_m = _log_mixture(log_p, log_q, beta)
    value = beta * _kl_from_logs(log_p, log_m) + (1 - beta) * _kl_from_logs(log_q, log_m)
    return _scaled(value, temperature, scale_by_tau2)


def skew_forward_kl(student_logits, teacher_logits, alpha=0.1, temperature=1.0, scale_by_tau2=False):
    """Skew forward KL (DistiLLM: Ko et al., arXiv 2402.03898):
    KL(p || α p + (1−α) q); α = 0 is forward KL."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"skew_forward_kl needs 0 <= alpha <= 1, got {alpha}")
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    value = _kl_from_logs(log_p, _log_mixture(log_p, log_q, alpha))
    return _scaled(value, temperature, scale_by_tau2)


def skew_reverse_kl(student_logits, teacher_logits, alpha=0.1, temperature=1.0, scale_by_tau2=False):
    """Skew reverse KL (DistiLLM: Ko et al., arXiv 2402.03898):
    KL(q || α q + (1−α) p); α = 0 is reverse KL."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"skew_reverse_kl needs 0 <= alpha <= 1, got {alpha}")
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    value = _kl_from_logs(log_q, _log_mixture(log_q, log_p, alpha))
    return _scaled(value, temperature, scale_by_tau2)


def tvd(student_logits, teacher_logits, temperature=1.0, scale_by_tau2=False):
    """Total variation distance (f-divergence KD: Wen et al., arXiv 2307.15190): ½ Σ_v |p(v) − q(v)|."""
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    value = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    return _scaled(value, temperature, scale_by_tau2)


DIVERGENCES = {fn.__name__: fn for fn in (forward_kl, reverse_kl, jsd, skew_forward_kl, skew_reverse_kl, tvd)}


def divergence(name, student_logits, teacher_logits, **kwargs):
    """The divergence called `name` (a key of DIVERGENCES), per position."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")
    return DIVERGENCES[name](student_logits, teacher_logits, **kwargs)


def masked_mean(values, mask):
    """Mean of values over positions where mask is true; mask None = plain mean; empty mask -> 0."""
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of values {tuple(values.shape)}")
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)


# -----------------------------------------------------------------------------
# ATKD: adaptive teaching (Zhong et al., arXiv 2402.11890)


def _target_split(log_probs, targets):
    """For r = exp(log_probs): (log r(g), log(1 − r(g)), log r̂) with r̂(v) = r(v)/(1 − r(g)), v ≠ g.

    log(1 − r(g)) is a logsumexp over the non-target entries, so it stays exact when r(g) -> 1.
    If every non-target entry is -inf, r̂ is undefined; it is returned as all -inf (DKD = 0).
    """
    index = targets.unsqueeze(-1)
    log_target = log_probs.gather(-1, index).squeeze(-1)
    is_target = torch.zeros_like(log_probs, dtype=torch.bool).scatter_(-1, index, True)
    log_rest = log_probs.masked_fill(is_target, -math.inf)
    has_rest = (log_rest > -math.inf).any(-1, keepdim=True)
    # all -inf rows would give logsumexp a nan gradient, so they are replaced by zeros first
    safe_rest = torch.where(has_rest, log_rest, torch.zeros_like(log_rest))
    log_not_target = torch.logsumexp(safe_rest, -1, keepdim=True)
    log_hat = torch.where(has_rest, log_rest - log_not_target, log_rest)
    log_not_target = torch.where(has_rest, log_not_target, torch.full_like(log_not_target, -math.inf))
    return log_target, log_not_target.squeeze(-1), log_hat


def _valid_targets(targets, vocab_size):
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}")
    in_range = (targets >= 0) & (targets < vocab_size)
    return in_range, targets.clamp(0, vocab_size - 1).long()


def teacher_uncertainty(teacher_logits, targets, temperature=1.0):
    """ATKD uncertainty (arXiv 2402.11890): u = 1 − p(g), computed as
    exp(logsumexp_{v≠g} z_v − logsumexp_v z_v) with z = logits/τ.

    The teacher's mass off the target token g, exact when p(g) -> 1; detached; 0 at ignore targets.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    in_range, index = _valid_targets(targets, teacher_logits.shape[-1])
    dtype = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    z = teacher_logits.detach().to(dtype) / temperature
    log_total = torch.logsumexp(z, -1)
    u = (torch.logsumexp(z.scatter_(-1, index[..., None], -math.inf), -1) - log_total).exp()
    return torch.where(in_range, u, torch.zeros_like(u))


def atkd_parts(student_logits, teacher_logits, targets, reverse=False, temperature=1.0):
    """ATKD decomposition (arXiv 2402.11890): KL(p||q) = TKD + (1 − p(g))·DKD.

    TKD = KL([p(g), 1−p(g)] || [q(g), 1−q(g)]), DKD = KL(p̂||q̂) over the renormalised
    non-target distributions; reverse=True swaps p and q inside both (then
    KL(q||p) = TKD + (1 − q(g))·DKD). Returns (tkd, dkd, u), each [...], with u = 1 − p(g)
    the teacher's uncertainty (detached) in both directions. Positions whose target is
    outside [0, V) (an ignore index) get zeros.
    """
    log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
    if targets.shape != log_q.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} must have the leading shape "
                         f"{tuple(log_q.shape[:-1])} of the logits")
    in_range, index = _valid_targets(targets, log_q.shape[-1])
    q_target, q_not_target, q_hat = _target_split(log_q, index)
    p_target, p_not_target, p_hat = _target_split(log_p, index)
    binary_p = torch.stack([p_target, p_not_target], -1)
    binary_q = torch.stack([q_target, q_not_target], -1)
    if reverse:
        tkd, dkd = _kl_from_logs(binary_q, binary_p), _kl_from_logs(q_hat, p_hat)
    else:
        tkd, dkd = _kl_from_logs(binary_p, binary_q), _kl_from_logs(p_hat, q_hat)
    zero = torch.zeros_like(tkd)
    # u from its own function, so that the chunked loss (which needs u first) splits identically
    u = teacher_uncertainty(teacher_logits, targets, temperature)
    return torch.where(in_range, tkd, zero), torch.where(in_range, dkd, zero), u


def atkd_token_weights(u, valid, hard_fraction=0.5, lam=0.2, sequence_ids=None):
    """ATKD split (arXiv 2402.11890 §4): token weights with Σ w_tkd·TKD + w_dkd·DKD = L.

    The paper's k (`hard_fraction`) is the share of tokens, most uncertain first, taught as hard:
    hard = valid tokens with u at or above a threshold θ (ties are hard), easy = the others.
    L = λ·mean_easy(DKD) + (1 − λ)·mean_hard(TKD + DKD); an empty group contributes 0 (its term
    is dropped, the other is not reweighted).

    sequence_ids [...] (the ATKD repository's rule, WHU-ZQH/ATKD distill_trainer.py: its per-device
    batch is one sequence): each sequence is split and averaged on its own, θ_s = the lower
    (1 − k)-quantile of its u (at k = 0.5 exactly torch.median, the lower middle value), and
    L = mean over the sequences with a valid token of L_s, what gradient accumulation over
    one-sequence batches gives. sequence_ids None: one split of the whole batch, θ = the
    (1 − k)-quantile of all valid u by linear interpolation, group means over the batch.
    """
    if not 0 <= hard_fraction <= 1 or not 0 <= lam <= 1:
        raise ValueError(f"atkd needs 0 <= hard_fraction <= 1 and 0 <= lam <= 1, got "
                         f"hard_fraction={hard_fraction}, lam={lam}")
    zero, valid = torch.zeros_like(u), valid.bool()
    if not valid.any():
        return zero, zero
    if sequence_ids is None:
        easy = valid & (u < torch.quantile(u[valid], 1 - hard_fraction))
        hard = valid & ~easy
        per_easy = lam / easy.sum().clamp(min=1).to(u.dtype)
        per_hard = (1 - lam) / hard.sum().clamp(min=1).to(u.dtype)
        w_tkd = torch.where(hard, per_hard, zero)
        return w_tkd, torch.where(easy, per_easy, w_tkd)
    if sequence_ids.shape != u.shape:
        raise ValueError(f"sequence_ids {tuple(sequence_ids.shape)} must have the shape of u {tuple(u.shape)}")
    uv = u[valid]
    _, seq, counts = torch.unique(sequence_ids[valid], return_inverse=True, return_counts=True)
    # sort by (sequence, u): each sequence's values in order, its θ_s at its lower quantile rank
    order = torch.argsort(uv, stable=True)
    order = order[torch.argsort(seq[order], stable=True)]
    starts = counts.cumsum(0) - counts
    # the rank torch.quantile(interpolation='lower') takes: floor((1 − k)(n − 1))
    rank = torch.floor((1 - hard_fraction) * (counts - 1).to(torch.float64)).long()
    easy_v = uv < uv[order][starts + rank][seq]
    n_easy = torch.zeros_like(counts).scatter_add_(0, seq, easy_v.long())
    n_seq = counts.numel()
    per_easy = lam / (n_seq * n_easy.clamp(min=1).to(u.dtype))
    per_hard = (1 - lam) / (n_seq * (counts - n_easy).clamp(min=1).to(u.dtype))
    w_tkd, w_dkd = zero.clone(), zero.clone()
    w_tkd[valid] = torch.where(easy_v, 0.0, per_hard[seq]).to(u.dtype)
    w_dkd[valid] = torch.where(easy_v, per_easy[seq], per_hard[seq]).to(u.dtype)
    return w_tkd, w_dkd


def _weighted_sum(values, weights):
    """Σ weights·values where weights != 0; values there may be inf/nan without harm."""
    return torch.where(weights != 0, values * weights, torch.zeros_like(values)).sum()


def atkd_loss(student_logits, teacher_logits, targets, mask, hard_fraction=0.5, lam=0.2, reverse=False,
              temperature=1.0, sequence_ids=None):
    """ATKD loss (arXiv 2402.11890 §4), a scalar:
    L = λ·mean_easy(DKD) + (1 − λ)·mean_hard(TKD + DKD), hard = the `hard_fraction` most uncertain
    tokens (u = 1 − p(g)); per sequence when sequence_ids are given (atkd_token_weights).

    mask [...] marks the valid tokens (None = all); targets may hold any value where mask is false.
    """
    tkd, dkd, u = atkd_parts(student_logits, teacher_logits, targets, reverse, temperature)
    valid = _valid_mask(mask, targets, student_logits.shape[-1])
    w_tkd, w_dkd = atkd_token_weights(u, valid, hard_fraction, lam, sequence_ids)
    return _weighted_sum(tkd, w_tkd) + _weighted_sum(dkd, w_dkd)


def _valid_mask(mask, targets, vocab_size):
    valid = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask.bool()
    if valid.shape != targets.shape:
        raise ValueError(f"mask {tuple(valid.shape)} must have the shape of targets {tuple(targets.shape)}")
    in_range = (targets >= 0) & (targets < vocab_size)
    if (valid & ~in_range).any():
        raise ValueError(f"targets must lie in [0, {vocab_size}) wherever mask is true; "
                         "mask out ignore-index positions (e.g. -1)")
    return valid


# -----------------------------------------------------------------------------
# chunked KD loss: the [N, V] student logits never all alive at once (chunked.py)


def _token_weights(flat, u, spec):
    """Per-token weights whose weighted sums of token losses give the total loss exactly."""
    valid = flat['valid']
    plain = valid.to(spec['loss_dtype']) / valid.sum().clamp(min=1)
    weights = {'ce': spec['ce_weight'] * plain if spec['ce_weight'] else None}
    if spec['kd_weight'] and spec['atkd']:
        w_tkd, w_dkd = atkd_token_weights(u, flat['atkd_valid'], spec['atkd_hard_fraction'], spec['atkd_lam'],
                                          flat['atkd_sequence_ids'])
        weights.update(tkd=spec['kd_weight'] * w_tkd, dkd=spec['kd_weight'] * w_dkd)
    elif spec['kd_weight']:
        weights['kd'] = spec['kd_weight'] * plain
    return weights


def _chunk_loss(student_logits, teacher_logits, targets, weights, spec):
    """This chunk's share of ce_weight·CE + kd_weight·KD (token losses times their weights)."""
    total = student_logits.new_zeros(())
    if weights['ce'] is not None:  # CE at temperature 1, whatever the KD temperature
        ce = F.cross_entropy(student_logits.to(spec['loss_dtype']), targets, reduction='none')
        total = total + _weighted_sum(ce, weights['ce'])
    if 'kd' in weights:
        kd = DIVERGENCES[spec['divergence']](student_logits, teacher_logits,
                                             temperature=spec['temperature'], **spec['div_kwargs'])
        total = total + _weighted_sum(kd, weights['kd'])
    if 'tkd' in weights:
        tkd, dkd, _ = atkd_parts(student_logits, teacher_logits, targets, spec['atkd_reverse'],
                                 spec['temperature'])
        total = total + _weighted_sum(tkd, weights['tkd']) + _weighted_sum(dkd, weights['dkd'])
    return total


def _closed_form_chunk(logits, teacher_logits, targets, weights, spec):
    """(loss, ∂loss/∂logits) of one chunk for CE and forward/reverse KL, by hand:
    ∂CE/∂z = q − onehot(g);  ∂KL(p||q)/∂z = (q − p)/τ  (Hinton et al., arXiv 1503.02531, §2.1, Eq. 2);
    ∂KL(q||p)/∂z = q ⊙ (log q − log p − KL)/τ  (reverse_kl through the softmax); times τ² with
    scale_by_tau2.

    The same value as _chunk_loss with fewer [C, V] buffers and passes than autograd; `logits`
    must be a buffer the caller no longer needs (it is overwritten).
    """
    tau, ce_weights, kd_weights, dtype = spec['temperature'], weights['ce'], weights.get('kd'), spec['loss_dtype']
    if tau != 1 and kd_weights is not None:
        logits = logits.to(dtype)  # z / τ in the loss dtype, not in bf16
    loss, grad = logits.new_zeros((), dtype=dtype), None
    if kd_weights is not None:
        # in place, unless CE still needs the logits at τ = 1 below (bf16 logits: upcast into a new buffer)
        scaled = logits / tau if ce_weights is not None else logits.div_(tau) if tau != 1 else logits
        log_q = chunked.log_softmax_as(scaled, dtype)
        # a new buffer either way (teacher_logits may be a view of the caller's logits)
        log_p = torch.log_softmax(teacher_logits / tau if tau != 1 else teacher_logits, -1, dtype=dtype)
        if spec['divergence'] == 'forward_kl':
            p = log_p.exp()
            diff = log_p.sub_(log_q).masked_fill_(p == 0, 0)  # 0·log 0 = 0
            kl = torch.linalg.vecdot(p, diff)
            del diff, log_p
            grad = log_q.exp_().sub_(p)
        else:
            q = log_q.exp()
            kl, diff = chunked.reverse_kl_(q, log_q, log_p)
            grad = diff.sub_(kl[:, None]).mul_(q)
        del log_q
        scale = tau ** 2 if spec['div_kwargs'].get('scale_by_tau2') else 1.0
        loss = loss + _weighted_sum(kl * scale, kd_weights)
        grad.mul_((kd_weights * (scale / tau))[:, None])
    if ce_weights is not None:  # CE at temperature 1, whatever the KD temperature
        log_q_unit = chunked.log_softmax_as(logits, dtype)
        loss = loss + _weighted_sum(-log_q_unit.gather(-1, targets[:, None]).squeeze(-1), ce_weights)
        grad_ce = log_q_unit.exp_()
        grad_ce.scatter_add_(-1, targets[:, None], -torch.ones_like(grad_ce[:, :1]))
        grad_ce.mul_(ce_weights[:, None])
        grad = grad_ce if grad is None else grad.add_(grad_ce)
    return loss, grad


def _chunk_grad(teacher_chunk, targets, weights, spec, loss):
    """chunked.head_loss's chunk_grad for CE, KD and ATKD: adds the chunk's share of the loss to `loss`,
    returns ∂loss/∂logits (_closed_form_chunk for CE and forward/reverse KL, else autograd on the chunk)."""
    def chunk_grad(logits, rows, want_grad):
        teacher_logits = teacher_chunk(rows)
        chunk_weights = {key: w[rows] if w is not None else None for key, w in weights.items()}
        chunk_targets = targets[rows] if targets is not None else None
        if not want_grad:
            loss.add_(_chunk_loss(logits, teacher_logits, chunk_targets, chunk_weights, spec))
            return None
        if spec['closed_form']:  # it upcasts half-precision logits itself, inside its first log-softmax
            part, grad = _closed_form_chunk(logits, teacher_logits, chunk_targets, chunk_weights, spec)
        else:
            part, grad = chunked.autograd_chunk(
                lambda z: _chunk_loss(z, teacher_logits, chunk_targets, chunk_weights, spec),
                logits.to(spec['loss_dtype']))
        loss.add_(part.detach())
        return grad
    return chunk_grad


_TENSOR_ARGS = ('hidden', 'head_weight', 'teacher_logits', 'teacher_hidden', 'teacher_head_weight',
                'mask', 'targets', 'atkd_sequence_ids')


def _prepare(args):
    """Validate the arguments of chunked/plain_kd_loss (a dict); flatten leading dims to N tokens."""
    hidden, head_weight, teacher_logits, teacher_hidden, teacher_head, mask, targets, sequence_ids = (
        args[k] for k in _TENSOR_ARGS)
    spec = {k: v for k, v in args.items() if k not in _TENSOR_ARGS}
    if hidden.dim() < 2 or head_weight.dim() != 2 or head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"need hidden [..., d] and head_weight [V, d], got {tuple(hidden.shape)} "
                         f"and {tuple(head_weight.shape)}")
    lead, vocab_size = hidden.shape[:-1], head_weight.shape[0]
    if spec['kd_weight'] and (teacher_logits is None) == (teacher_hidden is None or teacher_head is None):
        raise ValueError("give the teacher as teacher_logits [..., V] or as teacher_hidden and "
                         "teacher_head_weight (exactly one of the two)")
    if teacher_logits is not None and teacher_logits.shape != (*lead, vocab_size):
        raise ValueError(f"teacher_logits {tuple(teacher_logits.shape)} must be {(*lead, vocab_size)}")
    if teacher_hidden is not None and (teacher_hidden.shape[:-1] != lead
                                       or teacher_head.shape[0] != vocab_size):
        raise ValueError(f"teacher_hidden {tuple(teacher_hidden.shape)} / teacher_head_weight "
                         f"{tuple(teacher_head.shape)} must match {tuple(lead)} tokens and V={vocab_size}")
    if not (spec['ce_weight'] or spec['kd_weight']):
        raise ValueError("ce_weight and kd_weight are both 0: there is no loss to compute")
    if (spec['ce_weight'] or (spec['kd_weight'] and spec['atkd'])) and targets is None:
        raise ValueError("targets are required when ce_weight != 0 or atkd=True")
    if spec['divergence'] not in DIVERGENCES:
        raise ValueError(f"unknown divergence {spec['divergence']!r}; choose one of {sorted(DIVERGENCES)}")
    if not (isinstance(spec['chunk_size'], int) and spec['chunk_size'] >= 1):
        raise ValueError(f"chunk_size must be a positive int, got {spec['chunk_size']!r}")
    if mask is not None and mask.shape != lead:
        raise ValueError(f"mask {tuple(mask.shape)} must have the leading shape {tuple(lead)} of hidden")
    if sequence_ids is not None and sequence_ids.shape != lead:
        raise ValueError(f"atkd_sequence_ids {tuple(sequence_ids.shape)} must have the leading shape "
                         f"{tuple(lead)} of hidden")
    if not spec['temperature'] > 0:
        raise ValueError(f"temperature must be > 0, got {spec['temperature']}")
    if mask is None:
        mask = torch.ones(lead, dtype=torch.bool, device=hidden.device)
    mask = mask.reshape(-1)
    atkd_valid = mask
    if targets is not None:
        targets = targets.reshape(-1)
        mask = atkd_valid = _valid_mask(mask, targets, vocab_size)
        if spec['atkd_eos_id'] is not None:  # the ATKD repository pads with EOS: an EOS target is padding there
            atkd_valid = mask & (targets != spec['atkd_eos_id'])
        targets = targets.clamp(0, vocab_size - 1).long()
    spec['div_kwargs'] = dict(spec['div_kwargs'] or {})
    # the chunk matmuls run in the autocast dtype when the caller is under autocast, as hidden @ W.T would
    spec['mm_dtype'], spec['loss_dtype'] = chunked.matmul_dtype(hidden), chunked.loss_dtype(hidden)
    spec['closed_form'] = not spec['kd_weight'] or (
        not spec['atkd'] and spec['divergence'] in ('forward_kl', 'reverse_kl')
        and set(spec['div_kwargs']) <= {'scale_by_tau2'})
    flat = {name: x.reshape(-1, x.shape[-1]) if x is not None else None for name, x in
            (('hidden', hidden), ('teacher_logits', teacher_logits), ('teacher_hidden', teacher_hidden))}
    flat.update(valid=mask.bool(), targets=targets, atkd_valid=atkd_valid.bool(),
                atkd_sequence_ids=sequence_ids.reshape(-1) if sequence_ids is not None else None)
    return spec, flat


def chunked_kd_loss(hidden, head_weight, teacher_logits=None, *, teacher_hidden=None,
                    teacher_head_weight=None, mask=None, targets=None, divergence='forward_kl',
                    chunk_size=1024, temperature=1.0, atkd=False, atkd_hard_fraction=0.5, atkd_lam=0.2,
                    atkd_reverse=False, atkd_sequence_ids=None, atkd_eos_id=None, div_kwargs=None,
                    ce_weight=0.0, kd_weight=1.0):
    """ce_weight·CE + kd_weight·KD over the mask (word-level KD, Kim & Rush arXiv 1606.07947 §3.1), chunked.

    hidden [..., d] are the student's final hidden states, head_weight [V, d] its lm_head
    (logits = hidden @ head_weight.T). The teacher is teacher_logits [..., V] or
    teacher_hidden [..., d_t] with teacher_head_weight [V, d_t]; it gets no gradient.
    KD = masked_mean(divergence(...)) or, with atkd=True, atkd_loss(...); CE (temperature 1)
    is averaged over the mask. ATKD's split (atkd_token_weights) is per sequence when
    atkd_sequence_ids [...] number the tokens' sequences (else one split of the batch), and leaves
    out the positions whose target is atkd_eos_id (None: none), as its repository, which pads
    with EOS; CE keeps them. Equal in value and gradient to plain_kd_loss, but the [N, V]
    student logits exist only chunk_size rows at a time, forward and backward. With
    atkd=True and a teacher given by hidden states, the teacher logits are computed twice
    (one pass for u over the whole batch, which the quantile needs, then the loss pass).
    kd_weight=0 needs no teacher (a chunked cross-entropy). One backward per forward.
    """
    spec, flat = _prepare(dict(locals()))
    teacher_chunk = (chunked.teacher_rows(flat['teacher_logits'], flat['teacher_hidden'], teacher_head_weight,
                                          mm_dtype=spec['mm_dtype']) if kd_weight else lambda rows: None)
    u = None
    if kd_weight and atkd:
        u = torch.cat([teacher_uncertainty(teacher_chunk(slice(i, i + chunk_size)),
                                           flat['targets'][i:i + chunk_size], temperature)
                       for i in range(0, flat['valid'].numel(), chunk_size)])
    weights = _token_weights(flat, u, spec)
    loss = torch.zeros((), dtype=spec['loss_dtype'], device=hidden.device)
    chunk_grad = _chunk_grad(teacher_chunk, flat['targets'], weights, spec, loss)
    return chunked.head_loss(flat['hidden'], head_weight, chunk_grad, lambda: loss, chunk_size, spec['mm_dtype'])


def plain_kd_loss(hidden, head_weight, teacher_logits=None, *, teacher_hidden=None,
                  teacher_head_weight=None, mask=None, targets=None, divergence='forward_kl',
                  chunk_size=1024, temperature=1.0, atkd=False, atkd_hard_fraction=0.5, atkd_lam=0.2,
                  atkd_reverse=False, atkd_sequence_ids=None, atkd_eos_id=None, div_kwargs=None,
                  ce_weight=0.0, kd_weight=1.0):
    """Reference for chunked_kd_loss (same arguments, chunk_size ignored): materialises all logits."""
    spec, flat = _prepare(dict(locals()))
    logits, valid, targets = flat['hidden'] @ head_weight.T, flat['valid'], flat['targets']
    loss = 0.0
    if ce_weight:
        ce = F.cross_entropy(logits.to(spec['loss_dtype']), targets, reduction='none')
        loss = loss + ce_weight * masked_mean(ce, valid)
    if kd_weight:
        teacher = flat['teacher_logits']
        if teacher is None:
            with torch.no_grad():
                teacher = flat['teacher_hidden'] @ teacher_head_weight.T
        teacher = teacher.detach()
        if atkd:
            kd = atkd_loss(logits, teacher, targets, flat['atkd_valid'], atkd_hard_fraction, atkd_lam, atkd_reverse,
                           temperature, flat['atkd_sequence_ids'])
        else:
            kd = masked_mean(DIVERGENCES[divergence](logits, teacher, temperature=temperature,
                                                      **spec['div_kwargs']), valid)
        loss = loss + kd_weight * kd
    return loss
