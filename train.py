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
from contextlib import nullcontext

import torch
import torch.distributed as dist

from components import cluster
import kl
from components import memory
import onpolicy
from components.checkpoint import (BEST_NAME, CKPT_NAME, DCP_BEST_DIR, DCP_DIR, atomic_save, checkpoint_payload, load_sharded, load_student,
                        load_teacher, load_trainer_state, models_from_rank0, save_sharded)
from configurator import UserError, configure, defaults_from, run
from dataset import InstructSet, LMStream, load_meta
from model import DECODE_MODES, GPT, GPTConfig, mfu
from model import peak_flops as gpu_peak_flops  # the config key `peak_flops` below shadows the name
from components.parallel import gather_rollouts, global_mean, on_rank0, rank_mean, setup_distributed, wrap
from rollout import PromptOrder, collect_rollouts, minillm_micro_loss
from supervised import supervised_loss
from components.tokenizer import get_encoding
from components.validation import SELECT_METRICS, improves, rouge_subset, selection_metric, validation_rouge_l

# ----------------------------------------------------------------------------- config
# I/O
out_dir = 'out/toy_sft'
init_from = 'scratch'        # 'scratch' | 'resume' (out_dir's ckpt.pt) | a run dir (its best.pt), <run>/last, a .pt | HF dir or name
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
def build_models(cfg, meta):
    """Student (scratch / checkpoint / HF GPT-2 / resume) and the frozen teacher. Returns
    (student, teacher or None, resume state or None, weights): `weights` are what `wrap` loads
    into the two models after sharding them (FSDP), else (None, None)."""
    vocab, tok = meta['vocab_size'], meta['tokenizer']
    if cfg.parallel != 'fsdp':
        model, ckpt = load_student(cfg, vocab, tok)
        teacher = load_teacher(cfg, vocab, tok)
        return model.to(cfg.device), teacher.to(cfg.device) if teacher is not None else None, ckpt, (None, None)
    # FSDP: only rank 0 builds the models, on CPU, exactly as one process would (same seed, same
    # files: the run starts from the same weights). Every rank gets empty meta-device copies that
    # `wrap` shards and fills from rank 0's state dicts, so no GPU ever holds a whole model and only
    # rank 0's CPU RAM does, once. At resume the student's shards come from dcp/ (load_sharded).
    ckpt = load_trainer_state(cfg.out_dir) if cfg.init_from == 'resume' else None
    (model, teacher), weights = models_from_rank0(
        lambda: (None if ckpt else load_student(cfg, vocab, tok)[0], load_teacher(cfg, vocab, tok)))
    if ckpt is not None:
        with torch.device('meta'):
            model = GPT(GPTConfig(**ckpt['model_args']))
    if teacher is not None:
        teacher.requires_grad_(False).eval()
    return model, teacher, ckpt, weights


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
    setup_distributed(cfg)
    validate(cfg)
    with cluster.StopSignals() as stop, cluster.run_lock(cfg):
        run_training(cfg, stop)
    if cfg.stopped_by:
        raise SystemExit(cluster.PREEMPTED_EXIT)
    return cfg


def run_training(cfg, stop):
    """Build, train, evaluate and save; `stop` (cluster.StopSignals) is read between steps."""
    master, cfg.stopped_by = cfg.rank == 0, None
    torch.manual_seed(cfg.seed)
    cfg.ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[cfg.dtype]
    on_gpu = cfg.device.startswith('cuda')
    cfg.ctx = torch.autocast('cuda', dtype=cfg.ptdtype) if on_gpu and cfg.dtype != 'float32' and cfg.parallel != 'fsdp' else nullcontext()
    cfg.raw = lambda m: m.module if hasattr(m, 'module') else getattr(m, '_orig_mod', m)

    meta = load_meta(cfg.data_dir)
    cfg.eot = meta['eot_token']
    cfg.chunked = meta['vocab_size'] > 8192 if cfg.chunked_loss == 'auto' else bool(cfg.chunked_loss)
    if cfg.method == 'pretrain':
        train_data, val_data = LMStream(cfg.data_dir, 'train'), LMStream(cfg.data_dir, 'val')
    else:
        train_data, val_data = InstructSet(cfg.data_dir, 'train'), InstructSet(cfg.data_dir, 'valid')
    pt_data = LMStream(cfg.pt_data_dir, 'train') if cfg.method == 'minillm' and cfg.pt_data_dir and cfg.pt_weight > 0 else None
    if cfg.epochs > 0:  # the LMOps scripts give lengths in epochs
        by_epochs = cfg.epochs * iters_per_epoch(cfg, len(train_data))
        cfg.max_iters = min(cfg.max_iters, by_epochs) if cfg.max_iters > 0 else by_epochs
    rouge_ids = rouge_subset(cfg, val_data)  # best.pt: by Rouge-L on these validation prompts, or by val loss
    select, enc = selection_metric(cfg, rouge_ids), get_encoding(meta['tokenizer'])

    model, teacher, ckpt, weights = build_models(cfg, meta)  # under FSDP: on the meta device
    raw_model = model
    memory.check_run(cfg, model.config, teacher.config if teacher is not None else None)
    scaler = torch.amp.GradScaler('cuda', enabled=cfg.dtype == 'float16' and on_gpu)
    model = wrap(cfg, model, teacher, weights)
    del weights
    if cfg.world_size > 1:  # the weights are in place: from here on each rank has its own dropout noise
        torch.manual_seed(cfg.seed + cfg.rank)
    # weight decay on matrices and embeddings only: biases and norm gains (1-D) are exempt, as in the
    # LMOps reference (utils.get_optimizer_params) and nanoGPT
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in trained if p.dim() >= 2]),
              dict(params=[p for p in trained if p.dim() < 2], weight_decay=0.0)]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate,
                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                                  fused=cfg.parallel != 'fsdp')  # fused: one kernel, not one per tensor
    data_gen = torch.Generator().manual_seed(cfg.seed)  # the same on every rank: it draws the global batch
    sample_gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 1 + cfg.rank)
    prompt_order = PromptOrder(len(train_data), cfg.seed) if cfg.method == 'minillm' else None  # epoch by epoch
    distillm = onpolicy.DistiLLMSource(cfg) if cfg.method == 'distillm' else None  # replay buffer, SGO probability
    iter_num, best, buf, queue = 0, None, None, []  # best: dict(metric, value, iter) of best.pt
    if ckpt is not None:
        if cfg.parallel == 'fsdp':  # this rank's shards of the weights and of the AdamW state
            load_sharded(cfg.out_dir, raw_model, optimizer)
        elif 'optimizer' not in ckpt:
            raise UserError(f"{cfg.out_dir}/ckpt.pt holds weights only (a consolidated FSDP checkpoint): resume "
                            f"with parallel='fsdp', or start a new run from it with init_from='{cfg.out_dir}'")
        else:
            optimizer.load_state_dict(ckpt['optimizer'])
        iter_num, best = ckpt['iter_num'], ckpt.get('best')
        if best is not None and best['metric'] != select:  # selection changed at resume: start it afresh
            best = None
        if ckpt.get('distillm'):
            distillm.load_state_dict(ckpt['distillm'])
        if ckpt.get('prompt_order'):
            prompt_order.load_state_dict(ckpt['prompt_order'])
        data_gen.set_state(ckpt['data_gen'])
        ranks = ckpt.get('ranks') or [ckpt]  # per-rank RNG streams; on another world size they start afresh
        if len(ranks) == cfg.world_size:
            sample_gen.set_state(ranks[cfg.rank]['sample_gen'])
            torch.set_rng_state(ranks[cfg.rank]['torch_rng'])
        buf, queue = ckpt.get('rollout_buffer'), ckpt.get('rollout_queue', [])
        if buf is not None:
            buf = {k: v.to(cfg.device) if torch.is_tensor(v) else v for k, v in buf.items()}
    # MFU counts the student's training FLOPs only (a KD teacher's forward and MiniLLM's generation
    # take time but are not in flops_per_token), so it is the sft / pretrain step's figure of merit
    peak = cfg.peak_flops or (gpu_peak_flops(torch.cuda.get_device_name(cfg.device)) if on_gpu else 0.0)
    n_params = raw_model.num_params()
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        print(f"{cfg.method}: student {n_params / 1e6:.2f}M params"
              + (f", teacher {teacher.num_params() / 1e6:.2f}M" if teacher is not None else '')
              + f", data {cfg.data_dir} ({meta['tokenizer']}), world {cfg.world_size}, device {cfg.device}")
        print(f"{cfg.max_iters} iterations" + (f" ({cfg.epochs} epochs x {iters_per_epoch(cfg, len(train_data))})" if cfg.epochs > 0 else '')
              + f"; {cfg.out_dir}/{CKPT_NAME}: the last state, {BEST_NAME}: the best validation {select}"
              + (f"; Rouge-L on {len(rouge_ids)} validation prompts every {cfg.eval_rouge_interval or cfg.eval_interval} steps"
                 if rouge_ids else ''))
    log_path = os.path.join(cfg.out_dir, 'log.jsonl')
    wandb_run = cluster.start_wandb(cfg, {k: v for k, v in vars(cfg).items() if k in DEFAULTS}) if master and cfg.wandb_log else None

    def log_record(record):
        """One row of log.jsonl (rank 0), and the same numbers to wandb when wandb_log=True."""
        with open(log_path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in record.items() if k != 'iter'}, step=record['iter'])

    def micro_batch():
        """One micro-step's loss on this rank, already rescaled to a global token mean."""
        nonlocal buf, queue
        if cfg.method == 'pretrain':
            x, y = train_data.batch(cfg.batch_size, cfg.block_size, data_gen, cfg.rank, cfg.world_size)
            x, y = x.to(cfg.device), y.to(cfg.device)
            with cfg.ctx:
                return supervised_loss(cfg, model, teacher, x, y), x.numel(), {}
        if cfg.method in ('gkd', 'distillm'):  # the responses: the student's own, replayed or gold (onpolicy.py)
            ids = train_data.sample_indices(cfg.batch_size, data_gen, cfg.rank, cfg.world_size)
            if cfg.method == 'gkd':
                responses, on_policy = onpolicy.gkd_responses(cfg, model, teacher, train_data, ids, data_gen,
                                                              sample_gen)
                stats = dict(on_policy=float(on_policy))
            else:
                ids, responses, source = distillm.responses(cfg, model, train_data, ids, data_gen, sample_gen,
                                                            iter_num + 1)
                stats = dict(sgo_prob=distillm.prob, fresh=float(source == 'fresh'), replay=float(source == 'replay'))
            x, y, seg = (t.to(cfg.device) if t is not None else None
                         for t in onpolicy.training_batch(cfg, train_data, ids, responses))
            with cfg.ctx:  # the divergence alone (kd_ratio 1: no CE), on whichever responses these are
                loss = supervised_loss(cfg, model, teacher, x, y, 1.0, seg)
            return global_mean(cfg, loss, (y != -1).sum()), x.numel(), stats
        if cfg.method != 'minillm':
            ids = train_data.sample_indices(cfg.batch_size, data_gen, cfg.rank, cfg.world_size)
            if cfg.pack:
                x, y, seg = (t.to(cfg.device) for t in train_data.packed_sft_batch(ids, cfg.block_size))
            else:
                (x, y), seg = (t.to(cfg.device) for t in train_data.sft_batch(ids, cfg.block_size)), None
            with cfg.ctx:
                loss = supervised_loss(cfg, model, teacher, x, y, cfg.kd_ratio if cfg.method != 'sft' else 0.0, seg)
            return global_mean(cfg, loss, (y != -1).sum()), x.numel(), {}
        if not queue:  # a new rollout phase: ppo_epochs shuffled passes over a fresh (global) buffer
            buf = gather_rollouts(cfg, collect_rollouts(cfg, model, teacher, train_data, prompt_order, sample_gen))
            n, step = len(buf['rows']), cfg.batch_size * cfg.world_size
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(n, generator=data_gen).tolist()
                queue += [perm[i:i + step] for i in range(0, n - step + 1, step)]
        minibatch = queue.pop(0)  # the global PPO minibatch (reference mode whitens over all of it)
        ids = minibatch[cfg.rank * cfg.batch_size:(cfg.rank + 1) * cfg.batch_size]  # this rank's share
        loss, n_tok, stats = minillm_micro_loss(cfg, model, teacher, buf, ids, minibatch)
        loss = global_mean(cfg, loss, n_tok)
        tokens = n_tok.item()
        if pt_data is not None:
            x, y = pt_data.batch(cfg.pt_batch_size, cfg.block_size, data_gen, cfg.rank, cfg.world_size)
            x, y = x.to(cfg.device), y.to(cfg.device)
            with cfg.ctx:
                pt = supervised_loss(cfg, model, teacher, x, y, kd_ratio=cfg.pt_kd_ratio)
            loss = loss + cfg.pt_weight * pt
            stats['pt_loss'] = pt.detach()
            tokens += x.numel()
        return loss, tokens, stats

    @torch.no_grad()
    def evaluate_loss():
        """Mean CE on validation responses (or LM tokens), on fixed batches."""
        model.eval()
        gen, losses = torch.Generator().manual_seed(1234), []
        for _ in range(cfg.eval_iters):
            if cfg.method == 'pretrain':
                x, y = val_data.batch(cfg.batch_size, cfg.block_size, gen, cfg.rank, cfg.world_size)
            else:
                x, y = val_data.sft_batch(val_data.sample_indices(cfg.batch_size, gen, cfg.rank, cfg.world_size), cfg.block_size)
            with cfg.ctx:
                loss = model(x.to(cfg.device), y.to(cfg.device))[1].item()
            losses.append(rank_mean(cfg, loss, (y != -1).sum().item()))  # the same on every rank
        model.train()
        return sum(losses) / len(losses)

    def write(name, payload):
        """Rank 0 writes out_dir/name (atomic_save of payload()); a failed write is raised on every rank."""
        on_rank0(cfg, lambda: atomic_save(payload(), os.path.join(cfg.out_dir, name)))

    def save(which, metrics):
        """which='best': the weights (best.pt from rank 0; FSDP: dcp_best/, shards without AdamW state,
        from every rank); 'last': the whole state resume needs (ckpt.pt; FSDP: dcp/). Collective when distributed.
        Weights with a NaN or inf are never written: the checkpoint on disk stays the last finite one."""
        nonlocal last_saved
        name = {'best': BEST_NAME, 'last': CKPT_NAME} if cfg.parallel != 'fsdp' else {'best': DCP_BEST_DIR, 'last': DCP_DIR}
        broken, where = cluster.nonfinite_weights(cfg, raw_model)
        if broken:
            raise UserError(f"iter {iter_num}: non-finite weights ({', '.join(where[:3]) or 'on another rank'}): "
                            f"{cfg.out_dir}/{name[which]} not written, it keeps the last finite state; "
                            f"lower learning_rate, then resume")
        info = dict(iter_num=iter_num, best=best, metrics=metrics, config={k: v for k, v in vars(cfg).items() if k in DEFAULTS})
        if which == 'best':
            if cfg.parallel == 'fsdp':
                save_sharded(cfg.out_dir, raw_model, None, meta['tokenizer'], name=DCP_BEST_DIR, **info)
            else:
                write(BEST_NAME, lambda: checkpoint_payload(raw_model, meta['tokenizer'], **info))
            return
        state = dict(info, data_gen=data_gen.get_state(), sample_gen=sample_gen.get_state(), torch_rng=torch.get_rng_state(),
                     rollout_buffer={k: v.cpu() if torch.is_tensor(v) else v for k, v in buf.items()} if buf else None,
                     rollout_queue=list(queue),
                     prompt_order=prompt_order.state_dict() if prompt_order else None,
                     distillm=distillm.state_dict() if distillm else None)
        if cfg.world_size > 1:  # each rank's own sampling and dropout streams
            state['ranks'] = [None] * cfg.world_size
            dist.all_gather_object(state['ranks'], dict(sample_gen=sample_gen.get_state(), torch_rng=torch.get_rng_state()))
        if cfg.parallel == 'fsdp':
            save_sharded(cfg.out_dir, raw_model, optimizer, meta['tokenizer'], **state)
        else:
            write(CKPT_NAME, lambda: checkpoint_payload(raw_model, meta['tokenizer'], optimizer=optimizer.state_dict(), **state))
        last_saved = iter_num

    model.train()
    t0, t_start, it_start, tokens_seen = time.time(), time.time(), iter_num, 0
    last_saved, skipped, bad_in_row = (iter_num if ckpt is not None else None), 0, 0  # non-finite steps: all, in a row
    while True:
        last = iter_num >= cfg.max_iters
        rouge_due = bool(rouge_ids) and (last or iter_num % (cfg.eval_rouge_interval or cfg.eval_interval) == 0)
        if iter_num % cfg.eval_interval == 0 or rouge_due or last:
            t_eval = time.time()
            metrics = dict(val_loss=evaluate_loss())
            if distillm is not None:  # DistiLLM adapts its SGO probability to the validation loss
                distillm.observe(metrics['val_loss'], iter_num)
            if rouge_due:
                metrics['rouge_l'] = rank_mean(cfg, *validation_rouge_l(cfg, model, val_data, enc, rouge_ids))
            # candidates: states trained here (not the init, nor the state a resume starts from)
            improved = iter_num > it_start and improves(select, metrics.get(select), best)
            if improved:
                best = dict(metric=select, value=metrics[select], iter=iter_num)
            if master:
                print(f"iter {iter_num}: val loss {metrics['val_loss']:.4f}"
                      + (f", Rouge-L {metrics['rouge_l']:.2f}" if 'rouge_l' in metrics else '')
                      + (f" (best {select}: {BEST_NAME})" if improved else ''))
                log_record(dict(iter=iter_num, **metrics))
            if improved:  # before ckpt.pt, whose record of the best must never be ahead of best.pt
                save('best', metrics)
            if iter_num > it_start and (cfg.always_save_checkpoint or last):
                save('last', metrics)
            t0 += time.time() - t_eval  # tokens/s and MFU are of training steps, not of eval and saving
        if last:
            break
        cfg.stopped_by = stop.agreed(cfg)  # between steps, the same on every rank (an all-reduce)
        if cfg.stopped_by:
            if last_saved != iter_num:
                save('last', {})
            if master:
                where = os.path.join(cfg.out_dir, DCP_DIR if cfg.parallel == 'fsdp' else CKPT_NAME)
                print(f"iter {iter_num}: {cfg.stopped_by} received, the last state is in {where}: continue with "
                      f"--init_from=resume (exit status {cluster.PREEMPTED_EXIT})", flush=True)
            break
        lr = get_lr(cfg, iter_num)
        for group in optimizer.param_groups:
            group['lr'] = lr
        total, stats = 0.0, {}
        for micro in range(cfg.gradient_accumulation_steps):
            if cfg.parallel == 'ddp':
                model.require_backward_grad_sync = micro == cfg.gradient_accumulation_steps - 1
            loss, n_tokens, stats = micro_batch()
            loss = loss / cfg.gradient_accumulation_steps
            scaler.scale(loss).backward()
            total += loss.item()
            tokens_seen += n_tokens
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
        # the gradient norm (max_norm inf: measured, not clipped) shows a NaN or inf in any gradient
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        terms = dict(loss=total, **stats)
        if not scaler.is_enabled():  # float16: overflowing gradients are the grad scaler's (it skips and rescales)
            terms['grad_norm'] = grad_norm.full_tensor() if hasattr(grad_norm, 'full_tensor') else grad_norm
        bad = cluster.nonfinite_terms(cfg, terms)  # the same on every rank: all skip the same step
        if bad:  # no update: weights and AdamW state stay as they were; data and schedule move on
            skipped, bad_in_row = skipped + 1, bad_in_row + 1
            if scaler.is_enabled():
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        else:
            scaler.step(optimizer)
            scaler.update()
            bad_in_row = 0
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        if bad and master:
            print(f"iter {iter_num}: non-finite {', '.join(bad)}: step skipped ({bad_in_row} in a row, {skipped} in all)")
        if bad_in_row >= cfg.max_bad_steps:
            kept = (f"{cfg.out_dir}/{DCP_DIR if cfg.parallel == 'fsdp' else CKPT_NAME} holds iter {last_saved}"
                    if last_saved is not None else "no checkpoint was written")
            raise UserError(f"iter {iter_num}: non-finite {', '.join(bad)} in {bad_in_row} steps in a row "
                            f"(max_bad_steps={cfg.max_bad_steps}), stopped; {kept}: lower learning_rate or check "
                            f"the data, then resume")
        if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
            total = rank_mean(cfg, total)  # the global batch's loss: the ranks' rescaled losses average to it
            stats = {k: rank_mean(cfg, float(v)) for k, v in stats.items()}  # MiniLLM stats: mean over ranks
        if master and (iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters):
            dt = time.time() - t0
            t0 = time.time()
            per_iter = (time.time() - t_start) / (iter_num - it_start)
            extra = ' '.join(f"{k} {float(v):.3f}" for k, v in stats.items())
            speed = dict(tokens_per_s=tokens_seen * cfg.world_size / dt)  # every rank's tokens
            if peak:  # per device: this rank's tokens/s against one device's peak
                speed['mfu'] = mfu(tokens_seen / dt, raw_model.config, n_params, peak)
            print(f"iter {iter_num}/{cfg.max_iters}: loss {total:.4f}, lr {lr:.2e}, {speed['tokens_per_s']:,.0f} tok/s, "
                  + (f"mfu {speed['mfu']:.1%}, " if peak else '')
                  + f"ETA {per_iter * (cfg.max_iters - iter_num):.0f}s {extra}")
            log_record(dict(iter=iter_num, loss=total, lr=lr, **speed, **{k: float(v) for k, v in stats.items()},
                            **(dict(skipped_steps=skipped) if skipped else {})))
            tokens_seen = 0
        cfg.last_loss = total
    if wandb_run is not None:
        wandb_run.finish()
    if cfg.own_group:
        dist.barrier()  # no rank tears gloo down while another still talks to it (SIGABRT at exit otherwise)
        dist.destroy_process_group()
    return cfg


if __name__ == '__main__':
    run(main)
