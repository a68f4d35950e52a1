"""
Per-GPU memory of a distillation run, estimated before anything is allocated, so that a 13B run
fails in its first second with a clear message instead of an out-of-memory error an hour in.

    python memory.py        # the README table: 124M .. 13B students at 8 and 64 GPUs

What is counted (bytes per GPU; P = student parameters, P_t = teacher parameters, S = the number
of shards: world_size under FSDP, 1 otherwise; b = param dtype bytes, 2 for bf16):

  static (alive for the whole run)
    params      fp32 master weights           4 P / S   (FSDP2 keeps the sharded parameters in fp32)
    grads       fp32 gradients                4 P / S   (reduce_dtype fp32: grads are reduce-scattered in fp32)
    optimizer   AdamW exp_avg + exp_avg_sq    8 P / S
    teacher     frozen teacher weights        b P_t / S under FSDP (stored in the compute dtype);
                                              4 P_t without (an fp32 replica, autocast in forward)
    ddp_buckets DDP's gradient buckets        4 P       (DDP only)
  transient, training step
    unsharded   FSDP: the all-gathered compute copies of the root (embeddings, ln_f) and of two
                blocks (the one running and the one prefetched), for student and teacher, with
                the student blocks' gradients before the reduce-scatter; without FSDP: autocast's
                b-byte weight copies
    activations Korthikanti et al. 2022 (arXiv 2205.05198) §4.1, Eq. 1 with a fused attention kernel
                (no a s^2 score matrices): 34 s B h bytes per layer for B sequences of s tokens,
                width h. With activation checkpointing each layer keeps only its input (2 s B h)
                and one layer is recomputed at a time (+ 34 s B h).
    logits      the loss head: fp32 student logits, their softmax and gradient for min(B s,
                chunk) tokens (the chunked loss) + the teacher's b-byte logits for B s tokens
  transient, MiniLLM rollout phase (not at the same time as a training step)
    kv_cache    2 (k, v) L B_r s h b bytes per model, student and teacher (teacher-mixed sampling)

Peak = static + max(training transient, rollout transient). Not counted: the CUDA context
(~0.5-1 GiB), allocator fragmentation, communication buffers beyond the above; `fits` keeps 10%
headroom for them.
"""
from dataclasses import dataclass

from configurator import UserError

GiB = 1024 ** 3


@dataclass
class Shape:
    """The fields of model.GPTConfig that set a GPT's size (any object with them will do)."""
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = 50257
    block_size: int = 1024
    bias: bool = True


def block_params(n_embd, bias=True):
    """One GPT-2 block: ln_1, c_attn (d -> 3d), attn c_proj (d -> d), ln_2, c_fc (d -> 4d), mlp
    c_proj (4d -> d) = 12 d^2 weights + 13 d biases and LayerNorm parameters (2 d without biases)."""
    d = n_embd
    return 12 * d * d + (13 * d if bias else 2 * d)


def root_params(shape):
    """Parameters outside the blocks: wte/lm_head (V d, twice when untied), wpe (block_size d), ln_f."""
    d = shape.n_embd
    heads = 1 if getattr(shape, 'tie_embeddings', True) else 2
    return heads * shape.vocab_size * d + shape.block_size * d + (2 * d if shape.bias else d)


def count_params(shape):
    """All parameters of a GPT of this shape, tied embeddings counted once (= sum of numel of
    GPT(config).parameters())."""
    return root_params(shape) + shape.n_layer * block_params(shape.n_embd, shape.bias)


def estimate_memory(student, teacher=None, world_size=1, parallel='fsdp', batch_size=4, seq_len=512,
                    param_bytes=2, activation_checkpointing=False, cpu_offload=False,
                    rollout_batch_size=0, chunk_size=1024):
    """Per-GPU bytes of each part of a training run (see the module docstring for the model).
    Activations: Korthikanti et al. 2022 §4.1, Eq. 1, s b h (34 + 5 a s / h) bytes per layer,
    without the 5 a s / h attention-score term (SDPA's fused kernels never store the scores).

    student, teacher: GPTConfig-like shapes (teacher None: no teacher). batch_size: sequences per
    GPU per micro-step; seq_len: tokens per sequence; rollout_batch_size: prompts generated at once
    per GPU (0: no rollouts); chunk_size: tokens per chunk of the chunked loss (None: not chunked).
    Returns a dict of bytes with 'total' = the estimated peak.
    """
    if parallel not in ('none', 'ddp', 'fsdp'):
        raise ValueError(f"parallel must be none, ddp or fsdp, got {parallel!r}")
    fsdp = parallel == 'fsdp'
    S = world_size if fsdp else 1
    P = count_params(student)
    on_gpu = 0 if (fsdp and cpu_offload) else 1  # CPUOffloadPolicy keeps the shards and AdamW on the host
    mem = dict(params=on_gpu * 4 * P / S, grads=on_gpu * 4 * P / S, optimizer=on_gpu * 8 * P / S)
    mem['teacher'] = 0.0
    if teacher is not None:
        mem['teacher'] = on_gpu * param_bytes * count_params(teacher) / S if fsdp else 4 * count_params(teacher)
    mem['ddp_buckets'] = 4.0 * P if parallel == 'ddp' else 0.0

    def unsharded(shape, with_grads):
        """What a model needs whole at one time to run: see 'unsharded' in the module docstring."""
        if not fsdp:
            return param_bytes * count_params(shape) if param_bytes < 4 else 0.0
        per_block = param_bytes + (param_bytes + 4 if with_grads else 0)
        return root_params(shape) * (param_bytes + (4 if with_grads else 0)) + 2 * block_params(shape.n_embd, shape.bias) * per_block

    h, L, tokens = student.n_embd, student.n_layer, batch_size * seq_len
    per_layer = 34 * tokens * h * param_bytes / 2   # Korthikanti et al.'s 34 assumes 2-byte activations
    if activation_checkpointing:
        mem['activations'] = L * 2 * tokens * h * param_bytes / 2 + per_layer
    else:
        mem['activations'] = L * per_layer
    mem['logits'] = 3 * 4 * min(tokens, chunk_size or tokens) * student.vocab_size
    if teacher is not None:
        mem['logits'] += param_bytes * tokens * teacher.vocab_size
    train = unsharded(student, True) + (unsharded(teacher, False) if teacher is not None else 0)
    train += mem['activations'] + mem['logits']
    mem['kv_cache'] = 0.0
    if rollout_batch_size:
        for shape in (student, teacher) if teacher is not None else (student,):
            mem['kv_cache'] += 2 * shape.n_layer * rollout_batch_size * seq_len * shape.n_embd * param_bytes
    rollout = mem['kv_cache'] + unsharded(student, False) + (unsharded(teacher, False) if teacher is not None else 0)
    static = sum(mem[k] for k in ('params', 'grads', 'optimizer', 'teacher', 'ddp_buckets'))
    mem['unsharded'] = unsharded(student, True) + (unsharded(teacher, False) if teacher is not None else 0)
    mem['total'] = static + max(train, rollout)
    return mem


def fits(mem, gpu_memory_gb, headroom=0.9):
    """True when the estimated peak leaves 10% of the GPU for what the estimate does not count."""
    return mem['total'] <= headroom * gpu_memory_gb * GiB


def describe(mem):
    """One line: the peak and its largest parts, in GiB."""
    parts = ', '.join(f"{k} {v / GiB:.1f}" for k, v in mem.items() if k != 'total' and v > 0)
    return f"~{mem['total'] / GiB:.1f} GiB per GPU ({parts})"


def check_run(cfg, student, teacher):
    """train.py's estimate for its config `cfg` (student/teacher: GPTConfigs): printed on rank 0,
    and a UserError when it does not fit in cfg.gpu_memory_gb (0 = no check)."""
    rollout_rows = min(cfg.rollout_batch_size, cfg.rollout_size // cfg.world_size) if cfg.method == 'minillm' else 0
    est = estimate_memory(student, teacher, cfg.world_size, cfg.parallel, batch_size=cfg.batch_size,
                          seq_len=cfg.block_size, param_bytes=cfg.ptdtype.itemsize,
                          activation_checkpointing=cfg.fsdp_activation_checkpointing, cpu_offload=cfg.fsdp_cpu_offload,
                          rollout_batch_size=rollout_rows, chunk_size=cfg.loss_chunk_size if cfg.chunked else None)
    if cfg.rank == 0 and (cfg.parallel != 'none' or cfg.gpu_memory_gb > 0):
        print(f"memory estimate ({cfg.parallel}, world {cfg.world_size}): {describe(est)}")
    if cfg.gpu_memory_gb > 0 and not fits(est, cfg.gpu_memory_gb):
        raise UserError(f"the estimated peak of {est['total'] / GiB:.1f} GiB per GPU does not fit in 90% of "
                        f"gpu_memory_gb={cfg.gpu_memory_gb:g}: use more GPUs (FSDP divides params, grads and AdamW by "
                        f"the world size), fsdp_activation_checkpointing=True, a smaller batch_size with more "
                        f"gradient_accumulation_steps, or fsdp_cpu_offload=True")
    return est


# Student/teacher pairs of the README table. The 30B-class teacher of the 13B student has
# LLaMA-30B's width and depth (60 layers, d = 6656) with GPT-2's vocabulary.
TABLE_MODELS = {
    '124M': Shape(12, 12, 768), '1.5B': Shape(48, 25, 1600), '6.7B': Shape(32, 32, 4096, block_size=2048),
    '13B': Shape(40, 40, 5120, block_size=2048), '30B': Shape(60, 52, 6656, block_size=2048),
}
TABLE_PAIRS = [('124M', '1.5B'), ('1.5B', '6.7B'), ('6.7B', '13B'), ('13B', '30B')]


def markdown_table(world_sizes=(8, 64), batch_size=4, seq_len=512, rollout_batch_size=8):
    """The README's per-GPU memory table for FSDP2 (bf16 compute, fp32 master weights and AdamW)."""
    rows = ["| student | teacher | GPUs | params+grads+AdamW | teacher | activations (no AC / AC) "
            "| rollout KV | peak, no AC | peak, AC |",
            "|---|---|---|---|---|---|---|---|---|"]
    for s, t in TABLE_PAIRS:
        for w in world_sizes:
            kw = dict(world_size=w, batch_size=batch_size, seq_len=seq_len, rollout_batch_size=rollout_batch_size)
            plain = estimate_memory(TABLE_MODELS[s], TABLE_MODELS[t], **kw)
            ac = estimate_memory(TABLE_MODELS[s], TABLE_MODELS[t], activation_checkpointing=True, **kw)
            g = lambda x: f"{x / GiB:.1f}"
            rows.append(f"| {s} | {t} | {w} | {g(plain['params'] + plain['grads'] + plain['optimizer'])} "
                        f"| {g(plain['teacher'])} | {g(plain['activations'])} / {g(ac['activations'])} "
                        f"| {g(plain['kv_cache'])} | {g(plain['total'])} | {g(ac['total'])} |")
    return '\n'.join(rows)


if __name__ == '__main__':
    print(markdown_table())
