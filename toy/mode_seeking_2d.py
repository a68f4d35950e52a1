"""
Toy 1: forward KL covers every mode, reverse KL seeks one.

The picture behind MiniLLM (Gu et al., arXiv 2306.08543, §2.1 and Figure 2): fit a teacher p
that has several well-separated modes with a student q_θ that has too little capacity to copy it
(one Gaussian, or a mixture with fewer components than the teacher).

- forward KL(p‖q) = E_{x∼p}[log p(x) − log q(x)] punishes q for missing any place where p has
  mass, so the best single Gaussian spreads over all modes and puts its own mass in the empty
  space between them (what word-level KD does to a small language model);
- reverse KL(q‖p) = E_{x∼q}[log q(x) − log p(x)] punishes q for putting mass where p has little,
  so the best single Gaussian sits on one mode (what MiniLLM optimises, §2.1, Eq. 1).

Reverse KL is fitted twice: with the reparameterised gradient (x = μ + Lε, possible here because
x is continuous) and with the score-function (REINFORCE) gradient that MiniLLM must use because
tokens are discrete (policy gradient theorem, §2.2, Eq. 2). Both should land on the same mode.

    python toy/mode_seeking_2d.py                          # 4 modes on a ring, one Gaussian
    python toy/mode_seeking_2d.py --n_modes=3 --student_components=2 --covariance=diag

Runs in seconds on one CPU core, saves a PNG and prints a table of figures.
"""

import argparse
import copy
import math
import time

import torch
import torch.nn as nn

LOG_2PI = math.log(2 * math.pi)


# -----------------------------------------------------------------------------
# 2D Gaussian mixtures, written out so that every density is visible

class GaussianMixture2D(nn.Module):
    """K-component Gaussian mixture in 2D: π = softmax(logits), Σ_k = L_k L_kᵀ.

    L_k is lower triangular with a positive diagonal exp(log_diag); covariance='diag' freezes the
    off-diagonal entry at zero (axis-aligned ellipses), 'full' learns it.
    """

    def __init__(self, means, log_std, logits=None, covariance="full"):
        super().__init__()
        if covariance not in ("full", "diag"):
            raise ValueError(f"covariance must be 'full' or 'diag', got {covariance!r}")
        means = torch.as_tensor(means, dtype=torch.float32).reshape(-1, 2)
        k = means.shape[0]
        log_std = torch.as_tensor(log_std, dtype=torch.float32).expand(k, 2)
        logits = torch.zeros(k) if logits is None else torch.as_tensor(logits, dtype=torch.float32)
        self.mean = nn.Parameter(means.clone())
        self.log_diag = nn.Parameter(log_std.clone())
        self.off_diag = nn.Parameter(torch.zeros(k), requires_grad=(covariance == "full"))
        self.logits = nn.Parameter(logits.clone())

    @property
    def n_components(self):
        return self.mean.shape[0]

    def weights(self):
        return torch.softmax(self.logits, dim=0)

    def scale_tril(self):
        """L_k, [K, 2, 2]; Σ_k = L_k L_kᵀ is positive definite for any parameter values."""
        diag = torch.diag_embed(self.log_diag.exp())
        lower = torch.zeros_like(diag)
        lower[:, 1, 0] = self.off_diag
        return diag + lower

    def mahalanobis(self, x):
        """‖L_k⁻¹(x − μ_k)‖ for every point and component, [N, K] (distance in σ-units of mode k)."""
        return self._whiten(x).norm(dim=-1)

    def _whiten(self, x):
        """z = L_k⁻¹(x − μ_k) by forward substitution on the 2x2 triangle, [N, K, 2]."""
        d = x[:, None, :] - self.mean[None]                          # [N, K, 2]
        l11, l22 = self.log_diag.exp().unbind(-1)
        z1 = d[..., 0] / l11
        z2 = (d[..., 1] - self.off_diag * z1) / l22
        return torch.stack([z1, z2], dim=-1)

    def component_log_prob(self, x):
        """log N(x; μ_k, L_k L_kᵀ) = −½‖L_k⁻¹(x − μ_k)‖² − Σ_i log L_k,ii − log 2π, [N, K]."""
        z = self._whiten(x)
        return -0.5 * z.pow(2).sum(-1) - self.log_diag.sum(-1) - LOG_2PI

    def log_prob(self, x):
        """log q(x) = logsumexp_k(log π_k + log N(x; μ_k, Σ_k)), [N]."""
        log_pi = torch.log_softmax(self.logits, dim=0)
        return torch.logsumexp(log_pi + self.component_log_prob(x), dim=-1)

    def rsample_components(self, n, generator):
        """n reparameterised draws from every component: x = μ_k + L_k ε, ε ∼ N(0, I), [K, n, 2]."""
        eps = torch.randn(n, 2, generator=generator)
        return self.mean[:, None, :] + torch.einsum("kij,nj->kni", self.scale_tril(), eps)

    @torch.no_grad()
    def sample(self, n, generator):
        """n draws from the mixture (component index is discrete, so no gradient flows), [n, 2]."""
        comp = torch.multinomial(self.weights(), n, replacement=True, generator=generator)
        eps = torch.randn(n, 2, generator=generator)
        return self.mean[comp] + torch.einsum("nij,nj->ni", self.scale_tril()[comp], eps)

    def overall_mean(self):
        return (self.weights()[:, None] * self.mean).sum(0)


def make_teacher(n_modes=4, radius=3.0, mode_std=0.5):
    """Teacher p: n_modes equal-weight isotropic Gaussians evenly spaced on a circle."""
    if n_modes < 1 or radius < 0 or mode_std <= 0:
        raise ValueError("need n_modes >= 1, radius >= 0 and mode_std > 0")
    angle = torch.arange(n_modes) * 2 * math.pi / n_modes + math.pi / 4
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=-1)
    return GaussianMixture2D(means, math.log(mode_std)).requires_grad_(False)


def make_student(n_components=1, covariance="full", seed=0, init_mean=None, init_std=0.5):
    """Student q_θ: n_components Gaussians, means ~ N(0, I) drawn with `seed` unless given.

    Reverse KL has local optima: started much wider than a teacher mode (init_std=1.0 with the
    default teacher) a single Gaussian often settles as an ellipse bridging two neighbouring modes
    (reverse KL ≈ 2.9 instead of log 4 ≈ 1.39 on one mode). A narrow start rolls into one mode.
    """
    if n_components < 1:
        raise ValueError("student needs at least one component (--student_components >= 1)")
    if init_mean is None:
        g = torch.Generator().manual_seed(seed)
        init_mean = torch.randn(n_components, 2, generator=g)
    return GaussianMixture2D(init_mean, math.log(init_std), covariance=covariance)


# -----------------------------------------------------------------------------
# the three objectives

def forward_kl_loss(teacher, student, n, generator):
    """Forward KL(p‖q) = E_{x∼p}[log p(x) − log q(x)] (MiniLLM §2.1, the standard-KD objective).

    E_p[log p] does not depend on θ, so the loss is −E_{x∼p} log q_θ(x): maximum likelihood on
    teacher samples (what word-level KD and SeqKD do with teacher tokens).
    """
    x = teacher.sample(n, generator)
    return -student.log_prob(x).mean()


def reverse_kl_reparam_loss(teacher, student, n, generator):
    """Reverse KL(q‖p) = E_{x∼q}[log q(x) − log p(x)] (MiniLLM §2.1, Eq. 1), pathwise gradient.

    Each component is sampled as x = μ_k + L_k ε so gradients flow through x; the mixture
    expectation is written Σ_k π_k E_{N_k}[·] so the discrete component choice needs no sampling.
    """
    x = student.rsample_components(n, generator)                        # [K, n, 2]
    flat = x.reshape(-1, 2)
    f = (student.log_prob(flat) - teacher.log_prob(flat)).view(student.n_components, n)
    return (student.weights() * f.mean(dim=1)).sum()


def reverse_kl_score_function_loss(teacher, student, n, generator):
    """Reverse KL(q‖p) by the score-function (REINFORCE) estimator, the one MiniLLM uses (§2.2, Eq. 2).

    Policy gradient theorem: ∇_θ E_{x∼q}[f] = E_q[(log q(x) − log p(x) − b) ∇_θ log q_θ(x)], with x
    detached (no gradient through sampling, as for discrete tokens) and the E_q[∇ log q] = 0 term
    dropped. The baseline b is the leave-one-out mean of the other samples' log q − log p, which
    keeps the estimate unbiased while cutting its variance. Returns a surrogate whose gradient is
    that estimate (its value is not the KL).
    """
    x = student.sample(n, generator)
    log_q = student.log_prob(x)
    with torch.no_grad():
        f = log_q - teacher.log_prob(x)                                  # −reward, per sample
        baseline = (f.sum() - f) / (n - 1)
    return ((f - baseline) * log_q).mean()


LOSSES = {
    "forward_kl": forward_kl_loss,
    "reverse_kl_reparam": reverse_kl_reparam_loss,
    "reverse_kl_score": reverse_kl_score_function_loss,
}


def fit(teacher, student, objective, steps=1500, batch_size=256, lr=0.05, seed=0):
    """Fit a copy of `student` to `teacher` with Adam on `objective` (a key of LOSSES)."""
    if objective not in LOSSES:
        raise ValueError(f"objective must be one of {sorted(LOSSES)}, got {objective!r}")
    if batch_size < 2 or steps < 0:
        raise ValueError("need batch_size >= 2 (the baseline leaves one sample out) and steps >= 0")
    student = copy.deepcopy(student)
    g = torch.Generator().manual_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = LOSSES[objective](teacher, student, batch_size, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return student.requires_grad_(False)


def fit_forward_kl(teacher, student, **kw):
    return fit(teacher, student, "forward_kl", **kw)


def fit_reverse_kl_reparam(teacher, student, **kw):
    return fit(teacher, student, "reverse_kl_reparam", **kw)


def fit_reverse_kl_score_function(teacher, student, **kw):
    return fit(teacher, student, "reverse_kl_score", **kw)


# -----------------------------------------------------------------------------
# figures of merit

@torch.no_grad()
def metrics(teacher, student, n=20000, seed=1234):
    """Monte-Carlo figures of where the student puts its mass.

    mass_near_modes:  P_{x∼q}[min_k Mahalanobis_k(x) ≤ 2], mass within 2σ of some teacher mode
    teacher_logp:     E_{x∼q}[log p(x)], how plausible the teacher finds the student's samples
    mean:             the student's overall mean Σ_k π_k μ_k
    mean_dist:        distance from the student's mean to the nearest teacher mode, in that
                      mode's σ-units (Mahalanobis); for a mixture student, each component's
                      distance averaged with the component weights
    forward_kl:       E_{x∼p}[log p − log q];  reverse_kl: E_{x∼q}[log q − log p]
    """
    g = torch.Generator().manual_seed(seed)
    xq = student.sample(n, g)
    xp = teacher.sample(n, g)
    log_p_at_q = teacher.log_prob(xq)
    mean = student.overall_mean()
    return {
        "mass_near_modes": (teacher.mahalanobis(xq).min(dim=1).values <= 2.0).float().mean().item(),
        "teacher_logp": log_p_at_q.mean().item(),
        "mean": mean.tolist(),
        "mean_dist": (student.weights() * teacher.mahalanobis(student.mean).min(dim=1).values).sum().item(),
        "forward_kl": (teacher.log_prob(xp) - student.log_prob(xp)).mean().item(),
        "reverse_kl": (student.log_prob(xq) - log_p_at_q).mean().item(),
    }


def format_table(rows):
    """rows: list of (name, metrics dict) -> a plain-text table."""
    head = (f"{'student fitted by':<28}{'mass≤2σ':>9}{'E_q[log p]':>12}{'mean (x, y)':>18}"
            f"{'dist(σ)':>9}{'KL(p‖q)':>9}{'KL(q‖p)':>9}")
    lines = [head, "-" * len(head)]
    for name, m in rows:
        mean = f"({m['mean'][0]:+.2f}, {m['mean'][1]:+.2f})"
        lines.append(f"{name:<28}{m['mass_near_modes']:>9.3f}{m['teacher_logp']:>12.2f}{mean:>18}"
                     f"{m['mean_dist']:>9.2f}{m['forward_kl']:>9.2f}{m['reverse_kl']:>9.2f}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# picture

def plot(teacher, fitted, path, n_scatter=400, seed=0):
    """Teacher density, then each fitted student (contours + samples) over it, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    extent = teacher.mean.abs().max().item() + 4 * teacher.log_diag.exp().max().item() + 0.5
    ticks = torch.linspace(-extent, extent, 200)
    gx, gy = torch.meshgrid(ticks, ticks, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    with torch.no_grad():
        p_density = teacher.log_prob(grid).exp().view(200, 200).numpy()
    g = torch.Generator().manual_seed(seed)
    modes = teacher.mean.numpy()

    panels = [("Teacher p", None, None)] + fitted
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.4), layout="constrained")
    for ax, (title, student, m) in zip(axes, panels):
        ax.contourf(gx.numpy(), gy.numpy(), p_density, levels=12, cmap="Greys")
        ax.scatter(modes[:, 0], modes[:, 1], marker="x", c="k", s=40)
        if student is not None:
            with torch.no_grad():
                q_density = student.log_prob(grid).exp().view(200, 200).numpy()
                xs = student.sample(n_scatter, g).numpy()
            # levels at the 1σ, 2σ, 3σ ellipses of a Gaussian; automatic levels would draw a
            # spurious line where the density underflows to zero far from the student
            levels = [q_density.max() * math.exp(-r * r / 2) for r in (3, 2, 1)]
            ax.contour(gx.numpy(), gy.numpy(), q_density, levels=levels, colors="tab:red",
                       linewidths=1.0)
            ax.scatter(xs[:, 0], xs[:, 1], s=3, c="tab:red", alpha=0.35)
            title += f"\nmass≤2σ {m['mass_near_modes']:.2f}   E_q[log p] {m['teacher_logp']:.1f}"
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xlabel("x₁")
    axes[0].set_ylabel("x₂")
    handles = [Line2D([], [], color="0.4", lw=6, label="teacher density p"),
               Line2D([], [], color="k", marker="x", ls="", label="teacher modes"),
               Line2D([], [], color="tab:red", lw=1, label="student density q (contours)"),
               Line2D([], [], color="tab:red", marker=".", ls="", alpha=0.5, label="student samples")]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False, fontsize=9)
    fig.suptitle("Forward KL covers all modes, reverse KL seeks one (MiniLLM §2.1, Fig. 2)",
                 fontweight="bold")
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -----------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n_modes", type=int, default=4, help="teacher modes, evenly spaced on a circle")
    ap.add_argument("--radius", type=float, default=3.0, help="radius of that circle")
    ap.add_argument("--mode_std", type=float, default=0.5, help="std of each teacher mode")
    ap.add_argument("--student_components", type=int, default=1, help="Gaussians in the student")
    ap.add_argument("--covariance", choices=["full", "diag"], default="full")
    ap.add_argument("--init_std", type=float, default=0.5, help="student's initial std (try 1.0)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch_size", type=int, default=256, help="samples per gradient estimate")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="toy/mode_seeking_2d.png")
    args = ap.parse_args(argv)

    t0 = time.time()
    torch.set_num_threads(1)  # tensors of a few hundred points: extra threads only add overhead
    torch.manual_seed(args.seed)
    teacher = make_teacher(args.n_modes, args.radius, args.mode_std)
    init = make_student(args.student_components, args.covariance, seed=args.seed,
                        init_std=args.init_std)
    kw = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    runs = [("forward KL(p‖q)", "Forward KL(p‖q): max. likelihood", fit_forward_kl),
            ("reverse KL, reparameterised", "Reverse KL(q‖p): reparameterised", fit_reverse_kl_reparam),
            ("reverse KL, score function", "Reverse KL(q‖p): score function", fit_reverse_kl_score_function)]
    rows, fitted = [], []
    for name, title, fit_fn in runs:
        student = fit_fn(teacher, init, **kw)
        m = metrics(teacher, student, seed=args.seed + 1)
        rows.append((name, m))
        fitted.append((title, student, m))
    print(f"teacher: {args.n_modes} modes on a circle of radius {args.radius}, std {args.mode_std}; "
          f"student: {args.student_components} Gaussian(s), {args.covariance} covariance; seed {args.seed}")
    print(format_table(rows))
    plot(teacher, fitted, args.out, seed=args.seed)
    print(f"saved {args.out} ({time.time() - t0:.1f} s)")
    return rows


if __name__ == "__main__":
    main()
