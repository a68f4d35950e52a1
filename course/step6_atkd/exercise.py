"""
Step 6: ATKD's split of the KD loss into target-oriented (TKD) and diversity-oriented (DKD) parts.

Fill in the bodies, then run `python course/check.py 6`. The page is course/step6_atkd/README.md.

Shapes: logits [..., V], target tokens `targets` [...] (int64, the next token g of the sequence
being trained on), per-token values [...]. p = softmax(teacher_logits), q = softmax(student_logits).
"""

import torch
import torch.nn.functional as F


def teacher_uncertainty(teacher_logits, targets):
    """ATKD's uncertainty u = 1 − p(g): the teacher's mass off the target token, detached. [...].

    Rebuilds kl.py, teacher_uncertainty (Zhong et al., arXiv 2402.11890).
    """
    raise NotImplementedError


def atkd_parts(student_logits, teacher_logits, targets):
    """The two parts of forward KL at each position (arXiv 2402.11890):

        KL(p‖q) = TKD + (1 − p(g)) · DKD
        TKD = KL([p(g), 1 − p(g)] ‖ [q(g), 1 − q(g)])     the binary target-vs-rest view
        DKD = KL(p̂‖q̂),  p̂(v) = p(v) / (1 − p(g)) and q̂(v) = q(v) / (1 − q(g)) for v ≠ g

    Returns (tkd, dkd), each [...]. Work in log space: log(1 − p(g)) is a logsumexp of the
    non-target log-probs, and the target's own entry must drop out of p̂ and q̂ (0 · log 0 = 0).
    Rebuilds kl.py, atkd_parts (forward direction).
    """
    raise NotImplementedError


def atkd_loss_from_split(tkd, dkd, easy, valid, lam=0.2):
    """ATKD's loss for one group of tokens, given which tokens are easy (arXiv 2402.11890):

        L = λ · mean_easy(DKD) + (1 − λ) · mean_hard(TKD + DKD)

    valid [...] marks real tokens; easy [...] the valid tokens taught as easy; hard = valid and not
    easy. Easy tokens drop TKD, and no token keeps the (1 − p(g)) factor that shrinks DKD in KL.
    An empty group contributes 0 (its mean is taken as 0; the other term is not reweighted).
    Returns a scalar. Rebuilds the loss of kl.py, atkd_loss, whatever rule picks the easy tokens.
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# extension: python course/check.py 6 --extension

def per_sequence_atkd_loss(tkd, dkd, u, valid, hard_fraction=0.5, lam=0.2):
    """ATKD with each sequence split on its own (the ATKD repository's rule), rows of [B, T]:

    in row b, hard = the valid tokens with u ≥ θ_b, θ_b = the lower (1 − k)-quantile of the row's
    valid u (torch.quantile(..., interpolation='lower'); ties are hard), easy = the other valid
    tokens; L_b = atkd_loss_from_split on row b; return the mean of L_b over the rows that have a
    valid token. k = hard_fraction, the share of tokens taught as hard.
    """
    raise NotImplementedError
