"""
The GPT-2 architecture, nanoGPT style: learned positions, pre-LayerNorm blocks, GELU MLP, tied
input/output embeddings. Adds what distillation needs on top of a plain LM:

- `forward(..., head_fn=...)` hands the final hidden states and the `lm_head` weight to a loss
  (kl.chunked_kd_loss) so the full [N, V] logits never have to exist; doing it inside `forward`
  keeps DDP/FSDP hooks in charge of the parameters.
- batched prompts of different lengths by left padding + an attention mask, with a key/value cache;
- `generate(...)`, optionally drawing tokens from a mixture with a second model (MiniLLM §2.2,
  teacher-mixed sampling) with both caches stepped in the same loop;
- `from_pretrained`: Hugging Face GPT-2 checkpoints (local dir or hub name).
"""
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True  # lm_head shares wte's weight (GPT-2); False: a separate [V, d] head
    init: str = 'gpt2'           # 'gpt2' | 'pytorch' (module defaults; the tiny toy models learn faster)


# (n_layer, n_head, n_embd, block_size). The GPT-2 rows are OpenAI's released sizes; the 6.7B and
# 13B rows are the usual OPT/LLaMA-class shapes, for memory planning and FSDP runs.
PRESETS = {
    'gpt2':        (12, 12, 768, 1024),
    'gpt2-medium': (24, 16, 1024, 1024),
    'gpt2-large':  (36, 20, 1280, 1024),
    'gpt2-xl':     (48, 25, 1600, 1024),
    'gpt-6.7b':    (32, 32, 4096, 2048),
    'gpt-13b':     (40, 40, 5120, 2048),
}


def preset_config(name, **overrides):
    n_layer, n_head, n_embd, block_size = PRESETS[name]
    cfg = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size)
    cfg.update(overrides)
    return GPTConfig(**cfg)


class KVCache:
    """Preallocated keys/values for every layer plus, per row, which key slots are real tokens.

    `valid` [B, S] marks non-padding keys; `n_valid` [B] counts them so that the next token's
    position id is right for left-padded rows.
    """

    def __init__(self, config, batch_size, max_len, device, dtype):
        hd = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, max_len, hd)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.n_valid = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0          # slots filled so far (same for every row)
        self.padded = False      # any padding seen: then attention needs an explicit mask

    @property
    def max_len(self):
        return self.valid.shape[1]


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, mask, cache=None, layer=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            if cache.k[layer].dtype != k.dtype:  # FSDP mixed precision: fp32 weights stored, bf16 computed
                cache.k[layer], cache.v[layer] = cache.k[layer].to(k.dtype), cache.v[layer].to(k.dtype)
            start = cache.length
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k = cache.k[layer][:, :, :start + T]
            v = cache.v[layer][:, :, :start + T]
        dropout = self.dropout if self.training else 0.0
        if isinstance(mask, str):  # 'causal' or 'none': let SDPA pick its fastest kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=mask == 'causal')
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # GPT-2 was trained with the tanh approximation of GELU; exact GELU would not match its logits
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate='tanh')))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask, cache=None, layer=None):
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # tied, as in GPT-2
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def init_weights(self):
        """'gpt2': N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layer)) (GPT-2 paper §2.3).
        'pytorch': each module's own default (nn.Linear U(+-1/sqrt(fan_in)), nn.Embedding N(0, 1)),
        meant with tie_embeddings=False. On the toy task a 4-layer, 128-wide model with an untied head
        samples valid answers for 87% of validation prompts after 1000 SFT steps from it, 57% from
        GPT-2's init (README, "the toy teacher")."""
        if self.config.init not in ('gpt2', 'pytorch'):
            raise ValueError(f"init must be 'gpt2' or 'pytorch', got {self.config.init!r}")
        for module in self.modules():
            if self.config.init == 'pytorch':
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
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

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
            cache.n_valid = cache.n_valid + new_valid.long().sum(1)
            cache.padded = cache.padded or not bool(new_valid.all())
            key_valid = cache.valid[:, :past + T]
        else:
            key_valid = new_valid
        return pos, self._cached_causal(T, past, key_valid, device)

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

    def forward(self, idx, targets=None, attention_mask=None, cache=None, head_fn=None, segments=None):
        """idx [B, T] -> logits [B, T, V] (and mean CE over targets != -1 when targets are given).

        attention_mask [B, T]: 1 for real tokens, 0 for (left) padding. With `cache`, idx holds
        only the new tokens and the cache is advanced. With `head_fn`, returns
        head_fn(hidden [B, T, d], lm_head.weight) instead of logits. `segments` [B, T]: packed
        rows, one id per sequence, -1 on padding (dataset.InstructSet.packed_sft_batch); no cache.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size "
                             f"{self.config.block_size}: shorten the prompt or max_new_tokens")
        if segments is not None:
            if cache is not None or attention_mask is not None:
                raise ValueError("segments (packed rows) cannot be combined with a cache or an attention_mask")
            pos, mask = self._packed_positions_and_mask(segments)
        else:
            pos, mask = self._positions_and_mask(T, attention_mask, cache, idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, mask, cache, i)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)
        if head_fn is not None:
            return head_fn(x, self.lm_head.weight)
        logits = self.lm_head(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None,
                 attention_mask=None, generator=None, mix_model=None, mix_alpha=0.0, all_done=None):
        """Sample up to `max_new_tokens` after each (left-padded) prompt, with a KV cache.

        Returns [B, T + n] token ids; a row that emitted `eos_id` is filled with `eos_id` after it.
        `temperature=0` is greedy. `all_done(done) -> bool` decides when to stop early; under FSDP it
        must agree across ranks, since every decoding step all-gathers parameters. With `mix_model` and `mix_alpha` > 0, tokens are drawn from
        p~ = alpha * softmax(mix_model) + (1 - alpha) * softmax(self): MiniLLM §2.2, teacher-mixed
        sampling, Eq. p~(y_t|y<t,x) = alpha p(y_t|y<t,x) + (1 - alpha) q_theta(y_t|y<t,x).
        """
        B, T = idx.shape
        n = min(max_new_tokens, self.config.block_size - T)
        if n <= 0:
            raise ValueError(f"prompt of {T} tokens leaves no room in block_size "
                             f"{self.config.block_size}: shorten it")
        dtype = next(self.parameters()).dtype
        cache = KVCache(self.config, B, T + n, idx.device, dtype)
        models = [(self, cache)]
        if mix_model is not None and mix_alpha > 0:
            mix_dtype = next(mix_model.parameters()).dtype
            models.append((mix_model, KVCache(mix_model.config, B, T + n, idx.device, mix_dtype)))
        out = torch.full((B, T + n), eos_id if eos_id is not None else 0, dtype=idx.dtype, device=idx.device)
        out[:, :T] = idx
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        step_in, step_mask = idx, attention_mask
        for t in range(n):
            logits = [m(step_in, attention_mask=step_mask, cache=c, head_fn=last_position_logits) for m, c in models]
            step_mask = None
            nxt = sample_next(logits, temperature, top_k, top_p, generator, mix_alpha if len(models) > 1 else 0.0)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done = done | (nxt == eos_id)
            out[:, T + t] = nxt
            step_in = nxt[:, None]
            if eos_id is not None and (all_done(done) if all_done else bool(done.all())):
                return out[:, :T + t + 1]
        return out

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """Load Hugging Face GPT-2 weights from a local directory (config.json plus
        model.safetensors or pytorch_model.bin) or, when online, by hub name (gpt2, gpt2-medium,
        gpt2-large, gpt2-xl)."""
        path = name_or_dir
        if not os.path.isdir(path):
            if name_or_dir not in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'):
                raise ValueError(f"{name_or_dir!r} is neither a directory nor a GPT-2 hub name "
                                 f"(gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
            from huggingface_hub import snapshot_download  # only when online
            path = snapshot_download(name_or_dir, allow_patterns=['config.json', 'model.safetensors'])
        with open(os.path.join(path, 'config.json')) as f:
            hf = json.load(f)
        config = GPTConfig(block_size=hf['n_positions'], vocab_size=hf['vocab_size'], n_layer=hf['n_layer'],
                           n_head=hf['n_head'], n_embd=hf['n_embd'], dropout=dropout, bias=True)
        model = cls(config)
        model.load_state_dict(hf_gpt2_state_dict(read_hf_weights(path)))
        return model


def read_hf_weights(path):
    st, pt = os.path.join(path, 'model.safetensors'), os.path.join(path, 'pytorch_model.bin')
    if os.path.exists(st):
        from safetensors.torch import load_file
        return load_file(st)
    if os.path.exists(pt):
        return torch.load(pt, map_location='cpu', weights_only=True)
    raise FileNotFoundError(f"{path} has neither model.safetensors nor pytorch_model.bin")


def hf_gpt2_state_dict(sd):
    """Map Hugging Face GPT2LMHeadModel names/layouts to ours. HF stores the attention and MLP
    projections as Conv1D ([in, out]); nn.Linear wants [out, in], hence the transposes."""
    sd = {k[len('transformer.'):] if k.startswith('transformer.') else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(('.attn.bias', '.attn.masked_bias')) and k != 'lm_head.weight'}
    conv1d = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
    out = {}
    for k, v in sd.items():
        out['transformer.' + k] = v.t().contiguous() if k.endswith(conv1d) else v
    out['lm_head.weight'] = out['transformer.wte.weight']
    return out


def last_position_logits(hidden, weight):
    """head_fn for decoding: fp32 logits [B, V] of the last position only. At the prompt step
    this skips the [B, T, V] logits nobody reads (as large as T decoding steps' worth of lm_head)."""
    return F.linear(hidden[:, -1], weight).float()


def next_token_logprobs(logits, temperature=1.0, top_k=None, top_p=None, mix_alpha=0.0):
    """Log-probabilities [B, V] of the distribution the next token is drawn from.

    `logits` is [B, V], or a pair [own, mix] of last-position logits. top_k / top_p (nucleus)
    filter each model's tempered distribution; with a pair and mix_alpha > 0 they are mixed as
    p~ = alpha * p_mix + (1 - alpha) * p_own (MiniLLM §2.2, teacher-mixed sampling).
    """
    if not isinstance(logits, (list, tuple)):
        logits = [logits]
    logprobs = [_filtered_logprobs(z, temperature, top_k, top_p) for z in logits]
    if len(logprobs) == 2 and mix_alpha > 0:
        return torch.logaddexp(logprobs[0] + math.log1p(-mix_alpha), logprobs[1] + math.log(mix_alpha))
    return logprobs[0]


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None, mix_alpha=0.0):
    """Draw one token per row from `next_token_logprobs(...)`; temperature 0 is greedy."""
    if temperature == 0 and (torch.is_tensor(logits) or len(logits) == 1 or mix_alpha == 0):
        # greedy from one model: top-k / top-p always keep the top token and log_softmax keeps the
        # order, so the argmax of the raw logits is the answer without two more passes over [B, V]
        return (logits if torch.is_tensor(logits) else logits[0]).argmax(-1)
    lp = next_token_logprobs(logits, temperature, top_k, top_p, mix_alpha)
    if temperature == 0:
        return lp.argmax(-1)
    return torch.multinomial(lp.exp(), 1, generator=generator).squeeze(-1)


def _filtered_logprobs(logits, temperature, top_k, top_p):
    z = logits.float()
    if temperature > 0 and temperature != 1:
        z = z / temperature
    if top_k is not None and 0 < top_k < z.size(-1):
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        cum = sorted_z.softmax(-1).cumsum(-1)
        drop = cum - sorted_z.softmax(-1) >= top_p     # keep the smallest prefix whose mass reaches top_p
        sorted_z = sorted_z.masked_fill(drop, float('-inf'))
        z = torch.full_like(z, float('-inf')).scatter(-1, order, sorted_z)
    return torch.log_softmax(z, dim=-1)


def flops_per_token(config, n_params):
    """Training FLOPs per token: 6N for the matmuls plus 12 * L * d * T for attention
    (PaLM appendix B accounting, as in nanoGPT)."""
    return 6 * n_params + 12 * config.n_layer * config.n_embd * config.block_size


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
