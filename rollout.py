"""
MiniLLM's rollout phase and the loss on its buffer: the part of the method that needs the models.

MiniLLM (Gu et al., arXiv 2306.08543), §2.3 and Algorithm 1: every `rollout_size` prompts the
student samples responses from the teacher-mixed distribution p~ = alpha p + (1 - alpha) q_old, the
teacher and the frozen student score them once, and several policy epochs then train on that
buffer. The equations (rewards, returns, weights, the clipped loss) are pure functions in
policy_gradient.py; this file feeds them from `sampling.generate` and GPT forwards. train.py takes
each micro-step's loss from `MiniLLMSource`, which calls `collect_rollouts` once per phase and
`minillm_micro_loss` once per micro-batch, plus L_PT on the pre-training stream.
"""
import math

import torch
import torch.nn.functional as F

import policy_gradient as pg
from components.parallel import gather_rollouts, global_mean, unwrap
from components.progress import GenerationProgress
from dataset import split_responses
from sampling import filtered_logprobs, generate
from supervised import supervised_loss


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


def response_logits(cfg, rt, model, seq, amask, Tp, upcast=True):
    """Logits [B, Tr, V] that predict each response token (bf16 / fp16 upcast to fp32 with `upcast`):
    lm_head runs on those positions only, not on the prompt's (up to half of each row on Dolly)."""
    with rt.ctx:
        logits = model(seq, attention_mask=amask, head_fn=lambda h, w: F.linear(h[:, Tp - 1:-1], w))
    return upcast_half(logits) if upcast else logits


def chunk_rows(cfg, vocab, device):
    """Rows of [rows, V] logits per chunk: loss_chunk_size, and on CPU at most 32 MiB of fp32 logits, since
    glibc maps every larger block fresh from the kernel (M_MMAP_THRESHOLD grows to 32 MiB at most) and each
    pass over it pays its page faults again (0.2 s of a MiniLLM step at GPT-2's vocabulary, bench.py trl)."""
    return cfg.loss_chunk_size if device.type != 'cpu' else max(1, min(cfg.loss_chunk_size, 2**23 // vocab))


def upcast_half(x):
    """bf16 / fp16 -> fp32 for log-probs and losses; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def gather_logp(logits, tokens):
    """log softmax(logits)[tokens] as z_y − logsumexp(z): no [..., V] log-softmax is written."""
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)


def plain_sampling(cfg):
    """Sampling from the model itself: temperature 1 (or greedy) and no top-k / top-p."""
    return cfg.gen_temperature in (0, 1) and not cfg.gen_top_k and cfg.gen_top_p >= 1


def sampling_logits(cfg, logits):
    """Logits [..., V] of the distribution `generate` samples from a model's logits (model.next_token_logprobs:
    softmax(z / gen_temperature) on its top-k / top-p set), up to a constant per row; the logits
    themselves when sampling is plain. Greedy decoding (temperature 0) has no density to correct
    and counts as temperature 1, as in next_token_logprobs.

    This is the student's policy throughout MiniLLM's loss (log q_old, the ratio q_θ / q_old, the
    single-step KL(q_θ‖p)), as the reference code computes every student log-prob from logits / τ
    under the generation's -inf mask (LMOps minillm/minillm/trainer.py compute_logits_and_log_probs,
    losses.py ppo_loss). The top-k / top-p set of q_θ is taken from q_θ's own logits at each
    PPO epoch (the reference stores the rollout's mask), the same set at θ = θ_old."""
    if plain_sampling(cfg):
        return logits
    return filtered_logprobs(logits, cfg.gen_temperature, cfg.gen_top_k or None, cfg.gen_top_p)


@torch.no_grad()
def collect_rollouts(cfg, rt, model, teacher, prompts, prompt_order, sample_gen):
    """One rollout phase (MiniLLM §2.3, Algorithm 1): sample responses from p~ = alpha p + (1 - alpha) q
    with both KV caches, score them with the teacher and the frozen student q_old, and compute
    rewards r_t = log p(y_t) - log q_old(y_t), advantages and log p~(y_t) once for all epochs.
    q_old and p~ are the distributions actually sampled (gen_temperature, top-k, top-p:
    `sampling_logits`), so w = q_old / p~ is the importance weight of what was drawn; p in the
    reward is the teacher at temperature 1, the p of the objective KL(q||p). In reference mode the
    advantages are stored before whitening; `minillm_micro_loss` whitens them per PPO minibatch.
    `prompt_order` (PromptOrder) gives the phase's rollout_size prompts, the same on every rank.
    The bare student decodes (`student`: no DDP wrapper, no compiled graph); the scoring forwards
    run on `model` as the updates do; rt: parallel.Runtime (autocast, the ranks' agreement)."""
    student = unwrap(model)
    model.eval()
    chosen = prompt_order.take(cfg.rollout_size)
    per_rank = cfg.rollout_size // cfg.world_size
    chosen = chosen[cfg.rank * per_rank:(cfg.rank + 1) * per_rank]
    rows, parts = [], []
    cache = new_teacher_cache(cfg, rt, per_rank, unwrap(teacher).config.logit_vocab,
                              next(teacher.parameters()).dtype, cfg.device)
    # log q_old(y_t) is the denominator of the update's ratio q_θ / q_old, which must start at 1: in fp32 a
    # decoding step's logits are a full forward's up to rounding (1e-6) and it is read off the decoding loop;
    # under bf16 / fp16 a forward recomputes it, as the reference does "because of the fp16 loss" (LMOps
    # minillm/minillm/sampler.py, which recomputes the teacher's too). The teacher's scores are in no ratio:
    # when the teacher decodes (α > 0) they are read off the decoding loop in every dtype (one teacher pass
    # over the rows, not two: README "Rollout scores under bf16")
    from_decoding = cfg.dtype == 'float32'
    record = from_decoding or cfg.teacher_mix_alpha > 0
    bar = GenerationProgress(per_rank, 'rollouts', enabled=cfg.rank == 0)  # rank 0's share, on a terminal
    for s in range(0, per_rank, cfg.rollout_batch_size):
        ids = chosen[s:s + cfg.rollout_batch_size]
        p_idx, p_mask = prompts.prompt_batch(ids)
        recorder = {}
        with rt.ctx:
            out = generate(
                student, p_idx.to(cfg.device), cfg.max_new_tokens, temperature=cfg.gen_temperature,
                top_k=cfg.gen_top_k or None, top_p=cfg.gen_top_p, eos_id=prompts.eot,
                attention_mask=p_mask.to(cfg.device), generator=sample_gen,
                mix_model=teacher, mix_alpha=cfg.teacher_mix_alpha, all_done=rt.all_done, decode=cfg.gen_decode,
                on_logits=decoding_scores(cfg, recorder, len(ids), cache, s, student=from_decoding) if record else None,
                kv_dtype=rt.ptdtype if cfg.parallel == 'fsdp' else None)  # FSDP2 computes in ptdtype
        chunk = list(zip([prompts.prompt(i) for i in ids], split_responses(out.cpu(), p_idx.shape[1], prompts.eot)))
        seq, amask, Tp, rmask = rollout_batch(chunk, prompts.eot, cfg.device)
        Tr, tokens = rmask.shape[1], seq[:, Tp:]
        if from_decoding:  # log q_old(y_t) as sampled, read off the decoding loop
            lq = recorder['lq'][:, :Tr]
        else:
            lq = response_scores(cfg, rt, model, seq, amask, Tp, tokens)[1]
        if 'lp' in recorder:  # the teacher decoded (mixing): its scores and logits off the decoding loop
            lp, lp_sampled = recorder['lp'][:, :Tr], recorder['lp_sampled'][:, :Tr]
        else:  # log p(y_t) of the teacher itself, and of the teacher as sampled; its logits into the cache
            lp, lp_sampled = response_scores(cfg, rt, teacher, seq, amask, Tp, tokens, cache=cache, first_row=s)
        parts.append([torch.where(rmask, x, 0.0) for x in (lq, lp, lp_sampled)] + [rmask])
        rows += chunk
        bar.update(len(chunk), sum(len(r) for _, r in chunk))
    bar.close()
    Tr = max(p[-1].shape[1] for p in parts)
    logp_old, logp_teacher, logp_teacher_sampled, mask = (
        torch.cat([F.pad(p[k], (0, Tr - p[k].shape[1])) for p in parts]) for k in range(4))
    rewards = pg.token_rewards(logp_teacher, logp_old, mask)
    if cfg.reward_scale or cfg.reward_clip:
        rewards = pg.scale_and_clip_rewards(rewards, mask, scale=cfg.reward_scale or None, clip=cfg.reward_clip or None)
    advantages = pg.compute_advantages(rewards, mask, cfg.returns_mode, cfg.length_norm, cfg.gamma,
                                       include_current=not cfg.single_step or cfg.returns_mode == 'reference',
                                       whitened=False)
    a = cfg.teacher_mix_alpha  # p~(y_t) = a p(y_t) + (1 - a) q_old(y_t), each as next_token_logprobs samples it
    logp_mix = (torch.logaddexp(logp_teacher_sampled + math.log(a), logp_old + math.log1p(-a)) if a > 0 else logp_old)
    logp_mix = torch.where(mask, logp_mix, 0.0)
    model.train()
    return {'rows': rows, 'logp_old': logp_old, 'logp_teacher': logp_teacher, 'logp_mix': logp_mix,
            'advantages': advantages, 'mask': mask, TEACHER_CACHE: cache}


TEACHER_CACHE = 'teacher_logits'  # the buffer's key for them (None: not kept)


def new_teacher_cache(cfg, rt, n_rows, vocab, dtype, device):
    """An empty [n_rows, max_new_tokens, V] tensor for the rollout's teacher logits, or None: they are
    kept for the single-step term of every update on the buffer (which then needs no teacher
    forward) when they fit in teacher_logits_cache_gb and one process holds all the rows its updates
    read (world size 1). In `dtype`, or rt.ptdtype in half precision (the dtype the logits come in)."""
    dtype = rt.ptdtype if cfg.dtype != 'float32' else dtype
    size_gb = n_rows * cfg.max_new_tokens * vocab * torch.finfo(dtype).bits / 8 / 2**30
    if not cfg.single_step or cfg.world_size > 1 or size_gb > cfg.teacher_logits_cache_gb:
        return None
    return torch.zeros(n_rows, cfg.max_new_tokens, vocab, dtype=dtype, device=device)


@torch.no_grad()
def teacher_cache(cfg, rt, teacher, buf):
    """The buffer's teacher logits (checkpoints keep them with the buffer); recomputed batch by batch
    as collect_rollouts scores them for a buffer without the key (a checkpoint written before it)."""
    if TEACHER_CACHE in buf or not cfg.single_step or cfg.world_size > 1:
        return buf.get(TEACHER_CACHE)
    cache = new_teacher_cache(cfg, rt, len(buf['rows']), unwrap(teacher).config.logit_vocab,
                              next(teacher.parameters()).dtype, cfg.device)
    for s in range(0, len(buf['rows']) if cache is not None else 0, cfg.rollout_batch_size):
        chunk = buf['rows'][s:s + cfg.rollout_batch_size]
        seq, amask, Tp, _ = rollout_batch(chunk, rt.eot, cfg.device)
        response_scores(cfg, rt, teacher, seq, amask, Tp, seq[:, Tp:], cache=cache, first_row=s)
    buf[TEACHER_CACHE] = cache
    return cache


def decoding_scores(cfg, recorder, n_rows, cache, first_row, student=True):
    """GPT.generate's on_logits for one rollout batch: fills recorder['lq'] [n_rows, max_new_tokens]
    with log q_old(y_t) as sampled (unless `student` is false: a forward recomputes it) and, when the
    teacher decodes too (mixing), recorder['lp'] and ['lp_sampled'] with log p(y_t) of the teacher itself
    and as sampled, and the cache's rows first_row.. with its logits. Log-probs in fp32 under bf16 / fp16
    decoding, as response_scores computes them."""
    def record(rows, t, logits, tokens):
        if not recorder:
            keys = ('lq',) * student + ('lp', 'lp_sampled') * (len(logits) > 1)
            for key in keys:
                recorder[key] = torch.zeros(n_rows, cfg.max_new_tokens, device=tokens.device,
                                            dtype=torch.promote_types(logits[0].dtype, torch.float32))
        if student:
            recorder['lq'][rows, t] = gather_logp(sampling_logits(cfg, upcast_half(logits[0])), tokens)
        if len(logits) > 1:
            z = upcast_half(logits[1])
            recorder['lp'][rows, t] = lp = gather_logp(z, tokens)
            recorder['lp_sampled'][rows, t] = lp if plain_sampling(cfg) else gather_logp(sampling_logits(cfg, z), tokens)
            if cache is not None:
                cache[first_row + rows, t] = logits[1].to(cache.dtype)
    return record


def response_scores(cfg, rt, model, seq, amask, Tp, tokens, cache=None, first_row=0):
    """(log softmax(z)(y_t), the same under the sampled distribution `sampling_logits`) [B, Tr] at
    every response position, from one forward whose lm_head runs on response positions only,
    loss_chunk_size rows of logits at a time; with `cache` the logits also go to its rows
    first_row.. (see new_teacher_cache)."""
    B, Tr = tokens.shape
    y = tokens.reshape(-1)

    def head_fn(hidden, weight):
        h = hidden[:, Tp - 1:-1].reshape(B * Tr, -1)
        plain = sampled = None
        chunk = chunk_rows(cfg, weight.shape[0], h.device)
        for i in range(0, B * Tr, chunk):
            rows = slice(i, min(i + chunk, B * Tr))
            z = upcast_half(F.linear(h[rows], weight))
            if plain is None:
                plain, sampled = (torch.empty(B * Tr, dtype=z.dtype, device=z.device) for _ in range(2))
            if cache is not None:
                at = torch.arange(rows.start, rows.stop, device=h.device)
                cache[first_row + at // Tr, at % Tr] = z.to(cache.dtype)
            plain[rows] = gather_logp(z, y[rows])
            sampled[rows] = plain[rows] if plain_sampling(cfg) else gather_logp(sampling_logits(cfg, z), y[rows])
        return plain.view(B, Tr), sampled.view(B, Tr)
    with rt.ctx:
        return model(seq, attention_mask=amask, head_fn=head_fn)


def whitened_advantages(cfg, buf, ids, minibatch):
    """Reference mode: the advantages of rows `ids` whitened with statistics over the whole PPO
    minibatch `minibatch` (every rank's rows), as the reference code whitens each minibatch with a
    sum and a count all-reduced over its data-parallel ranks (LMOps minillm/minillm/losses.py
    ppo_loss, utils.py whiten). Every rank holds the gathered buffer, so the statistics need no
    communication and are the same for any world size. whiten_padding=True: over the padded buffer,
    every response padded to max_new_tokens (the reference pads each to max_length -
    max_prompt_length) and padding counted as 0; False: over the valid tokens only."""
    group = list(ids) if minibatch is None else list(minibatch)
    adv, mask = buf['advantages'][group], buf['mask'][group]
    width = max(cfg.max_new_tokens, adv.shape[1]) if cfg.whiten_padding else None
    white = pg.whiten(adv, mask, include_padding=cfg.whiten_padding, width=width)
    return white[[group.index(i) for i in ids]]


def minillm_micro_loss(cfg, rt, model, teacher, buf, ids, minibatch=None):
    """MiniLLM loss on rollout rows `ids` (MiniLLM §2.2: L_Long(clipped) + L_Single), this rank's
    share of the PPO minibatch `minibatch` (default: `ids`); returns (loss, response-token count, stats).
    With rt.chunked the loss runs on the student's hidden states chunk by chunk
    (pg.chunked_minillm_loss), never holding [B, Tr, V] logits for backward; the teacher's logits
    come from the rollout's cache when it kept them (teacher_cache), else from its forward."""
    seq, amask, Tp, rmask = rollout_batch([buf['rows'][i] for i in ids], rt.eot, cfg.device)
    Tr, tokens = rmask.shape[1], seq[:, Tp:]
    take = {k: buf[k][ids, :Tr] for k in ('logp_old', 'logp_teacher', 'logp_mix', 'advantages')}
    if cfg.returns_mode == 'reference':
        take['advantages'] = whitened_advantages(cfg, buf, ids, minibatch)[:, :Tr]
    switches = dict(logp_mix=take['logp_mix'], single_step=cfg.single_step, teacher_mix_alpha=cfg.teacher_mix_alpha,
                    clip_eps=cfg.clip_eps, single_step_weighted=cfg.single_step_weighted, advantages=take['advantages'])
    cache = teacher_cache(cfg, rt, teacher, buf)
    rows = torch.as_tensor(ids, device=cfg.device)
    if not rt.chunked:
        s_logits = sampling_logits(cfg, response_logits(cfg, rt, model, seq, amask, Tp))  # q_θ as sampled
        t_logits = None
        if cfg.single_step:
            with torch.no_grad():
                t_logits = (upcast_half(cache[rows, :Tr]) if cache is not None
                            else response_logits(cfg, rt, teacher, seq, amask, Tp))
        loss, stats = pg.minillm_loss(gather_logp(s_logits, tokens), take['logp_old'], take['logp_teacher'], rmask,
                                      s_logits, t_logits, **switches)
        return loss, rmask.sum(), stats
    teacher_in = {}
    if cfg.single_step and cache is not None:  # row-major valid positions of the [N, max_new_tokens, V] cache
        teacher_in = dict(teacher_logits=cache,
                          teacher_index=(rows[:, None] * cache.shape[1] + torch.arange(Tr, device=cfg.device))[rmask])
    elif cfg.single_step:
        with torch.no_grad(), rt.ctx:
            if cfg.parallel == 'fsdp':  # the sharded teacher's head exists only inside its forward
                teacher_in = dict(teacher_logits=teacher(seq, attention_mask=amask,
                                                         head_fn=lambda h, w: F.linear(h[:, Tp - 1:-1], w)))
            else:
                h, w = teacher(seq, attention_mask=amask, head_fn=lambda h, w: (h[:, Tp - 1:-1], w))
                teacher_in = dict(teacher_hidden=h, teacher_head_weight=w)
    policy = None if plain_sampling(cfg) else (lambda z: sampling_logits(cfg, z))

    def head_fn(hidden, weight):
        return pg.chunked_minillm_loss(hidden[:, Tp - 1:-1], weight, tokens, take['logp_old'], take['logp_teacher'],
                                       rmask, policy=policy, chunk_size=chunk_rows(cfg, weight.shape[0], hidden.device),
                                       **teacher_in, **switches)
    with rt.ctx:
        loss, stats = model(seq, attention_mask=amask, head_fn=head_fn)
    return loss, rmask.sum(), stats


class MiniLLMSource:
    """MiniLLM's micro-batches (arXiv 2306.08543, Algorithm 1) and their state: each rollout phase
    fills a buffer from rollout_size prompts (PromptOrder, every rank's rows gathered), queues
    ppo_epochs shuffled passes over it in global PPO minibatches, and each micro-step trains on this
    rank's share of the next one, plus pt_weight x L_PT on the pre-training stream `pt_data` (None: off).
    The checkpoint keeps the buffer, the queue and the prompt order (state_dict).

    `backward(loss)`: the loop's backward (scaled as it scales its own). Given, the policy loss takes it
    before L_PT's forward and loss() returns the policy loss detached plus L_PT: FSDP2 reduce-scatters a
    block's gradient only when the backward of its first forward is done, so two forwards before one
    backward hold the whole student's bf16 gradients at once (scripts/dryrun.py: 71 GiB instead of 49
    per GPU for the 14.8B student on 8 GPUs), for one more reduce-scatter per micro-step."""

    def __init__(self, cfg, rt, model, teacher, data, pt_data, data_gen, sample_gen, backward=None):
        self.cfg, self.rt, self.model, self.teacher, self.data, self.pt_data = cfg, rt, model, teacher, data, pt_data
        self.data_gen, self.sample_gen, self.backward = data_gen, sample_gen, backward
        self.prompt_order = PromptOrder(len(data), cfg.seed)  # epoch by epoch
        self.buffer, self.queue = None, []

    def loss(self, step):
        """(this rank's loss, tokens, stats) of one micro-step; `step` (1-based) is unused here."""
        cfg, rt = self.cfg, self.rt
        if not self.queue:  # a new rollout phase: ppo_epochs shuffled passes over a fresh (global) buffer
            self.buffer = gather_rollouts(cfg, collect_rollouts(cfg, rt, self.model, self.teacher, self.data,
                                                                self.prompt_order, self.sample_gen))
            n, width = len(self.buffer['rows']), cfg.batch_size * cfg.world_size
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(n, generator=self.data_gen).tolist()
                self.queue += [perm[i:i + width] for i in range(0, n - width + 1, width)]
        minibatch = self.queue.pop(0)  # the global PPO minibatch (reference mode whitens over all of it)
        ids = minibatch[cfg.rank * cfg.batch_size:(cfg.rank + 1) * cfg.batch_size]  # this rank's share
        loss, n_tok, stats = minillm_micro_loss(cfg, rt, self.model, self.teacher, self.buffer, ids, minibatch)
        loss = global_mean(cfg, loss, n_tok)
        tokens = n_tok.item()
        if self.pt_data is not None:  # L_PT (MiniLLM §2.3): LM loss (or word-level KD) on pre-training text
            if self.backward is not None:  # the policy loss's backward first (see the class docstring)
                self.backward(loss)
                loss = loss.detach()
            x, y = self.pt_data.batch(cfg.pt_batch_size, cfg.block_size, self.data_gen, cfg.rank, cfg.world_size)
            x, y = x.to(cfg.device), y.to(cfg.device)
            with rt.ctx:
                pt = supervised_loss(cfg, rt, self.model, self.teacher, x, y, kd_ratio=cfg.pt_kd_ratio)
            loss = loss + cfg.pt_weight * pt
            stats['pt_loss'] = pt.detach()
            tokens += x.numel()
        return loss, tokens, stats

    def state_dict(self):
        buffer = {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.buffer.items()} if self.buffer else None
        return dict(rollout_buffer=buffer, rollout_queue=list(self.queue), prompt_order=self.prompt_order.state_dict())

    def load_state_dict(self, state):
        """From a checkpoint's keys (missing ones leave the fresh state)."""
        if state.get('prompt_order'):
            self.prompt_order.load_state_dict(state['prompt_order'])
        self.buffer, self.queue = state.get('rollout_buffer'), state.get('rollout_queue', [])
        if self.buffer is not None:
            self.buffer = {k: v.to(self.cfg.device) if torch.is_tensor(v) else v for k, v in self.buffer.items()}
