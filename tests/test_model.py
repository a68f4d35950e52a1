import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import model
import sampling
from components import hf as hf_interop
from components.presets import preset_config
from model import GPT, GPTConfig, KVCache
from sampling import generate, next_token_logprobs


# every family's switches on a tiny shape: the cache, padding and packing tests run on each
FAMILY_SHAPES = {
    'gpt2': dict(n_head=2),
    'opt': dict(n_head=2, **model.FAMILIES['opt'], intermediate_size=48),
    'llama3': dict(n_head=4, n_kv_head=2, **model.FAMILIES['llama'], intermediate_size=48, tie_embeddings=False,
                   rope_theta=500.0, rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0,
                                                       high_freq_factor=4.0, original_max_position_embeddings=16)),
    'qwen2': dict(n_head=4, n_kv_head=1, **model.FAMILIES['qwen2'], intermediate_size=48),
    'qwen3': dict(n_head=4, n_kv_head=2, head_dim=12, **model.FAMILIES['qwen3'], intermediate_size=48, tie_embeddings=False),
}
families = pytest.mark.parametrize('family', list(FAMILY_SHAPES))


def tiny(seed=0, family='gpt2', **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=48, vocab_size=61, n_layer=2, n_embd=32, **FAMILY_SHAPES[family])
    cfg.update(kw)
    m = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # norms and biases off their init, so every switch shows in the logits
        for name, p in m.named_parameters():
            if 'norm' in name or 'ln_' in name or name.endswith('bias'):
                p.add_(0.1 * torch.randn_like(p))
    return m


def left_pad(rows, pad=0):
    T = max(len(r) for r in rows)
    idx = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return idx, mask


def test_matches_transformers_gpt2(tmp_path):
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(n_positions=40, n_embd=48, n_layer=3, n_head=4, vocab_size=97,
                                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    # move LayerNorm/bias parameters off their init so the test sees every tensor's mapping
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    idx = torch.randint(0, 97, (2, 17))
    ref = hf(idx).logits
    for safe in (True, False):  # model.safetensors and pytorch_model.bin
        d = tmp_path / f'safe{safe}'
        hf.save_pretrained(d, safe_serialization=safe)
        ours = hf_interop.from_pretrained(str(d)).eval()
        with torch.no_grad():
            diff = (ours(idx) - ref).abs().max().item()
        assert diff < 1e-4, diff


def test_from_pretrained_bad_name():
    with pytest.raises(ValueError, match='neither a directory'):
        hf_interop.from_pretrained("/no/such/dir")


def greedy_reference(m, prompt, n, eos_id=None):
    """No cache, no padding: recompute the whole prefix for every new token."""
    seq = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            logits = m(torch.tensor([seq]))[0, -1]
        seq.append(int(logits.argmax()))
        if eos_id is not None and seq[-1] == eos_id:
            break
    return seq[len(prompt):]


@families
def test_kv_cache_greedy_equals_recompute_with_left_padding(family):
    m = tiny(family=family)
    prompts = [[5, 9, 3], [1, 2, 3, 4, 5, 6, 7, 8], [40], [7, 7, 7, 7, 7]]
    idx, mask = left_pad(prompts)
    out = generate(m, idx, 12, temperature=0, attention_mask=mask)
    for i, p in enumerate(prompts):
        assert out[i, idx.shape[1]:].tolist() == greedy_reference(m, p, 12)


@families
def test_padded_forward_equals_unpadded_rows(family):
    m = tiny(1, family=family)
    prompts = [[3, 1, 4, 1, 5, 9, 2], [2, 7]]
    idx, mask = left_pad(prompts)
    with torch.no_grad():
        batched = m(idx, attention_mask=mask)
        for i, p in enumerate(prompts):
            single = m(torch.tensor([p]))[0]
            assert torch.allclose(batched[i, idx.shape[1] - len(p):], single, atol=1e-5)


@families
def test_packed_forward_equals_rows_alone(family):
    m = tiny(3, family=family)
    seqs = [[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7, 9], [3, 2]]
    rows = [[0, 1], [2, 3]]  # two sequences per row, the second row ending in two pads
    T = max(sum(len(seqs[j]) for j in r) for r in rows) + 2
    idx = torch.zeros(len(rows), T, dtype=torch.long)
    seg = torch.full((len(rows), T), -1, dtype=torch.long)
    where = {}
    for i, r in enumerate(rows):
        c = 0
        for j in r:
            idx[i, c:c + len(seqs[j])], seg[i, c:c + len(seqs[j])] = torch.tensor(seqs[j]), j
            where[j] = (i, c)
            c += len(seqs[j])
    pos, _ = GPT._packed_positions_and_mask(seg)
    assert pos[0].tolist()[:8] == [0, 1, 2, 3, 4, 0, 1, 2]  # every sequence restarts at position 0
    with torch.no_grad():
        packed = m(idx, segments=seg)
        for j, s in enumerate(seqs):
            i, c = where[j]
            assert torch.allclose(packed[i, c:c + len(s)], m(torch.tensor([s]))[0], atol=1e-5)
    with pytest.raises(ValueError, match='segments'):
        m(idx, segments=seg, attention_mask=torch.ones_like(idx))


@families
def test_chunked_prefill_with_cache_equals_full_forward(family):
    m = tiny(2, family=family)
    x = torch.randint(0, 61, (2, 20))
    cache = KVCache(m.config, 2, 20, 'cpu', torch.float32)
    with torch.no_grad():
        full = m(x)
        a = m(x[:, :8], cache=cache)
        b = m(x[:, 8:15], cache=cache)
        c = m(x[:, 15:], cache=cache)
    assert torch.allclose(torch.cat([a, b, c], 1), full, atol=1e-5)


@families
def test_eos_stops_rows_and_pads_with_eos(family):
    m = tiny(3, family=family)
    idx, mask = left_pad([[1, 2, 3], [4, 5]])
    free = generate(m, idx, 10, temperature=0, attention_mask=mask)
    eos = int(free[0, 3])  # row 0's first generated token: row 0 stops at once
    out = generate(m, idx, 10, temperature=0, attention_mask=mask, eos_id=eos)
    assert out[0, 3:].eq(eos).all()
    ref1 = greedy_reference(m, [4, 5], 10, eos_id=eos)
    got1 = out[1, 3:].tolist()
    assert got1[:len(ref1)] == ref1 and all(t == eos for t in got1[len(ref1):])


def test_sampling_is_reproducible_by_generator():
    m = tiny(4)
    idx = torch.randint(0, 61, (3, 4))
    a = generate(m, idx, 8, generator=torch.Generator().manual_seed(7))
    b = generate(m, idx, 8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_prompt_longer_than_block_size_is_an_error():
    m = tiny(block_size=8)
    with pytest.raises(ValueError, match='block_size'):
        generate(m, torch.zeros(1, 8, dtype=torch.long), 4)
    with pytest.raises(ValueError, match='block_size'):
        m(torch.zeros(1, 9, dtype=torch.long))


def test_top_k_top_p_and_mixture_logprobs_closed_form():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = next_token_logprobs(z, top_k=2).exp()
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0, 0]]))
    # nucleus 0.75: the smallest prefix with mass >= 0.75 is {0.5, 0.3}
    p = next_token_logprobs(z, top_p=0.75).exp()
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0, 0]]))
    p = next_token_logprobs(z, top_p=0.81).exp()
    assert torch.allclose(p, torch.tensor([[0.5, 0.3, 0.15, 0]]) / 0.95)
    # temperature 2 on logits log(p): p^(1/2) renormalised
    p = next_token_logprobs(z, temperature=2.0).exp()
    q = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).sqrt()
    assert torch.allclose(p, q / q.sum())
    # teacher-mixed: 0.2 * teacher + 0.8 * student
    zt = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.7]]))
    p = next_token_logprobs([z, zt], mix_alpha=0.2).exp()
    assert torch.allclose(p, 0.8 * z.exp() + 0.2 * zt.exp())


def test_mixed_generation_matches_mixture_frequencies():
    # one step from a fixed prompt: empirical frequencies of teacher-mixed draws vs the exact mixture
    student, teacher = tiny(5, vocab_size=7), tiny(6, vocab_size=7)
    idx = torch.full((20000, 3), 2, dtype=torch.long)
    out = generate(student, idx, 1, mix_model=teacher, mix_alpha=0.3, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out[:, -1], minlength=7).double() / 20000
    with torch.no_grad():
        exact = next_token_logprobs([student(idx[:1])[:, -1], teacher(idx[:1])[:, -1]], mix_alpha=0.3).exp()[0]
    assert (freq - exact.double()).abs().max() < 0.015


def test_param_count_and_flops_of_gpt2_preset():
    with torch.device('meta'):
        m = GPT(preset_config('gpt2'))
    # GPT-2 small: 124,439,808 parameters with tied embeddings; minus 1024*768 positions
    assert m.num_params(non_embedding=False) == 124_439_808
    assert m.num_params() == 124_439_808 - 1024 * 768
    assert model.flops_per_token(m.config, 10) == 60 + 12 * 12 * 768 * 1024
    assert math.isclose(model.flops_per_token(m.config, m.num_params()) / 1e9, 0.85, rel_tol=0.05)


def test_peak_flops_by_gpu_name_and_mfu():
    assert model.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
    assert model.peak_flops('NVIDIA H100 PCIe') == 756e12   # not the SXM figure
    assert model.peak_flops('NVIDIA H200') == 989e12
    assert model.peak_flops('NVIDIA A100-SXM4-80GB') == 312e12
    assert model.peak_flops('NVIDIA GeForce RTX 4090') == 0.0
    cfg = preset_config('gpt2-medium')
    # GPT-2 medium (~0.30B non-embedding params): 10k tokens/s is 6N + 12*L*d*T FLOPs per token each
    n = 302_000_000
    expected = 10_000 * (6 * n + 12 * 24 * 1024 * 1024) / 989e12
    assert math.isclose(model.mfu(10_000, cfg, n, 989e12), expected, rel_tol=1e-12)


def test_untied_head_and_pytorch_init(tmp_path):
    """tie_embeddings=False gives lm_head its own [V, d] weight; init='pytorch' keeps each module's
    default (Embedding N(0, 1), Linear U(+-1/sqrt(fan_in))); a checkpoint round-trips both."""
    from components.checkpoint import atomic_save, checkpoint_payload, load_model
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=257, n_layer=2, n_head=2, n_embd=64, tie_embeddings=False, init='pytorch')
    m = GPT(cfg)
    assert m.lm_head.weight is not m.transformer.wte.weight
    assert m.num_params(non_embedding=False) == GPT(GPTConfig(**{**cfg.__dict__, 'tie_embeddings': True})).num_params(False) + 257 * 64
    assert abs(m.transformer.wte.weight.std().item() - 1.0) < 0.02
    fc = m.transformer.h[0].mlp.c_fc.weight
    assert fc.abs().max().item() <= 1 / math.sqrt(64) and abs(fc.std().item() - 1 / math.sqrt(3 * 64)) < 0.003
    gpt2 = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=2, n_head=2, n_embd=64))
    assert abs(gpt2.transformer.h[0].mlp.c_proj.weight.std().item() - 0.02 / 2) < 0.001  # 1/sqrt(2 * 2 layers)
    with pytest.raises(ValueError, match="init must be"):
        GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=1, n_embd=8, init='xavier'))
    atomic_save(checkpoint_payload(m, 'byte'), str(tmp_path / 'ckpt.pt'))
    m2, _ = load_model(str(tmp_path))
    assert not m2.config.tie_embeddings and m2.lm_head.weight is not m2.transformer.wte.weight
    idx = torch.randint(257, (2, 9))
    assert torch.equal(m(idx), m2(idx))


def test_gqa_cache_holds_only_kv_heads_and_rope_needs_no_positions_table():
    m = tiny(family='qwen3')
    cache = KVCache(m.config, 3, 10, 'cpu', torch.float32)
    assert cache.k[0].shape == (3, 2, 10, 12)                      # n_kv_head 2, head_dim 12 (not 32 / 4)
    assert 'wpe' not in m.transformer and m.num_params() == m.num_params(non_embedding=False)
    assert m.transformer.h[0].attn.c_attn.weight.shape == ((4 + 2 * 2) * 12, 32)
    assert m.transformer.h[0].attn.c_proj.weight.shape == (32, 4 * 12)
    opt = tiny(family='opt')
    assert opt.transformer.wpe.weight.shape == (48 + 2, 32)        # OPT's two offset rows
    # attention FLOPs count every query head at its head_dim: 12 * L * (n_head * head_dim) * T
    assert model.flops_per_token(m.config, 0) == 12 * 2 * 4 * 12 * 48


def test_rope_scaling_llama3_closed_form():
    """Llama 3's rule on three frequencies: a high one kept, a low one divided by the factor, one
    in between interpolated with smooth = (L_old / wavelength - lo) / (hi - lo)."""
    cfg = GPTConfig(n_embd=6, n_head=1, pos='rope', rope_theta=100.0,
                    rope_scaling=dict(rope_type='llama3', factor=4.0, low_freq_factor=1.0, high_freq_factor=2.0,
                                      original_max_position_embeddings=40))
    base = torch.tensor([1.0, 100 ** (-2 / 6), 100 ** (-4 / 6)])
    wavelen = 2 * math.pi / base                                   # 6.28, 29.2, 135.3 against 40/2 = 20 and 40/1 = 40
    smooth = (40 / wavelen[1] - 1.0) / (2.0 - 1.0)
    expected = torch.tensor([base[0], (1 - smooth) * base[1] / 4 + smooth * base[1], base[2] / 4])
    assert torch.allclose(model.rope_inv_freq(cfg), expected, rtol=1e-6)
    lin = GPTConfig(n_embd=6, n_head=1, pos='rope', rope_theta=100.0, rope_scaling=dict(rope_type='linear', factor=2.0))
    assert torch.allclose(model.rope_inv_freq(lin), base / 2)
    with pytest.raises(ValueError, match='yarn'):
        model.rope_inv_freq(GPTConfig(n_embd=6, n_head=1, pos='rope', rope_scaling=dict(rope_type='yarn', factor=2.0)))


def test_padded_vocabulary_rows_get_no_logit_and_are_never_sampled():
    m = tiny(7, family='qwen2', vocab_size=64, tokenizer_vocab=61)
    with torch.no_grad():
        m.lm_head.weight[61:] = 100.0                              # padding rows that would win every draw
        m.transformer.h[0].attn.c_attn.bias.zero_()
    idx = torch.randint(0, 61, (4, 5))
    assert m(idx).shape == (4, 5, 61)
    out = generate(m, idx, 20, generator=torch.Generator().manual_seed(0))
    assert out.max().item() < 61
    full = F.linear(m(idx, head_fn=lambda h, w: h), m.lm_head.weight)
    assert torch.allclose(m(idx), full[..., :61])
    with pytest.raises(ValueError, match='tokenizer_vocab'):
        GPTConfig(vocab_size=10, tokenizer_vocab=11)


def test_no_repeat_ngram_equals_transformers_processor_and_never_repeats():
    transformers = pytest.importorskip('transformers')
    proc = transformers.NoRepeatNGramLogitsProcessor(3)
    torch.manual_seed(0)
    seqs = torch.randint(0, 4, (64, 12))                           # small alphabet: many repeated trigrams
    for L in range(1, 13):
        ours = sampling.repeated_ngram_mask(seqs[:, :L], torch.ones(64, L, dtype=torch.bool), 3, 4)
        ref = proc(seqs[:, :L], torch.zeros(64, 4)).isinf()
        assert torch.equal(ours, ref), L
    assert sampling.repeated_ngram_mask(torch.tensor([[1, 2, 3, 1, 2]]), torch.ones(1, 5, dtype=torch.bool), 3, 5)[0].nonzero().flatten().tolist() == [3]
    # padding never forms an n-gram: the banned token 3 followed (1, 2) only inside the pad
    pad = torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[False, False, False, True, True]])
    assert not sampling.repeated_ngram_mask(*pad, 3, 5).any()
    m = tiny(8, vocab_size=11)
    idx, mask = left_pad([[1, 2, 3], [4]])
    out = generate(m, idx, 20, attention_mask=mask, no_repeat_ngram_size=2, generator=torch.Generator().manual_seed(1))
    for row, skip in zip(out.tolist(), (0, 2)):
        grams = [tuple(row[skip:][i:i + 2]) for i in range(len(row) - skip - 1)]
        assert len(grams) == len(set(grams))


# ----------------------------------------------------------------------------- the fast sampler (sampling.py)
def frequency_bound(p, n, sigmas=5.0):
    """|frequency - p| allowed for n independent draws: 5 binomial standard deviations per token
    (a fixed seed, so the test is deterministic; at 5 sigma a correct sampler fails 1 in 1.7 million)."""
    return sigmas * (p * (1 - p) / n).sqrt() + 1e-12


@pytest.mark.parametrize('V', [7, 600])  # one block; three blocks of CDF_BLOCK = 256, the last one short
def test_inverse_cdf_sampler_draws_the_exact_distribution(V):
    import sampling
    g = torch.Generator().manual_seed(0)
    p = torch.rand(1, V, generator=g).pow(4)
    p[0, ::3] = 0                                           # zero-probability entries, inside and at block ends
    p[0, 255::256] = 0
    p[0, -1] = 0
    p = (p / p.sum()).expand(100_000, V).contiguous()
    u = sampling.draw_uniforms(100_000, 'cpu', torch.Generator().manual_seed(1))
    freq = torch.bincount(sampling.inverse_cdf_sample(p, u), minlength=V).double() / 100_000
    exact = p[0].double()
    assert freq[exact == 0].sum() == 0                      # never an entry of probability 0
    assert ((freq - exact).abs() <= frequency_bound(exact, 100_000)).all()
    # unnormalised rows are drawn in proportion, and a row that is one-hot always gives its index
    hot = torch.zeros(3, V)
    hot[torch.arange(3), torch.tensor([0, V // 2, V - 1])] = 5.0
    assert sampling.inverse_cdf_sample(hot, sampling.draw_uniforms(3, 'cpu')).tolist() == [0, V // 2, V - 1]


@pytest.mark.parametrize('kw', [dict(), dict(temperature=0.7, top_k=3), dict(top_p=0.8),
                                dict(mix_alpha=0.3), dict(temperature=1.4, mix_alpha=0.3), dict(mix_alpha=1.0)])
def test_sample_next_frequencies_equal_next_token_logprobs(kw):
    """sample_next draws from next_token_logprobs' distribution, teacher-mixed ones by composition."""
    import sampling
    n, g = 100_000, torch.Generator().manual_seed(2)
    own, mix = torch.randn(1, 9, generator=g) * 2, torch.randn(1, 9, generator=g) * 2
    logits = [own.expand(n, 9), mix.expand(n, 9)] if 'mix_alpha' in kw else own.expand(n, 9)
    args = dict(temperature=kw.get('temperature', 1.0), top_k=kw.get('top_k'), top_p=kw.get('top_p'),
                mix_alpha=kw.get('mix_alpha', 0.0))
    draws = sampling.sample_next(logits, generator=torch.Generator().manual_seed(3), **args)
    freq = torch.bincount(draws, minlength=9).double() / n
    exact = next_token_logprobs([own, mix] if 'mix_alpha' in kw else own, **args)[0].exp().double()
    assert ((freq - exact).abs() <= frequency_bound(exact, n)).all()
    assert freq[exact == 0].sum() == 0
    # greedy: the argmax of the (mixed) distribution
    greedy = sampling.sample_next([own, mix] if 'mix_alpha' in kw else own, **{**args, 'temperature': 0})
    assert greedy.item() == next_token_logprobs([own, mix] if 'mix_alpha' in kw else own,
                                                **{**args, 'temperature': 1.0}).argmax().item()


def batch_sizes_seen(m):
    """Record the batch size of every forward of m (a decoding step each, after the prompt)."""
    sizes = []
    m.register_forward_pre_hook(lambda mod, args, kwargs: sizes.append(args[0].shape[0]), with_kwargs=True)
    return sizes


@families
def test_finished_rows_leave_the_batch_and_change_no_token(family):
    """decode='eager' drops rows that emitted eos from the batch and both caches; 'static' decodes
    the full batch to the end. Each row draws from its own uniforms, so the same generator gives the
    same tokens, greedy, sampled, and teacher-mixed (both caches compacted)."""
    student, teacher = tiny(9, family=family), tiny(10, family=family)
    idx, mask = left_pad([[5, 9, 3], [1, 2, 3, 4, 5, 6, 7, 8], [40], [7, 7, 7, 7, 7], [2, 4], [11, 12, 13]])
    free = generate(student, idx, 16, attention_mask=mask, generator=torch.Generator().manual_seed(0))
    eos = int(torch.mode(free[:, idx.shape[1]:].flatten()).values)   # a frequent token: rows end at different steps
    for kw in (dict(temperature=0), dict(), dict(mix_model=teacher, mix_alpha=0.4), dict(temperature=0.8, top_k=5)):
        sizes = batch_sizes_seen(student)
        out = {d: generate(student, idx, 16, attention_mask=mask, eos_id=eos, decode=d,
                                   generator=torch.Generator().manual_seed(4), **kw) for d in ('eager', 'static')}
        assert torch.equal(out['eager'], out['static']), kw
        eager_sizes = sizes[:len(sizes) - (out['static'].shape[1] - idx.shape[1])]
        new = out['eager'][:, idx.shape[1]:]
        first_eos = torch.where((new == eos).any(1), (new == eos).int().argmax(1), new.shape[1])
        # step t decodes exactly the rows that had not emitted eos before it
        assert eager_sizes == [int((first_eos >= t).sum()) for t in range(len(eager_sizes))], kw
    for row in out['eager'][:, idx.shape[1]:].tolist():                  # after eos, only eos
        assert eos not in row or set(row[row.index(eos):]) == {eos}


@families
def test_bf16_decoding_on_prepacked_weights_samples_what_f_linear_does(family, monkeypatch):
    """sampling.cpu_prepacked: bf16 weights on CPU multiply through oneDNN-prepacked copies during a generation,
    which samples the same tokens as plain F.linear (generate without its decorators), eager and static; every
    nn.Linear is its own again afterwards."""
    m = tiny(12, family=family).to(torch.bfloat16)
    idx, mask = left_pad([[5, 9, 3], [1, 2, 3, 4, 5, 6, 7, 8], [40]])
    calls, packed_linear = [], sampling.packed_linear
    monkeypatch.setattr(sampling, 'packed_linear', lambda x, **kw: calls.append(x.shape) or packed_linear(x, **kw))
    plain = torch.no_grad()(inspect.unwrap(generate))
    for decode in ('eager', 'static'):
        kw = dict(attention_mask=mask, decode=decode)
        packed = generate(m, idx, 12, generator=torch.Generator().manual_seed(3), **kw)
        assert torch.equal(packed, plain(m, idx, 12, generator=torch.Generator().manual_seed(3), **kw))
    assert not any('forward' in vars(module) for module in m.modules())
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert calls


def test_bf16_teacher_mixed_under_autocast_is_packed_and_samples_the_same(monkeypatch):
    """Under CPU bf16 autocast (MiniLLM's bf16 rollouts: fp32 student, bf16 frozen teacher mixed into the
    sampling), cpu_prepacked packs both models' linears (the student's from the bf16 copy autocast makes);
    the tokens equal plain generate's."""
    student, teacher = tiny(12, family='qwen2'), tiny(13, family='qwen2').to(torch.bfloat16)  # q/k/v biases too
    idx, mask = left_pad([[5, 9, 3], [1, 2, 3, 4, 5, 6, 7, 8], [40]])
    calls, packed_linear = [], sampling.packed_linear
    monkeypatch.setattr(sampling, 'packed_linear', lambda x, **kw: calls.append(kw['weight'].dtype) or packed_linear(x, **kw))
    plain = torch.no_grad()(inspect.unwrap(generate))
    kw = dict(attention_mask=mask, mix_model=teacher, mix_alpha=0.5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        packed = generate(student, idx, 12, generator=torch.Generator().manual_seed(3), **kw)
        assert torch.equal(packed, plain(student, idx, 12, generator=torch.Generator().manual_seed(3), **kw))
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        n_linear = sum(isinstance(m, torch.nn.Linear) for m in teacher.transformer.h.modules())  # the same per model
        assert calls and set(calls) == {torch.bfloat16} and len(calls) % (2 * n_linear) == 0  # every step: both models
    assert not any('forward' in vars(module) for module in [*student.modules(), *teacher.modules()])


@families
def test_static_decode_step_gives_the_eager_greedy_tokens(family):
    """sampling.decode_step (the static-shape step torch.compile captures: decode='compile') with left
    padding equals the eager cache and recomputing the prefix; the cache length is rounded up."""
    m = tiny(11, family=family)
    prompts = [[5, 9, 3], [1, 2, 3, 4, 5, 6, 7, 8], [40], [7, 7, 7, 7, 7]]
    idx, mask = left_pad(prompts)
    static = generate(m, idx, 12, temperature=0, attention_mask=mask, decode='static')
    assert torch.equal(static, generate(m, idx, 12, temperature=0, attention_mask=mask))
    for i, p in enumerate(prompts):
        assert static[i, idx.shape[1]:].tolist() == greedy_reference(m, p, 12)
    cache = KVCache(m.config, 1, 20, 'cpu', torch.float32)
    x = torch.tensor([[3, 1, 4]])
    with torch.no_grad():
        m(x[:, :2], cache=cache)
        step = sampling.decode_step(m, x[:, 2:], cache)
        assert cache.length == 3 and cache.n_valid.tolist() == [3]
        assert torch.allclose(step, m(x)[:, -1], atol=1e-5)
    with pytest.raises(ValueError, match='decode must be one of'):
        generate(m, idx, 2, decode='jit')
