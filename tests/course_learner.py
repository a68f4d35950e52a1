"""
A learner's own solutions to course steps 2 to 5 (and the extensions of steps 3 and 4), written from
the pages alone, without the project's answers: tests/test_course.py checks them as exercise files
(the import guard on, so they prove each step solvable without the project's functions) and plugs
them into step 7's final project.
"""

STEP2 = '''
import math

import torch
import torch.nn.functional as F


def _logs(student_logits, teacher_logits, temperature):
    return F.log_softmax(student_logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1)


def _kl(log_a, log_b):
    a = log_a.exp()
    ratio = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))  # clean first: 0 log 0 = 0
    return (a * ratio).sum(-1)


def _mix(log_a, log_b, w):
    some = (log_a > -math.inf) | (log_b > -math.inf)
    zero = torch.zeros_like(log_a)
    mixed = torch.logaddexp(torch.where(some, log_a, zero) + math.log(w), torch.where(some, log_b, zero) + math.log(1 - w))
    return torch.where(some, mixed, log_a)


def forward_kl(student_logits, teacher_logits, temperature=1.0):
    log_q, log_p = _logs(student_logits, teacher_logits, temperature)
    return _kl(log_p, log_q)


def reverse_kl(student_logits, teacher_logits, temperature=1.0):
    log_q, log_p = _logs(student_logits, teacher_logits, temperature)
    return _kl(log_q, log_p)


def jsd(student_logits, teacher_logits, beta=0.5, temperature=1.0):
    log_q, log_p = _logs(student_logits, teacher_logits, temperature)
    log_m = _mix(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


def forward_kl_grad(student_logits, teacher_logits):
    return F.softmax(student_logits, -1) - F.softmax(teacher_logits, -1)


def reverse_kl_grad(student_logits, teacher_logits):
    log_q, log_p = _logs(student_logits, teacher_logits, 1.0)
    q = log_q.exp()
    ratio = torch.where(q > 0, log_q - log_p, torch.zeros_like(log_q))
    return q * (ratio - (q * ratio).sum(-1, keepdim=True))
'''

STEP3 = '''
import torch


def _clean(x, mask):
    return torch.where(mask, x, torch.zeros_like(x))


def _mean(x, mask):
    return _clean(x, mask).sum() / mask.sum().clamp(min=1)


def exact_reverse_kl(teacher, student, ys):
    log_q, log_p = student.log_prob(ys), teacher.log_prob(ys)
    return (log_q.exp() * (log_q - log_p)).sum()


def token_rewards(logp_teacher, logp_old, mask):
    return (_clean(logp_teacher, mask) - _clean(logp_old, mask)).detach()


def returns(rewards, mask, gamma=1.0, include_current=False):
    r = _clean(rewards, mask)
    out, running = [], torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        future = running
        running = r[:, t] + gamma * running
        out.append(running if include_current else future)
    return _clean(torch.stack(out[::-1], 1), mask)


def policy_loss(logp, logp_old, advantages, weights, mask):
    ratio = torch.exp(_clean(logp, mask) - _clean(logp_old, mask).detach())
    return _mean(-_clean(advantages, mask).detach() * _clean(weights, mask).detach() * ratio, mask)


def reinforce_loss(logp, logp_teacher, mask):
    logp_old = logp.detach()
    adv = returns(token_rewards(logp_teacher, logp_old, mask), mask, include_current=True)
    return policy_loss(logp, logp_old, adv, torch.ones_like(adv), mask)


def clipped_policy_loss(logp, logp_old, advantages, weights, mask, clip_eps=0.2):
    ratio = torch.exp(_clean(logp, mask) - _clean(logp_old, mask).detach()) * _clean(weights, mask).detach()
    adv = _clean(advantages, mask).detach()
    plain, clipped = -adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    fraction = _mean((clipped > plain).to(logp.dtype), mask).detach()
    return _mean(torch.maximum(plain, clipped), mask), fraction
'''

STEP4 = '''
import torch

from kl import masked_mean, reverse_kl
from policy_gradient import policy_loss, returns, token_rewards


def single_step_loss(student_logits, teacher_logits, mask, weights=None):
    value = reverse_kl(student_logits, teacher_logits.detach())
    if weights is not None:
        value = value * torch.where(mask, weights.detach(), torch.zeros_like(weights))
    return masked_mean(value, mask)


def decomposed_loss(logp, logp_teacher, mask, student_logits, teacher_logits):
    logp_old = logp.detach()
    adv = returns(token_rewards(logp_teacher, logp_old, mask), mask, include_current=False)
    return single_step_loss(student_logits, teacher_logits, mask) + policy_loss(
        logp, logp_old, adv, torch.ones_like(adv), mask, clip_eps=None)[0]


def length_normalized_returns(rewards, mask):
    summed = returns(rewards, mask, include_current=False)
    lengths = mask.long().sum(1, keepdim=True)
    remaining = (lengths - mask.long().cumsum(1)).clamp(min=1)
    return torch.where(mask, summed / remaining, torch.zeros_like(summed))
'''

STEP5 = '''
import math

import torch
import torch.nn.functional as F

from policy_gradient import policy_loss, returns, single_step_loss, token_rewards


def teacher_mix_log_probs(teacher_logits, student_logits, alpha):
    log_q, log_p = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
    if alpha == 0:
        return log_q
    if alpha == 1:
        return log_p
    some = (log_p > -math.inf) | (log_q > -math.inf)
    zero = torch.zeros_like(log_q)
    mixed = torch.logaddexp(torch.where(some, log_p, zero) + math.log(alpha),
                            torch.where(some, log_q, zero) + math.log(1 - alpha))
    return torch.where(some, mixed, log_q)


def importance_weights(logp_old, logp_mix, mask, clip=None):
    diff = torch.where(mask, logp_old - logp_mix, torch.zeros_like(logp_old)).detach()
    w = torch.exp(diff)
    if clip is not None:
        w = w.clamp(max=clip)
    return torch.where(mask, w, torch.ones_like(w))


def mixed_decomposed_loss(logp, logp_teacher, logp_mix, mask, student_logits, teacher_logits):
    logp_old = logp.detach()
    w = importance_weights(logp_old, logp_mix, mask)
    adv = returns(token_rewards(logp_teacher, logp_old, mask), mask, include_current=False)
    return (single_step_loss(student_logits, teacher_logits, mask, weights=w)
            + policy_loss(logp, logp_old, adv, w, mask, clip_eps=None)[0])
'''

SOLUTIONS = {2: STEP2, 3: STEP3, 4: STEP4, 5: STEP5}
