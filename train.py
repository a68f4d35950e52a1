"""
One training loop for every method of the MiniLLM paper's comparison:

    pretrain  LM cross-entropy on a token stream (a teacher from scratch, or L_PT data)
    sft       cross-entropy on gold responses
    kd        word-level KD: (1 - kd_ratio) CE(gold) + kd_ratio * D(p_t || q_t) on gold prefixes
    seqkd     SFT on teacher-sampled responses (data made by `sample.py --seqkd_out`),
              plus word-level KD when kd_ratio > 0 (the public MiniLLM scripts do both)
    minillm   sequence-level reverse KL by policy gradient (policy_gradient.py, rollout.py) + L_PT
    gkd       GKD: a token divergence (JSD(beta)) on the student's own samples with probability gkd_lambda,
              else on gold (or teacher-sampled) responses; distillm: skew KL with DistiLLM's adaptive
              replay of student samples (the responses of both: onpolicy.py)
    atkd=True swaps the KD term of kd/seqkd for ATKD's uncertainty-weighted TKD/DKD

    python train.py config/toy_sft.py --max_iters=500
    torchrun --nproc_per_node=8 train.py config/minillm_gpt2.py --parallel=ddp
    torchrun --nnodes=8 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        train.py config/minillm_13b_fsdp.py
"""
import importlib.util
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import kl
from components import cluster, memory
from components.checkpoint import BEST_NAME, CKPT_NAME, DCP_DIR, CheckpointManager, build_models
from components.rundir import append_log, claim_out_dir
from components.parallel import on_rank0, rank_mean, runtime, setup_distributed, wrap
from components.precision import enable_tf32, keep_freed_memory
from components.progress import Speedometer
from components.tokenizer import get_encoding
from components.validation import SELECT_METRICS, improves, rouge_subset, selection_metric, validation_rouge_l
from configurator import UserError, check_device, configure, defaults_from, run
from dataset import InstructSet, LMStream, load_meta
from model import DECODE_MODES
from onpolicy import DistiLLMSource, GKDSource
from prune import prune_student
from rollout import MiniLLMSource
from supervised import PretrainSource, SupervisedSource

# ----------------------------------------------------------------------------- config
# I/O
out_dir = 'out/toy_sft'
init_from = 'scratch'        # 'scratch' | 'resume' (out_dir's ckpt.pt) | a run dir (its best.pt), <run>/last, a .pt | HF dir or name
overwrite = False            # a fresh run into an out_dir holding another run's checkpoints: refused unless True (then replaced)
eval_interval = 100
eval_iters = 10              # validation batches per evaluation
eval_rouge_interval = 0      # validation Rouge-L every N steps (0 = at every eval_interval), not for pretrain
eval_rouge_examples = 128    # on the first N validation prompts, one response each sampled at tau 1, top-p 1; 0 = off
select_metric = 'auto'       # best.pt keeps the best 'rouge_l' (max) | 'val_loss' (min); auto: rouge_l for kd,
                             # seqkd, minillm, val_loss for sft, pretrain (the LMOps minillm README's selection)
log_interval = 10
always_save_checkpoint = True  # ckpt.pt (the last state, for resume) at every evaluation; else only at the end
                             # (and at a stop signal: SIGTERM / SIGUSR1 save it and exit 75, see cluster.py)
max_bad_steps = 10           # a step whose loss or gradient norm is NaN/inf is skipped; this many in a row stop the run
wandb_log = False            # mirror log.jsonl to Weights & Biases (pip install wandb)
wandb_project = 'nanodistill'
wandb_run_name = ''          # '' = the last part of out_dir
seed = 1337
# data
data_dir = 'data/toy_instruct'
pt_data_dir = ''             # MiniLLM's L_PT corpus (an 'lm' dir or an instruct dir with train.bin)
pack = True                  # sft/kd/seqkd: pack examples into rows (same loss, no compute on padding)
# method
method = 'sft'               # pretrain | sft | kd | seqkd | minillm | gkd | distillm
teacher = ''                 # as init_from: a run dir (its best.pt), <run>/last, a .pt, HF dir or name (kd, minillm, gkd, ...)
kd_ratio = 0.5               # kd: (1 - r) CE + r KD  (word-level KD, r = 0.5)
divergence = ''              # kl.DIVERGENCES key; '' = the method's: jsd (gkd), skew_forward_kl (distillm), forward_kl
kd_temperature = 1.0
atkd = False                 # ATKD (arXiv 2402.11890) instead of plain KD
atkd_hard_fraction = 0.5     # the paper's k: share of tokens, most uncertain (1 - p_teacher(target)) first, taught as hard
atkd_lambda = 0.2            # weight of the easy tokens' DKD
atkd_split = 'sequence'      # 'sequence': ATKD's repository (per sequence, torch.median, EOS targets left out) | 'batch'
atkd_k = None                # retired (it was the easy share, 1 - atkd_hard_fraction): an error names the new key
chunked_loss = 'auto'        # 'auto' (when vocab > 8192) | True | False: never hold [N, V] logits for backward
loss_chunk_size = 1024
# gkd (arXiv 2306.13649) and distillm (arXiv 2402.03898): where their responses come from, onpolicy.py
gkd_lambda = 0.5             # probability of a batch of the student's own samples (gen_temperature, max_new_tokens)
gkd_beta = 0.5               # JSD(beta): 0 = forward KL(p||q), 1 = reverse KL(q||p) (the limits, kl.jsd)
gkd_seqkd = False            # the off-policy batches: teacher samples (drawn afresh) instead of gold responses
skew_alpha = 0.1             # skew_forward_kl KL(p || a p + (1-a) q), skew_reverse_kl KL(q || a q + (1-a) p)
distillm_init_prob = 0.0     # DistiLLM's probability of student-generated outputs at the start (reference: 0)
distillm_loss_eps = 0.1      # +0.1 to it whenever the validation loss rose by this much since the last rise
distillm_capacity = 1000     # replay buffer rows (all ranks together; the reference: 1000 per process)
# minillm (arXiv 2306.08543 §2; defaults of the reference code for GPT-2 in config/minillm_gpt2.py)
rollout_size = 64            # prompts sampled per rollout phase (global, over all ranks)
rollout_batch_size = 64      # prompts generated at once
ppo_epochs = 4               # passes over each rollout buffer
max_new_tokens = 32
gen_temperature = 1.0
gen_top_k = 0
gen_top_p = 1.0
teacher_mix_alpha = 0.2      # 0 = no teacher-mixed sampling
single_step = True
length_norm = True
returns_mode = 'paper'       # 'paper' | 'reference' (discounted, incl. r_t, whitened per PPO minibatch over all ranks)
whiten_padding = True        # reference mode: whiten over the padded [B, max_new_tokens] buffer (reference code), or valid tokens only
gamma = 1.0
clip_eps = 0.2
single_step_weighted = True  # paper: the single-step term carries w_t; reference code: no
teacher_logits_cache_gb = 2.0  # keep the rollout's teacher logits for the updates' single-step term (world size 1) when they fit
gen_decode = 'eager'         # rollout decoding: 'eager' (finished rows leave the batch) | 'static' | 'compile' (GPT.generate)
reward_scale = 0.0           # reference code: 0.5 (rewards doubled); 0 = off
reward_clip = 0.0            # reference code: 100; 0 = off
pt_weight = 1.0              # weight of L_PT; 0 or pt_data_dir '' = off
pt_kd_ratio = 0.0            # L_PT = (1 - r) LM + r word-level KD (reference code: 0.5)
pt_batch_size = 8
# model (init_from = 'scratch')
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0
bias = True
tie_embeddings = True        # lm_head shares wte's weight, as in GPT-2
family = 'gpt2'              # scratch models: gpt2 | opt | llama | mistral | qwen2 | qwen3 (model.FAMILIES switches)
n_kv_head = 0                # 0 = n_head; fewer: grouped-query attention
intermediate_size = 0        # MLP width; 0 = 4 * n_embd
init = 'gpt2'                # 'gpt2' (N(0, 0.02)) | 'pytorch' (module defaults: tiny models learn faster)
student_layers = 0           # > 0: the student is this many of init_from's blocks (prune.py; e.g. init_from = the teacher)
student_layer_selection = 'even'  # 'even' (DistilBERT) | 'importance' (ShortGPT block influence on train data) | '0,5,10'
# optimizer
learning_rate = 1e-3
max_iters = 1000
epochs = 0                   # > 0: max_iters = min(max_iters, epochs x iterations per epoch); max_iters = 0: no cap
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
lr_schedule = 'cosine'       # 'cosine' | 'constant' (both after linear warm-up)
warmup_iters = 50
lr_decay_iters = 0           # 0 = max_iters
min_lr = 1e-4
batch_size = 32              # per rank, per micro-step
gradient_accumulation_steps = 1
# system
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'
compile = False
parallel = 'none'            # 'none' | 'ddp' | 'fsdp' (launch with torchrun)
dist_timeout = 3600.0        # seconds a collective waits (NCCL's default 10 min < rank 0 loading a 32B teacher)
fsdp_activation_checkpointing = False  # recompute each student block in backward: keep 1 block's activations, not all
fsdp_cpu_offload = False     # FSDP2 CPUOffloadPolicy: shards, grads and AdamW in host RAM (CUDA only)
gpu_memory_gb = 0.0          # > 0: stop at start when the per-GPU estimate (memory.py) does not fit
peak_flops = 0.0             # one device's peak FLOP/s for the logged MFU; 0 = by GPU name (model.peak_flops), none on CPU
DEFAULTS = defaults_from(globals())
# -----------------------------------------------------------------------------


def get_lr(cfg, it):
    """Linear warm-up, then cosine decay to min_lr (or constant)."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_schedule == 'constant':
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it > decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def iters_per_epoch(cfg, n_train):
    """Optimizer steps per pass over the n_train training examples at the global batch, as the LMOps
    scripts count them (minillm/finetune.py: int(n / (batch x ranks x accumulation))); minillm: a
    pass over the rollout prompts, each rollout trained on ppo_epochs times."""
    passes = cfg.ppo_epochs if cfg.method == 'minillm' else 1
    return int(n_train * passes / (cfg.batch_size * cfg.world_size * cfg.gradient_accumulation_steps))


# ----------------------------------------------------------------------------- setup
def load_data(cfg):
    """(train, validation, L_PT stream or None) of the method; a length in epochs becomes max_iters."""
    if cfg.method == 'pretrain':
        train_data, val_data = LMStream(cfg.data_dir, 'train'), LMStream(cfg.data_dir, 'val')
    else:
        train_data, val_data = InstructSet(cfg.data_dir, 'train'), InstructSet(cfg.data_dir, 'valid')
    pt_data = LMStream(cfg.pt_data_dir, 'train') if cfg.method == 'minillm' and cfg.pt_data_dir and cfg.pt_weight > 0 else None
    if cfg.epochs > 0:  # the LMOps scripts give lengths in epochs
        by_epochs = cfg.epochs * iters_per_epoch(cfg, len(train_data))
        cfg.max_iters = min(cfg.max_iters, by_epochs) if cfg.max_iters > 0 else by_epochs
    return train_data, val_data, pt_data


def setup_models(cfg, rt, meta):
    """(the student as trained: DDP / FSDP / compiled, the bare student, teacher, resume state)."""
    model, teacher, ckpt, weights = build_models(cfg, meta, rt.ptdtype, prune_student)  # under FSDP: on the meta device
    memory.check_run(cfg, model.config, teacher.config if teacher is not None else None)
    trained = wrap(cfg, model, teacher, weights, rt.ptdtype)
    if cfg.world_size > 1:  # the weights are in place: from here on each rank has its own dropout noise
        torch.manual_seed(cfg.seed + cfg.rank)
    return trained, model, teacher, ckpt


def make_optimizer(cfg, model):
    """AdamW with weight decay on matrices and embeddings only: biases and norm gains (1-D) are
    exempt, as in the LMOps reference (utils.get_optimizer_params) and nanoGPT."""
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in trained if p.dim() >= 2]),
              dict(params=[p for p in trained if p.dim() < 2], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                             fused=cfg.parallel != 'fsdp')  # fused: one kernel, not one per tensor


def make_source(cfg, rt, model, teacher, train_data, pt_data, data_gen, sample_gen, backward=None):
    """The method's source of micro-step losses: an object with loss(step) -> (loss, tokens, stats),
    state_dict() and load_state_dict(), in the method's own file. `backward`: the loop's backward
    (MiniLLM's policy loss takes its own before L_PT's forward)."""
    if cfg.method == 'pretrain':
        return PretrainSource(cfg, rt, model, teacher, train_data, data_gen)
    if cfg.method in ('sft', 'kd', 'seqkd'):
        return SupervisedSource(cfg, rt, model, teacher, train_data, data_gen)
    if cfg.method == 'gkd':
        return GKDSource(cfg, rt, model, teacher, train_data, data_gen, sample_gen)
    if cfg.method == 'distillm':  # replay buffer, SGO probability
        return DistiLLMSource(cfg, rt, model, teacher, train_data, data_gen, sample_gen)
    return MiniLLMSource(cfg, rt, model, teacher, train_data, pt_data, data_gen, sample_gen, backward)


@dataclass
class Run:
    """What setup builds for the loop."""
    model: torch.nn.Module       # the student as trained (DDP / FSDP / compiled)
    raw_model: torch.nn.Module   # the bare student (checkpoints, MFU)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    source: object               # the method's micro-step losses (make_source)
    checkpoints: CheckpointManager
    val_data: object
    enc: object                  # the tokenizer, for validation Rouge-L
    rouge_ids: list              # the validation prompts Rouge-L is measured on
    select: str                  # best.pt's metric: 'rouge_l' | 'val_loss'
    log: object                  # RunLog


class RunLog:
    """out_dir/log.jsonl (rank 0), and the same numbers to wandb when wandb_log=True."""

    def __init__(self, cfg):
        self.path = os.path.join(cfg.out_dir, 'log.jsonl')
        self.wandb = (cluster.start_wandb(cfg, {k: v for k, v in vars(cfg).items() if k in DEFAULTS})
                      if cfg.rank == 0 and cfg.wandb_log else None)

    def write(self, record):
        append_log(self.path, json.dumps(record))  # a failed write: one line, the checkpoints whole
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != 'iter'}, step=record['iter'])

    def finish(self):
        if self.wandb is not None:
            self.wandb.finish()


def setup(cfg, rt, meta):
    """Data, models, optimizer, the method's source and the checkpoints, restored at resume.
    Returns (Run, iter_num, best)."""
    train_data, val_data, pt_data = load_data(cfg)
    rouge_ids = rouge_subset(cfg, val_data)  # best.pt: by Rouge-L on these validation prompts, or by val loss
    select, enc = selection_metric(cfg, rouge_ids), get_encoding(meta['tokenizer'])
    model, raw_model, teacher, ckpt = setup_models(cfg, rt, meta)
    optimizer = make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler('cuda', enabled=cfg.dtype == 'float16' and cfg.device.startswith('cuda'))
    data_gen = torch.Generator().manual_seed(cfg.seed)  # the same on every rank: it draws the global batch
    sample_gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 1 + cfg.rank)
    source = make_source(cfg, rt, model, teacher, train_data, pt_data, data_gen, sample_gen,
                         backward=lambda loss: scaler.scale(loss / cfg.gradient_accumulation_steps).backward())
    checkpoints = CheckpointManager(cfg, raw_model, optimizer, source, meta['tokenizer'], data_gen, sample_gen,
                                    {k: v for k, v in vars(cfg).items() if k in DEFAULTS})
    iter_num, best = checkpoints.restore(ckpt, select) if ckpt is not None else (0, None)  # best: dict(metric, value, iter)
    if cfg.rank == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        print(f"{cfg.method}: student {raw_model.num_params() / 1e6:.2f}M params"
              + (f", teacher {teacher.num_params() / 1e6:.2f}M" if teacher is not None else '')
              + f", data {cfg.data_dir} ({meta['tokenizer']}), world {cfg.world_size}, device {cfg.device}")
        print(f"{cfg.max_iters} iterations" + (f" ({cfg.epochs} epochs x {iters_per_epoch(cfg, len(train_data))})" if cfg.epochs > 0 else '')
              + f"; {cfg.out_dir}/{CKPT_NAME}: the last state, {BEST_NAME}: the best validation {select}"
              + (f"; Rouge-L on {len(rouge_ids)} validation prompts every {cfg.eval_rouge_interval or cfg.eval_interval} steps"
                 if rouge_ids else ''))
    return Run(model, raw_model, optimizer, scaler, source, checkpoints, val_data, enc, rouge_ids, select, RunLog(cfg)), iter_num, best


def validate(cfg):
    if cfg.method not in ('pretrain', 'sft', 'kd', 'seqkd', 'minillm', 'gkd', 'distillm'):
        raise UserError(f"unknown method '{cfg.method}': pick pretrain, sft, kd, seqkd, minillm, gkd or distillm")
    if cfg.parallel not in ('none', 'ddp', 'fsdp'):
        raise UserError(f"unknown parallel '{cfg.parallel}': pick none, ddp or fsdp")
    if cfg.init not in ('gpt2', 'pytorch'):
        raise UserError(f"unknown init '{cfg.init}': pick gpt2 or pytorch")
    if cfg.divergence and cfg.divergence not in kl.DIVERGENCES:
        raise UserError(f"unknown divergence '{cfg.divergence}': pick one of {', '.join(kl.DIVERGENCES)} "
                        f"(or '' for the method's own)")
    for key in ('gkd_lambda', 'gkd_beta', 'skew_alpha', 'distillm_init_prob'):  # gkd / distillm
        if not 0 <= getattr(cfg, key) <= 1:
            raise UserError(f"{key} must lie in [0, 1] (got {getattr(cfg, key)})")
    if cfg.method == 'distillm' and cfg.distillm_capacity < cfg.batch_size * cfg.world_size:
        raise UserError(f"distillm_capacity {cfg.distillm_capacity} must hold at least one global batch "
                        f"(batch_size x ranks = {cfg.batch_size * cfg.world_size}): a replay batch takes that many rows")
    if cfg.atkd_k is not None:
        raise UserError(f"atkd_k is retired (it was the share of easy tokens): set atkd_hard_fraction="
                        f"{1 - cfg.atkd_k:g}, the paper's k, the share of most-uncertain tokens taught as hard")
    if cfg.atkd_split not in ('sequence', 'batch') or not 0 <= cfg.atkd_hard_fraction <= 1:
        raise UserError(f"atkd_split must be 'sequence' or 'batch' (got '{cfg.atkd_split}') and atkd_hard_fraction "
                        f"in [0, 1] (got {cfg.atkd_hard_fraction})")
    if cfg.atkd and cfg.divergence not in ('', 'forward_kl', 'reverse_kl'):  # kl.atkd_parts has these two forms
        raise UserError(f"atkd=True takes divergence forward_kl or reverse_kl (got '{cfg.divergence}')")
    if cfg.returns_mode not in ('paper', 'reference'):
        raise UserError(f"unknown returns_mode '{cfg.returns_mode}': pick paper or reference")
    if cfg.method == 'minillm' and cfg.teacher_mix_alpha > 0 and (cfg.gen_top_k or cfg.gen_top_p < 1):
        # generate filters student and teacher separately: a token from the teacher's top-k / top-p set
        # may lie outside the student's, where q_old = 0 and the reward log p - log q_old is infinite
        raise UserError("teacher_mix_alpha > 0 needs gen_top_k=0 and gen_top_p=1 (the reference's sampling): "
                        "a teacher-mixed token outside the student's top-k/top-p set has q_old = 0")
    if cfg.gen_decode not in DECODE_MODES:
        raise UserError(f"unknown gen_decode '{cfg.gen_decode}': pick one of {', '.join(DECODE_MODES)}")
    if cfg.method == 'minillm' and cfg.rollout_size % cfg.world_size:
        raise UserError(f"rollout_size {cfg.rollout_size} must be divisible by the {cfg.world_size} ranks")
    if (cfg.fsdp_activation_checkpointing or cfg.fsdp_cpu_offload) and cfg.parallel != 'fsdp':
        raise UserError("fsdp_activation_checkpointing and fsdp_cpu_offload need parallel='fsdp'")
    if cfg.fsdp_cpu_offload and not cfg.device.startswith('cuda'):
        raise UserError("fsdp_cpu_offload needs CUDA (it moves FSDP's shards between host RAM and the GPU)")
    if cfg.select_metric not in ('auto',) + SELECT_METRICS:
        raise UserError(f"unknown select_metric '{cfg.select_metric}': pick auto, rouge_l or val_loss")
    if cfg.select_metric == 'rouge_l' and (cfg.method == 'pretrain' or cfg.eval_rouge_examples < cfg.world_size):
        raise UserError("select_metric='rouge_l' needs instruction data and eval_rouge_examples >= the number of ranks")
    if cfg.epochs > 0 and cfg.method == 'pretrain':
        raise UserError("epochs counts passes over instruction examples: give pretrain a max_iters instead")
    if cfg.dtype == 'float16' and not cfg.device.startswith('cuda'):
        raise UserError("dtype='float16' needs CUDA (its grad scaler): on a CPU use dtype='bfloat16' or 'float32'")
    if cfg.parallel == 'fsdp' and cfg.dtype == 'float16':
        raise UserError("parallel='fsdp' runs in dtype='bfloat16' or 'float32' (float16 needs a sharded grad scaler)")
    if cfg.max_bad_steps < 1:
        raise UserError(f"max_bad_steps must be >= 1 (got {cfg.max_bad_steps}): the non-finite steps in a row that stop a run")
    if cfg.wandb_log and importlib.util.find_spec('wandb') is None:  # on every rank: none is left waiting
        raise UserError("wandb_log=True needs the wandb package: pip install wandb and wandb login "
                        "(or leave wandb_log=False; log.jsonl has the same numbers)")


# ----------------------------------------------------------------------------- main
def main(argv):
    """Configure, take out_dir's lock (cluster.run_lock), train. SIGTERM or SIGUSR1 ends the run
    after the step in progress, every rank together, with the last state saved (ckpt.pt / dcp/):
    exit status cluster.PREEMPTED_EXIT (75), and `--init_from=resume` continues as if never stopped."""
    cfg = configure(DEFAULTS, argv)
    check_device(cfg.device, cfg.dtype)  # before setup_distributed picks this rank's GPU
    own_group = setup_distributed(cfg)
    validate(cfg)
    with cluster.StopSignals() as stop, cluster.run_lock(cfg):
        on_rank0(cfg, lambda: claim_out_dir(cfg.out_dir, cfg.init_from, cfg.overwrite))  # never replace a run unasked
        stopped_by = run_training(cfg, stop, own_group)
    if stopped_by:
        raise SystemExit(cluster.stopped(cfg, argv))
    return cfg


def run_training(cfg, stop, own_group=False):
    """Build, train, evaluate and save; `stop` (cluster.StopSignals) is read between steps. Returns
    the name of the stop signal that ended the run, or None."""
    torch.manual_seed(cfg.seed)
    enable_tf32(cfg.device)  # fp32 matmuls (the fp32 parts of bf16 runs too) on TF32 tensor cores
    keep_freed_memory(cfg.device)  # CPU: no page faults for the buffers every step frees and makes again
    meta = load_meta(cfg.data_dir)
    rt = runtime(cfg, meta, own_group)
    run, iter_num, best = setup(cfg, rt, meta)
    stopped_by = train_loop(cfg, rt, run, stop, iter_num, best)
    run.log.finish()
    if rt.own_group:
        dist.barrier()  # no rank tears gloo down while another still talks to it (SIGABRT at exit otherwise)
        dist.destroy_process_group()
    return stopped_by


@torch.no_grad()
def evaluate_loss(cfg, rt, model, val_data):
    """Mean CE on validation responses (or LM tokens), on fixed batches; the same on every rank."""
    model.eval()
    gen, losses = torch.Generator().manual_seed(1234), []
    for _ in range(cfg.eval_iters):
        if cfg.method == 'pretrain':
            x, y = val_data.batch(cfg.batch_size, cfg.block_size, gen, cfg.rank, cfg.world_size)
        else:
            x, y = val_data.sft_batch(val_data.sample_indices(cfg.batch_size, gen, cfg.rank, cfg.world_size), cfg.block_size)
        with rt.ctx:
            loss = model(x.to(cfg.device), y.to(cfg.device))[1].item()
        losses.append(rank_mean(cfg, loss, (y != -1).sum().item()))
    model.train()
    return sum(losses) / len(losses)


def evaluate(cfg, rt, run, iter_num, rouge_due):
    """The validation metrics: the loss, and Rouge-L when due. DistiLLM's source adapts its SGO
    probability to the loss (observe)."""
    metrics = dict(val_loss=evaluate_loss(cfg, rt, run.model, run.val_data))
    if hasattr(run.source, 'observe'):
        run.source.observe(metrics['val_loss'], iter_num)
    if rouge_due:
        metrics['rouge_l'] = rank_mean(cfg, *validation_rouge_l(cfg, rt, run.model, run.val_data, run.enc, run.rouge_ids))
    return metrics


def step_optimizer(cfg, model, optimizer, scaler, terms):
    """Clip the gradients, then step unless a term, or the gradient norm, is NaN or inf (the same
    decision on every rank: cluster.nonfinite_terms). Returns the non-finite terms' names ([]: stepped)."""
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
    # the gradient norm (max_norm inf: measured, not clipped) shows a NaN or inf in any gradient
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    if not scaler.is_enabled():  # float16: overflowing gradients are the grad scaler's (it skips and rescales)
        terms = dict(terms, grad_norm=grad_norm.full_tensor() if hasattr(grad_norm, 'full_tensor') else grad_norm)
    bad = cluster.nonfinite_terms(cfg, terms)
    if bad:  # no update: weights and AdamW state stay as they were; data and schedule move on
        if scaler.is_enabled():
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return bad


def train_loop(cfg, rt, run, stop, iter_num, best):
    """nanoGPT's loop: evaluate, select the best, save; the stop signal; lr; micro-steps; clip, skip a
    non-finite step, step; log. Returns the stop signal's name, or None at max_iters."""
    master, model, optimizer = cfg.rank == 0, run.model, run.optimizer
    speed = Speedometer(cfg, run.raw_model, iter_num)
    it_start, skipped, bad_in_row = iter_num, 0, 0  # non-finite steps: all, in a row
    model.train()
    while True:
        last = iter_num >= cfg.max_iters
        rouge_due = bool(run.rouge_ids) and (last or iter_num % (cfg.eval_rouge_interval or cfg.eval_interval) == 0)
        if iter_num % cfg.eval_interval == 0 or rouge_due or last:
            t_eval = time.time()
            metrics = evaluate(cfg, rt, run, iter_num, rouge_due)
            # candidates: states trained here (not the init, nor the state a resume starts from)
            improved = iter_num > it_start and improves(run.select, metrics.get(run.select), best)
            if improved:
                best = dict(metric=run.select, value=metrics[run.select], iter=iter_num)
            if master:
                print(f"iter {iter_num}: val loss {metrics['val_loss']:.4f}"
                      + (f", Rouge-L {metrics['rouge_l']:.2f}" if 'rouge_l' in metrics else '')
                      + (f" (best {run.select}: {BEST_NAME})" if improved else ''))
                run.log.write(dict(iter=iter_num, **metrics))
            if improved:  # before ckpt.pt, whose record of the best must never be ahead of best.pt
                run.checkpoints.save('best', iter_num, best, metrics)
            if iter_num > it_start and (cfg.always_save_checkpoint or last):
                run.checkpoints.save('last', iter_num, best, metrics)
            speed.t0 += time.time() - t_eval  # tokens/s and MFU are of training steps, not of eval and saving
        if last:
            return None
        stopped_by = stop.agreed(cfg)  # between steps, the same on every rank (an all-reduce)
        if stopped_by:
            if run.checkpoints.last_saved != iter_num:
                run.checkpoints.save('last', iter_num, best, {})
            if master:
                print(f"iter {iter_num}: {stopped_by} received, the last state is in "
                      f"{os.path.join(cfg.out_dir, DCP_DIR if cfg.parallel == 'fsdp' else CKPT_NAME)}: continue with "
                      f"--init_from=resume (exit status {cluster.PREEMPTED_EXIT})", flush=True)
            return stopped_by
        lr = get_lr(cfg, iter_num)
        for group in optimizer.param_groups:
            group['lr'] = lr
        total, stats = 0.0, {}
        for micro in range(cfg.gradient_accumulation_steps):
            if cfg.parallel == 'ddp':
                model.require_backward_grad_sync = micro == cfg.gradient_accumulation_steps - 1
            loss, n_tokens, stats = run.source.loss(iter_num + 1)  # this rank's share of the global token mean
            loss = loss / cfg.gradient_accumulation_steps
            run.scaler.scale(loss).backward()
            total += loss.item()
            speed.tokens += n_tokens
        bad = step_optimizer(cfg, model, optimizer, run.scaler, dict(loss=total, **stats))
        skipped, bad_in_row = skipped + bool(bad), bad_in_row + 1 if bad else 0
        iter_num += 1
        if bad and master:
            print(f"iter {iter_num}: non-finite {', '.join(bad)}: step skipped ({bad_in_row} in a row, {skipped} in all)")
        if bad_in_row >= cfg.max_bad_steps:
            saved = run.checkpoints.last_saved
            kept = (f"{cfg.out_dir}/{DCP_DIR if cfg.parallel == 'fsdp' else CKPT_NAME} holds iter {saved}"
                    if saved is not None else "no checkpoint was written")
            raise UserError(f"iter {iter_num}: non-finite {', '.join(bad)} in {bad_in_row} steps in a row "
                            f"(max_bad_steps={cfg.max_bad_steps}), stopped; {kept}: lower learning_rate or check "
                            f"the data, then resume")
        if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
            total = rank_mean(cfg, total)  # the global batch's loss: the ranks' rescaled losses average to it
            stats = {k: rank_mean(cfg, float(v)) for k, v in stats.items()}  # MiniLLM stats: mean over ranks
            if master:
                rates, eta = speed.read(iter_num)
                extra = ' '.join(f"{k} {float(v):.3f}" for k, v in stats.items())
                print(f"iter {iter_num}/{cfg.max_iters}: loss {total:.4f}, lr {lr:.2e}, {rates['tokens_per_s']:,.0f} tok/s, "
                      + (f"mfu {rates['mfu']:.1%}, " if 'mfu' in rates else '') + f"ETA {eta:.0f}s {extra}")
                run.log.write(dict(iter=iter_num, loss=total, lr=lr, **rates, **{k: float(v) for k, v in stats.items()},
                                   **(dict(skipped_steps=skipped) if skipped else {})))


if __name__ == '__main__':
    run(main)
