"""
Step 3: the policy gradient of sequence-level reverse KL, checked by enumerating every sequence.

Fill in the bodies, then run `python course/check.py 3`. The page is course/step3_policy_gradient/README.md.

Per-token tensors are [B, T] over response positions; `mask` [B, T] (bool) marks real tokens,
right-padded (row b has its tokens first, then padding). Values on padding can be anything, even
±inf or nan. Clean them before any arithmetic: x = torch.where(mask, x, 0) first, then compute
(never multiply by the mask: 0 · inf is nan). A torch.where *after* the arithmetic picks the right
value but not the right gradient: the branch it drops still sends 0 · nan = nan back to the input.
Every loss is a mean over the batch's real tokens, Σ_{b,t real} (·) / Σ mask.
"""

import torch


def exact_reverse_kl(teacher, student, ys):
    """KL(q‖p) = Σ_y q(y) (log q(y) − log p(y)) over every sequence ys [N, T] (MiniLLM §2.1, Eq. 1).

    teacher.log_prob(ys) and student.log_prob(ys) give log p(y), log q(y), [N]. Returns a scalar
    with a gradient w.r.t. the student's parameters: the exact gradient MiniLLM must estimate.
    Rebuilds toy/sequence_world.py, exact_reverse_kl.
    """
    raise NotImplementedError


def token_rewards(logp_teacher, logp_old, mask):
    """r_t = log p(y_t | y_<t, x) − log q_old(y_t | y_<t, x), detached, 0 on padding. [B, T].

    (MiniLLM §2.2: the reward of the policy gradient.) Rebuilds policy_gradient.py, token_rewards.
    """
    raise NotImplementedError


def returns(rewards, mask, gamma=1.0, include_current=False):
    """Discounted sums of rewards over each row's real tokens, 0 on padding. [B, T].

    include_current=True:  R_t     = Σ_{t' ≥ t} γ^(t' − t) r_t'
    include_current=False: R_{t+1} = Σ_{t' > t} γ^(t' − t − 1) r_t'   (0 at a row's last token)
    (MiniLLM §2.2, the return R_t of Eq. 2, γ = 1.) Rebuilds policy_gradient.py, returns.
    """
    raise NotImplementedError


def policy_loss(logp, logp_old, advantages, weights, mask):
    """The policy-gradient surrogate, mean over real tokens of −A_t · w_t · ρ_t, ρ_t = exp(logp − logp_old).

    logp = log q_θ(y_t | ·) carries the gradient; logp_old, advantages A and weights w are constants
    (detach them). At θ = θ_old, ρ = 1 and the gradient is −mean_t w_t A_t ∇ log q_θ(y_t | ·).
    Returns a scalar. Rebuilds policy_gradient.py, policy_loss with clip_eps=None (its loss).
    """
    raise NotImplementedError


def reinforce_loss(logp, logp_teacher, mask):
    """MiniLLM's policy gradient without its stabilisers (MiniLLM §2.2, Eq. 2), on rollouts just drawn
    from q_θ (so q_old = q_θ: logp_old is logp.detach()):

        loss = policy_loss(logp, logp_old, A = R_t, w = 1),   R_t with γ = 1, including r_t,

    whose gradient −mean_t R_t ∇ log q_θ(y_t | ·) estimates ∇ KL(q‖p) / T for rollouts of T tokens.
    Build it from the three functions above. Returns a scalar.
    Rebuilds policy_gradient.py, minillm_loss(single_step=False, teacher_mix_alpha=0,
    length_norm=False, clip_eps=None).
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# extension: python course/check.py 3 --extension

def clipped_policy_loss(logp, logp_old, advantages, weights, mask, clip_eps=0.2):
    """PPO's clipped surrogate, as MiniLLM uses it (MiniLLM §2.2, ratio clipping):

        loss = mean over real tokens of max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)),
        ρ_t = exp(logp − logp_old) · w_t   (the clip acts on the weighted ratio)

    Returns (loss, clip_fraction): clip_fraction is the fraction of real tokens where the clipped
    term is the larger one (strictly), i.e. where the clip switched the gradient off; detached.
    Rebuilds policy_gradient.py, policy_loss.
    """
    raise NotImplementedError
