"""
The word-level losses of sft, kd, seqkd, atkd, gkd and distillm (and MiniLLM's L_PT) with the
models: where kl.py's pure divergences meet the student's and teacher's forwards.

The loss runs inside the student's forward as its `head_fn` (model.GPT.forward), on the response
positions only, so DDP/FSDP stay in charge of lm_head and, with `chunked`, the [N, V] student
logits never exist for backward (kl.chunked_kd_loss).

train.py gets each micro-step's loss from one source object per method; the supervised ones live
here: `PretrainSource` (a token stream) and `SupervisedSource` (sft, kd, seqkd on gold or
teacher-written responses). Their only state is the shared data generator, which the checkpoint
saves with the run's other random streams.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F

import kl
from components.parallel import global_mean


def response_positions(targets):
    """Flattened indices and targets of the positions that carry a loss (targets != -1)."""
    flat = targets.reshape(-1)
    keep = (flat != -1).nonzero().squeeze(1)
    return keep, flat[keep]


def atkd_sequences(cfg, targets, keep, tgt, segments, eos=None):
    """ATKD's per-sequence split (atkd_split='sequence', kl.atkd_token_weights): the sequence id of
    each kept position (a padded row is one sequence; packed rows number theirs in `segments`), the
    EOS id its split leaves out (`eos`, the data's eot), and the factor on the KD weight that keeps
    the loss a mean over the global batch's sequences under DDP: global_mean rescales this rank's
    loss by n_local * world / n_global tokens, so the factor is n_global * S_local / (n_local * S_global)."""
    if not cfg.atkd or cfg.atkd_split != 'sequence':
        return {}, 1.0
    rows = segments if segments is not None else torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)
    seq = rows.reshape(-1)[keep]
    scale = 1.0
    if getattr(cfg, 'world_size', 1) > 1:
        counted = seq if eos is None else seq[tgt != eos]
        local = torch.tensor([float(counted.unique().numel()), float(keep.numel())], dtype=torch.float64, device=targets.device)
        total = local.clone()
        dist.all_reduce(total)
        if local[0] > 0:
            scale = (total[1] * local[0] / (local[1] * total[0])).item()
    return dict(atkd_sequence_ids=seq, atkd_eos_id=eos), scale


def loss_divergence(cfg):
    """(name, keyword arguments) of the KD term's token divergence: cfg.divergence, or when it is ''
    the method's own: GKD's generalised JSD(gkd_beta) (arXiv 2306.13649 §3), DistiLLM's skew forward
    KL(skew_alpha) (arXiv 2402.03898 §3.1), else forward KL. JSD(β) at β = 0 / 1 is forward / reverse
    KL, the limits of JSD(β)/β and JSD(β)/(1 − β) (kl.jsd); in between it is JSD(β) itself, unscaled."""
    name = cfg.divergence or {'gkd': 'jsd', 'distillm': 'skew_forward_kl'}.get(cfg.method, 'forward_kl')
    if name == 'jsd':
        ends = {0.0: ('forward_kl', {}), 1.0: ('reverse_kl', {})}
        return ends.get(float(cfg.gkd_beta), ('jsd', dict(beta=cfg.gkd_beta)))
    return (name, dict(alpha=cfg.skew_alpha)) if name.startswith('skew_') else (name, {})


def kd_head_fn(cfg, rt, targets, teacher_logits, ce_weight, kd_weight, segments=None):
    """The loss applied to the student's hidden states inside its forward (so FSDP/DDP keep
    control of lm_head). CE and KD share one pass over the response tokens only; chunk by chunk
    when rt.chunked (rt: parallel.Runtime). teacher_logits [K, V]: the teacher's at the K response
    positions (response_positions' order), or None."""
    keep, tgt = response_positions(targets)
    t_logits = teacher_logits  # [K, V]: at the response positions already (supervised_loss)
    loss_fn = kl.chunked_kd_loss if rt.chunked else kl.plain_kd_loss
    split, kd_scale = atkd_sequences(cfg, targets, keep, tgt, segments, rt.eot) if t_logits is not None else ({}, 1.0)
    divergence, div_kwargs = loss_divergence(cfg)

    def head_fn(hidden, weight):
        h = hidden.reshape(-1, hidden.size(-1))[keep]
        if t_logits is None:  # CE alone, chunked as well
            return loss_fn(h, weight, targets=tgt, chunk_size=cfg.loss_chunk_size, ce_weight=1.0, kd_weight=0.0)
        return loss_fn(h, weight, t_logits, targets=tgt, divergence=divergence, chunk_size=cfg.loss_chunk_size,
                       temperature=cfg.kd_temperature, atkd=cfg.atkd, atkd_hard_fraction=cfg.atkd_hard_fraction,
                       atkd_lam=cfg.atkd_lambda, atkd_reverse=divergence == 'reverse_kl', div_kwargs=div_kwargs,
                       ce_weight=ce_weight, kd_weight=kd_weight * kd_scale, **split)
    return head_fn


def supervised_loss(cfg, rt, model, teacher, x, y, kd_ratio=0.0, segments=None):
    """pretrain / sft / seqkd / kd (and L_PT) loss on one micro-batch; y = -1 where no loss;
    `segments` for packed rows. Word-level KD (Kim & Rush, arXiv 1606.07947 §3.1):
    (1 - kd_ratio) CE(gold) + kd_ratio * mean_t D(p_t || q_t)."""
    if teacher is None or kd_ratio <= 0:
        if not rt.chunked:
            return model(x, y, segments=segments)[1]
        return model(x, head_fn=kd_head_fn(cfg, rt, y, None, 1.0, 0.0), segments=segments)
    keep = response_positions(y)[0]
    with torch.no_grad():  # the teacher's head at the response positions only: the loss reads no others
        t_logits = teacher(x, segments=segments, head_fn=lambda h, w: F.linear(h.reshape(-1, h.size(-1))[keep], w))
    return model(x, head_fn=kd_head_fn(cfg, rt, y, t_logits, 1.0 - kd_ratio, kd_ratio, segments), segments=segments)


# ----------------------------------------------------------------------------- the methods' sources
class PretrainSource:
    """pretrain: LM cross-entropy on random windows of a token stream (every row block_size tokens,
    so each rank's mean is already the global batch's)."""

    def __init__(self, cfg, rt, model, teacher, data, data_gen):
        self.cfg, self.rt, self.model, self.teacher, self.data, self.data_gen = cfg, rt, model, teacher, data, data_gen

    def loss(self, step):
        """(this rank's loss, tokens, stats) of one micro-step; `step` (1-based) is unused here."""
        cfg = self.cfg
        x, y = self.data.batch(cfg.batch_size, cfg.block_size, self.data_gen, cfg.rank, cfg.world_size)
        x, y = x.to(cfg.device), y.to(cfg.device)
        with self.rt.ctx:
            return supervised_loss(cfg, self.rt, self.model, self.teacher, x, y), x.numel(), {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class SupervisedSource:
    """sft, kd, seqkd: (1 - kd_ratio) CE + kd_ratio KD (sft: CE alone) on training examples drawn by
    the shared data generator, packed into rows (cfg.pack) or right-padded; the loss rescaled to the
    global batch's token mean (parallel.global_mean)."""

    def __init__(self, cfg, rt, model, teacher, data, data_gen):
        self.cfg, self.rt, self.model, self.teacher, self.data, self.data_gen = cfg, rt, model, teacher, data, data_gen

    def loss(self, step):
        """(this rank's loss, tokens, stats) of one micro-step; `step` (1-based) is unused here."""
        cfg = self.cfg
        ids = self.data.sample_indices(cfg.batch_size, self.data_gen, cfg.rank, cfg.world_size)
        if cfg.pack:
            x, y, seg = (t.to(cfg.device) for t in self.data.packed_sft_batch(ids, cfg.block_size))
        else:
            (x, y), seg = (t.to(cfg.device) for t in self.data.sft_batch(ids, cfg.block_size)), None
        with self.rt.ctx:
            loss = supervised_loss(cfg, self.rt, self.model, self.teacher, x, y,
                                   cfg.kd_ratio if cfg.method != 'sft' else 0.0, seg)
        return global_mean(cfg, loss, (y != -1).sum()), x.numel(), {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
