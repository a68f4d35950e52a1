"""
Toy 2: forward vs reverse KL between whole sequences, in a world small enough to enumerate.

The teacher p is a tiny autoregressive model over sequences of `length` tokens from a vocabulary
of `vocab_size` (6⁴ = 1296 sequences by default). It is a mixture of a few near-deterministic
"modes" (its high-probability sequences) plus uniform noise, and every mode passes through the
same token at position 1: the bottleneck.

The student q_θ is a position-dependent bigram: it sees only the previous token. After the
bottleneck it cannot tell which mode it is in, so it cannot copy the teacher. That capacity gap is
what makes forward and reverse KL disagree (MiniLLM §2.1; this is the sequence version of the
paper's Figure 2, see toy/mode_seeking_2d.py).

- forward KL, word-level KD: Σ_t E_{y_<t∼p} KL(p_t‖q_t), which by the chain rule is exactly the
  sequence-level KL(p‖q). The bigram learns the teacher's bigram statistics and after the
  bottleneck attaches every mode's continuation to every mode's beginning: much of its mass goes
  to hybrids the teacher finds implausible.
- reverse KL, MiniLLM: KL(q‖p) = E_{y∼q}[log q(y) − log p(y)] minimised by policy gradient
  (the policy gradient theorem, MiniLLM §2.2, Eq. 2) on sequences the student samples itself,
  using `policy_gradient.minillm_loss`: single-step decomposition and PPO clipping, with
  teacher-mixed sampling and length normalisation as switches (see `fit_minillm` for why the
  toy's defaults turn those two off, and the table's extra rows for what they do here).
  The student commits to one mode and puts most of its mass on sequences the teacher rates highly.

Both divergences, and the mass each student puts on the teacher's top sequences, are computed
exactly by enumerating every sequence.

    python toy/sequence_world.py
    python toy/sequence_world.py --n_modes=4 --teacher_mix_alpha=0.2 --length_norm=True --seed=1
"""

import argparse
import copy
import itertools
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# kl.py and policy_gradient.py are flat modules in the repository root; put it on the path so the
# script runs both as `python toy/sequence_world.py` and as `python -m toy.sequence_world`
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kl import forward_kl  # noqa: E402
from policy_gradient import minillm_loss, teacher_mix_log_probs  # noqa: E402

TOKENS = "abcdefghij"


def all_sequences(vocab_size, length):
    """Every sequence, in lexicographic order: [vocab_size ** length, length] long."""
    return torch.tensor(list(itertools.product(range(vocab_size), repeat=length)), dtype=torch.long)


def seq_str(y):
    """A sequence of token ids as letters, e.g. [0, 2, 1] -> 'acb'."""
    return "".join(TOKENS[int(v)] for v in y)


# -----------------------------------------------------------------------------
# teacher: an explicit table over sequences, read as an autoregressive model

class TabularTeacher:
    """Teacher p given by its probability table over all sequences, shape [V] * T.

    Any joint distribution is autoregressive by the chain rule: p(y_t | y_<t) = p(y_≤t) / p(y_<t),
    with the prefix marginals p(y_≤t) obtained by summing the table over later positions. So this
    behaves exactly like a (perfect, tiny) language model: next-token distributions at any prefix.
    """

    def __init__(self, table):
        self.table = table
        self.vocab_size, self.length = table.shape[0], table.dim()
        self.cond = []  # cond[t][y_0, .., y_{t-1}, v] = log p(y_t = v | y_<t)
        for t in range(self.length):
            marginal = table.sum(dim=tuple(range(t + 1, self.length))) if t + 1 < self.length else table
            self.cond.append(torch.log(marginal) - torch.log(marginal.sum(-1, keepdim=True)))

    def next_log_probs(self, prefix):
        """log p(· | y_<t) for a batch of prefixes [B, t] -> [B, V]."""
        return self.cond[prefix.shape[1]][tuple(prefix.T)].expand(prefix.shape[0], -1)

    def logits(self, y):
        """Next-token log-probs at every position of sequences y [B, T] -> [B, T, V]."""
        return torch.stack([self.next_log_probs(y[:, :t]) for t in range(y.shape[1])], dim=1)

    def log_prob(self, y):
        """log p(y) of whole sequences [B, T] -> [B], read straight from the table."""
        return torch.log(self.table[tuple(y.T)])


def make_teacher(vocab_size=6, length=4, n_modes=3, sharpness=0.9, noise=0.05, seed=0):
    """A mixture of `n_modes` near-deterministic sequences plus uniform noise; weights ∝ 1/(m+1).

    Mode m emits its own token at each position with probability `sharpness` (the rest spread
    evenly), independently per position. All modes share the token at position 1 (the bottleneck);
    at every other position their tokens differ, so a model that only sees the previous token
    forgets at position 2 which mode it started in.
    Returns (teacher, modes) with modes [n_modes, length].
    """
    if vocab_size < 2 or vocab_size > len(TOKENS) or length < 3:
        raise ValueError(f"need 2 <= vocab_size <= {len(TOKENS)} and length >= 3 (a bottleneck at "
                         f"position 1 with positions on both sides)")
    if not 1 <= n_modes <= vocab_size:
        raise ValueError("need 1 <= n_modes <= vocab_size (modes use distinct tokens per position)")
    if vocab_size ** length > 50_000:
        raise ValueError("vocab_size ** length must stay <= 50000 so every sequence can be enumerated")
    if not (0 < sharpness <= 1 and 0 <= noise < 1):
        raise ValueError("need 0 < sharpness <= 1 and 0 <= noise < 1")
    g = torch.Generator().manual_seed(seed)
    bottleneck = torch.randint(vocab_size, (1,), generator=g)
    # elsewhere keep the bottleneck token out of the modes when there are tokens to spare (readability)
    others = torch.cat([torch.arange(bottleneck.item()), torch.arange(bottleneck.item() + 1, vocab_size)])
    pool = others if n_modes < vocab_size else torch.arange(vocab_size)
    modes = torch.stack([pool[torch.randperm(len(pool), generator=g)[:n_modes]] for _ in range(length)],
                        dim=1)
    modes[:, 1] = bottleneck

    ys = all_sequences(vocab_size, length)
    off = (1 - sharpness) / (vocab_size - 1)
    per_token = torch.where(ys[:, None, :] == modes[None], sharpness, off)  # [N, M, T]
    weights = 1.0 / torch.arange(1, n_modes + 1, dtype=torch.float64)
    weights = (1 - noise) * weights / weights.sum()
    probs = (per_token.double().prod(-1) * weights).sum(-1) + noise / len(ys)
    table = (probs / probs.sum()).float().view([vocab_size] * length)
    return TabularTeacher(table), modes


# -----------------------------------------------------------------------------
# student: a bigram that sees only the previous token

class BigramStudent(nn.Module):
    """q_θ(y_t | y_<t) = softmax(W[t, y_{t-1}]), with y_{-1} = BOS: a position-dependent bigram.

    T·(V+1)·V parameters; it can represent the teacher only where one previous token is enough.
    """

    def __init__(self, vocab_size, length, init_std=0.1, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.length = vocab_size, length
        self.table = nn.Parameter(init_std * torch.randn(length, vocab_size + 1, vocab_size, generator=g))

    def logits(self, y):
        """Next-token logits at every position of y [B, T] -> [B, T, V] (one table lookup each)."""
        bos = torch.full_like(y[:, :1], self.vocab_size)
        prev = torch.cat([bos, y[:, :-1]], dim=1)
        return self.table[torch.arange(y.shape[1]), prev]

    def log_prob(self, y):
        """log q(y) = Σ_t log q(y_t | y_{t-1}) of whole sequences [B, T] -> [B]."""
        return token_log_probs(self.logits(y), y).sum(-1)


def token_log_probs(logits, y):
    """log softmax(logits)[y_t] at each position: [B, T, V], [B, T] -> [B, T]."""
    return F.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sample_rollouts(student, teacher, n, alpha, generator):
    """n sequences drawn token by token from p̃_t = α p_t + (1 − α) q_t (MiniLLM §2.2, teacher-mixed
    sampling; α = 0 samples the student alone). Returns y [n, T]."""
    y = torch.zeros(n, 0, dtype=torch.long)
    for t in range(student.length):
        bos_or_prev = y[:, -1] if t > 0 else torch.full((n,), student.vocab_size)
        log_q = F.log_softmax(student.table[t, bos_or_prev], dim=-1)
        log_mix = teacher_mix_log_probs(teacher.next_log_probs(y), log_q, alpha)
        y_t = torch.multinomial(log_mix.exp(), 1, generator=generator)
        y = torch.cat([y, y_t], dim=1)
    return y


# -----------------------------------------------------------------------------
# the two distillation objectives (and the exact reverse KL as a reference)

def forward_kl_kd_loss(teacher, student, ys):
    """Word-level KD on teacher prefixes, exactly: Σ_y p(y) Σ_t KL(p_t‖q_t)(y_<t)
    (word-level KD, Kim & Rush arXiv 1606.07947 §3.1).

    Weighting each enumerated sequence by p(y) weights every prefix by its teacher probability.
    By the chain rule it equals the sequence-level forward KL(p‖q) (MiniLLM §2.1, the standard-KD
    objective).
    """
    p = teacher.log_prob(ys).exp()
    kl_t = forward_kl(student.logits(ys), teacher.logits(ys))  # [N, T]
    return (p * kl_t.sum(-1)).sum()


def exact_reverse_kl(teacher, student, ys):
    """Sequence-level reverse KL(q‖p) = Σ_y q(y) (log q(y) − log p(y)), by enumeration
    (MiniLLM §2.1, Eq. 1)."""
    log_q = student.log_prob(ys)
    return (log_q.exp() * (log_q - teacher.log_prob(ys))).sum()


def _adam_fit(student, loss_fn, steps, lr):
    student = copy.deepcopy(student)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_fn(student)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return student.requires_grad_(False)


def fit_forward_kl(teacher, student, steps=300, lr=0.1):
    """Student trained by word-level KD (forward KL), full batch over every sequence."""
    ys = all_sequences(teacher.vocab_size, teacher.length)
    return _adam_fit(student, lambda s: forward_kl_kd_loss(teacher, s, ys), steps, lr)


def fit_reverse_kl_exact(teacher, student, steps=300, lr=0.1):
    """Reference: the reverse KL minimised with its exact gradient (possible only because the
    sequence space is enumerable; MiniLLM must estimate this gradient from samples)."""
    ys = all_sequences(teacher.vocab_size, teacher.length)
    return _adam_fit(student, lambda s: exact_reverse_kl(teacher, s, ys), steps, lr)


@torch.no_grad()
def make_rollouts(teacher, student, n, teacher_mix_alpha, generator):
    """Sample n rollouts (from p̃, or from q when α = 0) and record what `minillm_loss` needs, all
    frozen at the sampling policy q_old: teacher logits, log q_old(y_t), log p(y_t), log p̃(y_t)."""
    y = sample_rollouts(student, teacher, n, teacher_mix_alpha, generator)
    t_logits, old_logits = teacher.logits(y), student.logits(y)
    mix_logits = teacher_mix_log_probs(t_logits, old_logits, teacher_mix_alpha)
    return {"y": y, "mask": torch.ones_like(y, dtype=torch.bool), "teacher_logits": t_logits,
            "logp_old": token_log_probs(old_logits, y), "logp_teacher": token_log_probs(t_logits, y),
            "logp_mix": token_log_probs(mix_logits, y)}


def rollout_loss(student, rollouts, teacher_mix_alpha, **loss_kw):
    """MiniLLM loss (§2.2) of the current student on frozen rollouts: `policy_gradient.minillm_loss`
    with the student's fresh logits (the single-step term and the ratio q_θ / q_old need them)."""
    s_logits = student.logits(rollouts["y"])
    loss, _ = minillm_loss(token_log_probs(s_logits, rollouts["y"]), rollouts["logp_old"],
                           rollouts["logp_teacher"], rollouts["mask"], student_logits=s_logits,
                           teacher_logits=rollouts["teacher_logits"], logp_mix=rollouts["logp_mix"],
                           teacher_mix_alpha=teacher_mix_alpha, **loss_kw)
    return loss


def fit_minillm(teacher, student, steps=300, batch_size=128, lr=0.05, ppo_epochs=2, seed=0,
                teacher_mix_alpha=0.0, length_norm=False, **loss_kw):
    """MiniLLM (§2.2): each step samples `batch_size` rollouts, then takes `ppo_epochs` Adam steps on
    `policy_gradient.minillm_loss` (single-step term + PPO-clipped long-term term). Other switches
    of minillm_loss pass through `loss_kw`.

    The toy's defaults switch off two of the paper's stabilisers, and say so. Every sequence here has
    the same length, so length normalisation only rescales the future reward at step t by
    1/(T − t − 1), a myopic reweighting that is not the gradient of KL(q‖p). Teacher-mixed sampling's
    per-token weights w_t leave the prefix distribution uncorrected, and the PPO clip acts on the
    weighted ratio, so at θ = θ_old it drops tokens whose w_t lies outside [1 − ε, 1 + ε]. Both
    stabilisers are there to tame variance, reward hacking and short answers in long LLM rollouts,
    problems this world does not have; here each pulls the fitted student away from the reverse-KL
    optimum (the extra rows `main` prints). With both off, the gradient estimate is unbiased
    (tests/test_toy.py checks it against the exact gradient).
    """
    student = copy.deepcopy(student)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    for _ in range(steps):
        rollouts = make_rollouts(teacher, student, batch_size, teacher_mix_alpha, g)
        for _ in range(ppo_epochs):
            loss = rollout_loss(student, rollouts, teacher_mix_alpha, length_norm=length_norm, **loss_kw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return student.requires_grad_(False)


# -----------------------------------------------------------------------------
# exact figures of merit

@torch.no_grad()
def metrics(teacher, student, top_k=3, top_many=30):
    """Exact figures, by enumerating every sequence y:

    forward_kl:  KL(p‖q) = Σ_y p(y) (log p(y) − log q(y))
    reverse_kl:  KL(q‖p) = Σ_y q(y) (log q(y) − log p(y))
    mass_top_k:  Σ_{y ∈ top-k of p} q(y), the student's mass on the teacher's k best sequences
                 (also for top_many); teacher_mass_top_k is the teacher's own mass there
    teacher_logp: E_{y∼q}[log p(y)], how plausible the teacher finds the student's sequences
    """
    ys = all_sequences(teacher.vocab_size, teacher.length)
    log_p, log_q = teacher.log_prob(ys), student.log_prob(ys)
    p, q = log_p.exp(), log_q.exp()
    order = p.argsort(descending=True)
    return {
        "forward_kl": (p * (log_p - log_q)).sum().item(),
        "reverse_kl": (q * (log_q - log_p)).sum().item(),
        "mass_top_k": q[order[:top_k]].sum().item(),
        "mass_top_many": q[order[:top_many]].sum().item(),
        "teacher_mass_top_k": p[order[:top_k]].sum().item(),
        "teacher_logp": (q * log_p).sum().item(),
    }


def format_table(rows, top_k=3, top_many=30):
    """rows: list of (name, metrics dict) -> a plain-text table."""
    head = (f"{'student trained by':<44}{'KL(p‖q)':>9}{'KL(q‖p)':>9}{f'q(top-{top_k})':>10}"
            f"{f'q(top-{top_many})':>11}{'E_q[log p]':>12}")
    lines = [head, "-" * len(head)]
    for name, m in rows:
        lines.append(f"{name:<44}{m['forward_kl']:>9.3f}{m['reverse_kl']:>9.3f}{m['mass_top_k']:>10.3f}"
                     f"{m['mass_top_many']:>11.3f}{m['teacher_logp']:>12.2f}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# picture

@torch.no_grad()
def plot(teacher, modes, students, path, top_many=30):
    """Grouped bars: teacher and each student's probability of the teacher's top sequences (sorted
    by teacher probability), then one group for the mass on all the other sequences."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = all_sequences(teacher.vocab_size, teacher.length)
    p = teacher.log_prob(ys).exp()
    order = p.argsort(descending=True)[:top_many]
    series = [("teacher p", p, "0.35")] + [(name, s.log_prob(ys).exp(), c)
                                           for (name, s), c in zip(students, ("tab:blue", "tab:red"))]
    fig, ax = plt.subplots(figsize=(12, 4.2), layout="constrained")
    x = torch.arange(top_many + 1).float()
    width = 0.8 / len(series)
    for i, (name, probs, color) in enumerate(series):
        heights = torch.cat([probs[order], (1 - probs[order].sum()).clamp(min=0)[None]])
        ax.bar((x + (i - (len(series) - 1) / 2) * width).numpy(), heights.numpy(), width,
               label=name, color=color)
    labels = [seq_str(ys[j]) for j in order] + [f"all {len(ys) - top_many}\nothers"]
    ax.set_xticks(x.numpy(), labels, rotation=90, fontfamily="monospace", fontsize=9)
    mode_strs = {seq_str(m) for m in modes}
    for tick in ax.get_xticklabels():
        if tick.get_text() in mode_strs:
            tick.set_fontweight("bold")
    ax.axvline(top_many - 0.5, color="k", lw=0.8, ls=":")
    ax.set_xlim(-0.6, top_many + 0.6)
    ax.set_xlabel(f"the teacher's {top_many} most likely sequences, most likely first "
                  "(bold: the teacher's modes; the others are near-misses and hybrids)")
    ax.set_ylabel("probability of the whole sequence")
    ax.set_title(f"Where a bigram student puts its mass over all {len(ys)} sequences (vocabulary "
                 f"{teacher.vocab_size}, length {teacher.length})\nforward KL spreads over every mode "
                 "and onto hybrids; reverse KL (MiniLLM) commits to one mode", fontsize=11)
    ax.legend(frameon=False)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -----------------------------------------------------------------------------

def str2bool(v):
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab_size", type=int, default=6)
    ap.add_argument("--length", type=int, default=4)
    ap.add_argument("--n_modes", type=int, default=3, help="the teacher's high-probability sequences")
    ap.add_argument("--sharpness", type=float, default=0.9, help="per-token probability of a mode's token")
    ap.add_argument("--noise", type=float, default=0.05, help="teacher mass spread uniformly")
    ap.add_argument("--steps", type=int, default=300,
                    help="rollout batches (MiniLLM) / full-batch steps (KD, exact reverse KL)")
    ap.add_argument("--batch_size", type=int, default=128, help="rollouts per MiniLLM step")
    ap.add_argument("--ppo_epochs", type=int, default=2, help="MiniLLM updates per rollout batch")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--teacher_mix_alpha", type=float, default=0.0, help="MiniLLM teacher-mixed sampling α")
    ap.add_argument("--length_norm", type=str2bool, default=False, help="MiniLLM length normalisation")
    ap.add_argument("--ablations", type=str2bool, default=True, help="also fit with the paper's stabilisers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="toy/sequence_world.png")
    args = ap.parse_args(argv)

    t0 = time.time()
    torch.set_num_threads(1)  # tables of a few thousand entries: extra threads only add overhead
    torch.manual_seed(args.seed)
    teacher, modes = make_teacher(args.vocab_size, args.length, args.n_modes, args.sharpness,
                                  args.noise, seed=args.seed)
    init = BigramStudent(args.vocab_size, args.length, seed=args.seed)
    mc = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ppo_epochs=args.ppo_epochs,
              seed=args.seed)
    forward = fit_forward_kl(teacher, init, steps=args.steps, lr=args.lr)
    minillm = fit_minillm(teacher, init, teacher_mix_alpha=args.teacher_mix_alpha,
                          length_norm=args.length_norm, **mc)
    setting = f"α={args.teacher_mix_alpha:g}" + (", length norm" if args.length_norm else "")
    rows = [("forward KL: word-level KD (exact)", forward),
            (f"reverse KL: MiniLLM policy gradient ({setting})", minillm)]
    if args.ablations:
        rows += [("  MiniLLM + teacher-mix α=0.2 (token w)",
                  fit_minillm(teacher, init, teacher_mix_alpha=0.2, length_norm=False, **mc)),
                 ("  MiniLLM + length norm",
                  fit_minillm(teacher, init, teacher_mix_alpha=0.0, length_norm=True, **mc)),
                 ("  MiniLLM, paper (α=0.2 + length norm)",
                  fit_minillm(teacher, init, teacher_mix_alpha=0.2, length_norm=True, **mc))]
    rows.append(("reverse KL: exact gradient (reference)",
                 fit_reverse_kl_exact(teacher, init, steps=args.steps, lr=args.lr)))

    k = args.n_modes
    table = [(name, metrics(teacher, s, top_k=k)) for name, s in rows]
    print(f"teacher: {args.vocab_size}^{args.length} = {args.vocab_size ** args.length} sequences, "
          f"modes {', '.join(seq_str(m) for m in modes)} (bottleneck at position 1), own mass on its "
          f"top-{k} {table[0][1]['teacher_mass_top_k']:.3f}; student: bigram; seed {args.seed}")
    print(format_table(table, top_k=k))
    plot(teacher, modes, [("forward KL (word-level KD)", forward), ("reverse KL (MiniLLM)", minillm)],
         args.out)
    print(f"saved {args.out} ({time.time() - t0:.1f} s)")
    return table


if __name__ == "__main__":
    main()
