"""
Per-GPU memory of a distillation run, estimated before anything is allocated, so that a 13B run
fails in its first second with a clear message instead of an out-of-memory error an hour in.

    python scripts/memory_table.py        # the README table: the real student/teacher pairs of config/ at 8 and 64 GPUs

Shapes are model.GPTConfig's (every family: GPT-2, OPT, LLaMA, Mistral, Qwen2, Qwen3): grouped-query
attention (n_kv_head, head_dim), the MLP kind and its intermediate size, LayerNorm or RMSNorm,
learned or rotary positions, the biases, q/k norms, tied or untied head, padded vocabulary rows.

What is counted (bytes per GPU; P = student parameters, P_t = teacher parameters, S = the number
of shards: world_size under FSDP, 1 otherwise; b = param dtype bytes, 2 for bf16):

  static (alive for the whole run)
    params      fp32 master weights           4 P / S   (FSDP2 keeps the sharded parameters in fp32)
    grads       fp32 gradients                4 P / S   (reduce_dtype fp32: grads are reduce-scattered in fp32);
                                              under FSDP with one micro-step per optimizer step only from
                                              the backward on (zero_grad frees them)
    optimizer   AdamW exp_avg + exp_avg_sq    8 P / S
    teacher     frozen teacher weights        b P_t / S (stored in the compute dtype: whole without FSDP);
                                              under FSDP plus its root whole (b R_t): FSDP2 never reshards a
                                              root module after its forward (its parameters would be
                                              all-gathered again for backward), and the teacher has no backward
    ddp_buckets DDP's gradient buckets        4 P       (DDP only)
  transient, training step
    unsharded   FSDP2's all-gathered compute copies, as scripts/dryrun.py tracks them (R = root
                parameters: embeddings, head, final norm; B = one block's). The student's root is
                whole from its forward to the end of its backward. Inside the blocks: b R + (3 b + 4) B
                (the block running and the one prefetched, one block's b-byte gradients and the fp32
                copy that is being reduce-scattered); at the end of the backward the root's turn:
                (b + 4) R (its fp32 copy); the larger counts. The teacher's forward is over before
                the student's and needs 4 b B_t (the running and the prefetched block, each as its
                flat all-gather buffer and its copied-out parameters: FSDP2 keeps the last buffer
                until the next copy-out), its logits filling.
                (Two forwards of the student before one backward would keep the b-byte gradients
                of the whole student at once: FSDP2 reduce-scatters a block's gradient only when
                the backward of its first forward is done; rollout.MiniLLMSource gives the policy
                loss its own backward before L_PT's forward.) Without FSDP: autocast's b-byte
                copies of the student's weights
    activations what autograd keeps for backward, counted tensor by tensor as Korthikanti et al.
                2022 (arXiv 2205.05198) §4.1 do for their Eq. 1, for model.py's block with a fused
                attention kernel (no s^2 score matrices; see `block_activation_bytes`). For
                GPT-2's block with dropout this is the paper's 34 s B h bytes per layer (Eq. 1
                without the 5 a s^2 B score terms) plus LayerNorm's statistics and the kernel's
                log-sum-exp ((16 + 4 a) s B bytes). With activation checkpointing each layer keeps
                only its input (b s B h) and one layer is recomputed at a time. MiniLLM's L_PT
                batch has its forward and backward after the policy loss's: the larger pass counts.
    logits      the loss head: fp32 student logits, their softmax and gradient for min(B s,
                chunk) tokens (the chunked loss; MiniLLM's also computes the head's gradient [V, d]
                in fp32 during its forward, the dry runs find it at its peak) + the teacher's
                b-byte logits for B s tokens,
                over the real vocabulary (tokenizer_vocab columns)
  transient, optimizer step (FSDP: AdamW's foreach kernels over DTensors)
    step        sqrt(exp_avg_sq) of every local parameter before the update, 4 P / S, with all gradients
  transient, MiniLLM rollout phase (not at the same time as a training step)
    kv_cache    2 (k, v) L B_r s n_kv_head head_dim b bytes per model, student and teacher
                (teacher-mixed sampling), both made in the compute dtype, with one model's forward at
                a time: b (R + 4 B) for the student, or its root (whole until its next backward) and
                4 b B_t for the teacher
    gathered    FSDP: a model kept all-gathered for a whole generation (parallel.wrap decides, by
                `decode_gathered`, from this estimate) counts whole in b bytes instead

Peak = static + max(training step, optimizer step, rollout phase). Not counted: the CUDA context
(~0.5-1 GiB), allocator fragmentation, communication buffers beyond the above; `fits` keeps 10%
headroom for them. Activations assume the whole forward in the compute dtype (FSDP's bf16
MixedPrecisionPolicy); under DDP's autocast the fp32 residual stream adds a little.
"""

import torch

from configurator import UserError

GiB = 1024 ** 3


# ----------------------------------------------------------------------------- shapes
def dims(cfg):
    """The sizes a GPTConfig-like `cfg` implies (missing fields take GPTConfig's defaults: GPT-2).
    Returns d, n_head, n_kv_head, head_dim, intermediate size, and the MLP's first-layer width."""
    d, H = cfg.n_embd, cfg.n_head
    kv = getattr(cfg, 'n_kv_head', 0) or H
    hd = getattr(cfg, 'head_dim', 0) or d // H
    ffn = getattr(cfg, 'intermediate_size', 0) or 4 * d
    width = 2 * ffn if getattr(cfg, 'mlp', 'gelu') == 'swiglu' else ffn   # SwiGLU: gate and up stacked
    return d, H, kv, hd, ffn, width


def _norm_params(cfg, dim):
    """LayerNorm: weight (+ bias); RMSNorm: weight only."""
    rms = getattr(cfg, 'norm', 'layernorm') == 'rmsnorm'
    return dim if rms or not cfg.bias else 2 * dim


def block_params(cfg):
    """One block: ln_1; c_attn d -> (n_head + 2 n_kv_head) head_dim (+ q/k/v biases when qkv_bias,
    or bias); q_norm, k_norm [head_dim] (Qwen3); attention c_proj n_head head_dim -> d; ln_2; c_fc
    d -> I (GELU, ReLU) or 2 I (SwiGLU's gate and up); mlp c_proj I -> d; c_proj/c_fc biases when
    bias. GPT-2's block: 12 d^2 + 13 d."""
    d, H, kv, hd, ffn, width = dims(cfg)
    qkv_bias = cfg.bias if getattr(cfg, 'qkv_bias', None) is None else cfg.qkv_bias
    qkv = (H + 2 * kv) * hd
    attn = d * qkv + (qkv if qkv_bias else 0) + H * hd * d + (d if cfg.bias else 0)
    attn += 2 * hd if getattr(cfg, 'qk_norm', False) else 0
    mlp = d * width + ffn * d + ((width + d) if cfg.bias else 0)
    return 2 * _norm_params(cfg, d) + attn + mlp


def root_params(cfg):
    """Parameters outside the blocks: wte (vocab_size rows, padding included), lm_head (once more
    when untied), wpe (block_size + pos_offset rows, learned positions only), ln_f."""
    d = cfg.n_embd
    heads = 1 if getattr(cfg, 'tie_embeddings', True) else 2
    wpe = (cfg.block_size + getattr(cfg, 'pos_offset', 0)) * d if getattr(cfg, 'pos', 'learned') == 'learned' else 0
    return heads * cfg.vocab_size * d + wpe + _norm_params(cfg, d)


def count_params(cfg):
    """All parameters of a GPT of this config, tied embeddings counted once (= sum of numel of
    model.GPT(config).parameters(), and of the Hugging Face model of the same config.json)."""
    return root_params(cfg) + cfg.n_layer * block_params(cfg)


def logit_vocab(cfg):
    """Columns of the logits: the real vocabulary (embedding rows beyond it are padding)."""
    return getattr(cfg, 'tokenizer_vocab', 0) or cfg.vocab_size


# ----------------------------------------------------------------------------- activations
def _norm_activation_bytes(cfg, dim, b, stat_bytes):
    """What one norm over `dim` keeps per row: LayerNorm its input and mean, 1/std (fp32 on CUDA:
    stat_bytes 4); model.RMSNorm its fp32 copy of the input, fp32 1/rms and the normalised row
    before the gain (in b bytes, for the gain's gradient)."""
    if getattr(cfg, 'norm', 'layernorm') == 'rmsnorm':
        return (4 if b < 4 else 0) * dim + 4 + b * dim   # in fp32 x.float() is x itself: no copy
    return b * dim + 2 * stat_bytes


def block_activation_bytes(cfg, b=2, dropout=0.0, stat_bytes=4):
    """Bytes one block keeps for backward per token (Korthikanti et al. 2022 §4.1's method: every
    tensor an op saves, for model.Block's ops), with a fused attention kernel (flash /
    memory-efficient: keeps q, k, v, its output and fp32 log-sum-exp per head, no score matrix):

      ln_1; c_attn's input (b d); c_attn's fused output ((n_head + 2 n_kv_head) head_dim b: v is a
      view of it, so all of it stays alive); with RoPE the rotated q and k ((n_head + n_kv_head)
      head_dim b); q/k norms (Qwen3) as RMSNorms over head_dim per head; the attention output
      (n_head head_dim b, also c_proj's input) and its log-sum-exp (4 n_head); ln_2; c_fc's input
      (b d); GELU: c_fc's output and GELU's (2 I b); ReLU: its output (I b); SwiGLU: c_fc's output,
      silu(gate) and the product (4 I b); dropout masks (d bytes each) after both residual branches.

    tests/test_memory.py checks this against the tensors autograd saves (CPU's fused kernel). On
    CUDA, SDPA with enable_gqa and an explicit mask (padding, packing) has no fused kernel and falls
    back to the math one, which keeps B n_head s^2 attention probabilities: not counted here.
    """
    d, H, kv, hd, ffn, width = dims(cfg)
    norm = _norm_activation_bytes(cfg, d, b, stat_bytes)
    attn = norm + b * d + b * (H + 2 * kv) * hd + b * H * hd + 4 * H
    if getattr(cfg, 'pos', 'learned') == 'rope':
        attn += b * (H + kv) * hd
    if getattr(cfg, 'qk_norm', False):
        attn += (H + kv) * _norm_activation_bytes(cfg, hd, b, stat_bytes)
    mlp_kind = getattr(cfg, 'mlp', 'gelu')
    mlp = norm + b * d + {'gelu': 2 * ffn, 'relu': ffn, 'swiglu': 4 * ffn}[mlp_kind] * b
    masks = 2 * d if dropout > 0 else 0
    return attn + mlp + masks


def activation_bytes(cfg, tokens, b=2, dropout=0.0, checkpointing=False, stat_bytes=4):
    """The training forward's activations for `tokens` tokens: every block's (or, with activation
    checkpointing, every block's input plus one block recomputed at a time), the RoPE tables (per
    row: left padding and packing give each row its own positions), ln_f and the head's input."""
    d, _, _, hd, _, _ = dims(cfg)
    per_block = block_activation_bytes(cfg, b, dropout, stat_bytes) * tokens
    blocks = cfg.n_layer * b * d * tokens + per_block if checkpointing else cfg.n_layer * per_block
    rope = 2 * b * hd * tokens if getattr(cfg, 'pos', 'learned') == 'rope' else 0
    final = (_norm_activation_bytes(cfg, d, b, stat_bytes) + b * d) * tokens
    return blocks + rope + final


def kv_cache_bytes(cfg, rows, seq_len, b=2):
    """model.KVCache: keys and values of the n_kv_head key/value heads only, every layer."""
    _, _, kv, hd, _, _ = dims(cfg)
    return 2 * cfg.n_layer * rows * seq_len * kv * hd * b


# ----------------------------------------------------------------------------- a run's peak
def estimate_memory(student, teacher=None, world_size=1, parallel='fsdp', batch_size=4, seq_len=512,
                    param_bytes=2, activation_checkpointing=False, cpu_offload=False,
                    rollout_batch_size=0, chunk_size=1024, dropout=0.0, pt_batch_size=0, pt_kd=False,
                    accumulation=1, gathered=(False, False)):
    """Per-GPU bytes of each part of a training run (see the module docstring for the model).

    student, teacher: GPTConfig-like shapes (teacher None: no teacher). batch_size: sequences per
    GPU per micro-step; seq_len: tokens per sequence; rollout_batch_size: prompts generated at once
    per GPU (0: no rollouts); chunk_size: tokens per chunk of the chunked loss (None: not chunked);
    pt_batch_size: MiniLLM's L_PT sequences per GPU, forward and backward after the policy loss's
    (the larger of the two passes counts), with the teacher's logits on them when pt_kd (pt_kd_ratio > 0).
    accumulation: micro-steps per optimizer step (> 1: the gradients outlive each micro-step). gathered:
    (student, teacher) kept whole for a rollout's whole generation under FSDP.
    Returns a dict of bytes with 'total' = the estimated peak, the larger of 'train_peak' (a training
    micro-step) and 'rollout_peak' (MiniLLM's rollout phase; 0 without rollouts).
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
        mem['teacher'] = on_gpu * param_bytes * count_params(teacher) / S + (param_bytes * root_params(teacher) if fsdp else 0)
    mem['ddp_buckets'] = 4.0 * P if parallel == 'ddp' else 0.0

    def forward_copies(shape, root=True):
        """FSDP2 running a model without gradients: its root whole (root=False: counted elsewhere)
        and four blocks (the running and the prefetched one, each as its flat all-gather buffer and
        its copied-out parameters: FSDP2 keeps the last buffer until the next copy-out); without
        FSDP autocast's b-byte copy of every weight."""
        if not fsdp:
            return param_bytes * count_params(shape) if param_bytes < 4 and shape is student else 0.0
        return param_bytes * ((root_params(shape) if root else 0) + 4 * block_params(shape))

    def student_copies():
        """FSDP2 in the student's forward and backward: (the blocks' part, the root's reduce-scatter
        at the end of the backward); see 'unsharded' in the module docstring."""
        if not fsdp:
            return forward_copies(student), 0.0
        R, B, b = root_params(student), block_params(student), param_bytes
        return b * R + (3 * b + 4) * B, (b + 4) * R

    def training_pass(n, with_teacher, policy=False):
        """(activations, logits) of one forward and backward over n tokens (policy: MiniLLM's loss)."""
        act = float(activation_bytes(student, n, param_bytes, dropout, activation_checkpointing))
        logits = 3 * 4 * min(n, chunk_size or n) * logit_vocab(student)
        if chunk_size and policy:  # chunked_minillm_loss: the head's fp32 gradient, made in its forward
            logits += 4 * logit_vocab(student) * student.n_embd
        if teacher is not None and with_teacher:
            logits += param_bytes * n * logit_vocab(teacher)
        return act, logits

    passes = [training_pass(batch_size * seq_len, True, policy=rollout_batch_size > 0)]
    if pt_batch_size:
        passes.append(training_pass(pt_batch_size * seq_len, pt_kd))
    mem['activations'], mem['logits'] = max(passes, key=sum)
    blocks, root_end = student_copies()
    mem['unsharded'] = max(blocks, root_end)
    # FSDP: with one micro-step per optimizer step there are no gradients before the backward (zero_grad
    # frees them), so the forward's peak (loss head) has none; the backward ends with all of them
    grads = mem['grads'] if not fsdp or accumulation > 1 else 0.0
    train = max(grads + blocks + mem['activations'] + mem['logits'], mem['grads'] + root_end)
    if fsdp:  # AdamW's step (foreach over DTensors: train.py fuses it only without FSDP): sqrt(exp_avg_sq)
        train = max(train, mem['grads'] + mem['optimizer'] / 2)   # of every local parameter, 4 P / S
    if teacher is not None and fsdp:  # the teacher's forward, with its logits (over before the student's)
        train = max(train, grads + forward_copies(teacher, root=False)
                    + param_bytes * batch_size * seq_len * logit_vocab(teacher))
    mem['kv_cache'] = 0.0
    if rollout_batch_size:
        for shape in (student, teacher) if teacher is not None else (student,):
            mem['kv_cache'] += kv_cache_bytes(shape, rollout_batch_size, seq_len, param_bytes)
    # the models decode one after the other: the student's root stays whole, the blocks are one model's,
    # but a gathered model is whole for the whole generation
    rollout = mem['kv_cache']
    if not fsdp:
        rollout += forward_copies(student)
    else:
        blocks = [(shape, whole) for shape, whole in zip((student, teacher), gathered) if shape is not None]
        rollout += param_bytes * root_params(student) + sum(
            param_bytes * (count_params(shape) - root_params(shape)) for shape, whole in blocks if whole)
        rollout += max([forward_copies(shape, root=False) for shape, whole in blocks if not whole] or [0.0])
    static = sum(mem[k] for k in ('params', 'optimizer', 'teacher', 'ddp_buckets'))
    mem['train_peak'], mem['rollout_peak'] = static + train, static + rollout if rollout_batch_size else 0.0
    mem['total'] = max(mem['train_peak'], mem['rollout_peak'])
    return mem


def device_memory_gb(cfg):
    """The GPU's size: cfg.gpu_memory_gb when set, else the device's own (torch.cuda.mem_get_info's
    total); 0 off CUDA (no check)."""
    if cfg.gpu_memory_gb > 0:
        return cfg.gpu_memory_gb
    if not cfg.device.startswith('cuda'):
        return 0.0
    return torch.cuda.mem_get_info(cfg.device)[1] / GiB


def fits(mem, gpu_memory_gb, headroom=0.9):
    """True when the estimated peak leaves 10% of the GPU for what the estimate does not count."""
    return mem['total'] <= headroom * gpu_memory_gb * GiB


def describe(mem):
    """One line: the peak and its largest parts, in GiB."""
    parts = ', '.join(f"{k} {v / GiB:.1f}" for k, v in mem.items() if k != 'total' and not k.endswith('_peak') and v > 0)
    return f"~{mem['total'] / GiB:.1f} GiB per GPU ({parts})"


DTYPE_BYTES = {'float32': 4, 'bfloat16': 2, 'float16': 2}


def estimate_run(cfg, student, teacher, world_size=None, gathered=(False, False)):
    """estimate_memory for train.py's config `cfg` at `world_size` GPUs (default cfg.world_size).
    The compute dtype and the chunked loss follow cfg.dtype and cfg.chunked_loss as parallel.runtime
    derives them."""
    world = world_size or cfg.world_size
    minillm = cfg.method == 'minillm'
    rollout_rows = min(cfg.rollout_batch_size, cfg.rollout_size // world) if minillm else 0
    pt_rows = cfg.pt_batch_size if minillm and cfg.pt_data_dir and cfg.pt_weight > 0 else 0
    param_bytes = DTYPE_BYTES[cfg.dtype]
    chunked = logit_vocab(student) > 8192 if cfg.chunked_loss == 'auto' else bool(cfg.chunked_loss)
    return estimate_memory(student, teacher, world, cfg.parallel, batch_size=cfg.batch_size,
                           seq_len=cfg.block_size, param_bytes=param_bytes,
                           activation_checkpointing=cfg.fsdp_activation_checkpointing, cpu_offload=cfg.fsdp_cpu_offload,
                           rollout_batch_size=rollout_rows, chunk_size=cfg.loss_chunk_size if chunked else None,
                           dropout=cfg.dropout, pt_batch_size=pt_rows, pt_kd=pt_rows > 0 and cfg.pt_kd_ratio > 0,
                           accumulation=cfg.gradient_accumulation_steps, gathered=gathered)


def decode_gathered(cfg, student, teacher, gpu_memory_gb):
    """FSDP: which of (student, teacher) to keep all-gathered for a whole generation (sampling.generate;
    else every block is all-gathered again for every token): the student, then the teacher, each when
    the run's estimated peak with it whole still fits (`fits`) in gpu_memory_gb (0: no limit, CPU).
    The same on every rank (it reads the config and the device's size only)."""
    gathered = [False, False]
    if cfg.parallel != 'fsdp':
        return tuple(gathered)
    for i, shape in enumerate((student, teacher)):
        if shape is None:
            continue
        gathered[i] = True
        if gpu_memory_gb > 0 and not fits(estimate_run(cfg, student, teacher, gathered=tuple(gathered)), gpu_memory_gb):
            gathered[i] = False
    return tuple(gathered)


def check_run(cfg, student, teacher):
    """train.py's estimate for its config `cfg` (student/teacher: GPTConfigs): printed on rank 0,
    and a UserError when it does not fit in the GPU (device_memory_gb: cfg.gpu_memory_gb, else the
    device's size; no check on CPU)."""
    gpu_gb = device_memory_gb(cfg)
    est = estimate_run(cfg, student, teacher, gathered=decode_gathered(cfg, student, teacher, gpu_gb))
    if cfg.rank == 0 and (cfg.parallel != 'none' or gpu_gb > 0):
        print(f"memory estimate ({cfg.parallel}, world {cfg.world_size}): {describe(est)}")
    if gpu_gb > 0 and not fits(est, gpu_gb):
        raise UserError(f"the estimated peak of {est['total'] / GiB:.1f} GiB per GPU does not fit in 90% of "
                        f"gpu_memory_gb={gpu_gb:g}: use more GPUs (FSDP divides params, grads and AdamW by "
                        f"the world size), fsdp_activation_checkpointing=True, a smaller batch_size with more "
                        f"gradient_accumulation_steps, or fsdp_cpu_offload=True")
    return est
