"""Step 6 checks: kl.py's ATKD. The identity KL = TKD + (1 − p(g))·DKD and the loss formula are checked
against closed forms; the split of tokens into easy and hard is read from kl.py's own split function
at check time (kl.atkd_token_weights), so the step follows whatever rule the code uses."""

import inspect
from types import SimpleNamespace

import torch

import kl
from grading import (Failure, call, expect_close, expect_same_gradient, expect_true, garbage_on_padding, tensor,
                     value_and_grads)

TITLE = "ATKD: target-oriented and diversity-oriented KD"
EXTENSION_TITLE = "a different split: each sequence on its own"

LAM = 0.2
ALLOWED_IMPORTS = {"kl": {"forward_kl", "reverse_kl", "masked_mean"}}  # step 2's divergences; ATKD is the answer


def _formula(tkd, dkd, easy, valid, lam=LAM):
    valid = valid.bool()
    easy = easy.bool() & valid
    return lam * kl.masked_mean(dkd, easy) + (1 - lam) * kl.masked_mean(tkd + dkd, valid & ~easy)


def _has_sequence_split():
    return "sequence_ids" in inspect.signature(kl.atkd_token_weights).parameters


def project_easy(u, valid, hard_fraction=0.5, sequence_ids=None):
    """The easy tokens of kl.py's split, read off its token weights (easy: DKD weight only)."""
    extra = {} if sequence_ids is None else {"sequence_ids": sequence_ids}
    w_tkd, w_dkd = kl.atkd_token_weights(u, valid, hard_fraction, 0.5, **extra)
    return valid.bool() & (w_tkd == 0) & (w_dkd > 0)


def reference_per_sequence(tkd, dkd, u, valid, hard_fraction=0.5, lam=LAM):
    """The per-sequence rule from its definition, row by row (the oracle of the extension)."""
    losses = []
    for b in range(u.shape[0]):
        row = valid[b].bool()
        if not row.any():
            continue
        theta = torch.quantile(u[b][row], 1 - hard_fraction, interpolation="lower")
        easy = row & (u[b] < theta)
        losses.append(_formula(tkd[b], dkd[b], easy, row, lam))
    return torch.stack(losses).mean() if losses else tkd.new_zeros(())


def _per_sequence_solution(tkd, dkd, u, valid, hard_fraction=0.5, lam=LAM):
    if not _has_sequence_split():  # kl.py without a per-sequence split: the definition itself
        return reference_per_sequence(tkd, dkd, u, valid, hard_fraction, lam)
    rows = torch.arange(u.shape[0])[:, None].expand_as(u)
    w_tkd, w_dkd = kl.atkd_token_weights(u, valid, hard_fraction, lam, sequence_ids=rows)
    return (w_tkd * tkd).sum() + (w_dkd * dkd).sum()


def solution():
    """The project's own functions (the teacher's switch)."""
    return SimpleNamespace(teacher_uncertainty=lambda t, g: kl.teacher_uncertainty(t, g),
                           atkd_parts=lambda s, t, g: kl.atkd_parts(s, t, g)[:2],
                           atkd_loss_from_split=_formula, per_sequence_atkd_loss=_per_sequence_solution)


def batch(seed=0, shape=(2, 6), vocab=9):
    """Logits, targets (the teacher's likely and unlikely tokens both), a mask with two padded tokens."""
    g = torch.Generator().manual_seed(seed)
    student = 1.5 * torch.randn(*shape, vocab, generator=g, dtype=torch.float64)
    teacher = 3.0 * torch.randn(*shape, vocab, generator=g, dtype=torch.float64)
    targets = torch.randint(vocab, shape, generator=g)
    targets[0, :3] = teacher[0, :3].argmax(-1)     # tokens the teacher is sure of: easy ones
    teacher[0, 0] = 0.0
    teacher[0, 0, targets[0, 0]] = 20.0            # a near-certain teacher: u ≈ 2e-8
    valid = torch.ones(shape, dtype=torch.bool)
    valid[-1, -2:] = False
    return SimpleNamespace(student=student, teacher=teacher, targets=targets, valid=valid)


def check_uncertainty(m):
    """teacher_uncertainty equals kl.teacher_uncertainty: u = 1 − p(g), detached"""
    b = batch()
    teacher = b.teacher.clone().requires_grad_()
    got = tensor("teacher_uncertainty", call(m, "teacher_uncertainty", teacher, b.targets), b.targets.shape)
    expect_close("teacher_uncertainty", got, kl.teacher_uncertainty(b.teacher, b.targets), atol=1e-15, rtol=1e-6)
    expect_true(not got.requires_grad, "teacher_uncertainty must be a constant: detach it (it only decides the split)")


def check_parts(m):
    """atkd_parts equals kl.atkd_parts, and TKD + (1 − p(g))·DKD is kl.forward_kl exactly"""
    b = batch(1)
    out = call(m, "atkd_parts", b.student, b.teacher, b.targets)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise Failure(f"atkd_parts must return (tkd, dkd), got {type(out).__name__}")
    tkd, dkd = (tensor(name, x, b.targets.shape) for name, x in zip(("tkd", "dkd"), out))
    want_tkd, want_dkd, u = kl.atkd_parts(b.student, b.teacher, b.targets)
    expect_close("TKD", tkd, want_tkd, atol=1e-12, rtol=1e-9)
    expect_close("DKD", dkd, want_dkd, atol=1e-12, rtol=1e-9)
    expect_close("TKD + (1 − p(g))·DKD against kl.forward_kl (the identity)", tkd + u * dkd,
                 kl.forward_kl(b.student, b.teacher), atol=1e-12, rtol=1e-9)
    weights = torch.rand(b.targets.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for i, part in enumerate(("TKD", "DKD")):
        _, (got_grad,) = value_and_grads(part, lambda z: call(m, "atkd_parts", z, b.teacher, b.targets)[i],
                                         b.student, weights=weights)
        _, (want_grad,) = value_and_grads(part, lambda z: kl.atkd_parts(z, b.teacher, b.targets)[i], b.student,
                                          weights=weights)
        expect_same_gradient(f"gradient of {part} w.r.t. the student's logits", got_grad, want_grad, atol=1e-12,
                             rtol=1e-9)
    return (f"at the near-certain token (u = {u[0, 0]:.1e}) DKD = {want_dkd[0, 0]:.2f}, but KL counts it only "
            f"{u[0, 0]:.1e} times: KD teaches nothing about the other tokens where the teacher is sure")


def check_formula(m):
    """atkd_loss_from_split: λ·mean_easy(DKD) + (1 − λ)·mean_hard(TKD + DKD) on hand-made splits"""
    tkd = torch.tensor([[0.5, 1.0, 2.0], [4.0, 8.0, 16.0]], dtype=torch.float64)
    dkd = torch.tensor([[3.0, 5.0, 7.0], [11.0, 13.0, 17.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    easy = torch.tensor([[True, False, True], [False, False, False]])
    cases = [("2 easy, 3 hard", easy, 0.2, 0.2 * (3 + 7) / 2 + 0.8 * ((1 + 5) + (4 + 11) + (8 + 13)) / 3),
             ("no easy token", torch.zeros_like(valid), 0.2,
              0.8 * ((0.5 + 3) + (1 + 5) + (2 + 7) + (4 + 11) + (8 + 13)) / 5),
             ("every token easy", valid, 0.3, 0.3 * (3 + 5 + 7 + 11 + 13) / 5)]
    for label, easy_mask, lam, expected in cases:
        got = call(m, "atkd_loss_from_split", tkd, dkd, easy_mask, valid, lam=lam)
        expect_close(f"atkd_loss_from_split ({label}, λ = {lam}; the padded token must not count)",
                     tensor("atkd_loss_from_split", got, ()), torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    # garbage in the padded token's parts, which is also marked easy, and the gradient w.r.t. both parts
    easy_padded = easy | ~valid
    got = call(m, "atkd_loss_from_split", garbage_on_padding(tkd, valid, 2), garbage_on_padding(dkd, valid, 0),
               easy_padded, valid, lam=0.2)
    expect_close("atkd_loss_from_split (2 easy, 3 hard) with nan / ±inf in the padded token's TKD and DKD, "
                 "the padded token marked easy", tensor("atkd_loss_from_split", got, ()),
                 torch.tensor(cases[0][3], dtype=torch.float64), atol=1e-12)
    _, got_grads = value_and_grads("atkd_loss_from_split", lambda a, c: call(m, "atkd_loss_from_split", a, c, easy,
                                                                             valid, lam=0.2), tkd, dkd)
    _, want_grads = value_and_grads("atkd_loss_from_split", lambda a, c: _formula(a, c, easy, valid, 0.2), tkd, dkd)
    for part, got_g, want_g in zip(("TKD", "DKD"), got_grads, want_grads):
        expect_same_gradient(f"gradient of atkd_loss_from_split (2 easy, 3 hard) w.r.t. {part}", got_g, want_g,
                             atol=1e-12)


def check_against_kl(m):
    """with kl.py's own split, your parts and formula give kl.atkd_loss: value and gradient"""
    b = batch(2)
    u = kl.teacher_uncertainty(b.teacher, b.targets)
    easy = project_easy(u, b.valid)

    def student_loss(z):
        tkd, dkd = call(m, "atkd_parts", z, b.teacher, b.targets)
        return call(m, "atkd_loss_from_split", tkd, dkd, easy, b.valid, lam=LAM)

    def project_loss(z):
        return kl.atkd_loss(z, b.teacher, b.targets, b.valid, 0.5, LAM)
    values = []
    for fn in (student_loss, project_loss):
        z = b.student.clone().requires_grad_()
        value = tensor("the ATKD loss", fn(z), ())
        if not value.requires_grad:
            raise Failure("the ATKD loss carries no gradient w.r.t. the student's logits")
        values.append((value, torch.autograd.grad(value, z)[0]))
    (got, got_grad), (want, want_grad) = values
    expect_close("ATKD loss (kl.atkd_loss, hard_fraction 0.5, λ = 0.2)", got, want, atol=1e-12, rtol=1e-9)
    expect_same_gradient("gradient of the ATKD loss w.r.t. the student's logits", got_grad, want_grad, atol=1e-12,
                         rtol=1e-9)
    kd = kl.masked_mean(kl.forward_kl(b.student, b.teacher), b.valid)
    tkd, dkd, _ = kl.atkd_parts(b.student, b.teacher, b.targets)
    hard = b.valid & ~easy
    return (f"kl.py's split: {int(easy.sum())} easy, {int(hard.sum())} hard of {int(b.valid.sum())} tokens; "
            f"mean u {u[easy].mean():.3f} (easy) vs {u[hard].mean():.3f} (hard)\n"
            f"KD loss {kd:.3f}, ATKD loss {want:.3f}: TKD {tkd[easy].mean():.3f} (easy, dropped) / "
            f"{tkd[hard].mean():.3f} (hard), DKD {dkd[easy].mean():.3f} / {dkd[hard].mean():.3f}")


CHECKS = [check_uncertainty, check_parts, check_formula, check_against_kl]


# -----------------------------------------------------------------------------
# extension

def check_per_sequence(m):
    """per_sequence_atkd_loss: each row split at its own lower (1 − k)-quantile, the mean of the rows' losses"""
    b = batch(3, shape=(3, 5))
    b.valid[2] = False                                    # a row with no real token does not count
    b.valid[1, 3:] = False
    tkd, dkd, u = kl.atkd_parts(b.student, b.teacher, b.targets)
    u[0, 1] = u[0, 2]                                     # a tie at the threshold is hard
    for hard_fraction, lam in ((0.5, 0.2), (0.25, 0.5)):
        got = call(m, "per_sequence_atkd_loss", tkd, dkd, u, b.valid, hard_fraction=hard_fraction, lam=lam)
        expected = reference_per_sequence(tkd, dkd, u, b.valid, hard_fraction, lam)
        expect_close(f"per_sequence_atkd_loss(hard_fraction={hard_fraction}, lam={lam}) against the rule's "
                     "definition", tensor("per_sequence_atkd_loss", got, ()), expected, atol=1e-12, rtol=1e-9)
        if _has_sequence_split():
            expect_close(f"per_sequence_atkd_loss(hard_fraction={hard_fraction}, lam={lam}) against kl.py "
                         "(atkd_token_weights with sequence_ids)", got,
                         _per_sequence_solution(tkd, dkd, u, b.valid, hard_fraction, lam), atol=1e-12, rtol=1e-9)
    rows = torch.arange(3)[:, None].expand_as(u)
    per_row = project_easy(u, b.valid, sequence_ids=rows) if _has_sequence_split() else None
    whole = project_easy(u, b.valid)
    note = f"batch-wide split: {int(whole.sum())} easy tokens"
    if per_row is not None:
        note += f"; per sequence: {int(per_row.sum())}, {int((per_row != whole).sum())} tokens change group"
    return note


EXTENSION = [check_per_sequence]
