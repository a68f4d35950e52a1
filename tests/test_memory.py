"""
memory.py: parameter counts equal model.GPT's and transformers' for every family, components/presets.py's PRESETS
equal the models' published config.json, per-block activations equal what autograd saves, the
closed forms of the estimate, and the configs of the real pairs at the README table's figures.
"""
import os

import pytest
import torch

from components import hf
from components import memory
from scripts import memory_table
import model
import train
from configurator import UserError
from components.presets import PRESETS, preset_config
from model import GPT, GPTConfig

GiB = memory.GiB
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hf_numel(hf_config):
    """sum(numel) of the transformers model of a config.json dict, built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(**hf_config)
    with torch.device('meta'):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())


def our_numel(config):
    with torch.device('meta'):
        return sum(p.numel() for p in GPT(config).parameters())


# ----------------------------------------------------------------------------- parameter counts
# Tiny config.json of each family, with the switches that change the count.
TINY = {
    'gpt2': dict(model_type='gpt2', vocab_size=101, n_positions=32, n_embd=32, n_layer=2, n_head=4),
    'opt': dict(model_type='opt', vocab_size=101, max_position_embeddings=32, hidden_size=32, word_embed_proj_dim=32,
                num_hidden_layers=2, num_attention_heads=4, ffn_dim=48),
    'llama': dict(model_type='llama', vocab_size=101, max_position_embeddings=32, hidden_size=32, intermediate_size=40,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                  rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=16)),
    'mistral': dict(model_type='mistral', vocab_size=101, max_position_embeddings=32, hidden_size=32,
                    intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                    sliding_window=None, tie_word_embeddings=False),
    'qwen2': dict(model_type='qwen2', vocab_size=101, max_position_embeddings=32, hidden_size=32, intermediate_size=40,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    'qwen3': dict(model_type='qwen3', vocab_size=101, max_position_embeddings=32, hidden_size=32, intermediate_size=40,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  tie_word_embeddings=False),
}


@pytest.mark.parametrize('family', TINY)
def test_parameter_count_equals_the_models(family):
    config = hf.gpt_config(TINY[family])
    n = memory.count_params(config)
    assert n == our_numel(config) == hf_numel(TINY[family])
    # padding rows beyond the tokenizer's vocabulary are parameters all the same
    assert memory.count_params(GPTConfig(**{**vars(config), 'tokenizer_vocab': 90})) == n


def test_parameter_count_of_gpt2_variants():
    for bias, tie in ((True, True), (False, True), (True, False)):
        cfg = GPTConfig(block_size=32, vocab_size=257, n_layer=2, n_head=2, n_embd=32, bias=bias, tie_embeddings=tie)
        assert memory.count_params(cfg) == our_numel(cfg)
    assert memory.count_params(preset_config('gpt2', vocab_size=50257)) == 124_439_808  # GPT-2 small
    assert memory.block_params(preset_config('gpt2')) == 12 * 768 ** 2 + 13 * 768


# The published config.json of every preset (huggingface.co/<name>/blob/main/config.json; the
# sources of the copies read are in components/presets.py's comments), with the published parameter count
# (billions, the hub's safetensors figure) where there is one.
def _opt(L, H, d, ffn):
    return dict(model_type='opt', vocab_size=50272, max_position_embeddings=2048, hidden_size=d, word_embed_proj_dim=d,
                num_hidden_layers=L, num_attention_heads=H, ffn_dim=ffn, do_layer_norm_before=True)


def _llama(L, H, d, I, max_pos, eps, V=32000, kv=None, tie=False, **kw):
    return dict(model_type='llama', vocab_size=V, max_position_embeddings=max_pos, hidden_size=d, intermediate_size=I,
                num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=kv or H, rms_norm_eps=eps,
                tie_word_embeddings=tie, **kw)


def _qwen(mt, L, H, kv, d, I, V, max_pos, eps, tie, **kw):
    return dict(model_type=mt, vocab_size=V, max_position_embeddings=max_pos, hidden_size=d, intermediate_size=I,
                num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=kv, rms_norm_eps=eps,
                rope_theta=1000000.0, tie_word_embeddings=tie, use_sliding_window=False, **kw)


LLAMA3 = dict(rope_type='llama3', low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
PUBLISHED = {
    'gpt2': (dict(model_type='gpt2', vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12), 0.124),
    'gpt2-medium': (dict(model_type='gpt2', vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16), 0.355),
    'gpt2-large': (dict(model_type='gpt2', vocab_size=50257, n_positions=1024, n_embd=1280, n_layer=36, n_head=20), 0.774),
    'gpt2-xl': (dict(model_type='gpt2', vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48, n_head=25), 1.56),
    'opt-1.3b': (_opt(24, 32, 2048, 8192), 1.32),
    'opt-2.7b': (_opt(32, 32, 2560, 10240), 2.65),
    'opt-6.7b': (_opt(32, 32, 4096, 16384), 6.66),
    'opt-13b': (_opt(40, 40, 5120, 20480), 12.85),
    'llama-7b': (_llama(32, 32, 4096, 11008, 2048, 1e-6), 6.74),
    'llama-13b': (_llama(40, 40, 5120, 13824, 2048, 1e-6), 13.02),
    'llama-2-7b': (_llama(32, 32, 4096, 11008, 4096, 1e-5), 6.74),
    'llama-2-13b': (_llama(40, 40, 5120, 13824, 4096, 1e-5), 13.02),
    'llama-3.1-8b': (_llama(32, 32, 4096, 14336, 131072, 1e-5, V=128256, kv=8, rope_theta=500000.0,
                            rope_scaling=dict(LLAMA3, factor=8.0)), 8.03),
    'llama-3.2-1b': (_llama(16, 32, 2048, 8192, 131072, 1e-5, V=128256, kv=8, tie=True, head_dim=64,
                            rope_theta=500000.0, rope_scaling=dict(LLAMA3, factor=32.0)), 1.24),
    'smollm2-135m': (_llama(30, 9, 576, 1536, 8192, 1e-5, V=49152, kv=3, tie=True, rope_theta=100000.0), 0.135),
    'qwen2.5-0.5b': (_qwen('qwen2', 24, 14, 2, 896, 4864, 151936, 32768, 1e-6, True), 0.49),
    'qwen2.5-1.5b': (_qwen('qwen2', 28, 12, 2, 1536, 8960, 151936, 131072, 1e-6, True), 1.54),
    'qwen2.5-7b': (_qwen('qwen2', 28, 28, 4, 3584, 18944, 152064, 131072, 1e-6, False), 7.62),
    'qwen2.5-14b': (_qwen('qwen2', 48, 40, 8, 5120, 13824, 152064, 131072, 1e-5, False), 14.77),
    'qwen2.5-32b': (_qwen('qwen2', 64, 40, 8, 5120, 27648, 152064, 131072, 1e-5, False), 32.76),
    'qwen3-8b': (_qwen('qwen3', 36, 32, 8, 4096, 12288, 151936, 40960, 1e-6, False, head_dim=128), 8.19),
    'qwen3-32b': (_qwen('qwen3', 64, 64, 8, 5120, 25600, 151936, 40960, 1e-6, False, head_dim=128), 32.76),
}


def test_presets_are_the_published_configs():
    assert set(PUBLISHED) == set(PRESETS)
    for name, (hf_config, billions) in PUBLISHED.items():
        config = preset_config(name)
        assert hf.gpt_config(hf_config) == config, name
        n = memory.count_params(config)
        assert n == hf_numel(hf_config), name
        assert round(n / 1e9, len(str(billions).split('.')[1])) == billions, name   # to the published digits


# ----------------------------------------------------------------------------- activations
def saved_bytes_per_token(config, B=2, T=16):
    """Bytes of the tensors one model.Block saves for backward (bf16, training), counted once per
    storage (a view keeps its whole base alive), leaving out parameters and the RoPE tables."""
    torch.manual_seed(0)
    net = GPT(config).to(torch.bfloat16)
    rope = model.rope_cos_sin(config, torch.arange(T)[None], torch.bfloat16) if config.pos == 'rope' else None
    skip = {p.untyped_storage().data_ptr() for p in net.parameters()}
    skip |= {t.untyped_storage().data_ptr() for t in rope or ()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t
    x = torch.randn(B, T, config.n_embd, dtype=torch.bfloat16, requires_grad=True)
    limit, model.GROUPED_ATTENTION_BYTES = model.GROUPED_ATTENTION_BYTES, 0  # SDPA, as on a GPU (the estimate's
    try:                                                                      # case): not CPU bf16's grouped_attention
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.transformer.h[0](x, 'causal', rope)
    finally:
        model.GROUPED_ATTENTION_BYTES = limit
    return sum(seen.values()) / (B * T)


@pytest.mark.parametrize('family', TINY)
def test_block_activations_equal_what_autograd_saves(family):
    config = hf.gpt_config(TINY[family])
    # CPU LayerNorm keeps its statistics in bf16 (CUDA: fp32, the estimate's default)
    assert saved_bytes_per_token(config) == memory.block_activation_bytes(config, b=2, stat_bytes=2)


def test_activation_closed_forms():
    s, B, gpt2 = 512, 4, preset_config('gpt2')
    h, a, sbh = 768, 12, 512 * 4 * 768
    # Korthikanti et al. 2022 Eq. 1 without the 5 a s^2 b score terms: 34 s b h, + LN stats and log-sum-exp
    assert memory.block_activation_bytes(gpt2, b=2, dropout=0.1) * s * B == 34 * sbh + (16 + 4 * a) * s * B
    # SwiGLU (3 matrices of intermediate size I) keeps 4 I per token; GQA's fused qkv output (H + 2 H_kv) hd
    q7 = preset_config('qwen2.5-7b')
    d, H, kv, hd, I = 3584, 28, 4, 128, 18944
    rms = 4 * d + 4 + 2 * d
    attn = rms + 2 * d + 2 * (H + 2 * kv) * hd + 2 * (H + kv) * hd + 2 * H * hd + 4 * H
    assert memory.block_activation_bytes(q7) == attn + rms + 2 * d + 4 * I * 2
    tokens = s * B
    plain = memory.activation_bytes(q7, tokens)
    ac = memory.activation_bytes(q7, tokens, checkpointing=True)
    final = (rms + 2 * d) * tokens + 2 * 2 * hd * tokens  # ln_f and the head's input; RoPE tables per row
    assert plain == 28 * memory.block_activation_bytes(q7) * tokens + final
    assert ac == 28 * 2 * d * tokens + memory.block_activation_bytes(q7) * tokens + final
    # the KV cache holds the key/value heads only
    assert memory.kv_cache_bytes(q7, rows=8, seq_len=512) == 2 * 28 * 8 * 512 * kv * hd * 2


# ----------------------------------------------------------------------------- a run's peak
def test_memory_estimate_closed_forms():
    s14, t32 = preset_config('qwen2.5-14b'), preset_config('qwen2.5-32b')
    P, Pt = memory.count_params(s14), memory.count_params(t32)
    for w in (8, 64):
        m = memory.estimate_memory(s14, t32, world_size=w, batch_size=2, seq_len=512)
        assert m['params'] + m['grads'] + m['optimizer'] == 16 * P / w  # fp32 weights, grads, 2 Adam moments
        # bf16 shards of the frozen teacher, and its root whole (FSDP2 keeps a root unsharded after forward)
        assert m['teacher'] == 2 * Pt / w + 2 * memory.root_params(t32)
    ddp = memory.estimate_memory(s14, world_size=8, parallel='ddp', param_bytes=4, batch_size=1, seq_len=8)
    assert ddp['params'] + ddp['grads'] + ddp['optimizer'] + ddp['ddp_buckets'] == 20 * P
    m = memory.estimate_memory(s14, t32, world_size=64, rollout_batch_size=8, seq_len=512, chunk_size=1024)
    assert m['kv_cache'] == 2 * 2 * 8 * 512 * 8 * 128 * (48 + 64)
    # chunk buffers, the head's fp32 gradient (MiniLLM's chunked loss makes it in its forward), teacher logits
    assert m['logits'] == 3 * 4 * 1024 * 152064 + 4 * 152064 * 5120 + 2 * 4 * 512 * 152064
    # untied heads: the root all-gathers two [V, d] matrices
    assert memory.root_params(s14) == 2 * 152064 * 5120 + 5120
    off = memory.estimate_memory(s14, t32, world_size=8, cpu_offload=True)
    assert off['params'] == off['grads'] == off['optimizer'] == 0
    assert off['teacher'] == 2 * memory.root_params(t32)  # the compute copy of its root stays on the GPU
    assert not memory.fits(m, 24) and memory.fits(m, 80)


def test_13b_config_fits_80gb_gpus_from_8_on(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = train.configure(train.DEFAULTS, ['config/minillm_13b_fsdp.py'])
    assert (cfg.init_from, cfg.teacher, cfg.parallel) == ('Qwen/Qwen2.5-14B-Instruct', 'Qwen/Qwen2.5-32B-Instruct', 'fsdp')
    cfg.rank, cfg.dtype = 0, 'bfloat16'  # as on a GPU (the chunked loss: auto, Qwen's vocabulary)
    student, teacher = preset_config('qwen2.5-14b'), preset_config('qwen2.5-32b')
    for world in (8, 64):
        cfg.world_size = world
        est = memory.check_run(cfg, student, teacher)
        assert est['params'] == 4 * memory.count_params(student) / world
    assert 'memory estimate (fsdp, world 64)' in capsys.readouterr().out
    cfg.world_size = 4
    with pytest.raises(UserError, match='does not fit in 90% of gpu_memory_gb=80: use more GPUs'):
        memory.check_run(cfg, student, teacher)


# memory.py's estimate at 8 GPUs (python scripts/memory_table.py; the README's table sets it beside the
# dry runs' tracked peaks): peak GiB without / with activation checkpointing, for each run of memory_table.TABLE_RUNS (model trained, teacher).
README_8_GPUS = {
    ('opt-1.3b', 'opt-13b'): (11.9, 11.7),
    ('opt-2.7b', 'opt-13b'): (17.2, 14.2),
    ('opt-6.7b', 'opt-13b'): (28.9, 20.7),
    ('llama-7b', 'llama-13b'): (32.0, 21.0),
    ('qwen2.5-1.5b', 'qwen2.5-7b'): (16.5, 11.1),
    ('qwen2.5-14b', 'qwen2.5-32b'): (59.0, 49.2),
    ('opt-13b', None): (32.2, 29.9),
    ('llama-13b', None): (41.6, 30.3),
    ('qwen2.5-7b', None): (29.1, 20.3),
}


def test_real_pair_configs_at_the_readme_figures():
    assert [(s, t) for s, t, _, _ in memory_table.TABLE_RUNS] == list(README_8_GPUS)
    for student, teacher, config_file, overrides in memory_table.TABLE_RUNS:
        cfg, s, t = memory_table.table_run(student, teacher, config_file, overrides)
        assert cfg.method == ('minillm' if teacher else 'sft') and cfg.parallel == 'fsdp'
        assert cfg.fsdp_activation_checkpointing and cfg.gpu_memory_gb == 80
        peaks = []
        for ac in (False, True):
            cfg.fsdp_activation_checkpointing = ac
            peaks.append(round(memory.estimate_run(cfg, s, t, 8)['total'] / GiB, 1))
        assert tuple(peaks) == README_8_GPUS[(student, teacher)], (student, teacher)
        assert peaks[1] <= 0.9 * cfg.gpu_memory_gb   # as written (with activation checkpointing) it fits 8 GPUs
    table = memory_table.markdown_table()
    for (student, teacher), (plain, ac) in README_8_GPUS.items():
        row = next(r for r in table.splitlines() if r.startswith(f"| {student} | {teacher or '-'} |") and '| 8 |' in r)
        assert row.endswith(f"| {plain} | {ac} |")
    # on 64 GPUs the same global batch: 8 sequences per GPU become 1
    cfg, s, t = memory_table.table_run(*memory_table.TABLE_RUNS[0])
    run = memory_table.on_gpus(cfg, 64)
    assert (run.batch_size, run.pt_batch_size, run.world_size, cfg.batch_size) == (1, 1, 64, 8)


REAL_PAIR_CONFIGS = ['sft_opt_13b.py', 'sft_opt_1.3b.py', 'minillm_opt.py', 'sft_llama_13b.py', 'sft_llama_7b.py',
                     'minillm_llama.py', 'sft_qwen2.5_7b.py', 'sft_qwen2.5_1.5b.py', 'minillm_qwen2.5.py',
                     'minillm_13b_fsdp.py']


@pytest.mark.parametrize('config_file', REAL_PAIR_CONFIGS)
def test_real_pair_configs_parse(config_file, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = train.configure(train.DEFAULTS, [os.path.join('config', config_file)])
    assert cfg.parallel == 'fsdp' and cfg.dtype == 'bfloat16' and cfg.block_size == 512
    assert cfg.method in ('sft', 'minillm') and cfg.init_from and cfg.out_dir.startswith('out/')
    if cfg.method == 'minillm':
        assert cfg.teacher and cfg.pt_data_dir and cfg.rollout_size % 8 == 0


def test_memory_check_stops_a_run_that_cannot_fit(tiny_instruct, tmp_path):
    common = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--eval_interval=100', '--eval_iters=1',
              '--device=cpu', '--dtype=float32']
    with pytest.raises(UserError, match='does not fit in 90% of gpu_memory_gb=1e-06'):
        train.main(common + [f'--data_dir={tiny_instruct}', f'--out_dir={tmp_path}', '--gpu_memory_gb=0.000001'])
    with pytest.raises(UserError, match="need parallel='fsdp'"):
        train.main(common + [f'--data_dir={tiny_instruct}', '--fsdp_activation_checkpointing=True'])
    with pytest.raises(UserError, match='needs a torchrun launch'):
        train.main(common + [f'--data_dir={tiny_instruct}', '--parallel=fsdp'])
