"""
MiniLLM's rollout phase and the loss on its buffer: the part of the method that needs the models.

MiniLLM (Gu et al., arXiv 2306.08543), §2.3 and Algorithm 1: every `rollout_size` prompts the
student samples responses from the teacher-mixed distribution p~ = alpha p + (1 - alpha) q_old, the
teacher and the frozen student score them once, and several policy epochs then train on that
buffer. The equations (rewards, returns, weights, the clipped loss) are pure functions in
policy_gradient.py; this file feeds them from `GPT.generate` and GPT forwards. train.py calls
`collect_rollouts` once per phase and `minillm_micro_loss` once per micro-batch.
"""
import math

import torch
import torch.nn.functional as F

import policy_gradient as pg
from dataset import split_responses


class PromptOrder:
    """Which training prompts each rollout phase answers: epoch by epoch, as the reference's shuffled
    prompt loader (LMOps minillm/minillm/sampler.py): every pass over the n prompts is a fresh
    permutation consumed in order, so each prompt is used once per epoch (not drawn with
    replacement); a phase may straddle two epochs. The permutation of epoch e is a function of
    (seed, e), so the state to resume is two integers; it is the same on every rank."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch, self.pos, self._perm = n, seed, 0, 0, None

    def permutation(self, epoch):
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)).tolist()

    def take(self, k):
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
            if self._perm is None:
                self._perm = self.permutation(self.epoch)
            m = min(k - len(out), self.n - self.pos)
            out += self._perm[self.pos:self.pos + m]
            self.pos += m
        return out

    def state_dict(self):
        return dict(n=self.n, seed=self.seed, epoch=self.epoch, pos=self.pos)

    def load_state_dict(self, state):
        self.n, self.seed, self.epoch, self.pos, self._perm = state['n'], state['seed'], state['epoch'], state['pos'], None


def rollout_batch(rows, eot, device):
    """rows: (prompt tokens, response tokens) pairs -> prompts left-padded to Tp, responses
    right-padded to Tr: tokens [B, Tp + Tr], attention mask, Tp, response mask [B, Tr]."""
    Tp, Tr = max(len(p) for p, _ in rows), max(len(r) for _, r in rows)
    seq = torch.full((len(rows), Tp + Tr), eot, dtype=torch.long)
    amask = torch.zeros(len(rows), Tp + Tr, dtype=torch.long)
    for j, (p, r) in enumerate(rows):
        seq[j, Tp - len(p):Tp + len(r)] = torch.tensor(p + r, dtype=torch.long)
        amask[j, Tp - len(p):Tp + len(r)] = 1
    return seq.to(device), amask.to(device), Tp, amask[:, Tp:].bool().to(device)


def response_logits(cfg, model, seq, amask, Tp):
    """Logits [B, Tr, V] (fp32) that predict each response token."""
    with cfg.ctx:
        return model(seq, attention_mask=amask)[:, Tp - 1:-1].float()


def gather_logp(logits, tokens):
    return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)


@torch.no_grad()
def collect_rollouts(cfg, model, teacher, prompts, prompt_order, sample_gen):
    """One rollout phase (MiniLLM §2.3, Algorithm 1): sample responses from p~ = alpha p + (1 - alpha) q
    with both KV caches, score them with the teacher and the frozen student q_old, and compute
    rewards r_t = log p(y_t) - log q_old(y_t), advantages and log p~(y_t) once for all epochs.
    `prompt_order` (PromptOrder) gives the phase's rollout_size prompts, the same on every rank."""
    model.eval()
    chosen = prompt_order.take(cfg.rollout_size)
    per_rank = cfg.rollout_size // cfg.world_size
    chosen = chosen[cfg.rank * per_rank:(cfg.rank + 1) * per_rank]
    rows, parts = [], []
    for s in range(0, per_rank, cfg.rollout_batch_size):
        ids = chosen[s:s + cfg.rollout_batch_size]
        p_idx, p_mask = prompts.prompt_batch(ids)
        with cfg.ctx:
            out = cfg.raw(model).generate(
                p_idx.to(cfg.device), cfg.max_new_tokens, temperature=cfg.gen_temperature,
                top_k=cfg.gen_top_k or None, top_p=cfg.gen_top_p, eos_id=prompts.eot,
                attention_mask=p_mask.to(cfg.device), generator=sample_gen,
                mix_model=teacher, mix_alpha=cfg.teacher_mix_alpha, all_done=cfg.all_done)
        chunk = list(zip([prompts.prompt(i) for i in ids], split_responses(out.cpu(), p_idx.shape[1], prompts.eot)))
        seq, amask, Tp, rmask = rollout_batch(chunk, prompts.eot, cfg.device)
        tokens = seq[:, Tp:]
        parts.append([gather_logp(response_logits(cfg, model, seq, amask, Tp), tokens),
                      gather_logp(response_logits(cfg, teacher, seq, amask, Tp), tokens), rmask])
        rows += chunk
    Tr = max(p[2].shape[1] for p in parts)
    logp_old, logp_teacher, mask = (torch.cat([F.pad(p[k], (0, Tr - p[k].shape[1])) for p in parts]) for k in range(3))
    rewards = pg.token_rewards(logp_teacher, logp_old, mask)
    if cfg.reward_scale or cfg.reward_clip:
        rewards = pg.scale_and_clip_rewards(rewards, mask, scale=cfg.reward_scale or None, clip=cfg.reward_clip or None)
    advantages = pg.compute_advantages(rewards, mask, cfg.returns_mode, cfg.length_norm, cfg.gamma,
                                       include_current=not cfg.single_step or cfg.returns_mode == 'reference')
    a = cfg.teacher_mix_alpha
    logp_mix = (torch.logaddexp(logp_teacher + math.log(a), logp_old + math.log1p(-a)) if a > 0 else logp_old)
    model.train()
    return dict(rows=rows, logp_old=logp_old, logp_teacher=logp_teacher, logp_mix=logp_mix,
                advantages=advantages, mask=mask)


def minillm_micro_loss(cfg, model, teacher, buf, ids):
    """MiniLLM loss on rollout rows `ids` (MiniLLM §2.2: L_Long(clipped) + L_Single); returns
    (loss, response-token count, stats)."""
    seq, amask, Tp, rmask = rollout_batch([buf['rows'][i] for i in ids], cfg.eot, cfg.device)
    Tr = rmask.shape[1]
    take = {k: buf[k][ids, :Tr] for k in ('logp_old', 'logp_teacher', 'logp_mix', 'advantages')}
    s_logits = response_logits(cfg, model, seq, amask, Tp)
    logp = gather_logp(s_logits, seq[:, Tp:])
    t_logits = None
    if cfg.single_step:
        with torch.no_grad():
            t_logits = response_logits(cfg, teacher, seq, amask, Tp)
    loss, stats = pg.minillm_loss(
        logp, take['logp_old'], take['logp_teacher'], rmask, s_logits, t_logits, logp_mix=take['logp_mix'],
        single_step=cfg.single_step, teacher_mix_alpha=cfg.teacher_mix_alpha, clip_eps=cfg.clip_eps,
        single_step_weighted=cfg.single_step_weighted, advantages=take['advantages'])
    return loss, rmask.sum(), stats
