"""
Where the responses of GKD and DistiLLM come from: the gold dataset, the teacher's samples, the
student's own fresh samples, or a replay buffer of the student's earlier samples. train.py then
trains on whichever it gets exactly as `kd` trains on gold responses: the teacher's and the
student's logits on the same tokens, a token-level divergence over the vocabulary averaged over
response tokens (supervised.kd_head_fn: chunked loss, packed rows, DDP / FSDP).

GKD (Agarwal et al., arXiv 2306.13649, §3, Algorithm 1): at each step, with probability λ
(`gkd_lambda`) the responses are the student's own samples (on-policy, τ = gen_temperature = 1),
otherwise the fixed dataset's (gold, or with `gkd_seqkd` fresh teacher samples); the loss is a
divergence D(p‖q_θ) on them, generalised JSD(β) by default. Samples are data: they are drawn
under no_grad and the gradient is ∇θ of Σ_t D(p_t‖q_θ,t) at fixed sampled prefixes; none flows
through the sampling distribution (as in the paper, §3, which treats the student's samples as a
dataset that changes with θ). On-policy reverse KL (the 2025 "on-policy distillation" recipes) is
GKD with λ = 1 and divergence='reverse_kl': per-token KL(q_θ,t‖p_t) on the student's samples,
which is MiniLLM's single-step term alone (policy_gradient.single_step_loss, no importance
weights, no long-term return).

DistiLLM (Ko et al., arXiv 2402.03898, §3.2, the adaptive off-policy approach; public code jongwooko/distillm,
finetune.py `finetune`, distillm/buffer.py `ReplayBuffer`): skew KL on a mix of gold data and
student-generated outputs (SGO). A probability φ of training on SGO starts at 0 and grows by 0.1
whenever the validation loss has risen by `distillm_loss_eps` since the last rise (`adapt_sgo_prob`);
each step then trains on fresh student samples, on a batch from the replay buffer of earlier
ones, or on gold data (`sgo_choice`). Fresh samples become rarer as training goes on, φ (1 − t/T),
which is where the method saves generation time over on-policy KD.

Under DDP / FSDP every decision (the coins, which rows a replay batch takes) comes from the data
generator that every rank shares, so all ranks pick the same branch and generate together (under
FSDP in lockstep, parallel.Runtime.all_done: sampling.generate), and the replay buffer holds every
rank's rows in rank order: the same buffer on
every rank and in a one-process run with the global batch.
"""
import torch
import torch.distributed as dist

from components.parallel import global_mean, unwrap
from dataset import split_responses
from sampling import generate
from supervised import supervised_loss

SGO_PROB_STEP = 0.1  # φ's increment at a validation-loss rise (finetune.py: adaptive_threshold += 0.1)


@torch.no_grad()
def sample_responses(cfg, rt, model, data, ids, generator):
    """Responses (token lists, ending at eot when emitted) that `model` samples for training prompts
    `ids` with the KV cache, at gen_temperature / gen_top_k / gen_top_p, up to max_new_tokens. Under
    no_grad: the samples are data. Dropout is off while sampling, as in MiniLLM's rollouts. The bare
    model decodes (parallel.unwrap: no DDP wrapper, no compiled graph); rt: parallel.Runtime."""
    m = unwrap(model)
    was_training = m.training
    m.eval()
    idx, mask = data.prompt_batch(ids)
    with rt.ctx:
        out = generate(m, idx.to(cfg.device), cfg.max_new_tokens, temperature=cfg.gen_temperature,
                       top_k=cfg.gen_top_k or None, top_p=cfg.gen_top_p, eos_id=data.eot,
                       attention_mask=mask.to(cfg.device), generator=generator, all_done=rt.all_done)
    m.train(was_training)
    return split_responses(out.cpu(), idx.shape[1], data.eot)


def training_batch(cfg, data, ids, responses=None):
    """(x, y, segments) for prompts `ids` with `responses` (None: the gold ones): packed rows when
    cfg.pack (segments number the examples), else right-padded rows (segments None)."""
    if cfg.pack:
        return data.packed_sft_batch(ids, cfg.block_size, responses)
    x, y = data.sft_batch(ids, cfg.block_size, responses)
    return x, y, None


def coin(prob, generator):
    """True with probability `prob`, drawn from `generator` (the shared data generator, so every rank
    draws the same); prob 0 or 1 draws nothing, so λ = 0 consumes the data stream exactly as kd."""
    if prob <= 0 or prob >= 1:
        return prob >= 1
    return torch.rand((), generator=generator).item() < prob


def gkd_responses(cfg, rt, model, teacher, data, ids, data_gen, sample_gen):
    """GKD's data source for one micro-batch (arXiv 2306.13649, Algorithm 1: u ~ U(0, 1); u ≤ λ:
    on-policy). Returns (responses or None for the gold ones, on_policy)."""
    if coin(cfg.gkd_lambda, data_gen):
        return sample_responses(cfg, rt, model, data, ids, sample_gen), True
    if cfg.gkd_seqkd:  # the sequence-level variant's fixed data: teacher samples, here drawn afresh
        return sample_responses(cfg, rt, teacher, data, ids, sample_gen), False
    return None, False


def divergence_loss(cfg, rt, model, teacher, data, ids, responses):
    """GKD's and DistiLLM's loss on prompts `ids` with `responses` (None: the gold ones): the token
    divergence alone (kd_ratio 1: no CE), rescaled to the global batch's token mean. Returns (loss, tokens)."""
    x, y, seg = (t.to(cfg.device) if t is not None else None for t in training_batch(cfg, data, ids, responses))
    with rt.ctx:
        loss = supervised_loss(cfg, rt, model, teacher, x, y, 1.0, seg)
    return global_mean(cfg, loss, (y != -1).sum()), x.numel()


class GKDSource:
    """GKD's micro-batches (arXiv 2306.13649, Algorithm 1): gold prompts drawn by the shared data
    generator, answered with probability gkd_lambda by the student's own samples (gkd_responses).
    No state of its own beyond the run's random streams."""

    def __init__(self, cfg, rt, model, teacher, data, data_gen, sample_gen):
        self.cfg, self.rt, self.model, self.teacher, self.data = cfg, rt, model, teacher, data
        self.data_gen, self.sample_gen = data_gen, sample_gen

    def loss(self, step):
        """(this rank's loss, tokens, stats) of one micro-step; `step` (1-based) is unused here."""
        cfg = self.cfg
        ids = self.data.sample_indices(cfg.batch_size, self.data_gen, cfg.rank, cfg.world_size)
        responses, on_policy = gkd_responses(cfg, self.rt, self.model, self.teacher, self.data, ids,
                                             self.data_gen, self.sample_gen)
        loss, tokens = divergence_loss(cfg, self.rt, self.model, self.teacher, self.data, ids, responses)
        return loss, tokens, dict(on_policy=float(on_policy))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


# ----------------------------------------------------------------------------- DistiLLM
def sgo_choice(r, prob, step, max_iters, buffer_len, capacity):
    """DistiLLM's data source for one step (finetune.py `finetune`, replay_ratio 'decreasing', its
    default): 'fresh' (sample the student now and add the rows to the buffer), 'replay' (a batch
    from the buffer) or 'gold'. r ~ U(0, 1); φ = prob; t = step (1 for the first step), T = max_iters
    (train.py: lr_decay_iters or max_iters, the horizon of the learning-rate schedule).

        fresh   if r < φ (1 − t/T), or r < φ while the buffer holds fewer than `capacity` rows
        replay  else if r < φ
        gold    otherwise

    So SGO are used with probability φ, and of those a fraction 1 − t/T is generated afresh once the
    buffer is full (before that, all of them are)."""
    if r < prob * (1 - step / max_iters) or (r < prob and buffer_len < capacity):
        return 'fresh'
    return 'replay' if r < prob else 'gold'


def adapt_sgo_prob(prob, prev_loss, val_loss, eps=0.1):
    """DistiLLM's adaptive SGO probability after one validation (finetune.py `finetune`, at each
    evaluation): when val_loss ≥ prev_loss + eps, φ ← min(φ + 0.1, 1) and that loss becomes the new
    reference; otherwise nothing changes. prev_loss None (the evaluation before training) just sets
    the reference. Returns (φ, prev_loss)."""
    if prev_loss is None:
        return prob, val_loss
    if val_loss >= prev_loss + eps:
        return min(prob + SGO_PROB_STEP, 1.0), val_loss
    return prob, prev_loss


class ReplayBuffer:
    """Student generations, first in first out, at most `capacity` rows (distillm/buffer.py
    `ReplayBuffer`: a deque of maxlen capacity); a replay batch is `k` distinct rows drawn uniformly
    (random.sample there, the shared data generator here). A row is (prompt index, response tokens).
    Here the buffer is global (every rank's rows); the reference keeps one per process."""

    def __init__(self, capacity):
        self.capacity, self.rows = capacity, []

    def __len__(self):
        return len(self.rows)

    def add(self, rows):
        self.rows = (self.rows + list(rows))[-self.capacity:]

    def sample(self, k, generator):
        return [self.rows[i] for i in torch.randperm(len(self.rows), generator=generator)[:k].tolist()]


class DistiLLMSource:
    """DistiLLM's micro-batches and their state (buffer, φ, the reference validation loss), which
    the checkpoint saves under 'distillm' and restores at resume."""

    def __init__(self, cfg, rt, model, teacher, data, data_gen, sample_gen):
        self.cfg, self.rt, self.model, self.teacher, self.data = cfg, rt, model, teacher, data
        self.data_gen, self.sample_gen = data_gen, sample_gen
        self.buffer = ReplayBuffer(cfg.distillm_capacity)
        self.prob, self.prev_loss, self.eps = cfg.distillm_init_prob, None, cfg.distillm_loss_eps
        self.observed_iter = None

    def observe(self, val_loss, iter_num):
        """After each validation loss (train.py's eval_interval; the reference evaluates once per epoch).
        The evaluation a resumed run repeats at its first iteration is not counted twice."""
        if iter_num != self.observed_iter:
            self.prob, self.prev_loss = adapt_sgo_prob(self.prob, self.prev_loss, val_loss, self.eps)
            self.observed_iter = iter_num

    def loss(self, step):
        """(this rank's loss, tokens, stats) of one micro-step at 1-based optimizer step `step`."""
        cfg = self.cfg
        ids = self.data.sample_indices(cfg.batch_size, self.data_gen, cfg.rank, cfg.world_size)
        ids, responses, source = self.responses(ids, step)
        loss, tokens = divergence_loss(cfg, self.rt, self.model, self.teacher, self.data, ids, responses)
        return loss, tokens, dict(sgo_prob=self.prob, fresh=float(source == 'fresh'), replay=float(source == 'replay'))

    def responses(self, ids, step):
        """This rank's (prompt ids, responses or None for gold, source) for the micro-batch whose gold
        prompts are `ids`, at 1-based step `step`."""
        cfg, data_gen = self.cfg, self.data_gen
        r = torch.rand((), generator=data_gen).item() if self.prob > 0 else 1.0
        horizon = cfg.lr_decay_iters or cfg.max_iters  # the reference's total_iters, which its lr schedule spans too
        source = sgo_choice(r, self.prob, step, horizon, len(self.buffer), self.buffer.capacity)
        if source == 'gold':
            return ids, None, source
        if source == 'fresh':
            responses = sample_responses(cfg, self.rt, self.model, self.data, ids, self.sample_gen)
            self.buffer.add(all_ranks_rows(cfg, list(zip(ids, responses))))
            return ids, responses, source
        rows = self.buffer.sample(cfg.batch_size * cfg.world_size, data_gen)  # the global batch
        mine = rows[cfg.rank * cfg.batch_size:(cfg.rank + 1) * cfg.batch_size]
        return [i for i, _ in mine], [r for _, r in mine], source

    def state_dict(self):
        return dict(distillm=dict(rows=[[i, list(r)] for i, r in self.buffer.rows], prob=self.prob,
                                  prev_loss=self.prev_loss, observed_iter=self.observed_iter))

    def load_state_dict(self, state):
        """From a checkpoint's keys (a checkpoint without 'distillm' leaves the fresh state)."""
        if not state.get('distillm'):
            return
        state = state['distillm']
        self.buffer.rows = [(i, r) for i, r in state['rows']]
        self.prob, self.prev_loss, self.observed_iter = state['prob'], state['prev_loss'], state['observed_iter']


def all_ranks_rows(cfg, rows):
    """Every rank's rows on every rank, in rank order (the one-process order of the global batch)."""
    if cfg.world_size == 1:
        return rows
    parts = [None] * cfg.world_size
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]
