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
so a caller that keeps a row's uniforms attached to it (GPT.generate when finished rows leave the
batch) draws the same tokens whichever rows share the batch.
"""
import math

import torch
import torch.nn.functional as F

CDF_BLOCK = 256   # inverse_cdf_sample's block: V / 256 block sums, then 256 entries of one block


def last_position_logits(hidden, weight, rows=None):
    """head_fn for decoding: logits [B, V] of the last position only (bf16 / fp16 upcast to fp32), for
    the batch rows `rows` (bool [B]) when given. At the prompt step this skips the [B, T, V] logits
    nobody reads (as large as T decoding steps' worth of lm_head)."""
    h = hidden[:, -1] if rows is None else hidden[rows, -1]
    # on CPU, W @ h.T reads the [V, d] weight about 1.5-2x faster than F.linear's h @ W.T at decoding batch
    # sizes (MKL's kernel for that layout; bench.py's trl section); the [B, V] copy back is small
    z = (weight @ h.T).T.contiguous() if h.device.type == 'cpu' and not torch.is_autocast_enabled('cpu') \
        else F.linear(h, weight)
    return z if z.dtype == torch.float64 else z.float()


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
