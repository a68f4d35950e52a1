"""
One decoder-only transformer for every family people distil (GPT-2, OPT, LLaMA / Llama-3, Mistral,
Qwen2 / Qwen2.5 / Qwen3), configured by a handful of switches in `GPTConfig` rather than one class
per family (a family is a set of switches: `FAMILIES`). Pre-norm blocks throughout; the switches:

    norm      LayerNorm (GPT-2, OPT) | RMSNorm (LLaMA, Mistral, Qwen)
    pos       learned positions (GPT-2; OPT with an offset of 2) | rotary (RoPE: θ, Llama-3 scaling)
    mlp       GELU (GPT-2) | ReLU (OPT) | SwiGLU with its own intermediate size (LLaMA, Mistral, Qwen)
    heads     n_kv_head < n_head: grouped-query attention (the KV cache holds only the KV heads);
              head_dim when it is not n_embd / n_head (Qwen3)
    biases    everywhere (GPT-2, OPT) | none | q/k/v only (Qwen2); Qwen3's RMSNorm on q and k
    head      tied to the input embedding or not; embedding rows beyond the tokenizer's vocabulary
              (Qwen2.5: 151,936 rows for 151,665 tokens) are padding the logits never include

On top of a plain LM it has what distillation needs:
- `forward(..., head_fn=...)` hands the final hidden states and the `lm_head` weight to a loss
  (kl.chunked_kd_loss) so the full [N, V] logits never have to exist; doing it inside `forward`
  keeps DDP/FSDP hooks in charge of the parameters.
- batched prompts of different lengths by left padding + an attention mask, with a key/value cache
  (positions, learned or rotary, counted per row from its first real token);
- `forward(..., slot=...)`: one token per row against a preallocated cache, no shape depending on
  the step (what sampling.decode_step runs and torch.compile captures; gpt-fast's static decoding).
It imports torch alone: decoding with teacher mixing lives in sampling.py (`generate`), the
Hugging Face conversion in components/hf.py.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257      # embedding / lm_head rows (may include padding rows, see tokenizer_vocab)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True            # biases in every Linear and LayerNorm (GPT-2, OPT)
    tie_embeddings: bool = True  # lm_head shares wte's weight (GPT-2); False: a separate [V, d] head
    init: str = 'gpt2'           # 'gpt2' | 'pytorch' (module defaults; the tiny toy models learn faster)
    n_kv_head: int = 0           # 0 = n_head; fewer: grouped-query attention
    head_dim: int = 0            # 0 = n_embd // n_head
    norm: str = 'layernorm'      # 'layernorm' | 'rmsnorm'
    norm_eps: float = 1e-5
    pos: str = 'learned'         # 'learned' | 'rope'
    pos_offset: int = 0          # OPT: learned position ids start at 2
    rope_theta: float = 10000.0
    rope_scaling: dict = None    # None | {'rope_type': 'linear', 'factor'} | {'rope_type': 'llama3', 'factor',
                                 #   'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'}
    mlp: str = 'gelu'            # 'gelu' (tanh approximation) | 'relu' | 'swiglu'
    intermediate_size: int = 0   # 0 = 4 * n_embd
    qkv_bias: bool = None        # None: as `bias`; Qwen2: True with bias=False
    qk_norm: bool = False        # Qwen3: RMSNorm over head_dim on q and k, before RoPE
    tokenizer_vocab: int = 0     # 0 = vocab_size; else logits cover token ids < tokenizer_vocab only

    def __post_init__(self):
        for key, allowed in (('norm', ('layernorm', 'rmsnorm')), ('pos', ('learned', 'rope')),
                             ('mlp', ('gelu', 'relu', 'swiglu'))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")
        if not self.head_dim and self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: set head_dim")
        if self.tokenizer_vocab > self.vocab_size:
            raise ValueError(f"tokenizer_vocab {self.tokenizer_vocab} exceeds the {self.vocab_size} embedding rows")

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head

    @property
    def hd(self):
        return self.head_dim or self.n_embd // self.n_head

    @property
    def ffn(self):
        return self.intermediate_size or 4 * self.n_embd

    @property
    def logit_vocab(self):
        return self.tokenizer_vocab or self.vocab_size


# The switches that make a family (GPTConfig fields; the shape fields come from the checkpoint).
FAMILIES = {
    'gpt2': dict(),
    'opt': dict(mlp='relu', pos_offset=2),
    'llama': dict(norm='rmsnorm', pos='rope', mlp='swiglu', bias=False),
    'mistral': dict(norm='rmsnorm', pos='rope', mlp='swiglu', bias=False),
    'qwen2': dict(norm='rmsnorm', pos='rope', mlp='swiglu', bias=False, qkv_bias=True),
    'qwen3': dict(norm='rmsnorm', pos='rope', mlp='swiglu', bias=False, qk_norm=True),
}


class KVCache:
    """Preallocated keys/values for every layer plus, per row, which key slots are real tokens.

    Keys and values are stored for the n_kv_head key/value heads only (grouped-query attention
    shares each of them between n_head / n_kv_head query heads), keys after RoPE. `valid` [B, S]
    marks non-padding keys; `n_valid` [B] counts them so that the next token's position id is
    right for left-padded rows.
    """

    def __init__(self, config, batch_size, max_len, device, dtype):
        shape = (batch_size, config.kv_heads, max_len, config.hd)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.n_valid = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0          # slots filled so far (same for every row)
        self.padded = False      # any padding seen: then attention needs an explicit mask

    @property
    def max_len(self):
        return self.valid.shape[1]

    def keep_rows(self, rows):
        """Drop every row but `rows` (indices into the batch) from the cache: a finished row leaves
        the decoding batch, and no later step computes or attends over its keys."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.valid, self.n_valid = self.valid[rows], self.n_valid[rows]


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich, arXiv 1910.07467, Eq. 4): x / sqrt(mean(x^2) + eps) * g, computed
    in fp32 and cast back before the gain, as LLaMA, Mistral and Qwen do (so bf16 logits match)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(config, dim):
    if config.norm == 'rmsnorm':
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def rope_inv_freq(config, device=None):
    """RoPE's inverse frequencies theta^(-2i/d), i < d/2 (RoFormer, Su et al., arXiv 2104.09864,
    §3.2.2, Eq. 15), rescaled by `rope_scaling`: 'linear' divides them by the factor (positions
    interpolated, Chen et al., arXiv 2306.15595, Eq. 4); 'llama3' divides only the low frequencies
    (wavelength above original_max / low_freq_factor) by the factor, keeps the high ones (wavelength
    below original_max / high_freq_factor) and interpolates smoothly between (Llama 3, arXiv
    2407.21783 §3.3.2, the rule of Meta's released code)."""
    d = config.hd
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.int64).float() / d))
    scaling = config.rope_scaling or {}
    kind = scaling.get('rope_type', scaling.get('type', 'default'))
    if kind == 'linear':
        inv = inv / scaling['factor']
    elif kind == 'llama3':
        factor, lo, hi = scaling['factor'], scaling['low_freq_factor'], scaling['high_freq_factor']
        old = scaling['original_max_position_embeddings']
        wavelen = 2 * math.pi / inv
        smooth = ((old / wavelen - lo) / (hi - lo)).clamp(0, 1)   # 0 below lo, 1 above hi
        scaled = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > old / lo, inv / factor, torch.where(wavelen < old / hi, inv, scaled))
    elif kind != 'default':
        raise ValueError(f"rope_scaling type {kind!r} is not supported (default, linear, llama3)")
    return inv


def rope_cos_sin(config, pos, dtype):
    """cos(m θ_i) and sin(m θ_i) of RoFormer Eq. 34, [B or 1, 1, T, head_dim], at positions m = `pos`
    [B or 1, T]; in fp32, then cast to `dtype`."""
    angles = pos[..., None].float() * rope_inv_freq(config, pos.device)   # [B, T, d/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate each pair (x_i, x_{i+d/2}) of x [B, H, T, d] by its position's angle (RoFormer
    Eq. 34, in the half-split layout of LLaMA's and Qwen's released weights)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def grouped_attention(q, k, v, mask=None):
    """softmax(q Kᵀ / sqrt(d) + mask) V (Vaswani et al. §3.2.1, Eq. 1) as two batched matmuls, q [B, H, T, d],
    k / v [B, H_kv, S, d]; mask None or 'none' (every key), 'causal' (query t attends keys up to S - T + t)
    or bool broadcastable to [B, 1, T, S] (True: attend; no row empty). The n_head / n_kv_head query heads
    of each key/value head are the rows of one matmul (grouped-query attention without repeating k and v,
    Ainslie et al. §2.2, query head h reading key/value head h // (n_head / n_kv_head)); scores and softmax
    in fp32. On CPU in bf16 SDPA's flash kernel runs far below the matmuls' rate (SmolLM2-135M's shape,
    8 x 127 tokens: 25.5 ms forward + backward per layer, these 5.6 ms; a decoding step at batch 16: 26%
    of the step, these 4%); the [B, H, T, S] scores exist, so callers keep this to small T x S."""
    B, H, T, d = q.shape
    n_kv, S = k.shape[1], k.shape[2]
    scores = (q.reshape(B, n_kv, H // n_kv * T, d) @ k.transpose(-1, -2)).view(B, n_kv, H // n_kv, T, S)
    dtype = torch.promote_types(scores.dtype, torch.float32)  # bf16 scores: softmax in fp32
    if isinstance(mask, str) and mask == 'causal':
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    elif mask is not None and not isinstance(mask, str):
        mask = mask.unsqueeze(2)  # [B, 1, T, S] -> [B, 1, 1, T, S]: the same for every head of a group
    if mask is None or isinstance(mask, str):
        scores = scores.to(dtype) * (1.0 / math.sqrt(d))
    else:  # bias + scores / sqrt(d) in one pass over the scores, promoted to fp32 on the way
        bias = torch.zeros(mask.shape, dtype=dtype, device=q.device).masked_fill_(~mask, float('-inf'))
        scores = torch.add(bias, scores, alpha=1.0 / math.sqrt(d))
    probs = scores.softmax(-1).to(v.dtype)
    return (probs.view(B, n_kv, H // n_kv * T, S) @ v).view(B, H, T, d)


# grouped_attention in place of SDPA for whole sequences: on CPU, in a reduced-precision compute dtype,
# while the fp32 scores of one layer ([B, H, T, S]) stay under this many bytes (backward keeps ~1.5x that
# per layer; longer sequences keep SDPA's flash kernel, whose memory grows with T, not T x S)
GROUPED_ATTENTION_BYTES = 64 * 2 ** 20


def use_grouped_attention(q, S, dropout):
    """Whether CausalSelfAttention takes grouped_attention for queries q [B, H, T, d] over S keys."""
    return (q.device.type == 'cpu' and q.dtype in (torch.bfloat16, torch.float16) and not dropout
            and q.shape[0] * q.shape[1] * q.shape[2] * S * 4 <= GROUPED_ATTENTION_BYTES)


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention, softmax(Q Kᵀ / sqrt(d_k) + mask) V per head (Vaswani et al., arXiv
    1706.03762, §3.2.1, Eq. 1); with n_kv_head < n_head each key/value head serves n_head / n_kv_head
    query heads (grouped-query attention, Ainslie et al., arXiv 2305.13245, §2.2)."""

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.hd = config.n_head, config.kv_heads, config.hd
        qkv_bias = config.bias if config.qkv_bias is None else config.qkv_bias
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.hd, bias=qkv_bias)
        self.c_proj = nn.Linear(self.n_head * self.hd, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.hd, config.norm_eps), RMSNorm(self.hd, config.norm_eps)
        self.qk_norm = config.qk_norm
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, mask, rope=None, cache=None, layer=None, slot=None):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split([self.n_head * self.hd, self.n_kv_head * self.hd, self.n_kv_head * self.hd], dim=2)
        q, k, v = q.view(B, T, -1, self.hd), k.view(B, T, -1, self.hd), v.view(B, T, -1, self.hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rope is not None:  # under autocast cos/sin are fp32: rotate in fp32, back to v's (the compute) dtype
            q, k = apply_rope(q, *rope).to(v.dtype), apply_rope(k, *rope).to(v.dtype)
        if cache is not None:
            if cache.k[layer].dtype != k.dtype or cache.v[layer].dtype != v.dtype:  # a cache made in another dtype
                cache.k[layer], cache.v[layer] = cache.k[layer].to(k.dtype), cache.v[layer].to(v.dtype)
            if slot is not None:  # sampling.decode_step: a tensor slot and the whole cache, shapes never change
                cache.k[layer].index_copy_(2, slot, k)
                cache.v[layer].index_copy_(2, slot, v)
                k, v = cache.k[layer], cache.v[layer]
            else:
                start, end = cache.length, cache.length + T
                cache.k[layer][:, :, start:end], cache.v[layer][:, :, start:end] = k, v
                k, v = cache.k[layer][:, :, :end], cache.v[layer][:, :, :end]
        dropout = self.dropout if self.training else 0.0
        gqa = self.n_kv_head != self.n_head  # query head i reads key/value head i // (n_head / n_kv_head)
        if slot is not None:  # one query per row: the math kernel's scores are [B, H, 1, S], no need to expand k/v
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        elif (cache is not None and T == 1 and not dropout) or use_grouped_attention(q, k.shape[2], dropout):
            y = grouped_attention(q, k, v, mask)  # a decoding step (SDPA's CPU flash kernel tiles for long queries), or CPU bf16
        elif isinstance(mask, str):  # 'causal' or 'none': let SDPA pick its fastest kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=mask == 'causal', enable_gqa=gqa)
        else:
            if gqa:  # SDPA has no fused kernel for GQA with a mask (CUDA falls back to [B, H, T, S] math): expand
                k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.hd)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GELU (Hendrycks & Gimpel, arXiv 1606.08415; GPT-2's tanh approximation) / ReLU:
    c_proj(act(c_fc x)). SwiGLU (Shazeer, arXiv 2002.05202, Eq. 6):
    c_proj(silu(x W_gate) * (x W_up)), with W_gate and W_up stacked in c_fc's rows (gate first)."""

    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        width = 2 * config.ffn if self.kind == 'swiglu' else config.ffn
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.c_proj = nn.Linear(config.ffn, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == 'swiglu':
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == 'relu':
            h = F.relu(h)
        else:  # GPT-2 was trained with the tanh approximation of GELU; exact GELU would not match its logits
            h = F.gelu(h, approximate='tanh')
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm block (GPT-2, Radford et al. 2019, §2.3: layer norm at each sub-block's input):
    x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, mask, rope=None, cache=None, layer=None, slot=None):
        x = x + self.attn(self.ln_1(x), mask, rope, cache, layer, slot)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos == 'learned':
            modules['wpe'] = nn.Embedding(config.block_size + config.pos_offset, config.n_embd)
        modules.update(drop=nn.Dropout(config.dropout),
                       h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                       ln_f=make_norm(config, config.n_embd))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # tied, as in GPT-2
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def init_weights(self):
        """'gpt2': N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layer)) (GPT-2 paper §2.3).
        'pytorch': each module's own default (nn.Linear U(+-1/sqrt(fan_in)), nn.Embedding N(0, 1)),
        meant with tie_embeddings=False: the toy teacher learns faster from it (87% vs 57% valid
        answers after 1000 SFT steps; README, "the toy teacher")."""
        if self.config.init not in ('gpt2', 'pytorch'):
            raise ValueError(f"init must be 'gpt2' or 'pytorch', got {self.config.init!r}")
        for module in self.modules():
            if isinstance(module, RMSNorm):
                torch.nn.init.ones_(module.weight)
            elif self.config.init == 'pytorch':
                if module is not self and hasattr(module, 'reset_parameters'):
                    module.reset_parameters()
            elif isinstance(module, nn.Linear):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                torch.nn.init.ones_(module.weight)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
        if self.config.init == 'gpt2':
            for name, p in self.named_parameters():
                if name.endswith('c_proj.weight'):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and 'wpe' in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def head_weight(self):
        """lm_head's rows of the real vocabulary: padding rows beyond tokenizer_vocab get no logit,
        so they are never sampled and carry no probability mass in any loss."""
        w = self.lm_head.weight
        return w[:self.config.tokenizer_vocab] if self.config.tokenizer_vocab else w
    # ----------------------------------------------------------------------------------------
    def _positions_and_mask(self, T, attention_mask, cache, device):
        """Position ids [B or 1, T] and the attention mask for T new tokens.

        Left padding shifts each row's positions so its first real token sits at position 0.
        A padded query is allowed to attend to itself so its softmax never sees an empty row
        (its output is garbage but finite, and nothing reads it).
        """
        past = cache.length if cache is not None else 0
        if attention_mask is None and (cache is None or not cache.padded):
            pos = torch.arange(past, past + T, device=device).unsqueeze(0)
            if cache is not None:  # kept up to date for sampling.decode_step, which reads them
                cache.valid[:, past:past + T] = True
                cache.n_valid += T
            if T == 1:
                return pos, 'none'
            return pos, 'causal' if past == 0 else self._cached_causal(T, past, None, device)
        B = attention_mask.shape[0] if attention_mask is not None else cache.valid.shape[0]
        new_valid = (attention_mask.bool() if attention_mask is not None
                     else torch.ones(B, T, dtype=torch.bool, device=device))
        n_before = cache.n_valid if cache is not None else torch.zeros(B, dtype=torch.long, device=device)
        pos = (n_before[:, None] + new_valid.long().cumsum(1) - 1).clamp(min=0)
        if cache is not None:
            cache.valid[:, past:past + T] = new_valid
            cache.n_valid.add_(new_valid.long().sum(1))  # in place: compiled decoding marked this tensor
            cache.padded = cache.padded or not bool(new_valid.all())
            key_valid = cache.valid[:, :past + T]
        else:
            key_valid = new_valid
        return pos, self._cached_causal(T, past, key_valid, device)

    @staticmethod
    def _slot_positions_and_mask(cache, slot):
        """sampling.decode_step's positions [B, 1] (each row's count of real tokens so far, as
        _positions_and_mask counts them) and its mask [B, 1, 1, S] over every cache slot: the valid
        keys, this token's own slot included; slots not yet written are invalid."""
        pos = cache.n_valid[:, None].clone()
        cache.valid.index_fill_(1, slot, True)
        cache.n_valid.add_(1)  # in place: the tensors a compiled step captured stay the cache's
        return pos, cache.valid[:, None, None, :]

    @staticmethod
    def _packed_positions_and_mask(segments):
        """Packed rows (several sequences side by side in one row, `segments` [B, T] numbering them):
        each sequence restarts at position 0 and attends only to its own earlier tokens, so its
        logits equal those it gets alone in a padded batch."""
        B, T = segments.shape
        idx = torch.arange(T, device=segments.device).expand(B, T)
        starts = torch.ones_like(segments, dtype=torch.bool)
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
        pos = idx - torch.cummax(torch.where(starts, idx, 0), dim=1).values
        same = segments[:, :, None] == segments[:, None, :]
        return pos, (same & torch.ones(T, T, dtype=torch.bool, device=segments.device).tril())[:, None]

    @staticmethod
    def _cached_causal(T, past, key_valid, device):
        S = past + T
        q_idx = torch.arange(past, S, device=device)[:, None]
        k_idx = torch.arange(S, device=device)[None, :]
        allowed = (k_idx <= q_idx)[None, None]                     # [1, 1, T, S]
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, None, :]
            allowed = allowed | (k_idx == q_idx)[None, None]       # never an empty row
        return allowed

    def forward(self, idx, targets=None, attention_mask=None, cache=None, head_fn=None, segments=None, slot=None):
        """idx [B, T] -> logits [B, T, V] (and mean CE over targets != -1 when targets are given);
        V = config.logit_vocab, the real vocabulary (padding rows of the embedding are left out).

        attention_mask [B, T]: 1 for real tokens, 0 for (left) padding. With `cache`, idx holds
        only the new tokens and the cache is advanced. With `head_fn`, returns
        head_fn(hidden [B, T, d], head weight [V, d]) instead of logits. `segments` [B, T]: packed
        rows, one id per sequence, -1 on padding (dataset.InstructSet.packed_sft_batch); no cache.
        `slot` [1] (long tensor): the static-shape decoding step (sampling.decode_step), one token per row.
        """
        B, T = idx.shape
        past = cache.length if cache is not None and slot is None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size "
                             f"{self.config.block_size}: shorten the prompt or max_new_tokens")
        if slot is not None:  # reads no Python int of the cache: a compiled step is not re-traced per step
            pos, mask = self._slot_positions_and_mask(cache, slot)
        elif segments is not None:
            if cache is not None or attention_mask is not None:
                raise ValueError("segments (packed rows) cannot be combined with a cache or an attention_mask")
            pos, mask = self._packed_positions_and_mask(segments)
        else:
            pos, mask = self._positions_and_mask(T, attention_mask, cache, idx.device)
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos == 'learned':
            x = x + self.transformer.wpe(pos + self.config.pos_offset)
        else:
            rope = rope_cos_sin(self.config, pos, x.dtype)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, mask, rope, cache, i, slot)
        if cache is not None and slot is None:
            cache.length += T
        x = self.transformer.ln_f(x)
        if head_fn is not None:
            return head_fn(x, self.head_weight())
        logits = F.linear(x, self.head_weight())
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss


# the decoding modes sampling.generate offers: 'eager' (forward with a cache), 'static' (forward with a
# slot: sampling.decode_step), 'compile' (that step under torch.compile)
DECODE_MODES = ('eager', 'static', 'compile')


def flops_per_token(config, n_params):
    """Training FLOPs per token: 6N for the matmuls plus 12 * L * (n_head * head_dim) * T for the
    attention scores and their weighted sum (PaLM, arXiv 2204.02311, appendix B, as in nanoGPT;
    with grouped-query attention every query head still attends, so n_head counts)."""
    return 6 * n_params + 12 * config.n_layer * config.n_head * config.hd * config.block_size


# Dense (no 2:4 sparsity) bf16 tensor-core peak of one GPU in FLOP/s, from NVIDIA's data sheets;
# the first name contained in torch.cuda.get_device_name() wins, so 'H100 PCIe' precedes 'H100'.
PEAK_BF16_FLOPS = (('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('A100', 312e12))


def peak_flops(device_name):
    """The bf16 peak of the GPU called `device_name`, or 0.0 when it is not in PEAK_BF16_FLOPS
    (train.py then logs no MFU unless given `peak_flops`)."""
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in device_name), 0.0)


def mfu(tokens_per_s, config, n_params, peak):
    """Model FLOPs utilisation (PaLM appendix B): the training FLOP/s the step achieves,
    tokens/s * flops_per_token, as a fraction of one device's peak FLOP/s."""
    return tokens_per_s * flops_per_token(config, n_params) / peak
