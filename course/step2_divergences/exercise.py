"""
Step 2: token-level forward KL, reverse KL and JSD, and their gradients.

Fill in the bodies, then run `python course/check.py 2`. The page is course/step2_divergences/README.md.

Arguments are logits, always (student_logits, teacher_logits), shape [..., V]; each divergence
reduces the vocabulary axis and returns [...]. q = softmax(student_logits / τ) is the student,
p = softmax(teacher_logits / τ) the teacher. Work in log space (torch.log_softmax), and make
0 · log 0 = 0: a logit of -inf (a masked token) must give finite values wherever the divergence
itself is finite.
"""

import torch
import torch.nn.functional as F


def forward_kl(student_logits, teacher_logits, temperature=1.0):
    """Forward KL (word-level KD): KL(p‖q) = Σ_v p(v) (log p(v) − log q(v)), per position.

    Rebuilds kl.py, forward_kl (Hinton et al. arXiv 1503.02531; Kim & Rush arXiv 1606.07947 §3.1).
    """
    raise NotImplementedError


def reverse_kl(student_logits, teacher_logits, temperature=1.0):
    """Reverse KL: KL(q‖p) = Σ_v q(v) (log q(v) − log p(v)), per position.

    Rebuilds kl.py, reverse_kl (MiniLLM arXiv 2306.08543 §2, per token).
    """
    raise NotImplementedError


def jsd(student_logits, teacher_logits, beta=0.5, temperature=1.0):
    """Generalised JSD(β), 0 < β < 1: with m = β p + (1 − β) q,  β KL(p‖m) + (1 − β) KL(q‖m).

    Compute log m with torch.logaddexp(log β + log p, log(1 − β) + log q).
    Rebuilds kl.py, jsd (GKD: Agarwal et al. arXiv 2306.13649).
    """
    raise NotImplementedError


def forward_kl_grad(student_logits, teacher_logits):
    """∂ KL(p‖q) / ∂ z_q at τ = 1, in closed form (no autograd): q − p.  Shape [..., V].

    The gradient kl.py's chunked loss computes by hand (kl.py, _closed_form_chunk).
    """
    raise NotImplementedError


def reverse_kl_grad(student_logits, teacher_logits):
    """∂ KL(q‖p) / ∂ z_q at τ = 1, in closed form (no autograd): q ⊙ (log q − log p − KL(q‖p)).

    Shape [..., V]; KL(q‖p) is the per-position value, broadcast over the vocabulary.
    The gradient kl.py's chunked loss computes by hand (kl.py, _closed_form_chunk).
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# extension: python course/check.py 2 --extension

def skew_forward_kl(student_logits, teacher_logits, alpha=0.1, temperature=1.0):
    """Skew forward KL, 0 ≤ α ≤ 1: KL(p ‖ α p + (1 − α) q); α = 0 is forward KL.

    Rebuilds kl.py, skew_forward_kl (DistiLLM: Ko et al. arXiv 2402.03898).
    """
    raise NotImplementedError


def skew_reverse_kl(student_logits, teacher_logits, alpha=0.1, temperature=1.0):
    """Skew reverse KL, 0 ≤ α ≤ 1: KL(q ‖ α q + (1 − α) p); α = 0 is reverse KL.

    Rebuilds kl.py, skew_reverse_kl (DistiLLM: Ko et al. arXiv 2402.03898).
    """
    raise NotImplementedError
