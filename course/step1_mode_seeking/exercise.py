"""
Step 1: forward vs reverse KL on a 2D mixture (what mode-seeking looks like).

Fill in the bodies, then run `python course/check.py 1`. The page is course/step1_mode_seeking/README.md.

The teacher and student are `toy.mode_seeking_2d.GaussianMixture2D` objects. What you may use of them:
    .log_prob(x) [N, 2] -> [N]            the mixture's log density
    .sample(n, generator) -> [n, 2]       draws, no gradient (the component index is discrete)
    .rsample_components(n, generator)     n reparameterised draws from every component, [K, n, 2]
    .weights() -> [K]                     the mixing weights π = softmax(logits)
Draw random numbers only through the calls the docstrings name, once each, so that the checker can
repeat your draws with the same generator and compare numbers exactly.
"""

import torch


def mixture_log_prob(x, means, log_stds, logits):
    """log q(x) of a 2D Gaussian mixture with diagonal covariances.

    x [N, 2] points, means [K, 2], log_stds [K, 2] (log σ of each component along each axis),
    logits [K] with π = softmax(logits). Returns [N]:
        log q(x) = logsumexp_k [ log π_k − ½ Σ_i ((x_i − μ_ki) / σ_ki)² − Σ_i log σ_ki − log 2π ]
    Stay in log space: a point 100 σ from every component must give a finite number.
    Rebuilds toy/mode_seeking_2d.py, GaussianMixture2D.log_prob (its diagonal case).
    """
    raise NotImplementedError


def forward_kl_loss(teacher, student, n, generator):
    """Forward KL(p‖q) = E_{x∼p}[log p(x) − log q(x)] as a loss (MiniLLM §2.1, the standard-KD objective).

    E_p[log p] does not depend on the student, so return only −(1/n) Σ log q(x_i) over
    x = teacher.sample(n, generator): maximum likelihood on teacher samples. A scalar tensor
    with a gradient w.r.t. the student's parameters.
    Rebuilds toy/mode_seeking_2d.py, forward_kl_loss.
    """
    raise NotImplementedError


def reverse_kl_reparam_loss(teacher, student, n, generator):
    """Reverse KL(q‖p) = E_{x∼q}[log q(x) − log p(x)] (MiniLLM §2.1, Eq. 1), pathwise gradient.

    Draw x = student.rsample_components(n, generator), [K, n, 2]: x = μ_k + L_k ε, so the gradient
    flows through x. Write the mixture's expectation as Σ_k π_k E_{x∼N_k}[log q(x) − log p(x)],
    each E_{N_k} a mean over that component's n draws, so the discrete choice of a component needs no
    sampling and π gets its gradient too. Returns a scalar tensor (an estimate of KL(q‖p)).
    Rebuilds toy/mode_seeking_2d.py, reverse_kl_reparam_loss.
    """
    raise NotImplementedError


# -----------------------------------------------------------------------------
# extension: python course/check.py 1 --extension

def reverse_kl_score_function_loss(teacher, student, n, generator):
    """Reverse KL(q‖p) by the score-function (REINFORCE) estimator, the one MiniLLM needs because
    tokens are discrete (MiniLLM §2.2, Eq. 2, the policy gradient theorem).

    x = student.sample(n, generator) (no gradient through x). With f_i = log q(x_i) − log p(x_i)
    (detached) and the leave-one-out baseline b_i = (Σ_j f_j − f_i) / (n − 1), return the surrogate
        (1/n) Σ_i (f_i − b_i) · log q_θ(x_i)
    whose gradient is an unbiased estimate of ∇ KL(q‖p) (its value is not the KL).
    Rebuilds toy/mode_seeking_2d.py, reverse_kl_score_function_loss.
    """
    raise NotImplementedError
