"""
Step 5: teacher-mixed sampling and its importance weights (and the bias of per-token weights, measured).

Fill in the bodies, then run `python course/check.py 5`. The page is course/step5_teacher_mix/README.md.

Shapes as in steps 3-4: per-token tensors [B, T] with a right-padded bool mask; logits [B, T, V].
The rollouts are drawn token by token from p̃_t = α p_t + (1 − α) q_t, not from the student q.
You may use what steps 3 and 4 rebuilt, from the project:
    from policy_gradient import token_rewards, returns, policy_loss, single_step_loss
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import policy_gradient  # noqa: E402,F401


def teacher_mix_log_probs(teacher_logits, student_logits, alpha):
    """log p̃ = log(α softmax(z_p) + (1 − α) softmax(z_q)) over the last axis, 0 ≤ α ≤ 1
    (MiniLLM §2.2, Teacher-Mixed Sampling; the paper uses α = 0.2).

    Compute it in log space with torch.logaddexp; α = 0 must give log q and α = 1 log p exactly
    (log 0 is -inf: handle the two ends before taking it). Rebuilds policy_gradient.py,
    teacher_mix_log_probs.
    """
    raise NotImplementedError


def importance_weights(logp_old, logp_mix, mask, clip=None):
    """Per-token importance weights w_t = q_old(y_t | ·) / p̃(y_t | ·) (MiniLLM §2.2, Teacher-Mixed
    Sampling: the paper's token-level stand-in for the ratio of whole sequences).

    From log-probs of the sampled tokens, [B, T]; detached; clamped to at most `clip` when given;
    1 on padding. Rebuilds policy_gradient.py, importance_weights.
    """
    raise NotImplementedError


def mixed_decomposed_loss(logp, logp_teacher, logp_mix, mask, student_logits, teacher_logits):
    """Step 4's decomposed loss on rollouts drawn from p̃, each token's terms weighted by its w_t:

        loss = single_step_loss(weights = w) + policy_loss(logp, logp_old, R_{t+1}, w)

    with q_old = q_θ (logp_old = logp.detach()), w = importance_weights(logp_old, logp_mix, mask),
    rewards and R_{t+1} as in steps 3-4 (γ = 1, no length normalisation, no clipping). A scalar.
    Rebuilds policy_gradient.py, minillm_loss(single_step=True, teacher_mix_alpha > 0,
    importance='token', length_norm=False, clip_eps=None).
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# extension: python course/check.py 5 --extension

def sequence_importance_weights(logp_old, logp_mix, mask, clip=None):
    """The exact weight of a whole rollout, W(y) = q_old(y | x) / p̃(y | x) = Π_t w_t over the row's real
    tokens, broadcast to every real token of the row; detached; clamped to at most `clip` when given;
    1 on padding. Rebuilds policy_gradient.py, sequence_importance_weights.
    """
    raise NotImplementedError
