"""
Exact expectations over every sequence of toy/sequence_world.py, for the checks of steps 3-5.

The world is small enough to list every response y, so an estimator's mean and variance need no
sampling: E[g] = Σ_y P(y) g(y) and Var[g] = Σ_y P(y) ‖g(y) − E[g]‖², with P the distribution the
rollouts are drawn from (q, or the teacher-mixed p̃) and g(y) the gradient the estimator returns
for the single rollout y. Everything is float64.
"""

from types import SimpleNamespace

import torch

from policy_gradient import teacher_mix_log_probs
from toy import sequence_world as sw


def make_world(vocab_size=6, length=4, n_modes=3, seed=0):
    """The toy's teacher (float64), every sequence, and the teacher's logits / log-probs on them."""
    teacher, modes = sw.make_teacher(vocab_size, length, n_modes, seed=seed)
    teacher = sw.TabularTeacher(teacher.table.double())
    ys = sw.all_sequences(vocab_size, length)
    teacher_logits = teacher.logits(ys)
    return SimpleNamespace(teacher=teacher, modes=modes, ys=ys, teacher_logits=teacher_logits,
                           logp_teacher=sw.token_log_probs(teacher_logits, ys),
                           mask=torch.ones(ys.shape, dtype=torch.bool))


def make_student(world, exact_steps=0, seed=0):
    """The toy's bigram student (float64): as initialised, or after `exact_steps` of Adam on the exact
    reverse KL (toy/sequence_world.py, fit_reverse_kl_exact), to look at a student near the optimum."""
    student = sw.BigramStudent(world.teacher.vocab_size, world.teacher.length, seed=seed)
    if exact_steps:
        student = sw.fit_reverse_kl_exact(world.teacher, student, steps=exact_steps)
    return student.double().requires_grad_(True)


def exact_gradient(world, student):
    """∇_θ KL(q_θ‖p) between whole sequences, by autograd through sw.exact_reverse_kl, flattened."""
    table = student.table
    value = sw.exact_reverse_kl(world.teacher, student, world.ys)
    return torch.autograd.grad(value, table)[0].flatten(), value.item()


def rollout_tensors(world, student, alpha=0.0):
    """Every sequence as a batch of rollouts, each row with its own copy of the student's table.

    Returns (copies, r): r holds what a MiniLLM loss needs (logp with a gradient, logp_old,
    logp_teacher, logp_mix, mask, student_logits, teacher_logits); copies [N, T, V+1, V] is the leaf
    whose row i receives only rollout i's gradient. q_old = q_θ (the rollouts are fresh).
    """
    ys = world.ys
    n, length = ys.shape
    copies = student.table.detach().expand(n, *student.table.shape).clone().requires_grad_()
    prev = torch.cat([torch.full_like(ys[:, :1], student.vocab_size), ys[:, :-1]], dim=1)
    logits = copies[torch.arange(n)[:, None], torch.arange(length)[None], prev]
    logp = sw.token_log_probs(logits, ys)
    logp_mix = sw.token_log_probs(teacher_mix_log_probs(world.teacher_logits, logits.detach(), alpha), ys)
    r = SimpleNamespace(logp=logp, logp_old=logp.detach(), logp_teacher=world.logp_teacher,
                        logp_mix=logp_mix, mask=world.mask, student_logits=logits,
                        teacher_logits=world.teacher_logits, alpha=alpha)
    return copies, r


def per_sequence_gradients(world, student, loss_fn, alpha=0.0):
    """g(y) = ∇_θ (T · loss on rollout y alone) for every y at once, [N, P], and P(y) [N].

    loss_fn(r) must be a mean over the batch's tokens (as every loss in policy_gradient.py is), so
    that row y of the gradient w.r.t. `copies` is g(y) / (N T). P(y) is the probability of drawing y:
    q(y) for α = 0, p̃(y) = Π_t (α p_t + (1 − α) q_t)(y_t) otherwise.
    """
    copies, r = rollout_tensors(world, student, alpha)
    loss = loss_fn(r)
    n, length = world.ys.shape
    grads = torch.autograd.grad(loss, copies, allow_unused=True)[0]
    if grads is None:
        grads = torch.zeros_like(copies)
    prob = (r.logp_mix if alpha > 0 else r.logp_old).sum(1).exp()
    return (grads * (n * length)).reshape(n, -1), prob


def mean_and_variance(grads, prob):
    """E[g] = Σ_y P(y) g(y) and the total variance Σ_y P(y) ‖g(y) − E[g]‖² of a one-rollout estimate."""
    mean = (prob[:, None] * grads).sum(0)
    variance = (prob * ((grads - mean) ** 2).sum(1)).sum()
    return mean, variance.item()
