"""
Step 4: the single-step decomposition, and what it does to the variance (measured).

Fill in the bodies, then run `python course/check.py 4`. The page is course/step4_single_step/README.md.

Shapes as in step 3: per-token tensors [B, T] with a right-padded bool mask; logits [B, T, V].
You may use what step 3 rebuilt, from the project (so that a slip there does not carry over):
    from policy_gradient import token_rewards, returns, policy_loss   # policy_loss(..., clip_eps=None)[0]
and step 2's divergences from kl.py (kl.reverse_kl).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import kl  # noqa: E402,F401
import policy_gradient  # noqa: E402,F401


def single_step_loss(student_logits, teacher_logits, mask, weights=None):
    """The single-step term (MiniLLM §2.2, Single-Step Decomposition):

        (∇L)_Single = E_y Σ_t ∇ KL(q_t‖p_t),  KL(q_t‖p_t) = Σ_v q_t(v) (log q_t(v) − log p_t(v))

    the current step's part of the gradient in closed form, over the whole vocabulary at each
    sampled prefix. Returns the mean over real tokens of w_t · KL(q_t‖p_t) (w_t = 1 when weights is
    None; weights and the teacher are constants). The gradient flows through the student's logits.
    Rebuilds policy_gradient.py, single_step_loss.
    """
    raise NotImplementedError


def decomposed_loss(logp, logp_teacher, mask, student_logits, teacher_logits):
    """MiniLLM's gradient with the single-step decomposition, on rollouts just drawn from q_θ
    (q_old = q_θ; no teacher mixing, no length normalisation, no clipping):

        ∇L = (∇L)_Single + (∇L)_Long,  (∇L)_Long = −E_y Σ_t R_{t+1} ∇ log q_θ(y_t | ·)

    R_{t+1} = Σ_{t' > t} r_t' is the future's return only: the current step's r_t is now in the
    single-step term, exactly. Returns single_step_loss + the long-term surrogate, a scalar.
    Rebuilds policy_gradient.py, minillm_loss(single_step=True, teacher_mix_alpha=0,
    length_norm=False, clip_eps=None).
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# extension: python course/check.py 4 --extension

def length_normalized_returns(rewards, mask):
    """Length normalisation (MiniLLM §2.2): the mean of the future rewards instead of their sum,

        R^Norm_{t+1} = (1 / (L − t − 1)) Σ_{t' = t+1}^{L−1} r_t'   (0-based t, L real tokens in the row)

    and 0 at a row's last token (no future) and on padding. [B, T].
    Rebuilds policy_gradient.py, length_normalized_returns (γ = 1, include_current=False).
    """
    raise NotImplementedError
