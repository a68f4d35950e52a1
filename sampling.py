"""
The next token of a decoding step: the distribution it is drawn from and an exact, fast way to draw it.

- `next_token_logprobs`: softmax(z / temperature) on each model's top-k / top-p set, mixed with a
  second model as p~ = alpha p_mix + (1 - alpha) p_own (MiniLLM §2.2, teacher-mixed sampling).
- `sample_next`: one token per row from exactly that distribution. A mixture is sampled by
  composition (each row first picks its model with probability alpha, then draws from that model
  alone), which is the mixture's definition and needs only the picked model's distribution; one
  model's distribution is sampled by inverting its CDF in two levels (`inverse_cdf_sample`), which
  costs a softmax and a blocked sum over [B, V] instead of torch.multinomial's [B, V] exponential
  draws (18 ms vs 0.5 ms for 8 rows of GPT-2's 50257 tokens on one CPU core).
- `repeated_ngram_mask`: the no-repeat-n-gram rule of the MiniLLM evaluation.

Every draw takes its randomness from `uniforms` [B, 3] (float64 in [0, 1)), one row per sequence,
so a caller that keeps a row's uniforms attached to it (`generate` when finished rows leave the
batch) draws the same tokens whichever rows share the batch. `generate` decodes with the KV cache
of model.py, one step at a time, or with `decode_step`, gpt-fast's static-shape step (compiled or not).
"""
import functools
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from model import DECODE_MODES, KVCache

CDF_BLOCK = 256   # inverse_cdf_sample's block: V / 256 block sums, then 256 entries of one block



def filtered_logprobs(logits, temperature, top_k, top_p):
    """log softmax(z / temperature) restricted to the top_k largest logits and then to the smallest
    set whose probability reaches top_p (nucleus sampling), -inf elsewhere; fp32 (fp64 stays fp64)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
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


def next_token_logprobs(logits, temperature=1.0, top_k=None, top_p=None, mix_alpha=0.0):
    """Log-probabilities [B, V] of the distribution the next token is drawn from.

    `logits` is [B, V], or a pair [own, mix] of last-position logits. top_k / top_p (nucleus)
    filter each model's tempered distribution; with a pair and mix_alpha > 0 they are mixed as
    p~ = alpha * p_mix + (1 - alpha) * p_own (MiniLLM §2.2, teacher-mixed sampling).
    """
    if not isinstance(logits, (list, tuple)):
        logits = [logits]
    logprobs = [filtered_logprobs(z, temperature, top_k, top_p) for z in logits]
    if len(logprobs) == 2 and mix_alpha >= 1:
        return logprobs[1]                         # all teacher: log(1 - alpha) would be log 0
    if len(logprobs) == 2 and mix_alpha > 0:
        return torch.logaddexp(logprobs[0] + math.log1p(-mix_alpha), logprobs[1] + math.log(mix_alpha))
    return logprobs[0]


def draw_uniforms(n, device, generator=None):
    """[n, 3] float64 uniforms in [0, 1) for n rows: column 0 picks a mixture's model, 1 and 2 drive
    inverse_cdf_sample's two levels."""
    return torch.rand(n, 3, dtype=torch.float64, device=device, generator=generator)


def inverse_cdf_sample(probs, uniforms):
    """One index per row of probs [B, V] (non-negative, any positive total), drawn with probability
    probs[i] / sum(probs), by inverting the CDF (the inverse transform method) in two levels: a
    block of CDF_BLOCK entries from the float64 CDF of the block sums (uniforms[:, 1]), then an
    entry of that block from its own float64 CDF (uniforms[:, 2]).

    Exact up to float64 rounding of the sums: P(i) = S_k / sum_k' S_k' * probs[i] / S_k over the
    block k holding i. A single fp32 cumsum over V would not be: each entry's share would carry a
    rounding of up to half an ulp of the running sum (3e-8 near 1), which is the whole probability
    of a rare token. The search targets (1 - u) * total lie in (0, total], and the first CDF entry
    that reaches them never belongs to an entry of probability 0.
    """
    B, V = probs.shape
    b = min(CDF_BLOCK, V)
    n_full = V // b
    sums = probs[:, :n_full * b].reshape(B, n_full, b).sum(-1, dtype=torch.float64)
    if V % b:
        sums = torch.cat([sums, probs[:, n_full * b:].sum(-1, keepdim=True, dtype=torch.float64)], 1)
    cdf = sums.cumsum(-1)
    block = torch.searchsorted(cdf, (1 - uniforms[:, 1:2]) * cdf[:, -1:]).squeeze(1)
    cols = block[:, None] * b + torch.arange(b, device=probs.device)
    inside = probs.gather(1, cols.clamp(max=V - 1)).double().masked_fill(cols >= V, 0)
    cdf = inside.cumsum(-1)
    return block * b + torch.searchsorted(cdf, (1 - uniforms[:, 2:3]) * cdf[:, -1:]).squeeze(1)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None, mix_alpha=0.0, uniforms=None):
    """Draw one token per row from `next_token_logprobs(...)`; temperature 0 is greedy.

    A pair [own, mix] with mix_alpha > 0 is sampled by composition: row b takes its token from
    `mix` when uniforms[b, 0] < mix_alpha, else from `own`, so P(v) = alpha p_mix(v) + (1 - alpha)
    p_own(v), the mixture itself. `uniforms` [B, 3] (draw_uniforms) default to fresh ones from
    `generator`.
    """
    pair = not torch.is_tensor(logits)
    if temperature == 0:
        if not pair or len(logits) == 1 or mix_alpha == 0:
            # greedy from one model: top-k / top-p always keep the top token and log_softmax keeps the
            # order, so the argmax of the raw logits is the answer without two more passes over [B, V]
            return (logits[0] if pair else logits).argmax(-1)
        return next_token_logprobs(logits, temperature, top_k, top_p, mix_alpha).argmax(-1)
    own = logits[0] if pair else logits
    if uniforms is None:
        uniforms = draw_uniforms(own.shape[0], own.device, generator)
    if pair and len(logits) == 2 and mix_alpha > 0:
        from_mix = uniforms[:, 0] < mix_alpha
        return torch.where(from_mix, sample_next(logits[1], temperature, top_k, top_p, uniforms=uniforms),
                           sample_next(own, temperature, top_k, top_p, uniforms=uniforms))
    if (top_k is None or top_k <= 0 or top_k >= own.shape[-1]) and (top_p is None or top_p >= 1):
        probs = torch.softmax(own.float() / temperature if temperature != 1 else own.float(), dim=-1)
    else:
        probs = filtered_logprobs(own, temperature, top_k, top_p).exp()
    return inverse_cdf_sample(probs, uniforms)


def repeated_ngram_mask(tokens, real, n, vocab):
    """[B, vocab] True for the tokens that would repeat an n-gram of each row's real tokens.

    The banned tokens of a row are those that followed an earlier occurrence of its last n - 1
    tokens (the rule of Hugging Face's NoRepeatNGramLogitsProcessor, used by the MiniLLM
    evaluation). Windows that touch padding (`real` False) do not count.
    """
    B, L = tokens.shape
    banned = torch.zeros(B, vocab, dtype=torch.bool, device=tokens.device)
    if L < n:
        return banned
    grams = tokens.unfold(1, n, 1)                      # [B, L - n + 1, n]
    ok = real.unfold(1, n, 1).all(-1)
    last = tokens[:, L - n + 1:]                          # the n - 1 tokens the next one extends
    hit = (grams[:, :, :-1] == last[:, None]).all(-1) & ok & real[:, L - n + 1:].all(-1, keepdim=True)
    rows, cols = hit.nonzero(as_tuple=True)
    nxt = grams[rows, cols, -1]
    keep = nxt < vocab
    banned[rows[keep], nxt[keep]] = True
    return banned


def fsdp_gathered(generate_fn):
    """generate with the weights of each FSDP2 model (model, mix_model) that parallel.wrap flagged
    `gather_for_decoding` all-gathered once for the whole generation instead of once per token and
    block (FSDP's reshard_after_forward), then resharded as training expects (the root unsharded
    after its forward, the blocks resharded). Collective, like every decoding step under FSDP."""
    @functools.wraps(generate_fn)
    def wrapper(model, idx, *args, **kwargs):
        from torch.distributed.fsdp import FSDPModule
        roots = [m for m in (model, kwargs.get('mix_model')) if getattr(m, 'gather_for_decoding', False)]
        for root in roots:
            root.set_reshard_after_forward(False)
            for m in root.modules():
                if isinstance(m, FSDPModule):
                    m.unshard()  # the registered parameters become the gathered ones: caches in their dtype
        try:
            return generate_fn(model, idx, *args, **kwargs)
        finally:
            for root in roots:
                root.set_reshard_after_forward(True)
                root.set_reshard_after_forward(False, recurse=False)  # FSDP2's own choice for the root
                for m in root.modules():
                    if isinstance(m, FSDPModule):
                        m.reshard()
    return wrapper


def cpu_prepacked(generate_fn):
    """generate with each block nn.Linear of model and mix_model on CPU multiplying by a copy of its weight
    in bf16 that oneDNN prepacked (torch.ops.mkldnn._reorder_linear_weight, as inductor's weight freezing
    does), made when the generation starts and dropped when it ends. F.linear hands oneDNN the plain
    [out, in] weight (reordered into its blocked layout at every call, judging by the time: same kernel,
    same bits); decoding's matmuls of a few rows are bound by reading the weights, and packed ones run
    1.3-2x faster (SmolLM2-135M's block shapes at batch 16 / 1, one core). One more copy of the block
    weights in memory while generating. Packed: bf16 weights, and under bf16 autocast fp32 ones too, from
    the bf16 copy autocast's F.linear would multiply by (a MiniLLM rollout's student; its teacher is held
    in bf16). The head is left as it is: it is no module call (GPT.forward reads head_weight()), and at
    batch 16 packing it costs about what its matmuls gain. Not under torch.compile (decode='compile') or
    FSDP (sharded DTensor weights; fsdp_gathered's gathered ones are packed)."""
    @functools.wraps(generate_fn)
    def wrapper(model, idx, *args, **kwargs):
        linears = []
        bf16_compute = not torch.is_autocast_enabled('cpu') or torch.get_autocast_dtype('cpu') == torch.bfloat16
        if (idx.device.type == 'cpu' and kwargs.get('decode', 'eager') != 'compile' and bf16_compute
                and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_reorder_linear_weight')
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            # bf16 weights, and under bf16 autocast fp32 ones too, packed from the bf16 copy autocast would make
            dtypes = (torch.bfloat16, torch.float32) if torch.is_autocast_enabled('cpu') else (torch.bfloat16,)
            linears = [m for root in (model, kwargs.get('mix_model')) if root is not None for m in root.modules()
                       if isinstance(m, nn.Linear) and m is not root.lm_head and m.weight.dtype in dtypes
                       and type(m.weight.data) is torch.Tensor]
        hint = idx.numel()  # rows of the prompt's matmuls; a hint above 1 suits the decoding steps as well
        for m in linears:
            bias = None if m.bias is None else m.bias.detach().to(torch.bfloat16)
            weight = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach().to(torch.bfloat16), hint)
            m.forward = functools.partial(packed_linear, weight=weight, bias=bias)
        try:
            return generate_fn(model, idx, *args, **kwargs)
        finally:
            for m in linears:
                del m.forward  # back to nn.Linear.forward
    return wrapper


def packed_linear(x, weight, bias=None):
    """F.linear(x, W, bias) for bf16 W prepacked by torch.ops.mkldnn._reorder_linear_weight (cpu_prepacked);
    under bf16 autocast x comes in bf16 (as autocast's F.linear would cast it)."""
    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), weight, bias, 'none', [], '')


def cache_dtype(model, device_type):
    """The dtype of a model's keys and values: autocast's when it is on (the projections run in it),
    else its weights'. A cache in any other dtype would be cast at the first step (and its
    addresses, which compiled decoding marks static, lost)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return next(model.parameters()).dtype


@torch.no_grad()
@fsdp_gathered
@cpu_prepacked
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None,
             attention_mask=None, generator=None, mix_model=None, mix_alpha=0.0, all_done=None,
             no_repeat_ngram_size=0, decode='eager', on_logits=None, kv_dtype=None):
    """Sample up to `max_new_tokens` after each (left-padded) prompt, with a KV cache.

    Returns [B, T + n] token ids; a row that emitted `eos_id` is filled with `eos_id` after it.
    `temperature=0` is greedy. `all_done(finished, step) -> bool` (parallel.decoding_agreement,
    under FSDP) makes the ranks agree on the number of forwards: a decoding step all-gathers each
    model's parameters (unless fsdp_gathered holds them for the whole generation), so every rank must
    run as many forwards as every other, whatever its rows sample, its prompt width or its token
    budget. It is called by every rank before every step with this rank's `finished` (all its rows
    emitted eos_id, or its budget is spent) and returns True when every rank is finished; until then
    a finished rank keeps stepping with a one-token forward of each model whose output it drops
    (`_idle_forwards`). With `mix_model` and
    `mix_alpha` > 0, tokens are drawn from p~ = alpha * softmax(mix_model) + (1 - alpha) *
    softmax(model): MiniLLM §2.2, teacher-mixed sampling, Eq. p~(y_t|y<t,x) = alpha p(y_t|y<t,x) +
    (1 - alpha) q_theta(y_t|y<t,x), by composition (sampling.sample_next): a row's lm_head is
    computed only for the model its token comes from, while both models' bodies advance its caches.
    `no_repeat_ngram_size` n > 0: a token that would complete an n-gram already present in the
    row's real tokens (prompt and response) gets no probability (the MiniLLM evaluation uses 6);
    a row whose every token would repeat one keeps its distribution rather than have none.

    decode: 'eager' (default): a row that emitted eos_id leaves the decoding batch and both KV
    caches. 'static': after the prompt, every step is `decode_step` on the whole batch and a cache
    whose length is rounded up to a multiple of 128, so no shape changes between steps; 'compile'
    runs that step through torch.compile (inductor; CUDA graphs on GPU). Each row draws from its
    own uniforms (sampling.draw_uniforms, B rows per step whichever rows still decode), so all
    three give the same tokens for the same generator, up to float rounding of batch-size-dependent
    kernels.

    `kv_dtype`: the KV caches' dtype (default: `cache_dtype`'s). An FSDP2 model that is not gathered
    for the generation stores fp32 shards and computes in its MixedPrecisionPolicy's dtype, which its
    caller passes: a cache made in fp32 holds twice the bytes until its first write converts it.

    `on_logits(rows, t, logits, tokens)`, called after each step, receives the rows of `out` still
    decoding, the response position t, each model's fp32 logits [len(rows), V] for all those rows
    (the distribution's, after any n-gram ban) and the tokens drawn: a caller can read the log-probs
    of what was sampled off the decoding loop (rollout.collect_rollouts in fp32). With it, every
    model's lm_head runs on every row (decoding a small batch reads the whole head weight per step
    whatever the number of rows, so the cost is nearly the same).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    B, T = idx.shape
    n = min(max_new_tokens, model.config.block_size - T)
    if n <= 0:
        raise ValueError(f"prompt of {T} tokens leaves no room in block_size "
                         f"{model.config.block_size}: shorten it")
    mixing = mix_model is not None and mix_alpha > 0
    models = [model, mix_model] if mixing else [model]
    static = decode != 'eager'
    length = min(-(-(T + n) // 128) * 128, model.config.block_size) if static else T + n
    caches = [KVCache(m.config, B, length, idx.device, kv_dtype or cache_dtype(m, idx.device.type)) for m in models]
    if decode == 'compile' and idx.device.type == 'cuda':  # CUDA graphs replay the cache's own buffers
        for c in caches:
            for t in c.k + c.v + [c.valid, c.n_valid]:
                torch._dynamo.mark_static_address(t)
    out = torch.full((B, T + n), eos_id if eos_id is not None else 0, dtype=idx.dtype, device=idx.device)
    out[:, :T] = idx
    real = torch.ones(B, T + n, dtype=torch.bool, device=idx.device)
    if attention_mask is not None:
        real[:, :T] = attention_mask.bool()
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    rows = torch.arange(B, device=idx.device)  # the row of `out` each row of the decoding batch fills
    by_composition = mixing and temperature > 0  # greedy mixing needs both distributions in full
    step_in, step_mask = idx, attention_mask
    t, left = 0, B  # the response position the next step fills; rows still decoding
    for step in itertools.count():  # steps: t, plus the idle ones of a rank waiting for the others
        finished = t >= n or left == 0
        if all_done is not None:
            if all_done(finished, step):
                break
            if finished:
                _idle_forwards(models, idx)
                continue
        elif finished:
            break
        u = draw_uniforms(B, idx.device, generator)[rows]
        from_mix = u[:, 0] < mix_alpha if by_composition else None
        picks = [None] * len(models) if from_mix is None else [~from_mix, from_mix]
        heads = [None] * len(models) if on_logits is not None else picks  # the rows each lm_head runs on
        logits = [_next_logits(m, c, step_in, step_mask, head, decode if t else 'eager')
                  for m, c, head in zip(models, caches, heads)]
        step_mask = None
        if no_repeat_ngram_size > 0:
            banned = repeated_ngram_mask(out[rows, :T + t], real[rows, :T + t], no_repeat_ngram_size,
                                         logits[0].shape[-1])
            banned &= ~banned.all(-1, keepdim=True)
            logits = [z.masked_fill(banned if head is None else banned[head], float('-inf'))
                      for z, head in zip(logits, heads)]
        if from_mix is None:
            nxt = sample_next(logits, temperature, top_k, top_p, mix_alpha=mix_alpha if mixing else 0.0, uniforms=u)
        else:
            nxt = torch.empty(len(rows), dtype=idx.dtype, device=idx.device)
            for z, pick, head in zip(logits, picks, heads):
                nxt[pick] = sample_next(z if head is not None else z[pick], temperature, top_k, top_p,
                                        uniforms=u[pick])
        if on_logits is not None:
            on_logits(rows, t, logits, nxt)
        if eos_id is not None:
            nxt = torch.where(done[rows], eos_id, nxt)
            done[rows] = done[rows] | (nxt == eos_id)
        out[rows, T + t] = nxt
        step_in = nxt[:, None]
        t += 1
        if eos_id is None:
            continue
        left = int((~done).sum())  # the step's one host sync
        if 0 < left < len(rows) and not static:  # finished rows leave the batch and both caches
            keep = (~done[rows]).nonzero().squeeze(1)
            rows, step_in = rows[keep], step_in[keep]
            for c in caches:
                c.keep_rows(keep)
    return out[:, :T + t]


def _idle_forwards(models, idx):
    """One decoding step's collectives without its work: a forward of one token through each model
    (under FSDP each all-gathers its blocks' parameters, as a real step does), output dropped."""
    for m in models:
        m(idx[:1, -1:])


def _next_logits(model, cache, idx, attention_mask, pick, decode):
    """Logits [B', V] (fp32, or fp64) of the next token after idx, for the rows `pick` (bool [B], None: all)."""
    if decode == 'eager':
        return model(idx, attention_mask=attention_mask, cache=cache,
                     head_fn=lambda h, w: last_position_logits(h, w, pick))
    logits = decode_step(model, idx, cache, compiled=decode == 'compile')
    return logits if pick is None else logits[pick]


# -----------------------------------------------------------------------------
# one decoding step of the model (gpt-fast keeps its decode step and its torch.compile beside
# generate too)

def decode_step(model, idx, cache, compiled=False):
    """Logits [B, V] (fp32, or fp64) of the token after idx [B, 1] (one token per row), in the style of
    gpt-fast's static decoding step: the token's keys and values go to cache slot cache.length,
    attention runs over every slot of the preallocated cache under the mask of its valid keys,
    and no shape depends on the step, so torch.compile captures one graph for all of them
    (`compiled`: inductor; mode 'reduce-overhead', CUDA graphs, on GPU)."""
    slot = torch.full((1,), cache.length, dtype=torch.long, device=idx.device)
    if compiled:
        if idx.device.type == 'cuda':
            torch.compiler.cudagraph_mark_step_begin()
        logits = compiled_decode_forward(idx.device.type)(model, idx, cache, slot)
    else:
        logits = decode_forward(model, idx, cache, slot)
    cache.length += 1
    return logits


def last_position_logits(hidden, weight, rows=None):
    """head_fn for decoding: logits [B, V] of the last position only (bf16 / fp16 upcast to fp32), for
    the batch rows `rows` (bool [B]) when given. At the prompt step this skips the [B, T, V] logits
    nobody reads (as large as T decoding steps' worth of lm_head)."""
    h = hidden[:, -1] if rows is None else hidden[rows, -1]
    # on CPU in fp32, W @ h.T reads the [V, d] weight about 1.5-2x faster than F.linear's h @ W.T at decoding
    # batch sizes (MKL's kernel for that layout; bench.py's trl section); the [B, V] copy back is small. In bf16
    # it is the other way round (oneDNN): F.linear 5.3 ms vs 9.4 ms for SmolLM2's [49152, 576] head at batch 16
    # on one core, the same logits bit for bit
    fp32_cpu = (h.device.type == 'cpu' and h.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled('cpu'))
    z = (weight @ h.T).T.contiguous() if fp32_cpu else F.linear(h, weight)
    return z if z.dtype == torch.float64 else z.float()


def decode_forward(model, idx, cache, slot):
    """decode_step's forward: what torch.compile captures (compiled_decode_forward)."""
    return model(idx, cache=cache, slot=slot, head_fn=last_position_logits)


_COMPILED_DECODE = {}


def compiled_decode_forward(device_type):
    """decode_forward under torch.compile, one per device type, built on first use; CUDA graphs on GPU
    (one launch per step instead of one per kernel: decoding a small model is launch-bound)."""
    if device_type not in _COMPILED_DECODE:
        mode = 'reduce-overhead' if device_type == 'cuda' else None
        _COMPILED_DECODE[device_type] = torch.compile(decode_forward, dynamic=False, mode=mode)
    return _COMPILED_DECODE[device_type]
