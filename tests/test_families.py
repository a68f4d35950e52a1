"""
Every family against `transformers` (the reference): tiny random checkpoints that transformers
writes (save_pretrained, offline) load through hf.py with the same logits, generate the same greedy
tokens from a left-padded batch, and export back to checkpoints transformers reloads with the same
logits. Then the padded vocabulary (a teacher with more embedding rows than the data's tokenizer)
and every method on a llama-family student and teacher, through train.main.
"""
import json
import os

import pytest
import torch

from components import hf
import train
from components.checkpoint import load_model
from configurator import UserError
from model import GPT, GPTConfig
from sampling import generate

transformers = pytest.importorskip('transformers')

V = 300  # embedding rows of the tiny checkpoints; the byte-level test data has 257 tokens
SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, vocab_size=V)
ROPE_FAMILY = dict(SHAPE, intermediate_size=48, num_key_value_heads=2)
HF_CONFIGS = {  # each family with the features it is known for
    'gpt2': lambda: transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, vocab_size=V,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    'opt': lambda: transformers.OPTConfig(**SHAPE, ffn_dim=48, word_embed_proj_dim=32, dropout=0.0),
    'llama': lambda: transformers.LlamaConfig(**ROPE_FAMILY, rope_theta=500000.0, rope_scaling=dict(
        rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)),
    'mistral': lambda: transformers.MistralConfig(**ROPE_FAMILY, sliding_window=None),
    'qwen2': lambda: transformers.Qwen2Config(**ROPE_FAMILY, tie_word_embeddings=True),
    'qwen3': lambda: transformers.Qwen3Config(**ROPE_FAMILY, head_dim=16, tie_word_embeddings=False),
}
# how each is stored: llama sharded (model.safetensors.index.json), opt as pytorch_model.bin
STORAGE = {'llama': 'sharded', 'opt': 'bin'}
families = pytest.mark.parametrize('family', list(HF_CONFIGS))


def write_hf(path, family, seed=0, storage='safetensors', config=None, **overrides):
    """A random transformers model saved to `path`; every tensor nudged off its init (norm gains
    off 1, biases off 0) so that each one's mapping shows in the logits. Returns (path, model)."""
    torch.manual_seed(seed)
    cfg = config or HF_CONFIGS[family]()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = str(path)
    if storage == 'bin':  # what transformers 4.x wrote with safe_serialization=False (5.x always writes safetensors)
        ref.config.save_pretrained(path)
        torch.save(ref.state_dict(), os.path.join(path, 'pytorch_model.bin'))
    else:
        ref.save_pretrained(path, max_shard_size='20KB' if storage == 'sharded' else '50GB')
    return path, ref


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('hf')
    return {f: write_hf(root / f, f, storage=STORAGE.get(f, 'safetensors')) for f in HF_CONFIGS}


def left_padded(lengths, seed=0, vocab=V):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    idx, mask = torch.zeros(len(lengths), T, dtype=torch.long), torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        idx[i, T - n:] = torch.randint(0, vocab, (n,), generator=g)
        mask[i, T - n:] = 1
    return idx, mask


def hf_logits(ref, idx, mask):
    """transformers' logits with the position ids its generate() uses for left padding."""
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        return ref(idx, attention_mask=mask, position_ids=pos).logits


# ----------------------------------------------------------------------------- import
@families
def test_logits_equal_transformers(checkpoints, family):
    path, ref = checkpoints[family]
    ours = hf.from_pretrained(path).eval()
    idx, mask = left_padded([11, 6, 9])
    with torch.no_grad():
        mine, full = ours(idx, attention_mask=mask), ours(idx[:, -6:])
    real = mask.bool()  # padded positions compute garbage in both, nothing reads them
    assert (mine - hf_logits(ref, idx, mask))[real].abs().max().item() < 1e-4
    with torch.no_grad():
        assert (full - ref(idx[:, -6:]).logits).abs().max().item() < 1e-4  # no padding, no mask
    c = ours.config
    expected = {'gpt2': (4, 0, True), 'opt': (4, 0, True), 'llama': (2, 0, False), 'mistral': (2, 0, False),
                'qwen2': (2, 0, True), 'qwen3': (2, 16, False)}[family]
    assert (c.kv_heads, c.head_dim, c.tie_embeddings) == expected
    assert (ours.transformer.wte.weight is ours.lm_head.weight) == c.tie_embeddings
    assert c.qkv_bias is (True if family == 'qwen2' else None) and c.qk_norm == (family == 'qwen3')
    if family == 'llama':  # the scaling matters: without it the same weights give other logits
        assert c.rope_scaling['rope_type'] == 'llama3' and c.rope_theta == 500000.0
        plain = GPT(GPTConfig(**{**vars(c), 'rope_scaling': None})).eval()
        plain.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert (plain(idx[:, -6:]) - full).abs().max().item() > 1e-3


@families
def test_greedy_generation_equals_transformers(checkpoints, family):
    path, ref = checkpoints[family]
    ours = hf.from_pretrained(path).eval()
    idx, mask = left_padded([3, 8, 5], seed=1)
    eos = 7
    mine = generate(ours, idx, 12, temperature=0.0, attention_mask=mask, eos_id=eos)
    theirs = ref.generate(input_ids=idx, attention_mask=mask, max_new_tokens=12, do_sample=False,
                          eos_token_id=eos, pad_token_id=eos)
    assert mine.tolist() == theirs.tolist()


def test_weights_load_in_the_checkpoints_dtype_without_a_second_copy(tmp_path):
    path, ref = write_hf(tmp_path / 'bf16', 'qwen2')
    ref.to(torch.bfloat16).save_pretrained(path)
    ours = hf.from_pretrained(path)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in hf.from_pretrained(path, dtype=torch.float32).parameters()} == {torch.float32}
    theirs = {k: v for k, v in ref.state_dict().items()}
    q, k, v = (theirs[f'model.layers.1.self_attn.{n}_proj.weight'] for n in 'qkv')
    assert torch.equal(ours.transformer.h[1].attn.c_attn.weight, torch.cat([q, k, v]))  # fused, bit for bit
    assert not any(p.is_meta for p in ours.parameters())


REFUSED = [  # (family, config.json changes, the error names the feature)
    (None, dict(model_type='mixtral'), "model_type 'mixtral' is not supported"),
    ('qwen2', dict(num_experts=8), 'mixture-of-experts'),
    ('opt', dict(do_layer_norm_before=False), 'post-LayerNorm'),
    ('opt', dict(word_embed_proj_dim=16), 'word_embed_proj_dim 16'),
    ('llama', dict(rope_parameters=None, rope_scaling=dict(rope_type='yarn', factor=4.0)), "rope_type='yarn'"),
    ('llama', dict(rope_parameters=dict(rope_type='dynamic', rope_theta=1e4, factor=2.0)), "rope_type='dynamic'"),
    ('llama', dict(attention_bias=True), 'attention_bias != mlp_bias'),
    ('gpt2', dict(activation_function='gelu'), "activation_function='gelu'"),
    ('mistral', dict(quantization_config=dict(quant_method='gptq')), 'quantised weights (gptq)'),
]


@pytest.mark.parametrize('family,change,message', REFUSED)
def test_unsupported_features_are_one_clear_error(tmp_path, family, change, message):
    cfg = HF_CONFIGS[family or 'llama']().to_dict()
    cfg.update(change)
    with open(tmp_path / 'config.json', 'w') as f:
        json.dump(cfg, f)
    with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
        hf.from_pretrained(str(tmp_path))


def test_broken_checkpoints_and_names_are_one_clear_error(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file
    path, _ = checkpoints['qwen3']
    sd = load_file(os.path.join(path, 'model.safetensors'))
    for name, edit, message in (('missing', lambda d: d.pop('model.norm.weight'), "no tensor 'model.norm.weight'"),
                                ('extra', lambda d: d.update({'model.layers.0.mlp.experts.0.weight': torch.ones(1)}),
                                 'unsupported variant')):
        d = tmp_path / name
        os.makedirs(d)
        os.link(os.path.join(path, 'config.json'), d / 'config.json')
        broken = dict(sd)
        edit(broken)
        save_file(broken, str(d / 'model.safetensors'))
        with pytest.raises(UserError, match=message):
            hf.from_pretrained(str(d))
    with pytest.raises(UserError, match='neither a directory nor a Hugging Face hub name'):
        hf.from_pretrained('/no/such/dir')


# config.json fields as the hub's checkpoints (written by transformers 4.x) spell them
HUB_CONFIGS = {
    'Llama-3.1-8B': (dict(model_type='llama', vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                          num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                          rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                            original_max_position_embeddings=8192, rope_type='llama3'),
                          tie_word_embeddings=False, torch_dtype='bfloat16'),
                     dict(n_kv_head=8, block_size=131072, rope_theta=500000.0, tie_embeddings=False)),
    'Mistral-7B-v0.1': (dict(model_type='mistral', vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             max_position_embeddings=32768, sliding_window=4096, rope_theta=10000.0),
                        dict(block_size=4096, n_kv_head=8, tie_embeddings=False)),  # the window caps the block
    'Qwen2.5-0.5B': (dict(model_type='qwen2', vocab_size=151936, hidden_size=896, intermediate_size=4864,
                          num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                          max_position_embeddings=32768, sliding_window=32768, use_sliding_window=False,
                          max_window_layers=21, rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=True),
                     dict(block_size=32768, qkv_bias=True, bias=False, tie_embeddings=True, rope_scaling=None)),
    'Qwen3-8B': (dict(model_type='qwen3', vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                      num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      max_position_embeddings=40960, attention_bias=False, rope_theta=1000000.0,
                      sliding_window=None, use_sliding_window=False, max_window_layers=36,
                      tie_word_embeddings=False),
                 dict(head_dim=0, qk_norm=True, n_kv_head=8)),  # 128 = 4096 / 32: the default, stored as 0
    'opt-1.3b': (dict(model_type='opt', vocab_size=50272, hidden_size=2048, ffn_dim=8192, num_hidden_layers=24,
                      num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=2048,
                      do_layer_norm_before=True, activation_function='relu', _remove_final_layer_norm=False),
                 dict(pos_offset=2, mlp='relu', intermediate_size=8192, tie_embeddings=True, bias=True)),
    'gpt2-xl': (dict(model_type='gpt2', vocab_size=50257, n_positions=1024, n_ctx=1024, n_embd=1600, n_layer=48,
                     n_head=25, activation_function='gelu_new', layer_norm_epsilon=1e-5),
                dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, tie_embeddings=True)),
}


@pytest.mark.parametrize('name', list(HUB_CONFIGS))
def test_hub_config_fields_map_to_gpt_config(name):
    config, expected = HUB_CONFIGS[name]
    got = hf.gpt_config(config)
    assert {k: getattr(got, k) for k in expected} == expected
    if name == 'Llama-3.1-8B':
        assert got.rope_scaling == {**config['rope_scaling']}


@pytest.mark.parametrize('family', ['mistral', 'qwen2'])
def test_a_sliding_window_caps_block_size_where_it_equals_full_attention(tmp_path, family):
    extra = dict(sliding_window=8) if family == 'mistral' else dict(
        use_sliding_window=True, sliding_window=8, max_window_layers=1, layer_types=None)
    cfg = HF_CONFIGS[family]()
    cfg = type(cfg)(**{**cfg.to_dict(), **extra})
    if family == 'qwen2':
        assert cfg.layer_types == ['full_attention', 'sliding_attention']
    path, ref = write_hf(tmp_path / family, family, config=cfg)
    ours = hf.from_pretrained(path).eval()
    assert ours.config.block_size == 8
    idx, mask = left_padded([8, 5], seed=2)
    with torch.no_grad():
        assert (ours(idx, attention_mask=mask) - hf_logits(ref, idx, mask))[mask.bool()].abs().max().item() < 1e-4
        with pytest.raises(ValueError, match='longer than block_size'):
            ours(torch.zeros(1, 9, dtype=torch.long))


# ----------------------------------------------------------------------------- export
@families
def test_export_reloads_in_transformers_with_the_same_logits(checkpoints, family, tmp_path):
    path, _ = checkpoints[family]
    ours = hf.from_pretrained(path).eval()
    out = hf.export_hf(ours, 'byte', str(tmp_path / 'export'), max_shard_size='20KB' if family == 'qwen3' else '5GB')
    files = set(os.listdir(out))
    assert {'config.json', 'generation_config.json'} <= files
    assert ('model.safetensors.index.json' in files) == (family == 'qwen3') == ('model.safetensors' not in files)
    with open(os.path.join(out, 'config.json')) as f:
        written = json.load(f)
    assert written['model_type'] == ('llama' if family == 'mistral' else family)  # Mistral without a window is Llama
    with open(os.path.join(out, 'generation_config.json')) as f:
        assert json.load(f)['eos_token_id'] == 256  # the byte tokenizer's end of text
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    idx, mask = left_padded([10, 4], seed=3)
    with torch.no_grad():
        assert (ours(idx, attention_mask=mask) - hf_logits(theirs, idx, mask))[mask.bool()].abs().max().item() < 1e-4
    back = hf.from_pretrained(out)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))


def test_export_keeps_padding_rows_and_gpt2_without_biases(tmp_path):
    torch.manual_seed(0)
    padded = GPT(GPTConfig(block_size=32, vocab_size=V, tokenizer_vocab=257, n_layer=2, n_head=4, n_embd=32,
                           norm='rmsnorm', pos='rope', mlp='swiglu', bias=False, n_kv_head=2, tie_embeddings=False)).eval()
    bare = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=2, n_head=4, n_embd=32, bias=False)).eval()
    idx = torch.randint(0, 257, (2, 9))
    for name, m, model_type in (('padded', padded, 'llama'), ('bare', bare, 'gpt2')):
        out = hf.export_hf(m, 'byte', str(tmp_path / name))
        theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        assert theirs.config.model_type == model_type and theirs.config.vocab_size == m.config.vocab_size
        assert theirs.config.bos_token_id is None  # the byte tokenizer has none (not GPT-2's 50256, Llama's 1)
        with torch.no_grad():  # HF's logits cover every row; ours the real vocabulary, the same numbers
            assert (theirs(idx).logits[..., :257] - m(idx)).abs().max().item() < 1e-4
    with pytest.raises(UserError, match='no Hugging Face family computes this model'):
        hf.export_hf(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=11, norm='rmsnorm')), 'byte', str(tmp_path / 'x'))
    assert not os.path.exists(tmp_path / 'x')


def test_export_cli_on_a_run_of_ours(tmp_path):
    import subprocess
    import sys
    from components.checkpoint import atomic_save, checkpoint_payload
    from conftest import ROOT
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=16, norm='rmsnorm', pos='rope',
                      mlp='swiglu', bias=False, qk_norm=True, tie_embeddings=False)).eval()
    atomic_save(checkpoint_payload(m, 'byte'), str(tmp_path / 'run' / 'ckpt.pt'))
    r = subprocess.run([sys.executable, 'scripts/convert_checkpoint.py', '--export_hf', str(tmp_path / 'run'), str(tmp_path / 'hf')],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'hf')).eval()
    assert theirs.config.model_type == 'qwen3'
    text = 'héllo<|endoftext|>'  # the tokenizer files: transformers' tokenizer gives our ids
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'hf')).encode(text) == [*'héllo'.encode(), 256]
    idx = torch.randint(0, 257, (1, 7))
    with torch.no_grad():
        assert (theirs(idx).logits - m(idx)).abs().max().item() < 1e-4
    os.remove(tmp_path / 'hf' / 'config.json')  # no longer an export: never overwritten
    r = subprocess.run([sys.executable, 'scripts/convert_checkpoint.py', '--export_hf', str(tmp_path / 'run'), str(tmp_path / 'hf')],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and 'is not an earlier export' in r.stderr


# ----------------------------------------------------------------------------- padded vocabulary
def test_load_model_pads_a_larger_embedding_to_the_datas_vocabulary(checkpoints):
    path, ref = checkpoints['qwen2']
    model, tok = load_model(path, expect_vocab=257)
    assert tok is None and model.config.vocab_size == V and model.config.tokenizer_vocab == 257
    idx = torch.randint(0, 257, (2, 6))
    with torch.no_grad():
        assert (model(idx) - ref(idx).logits[..., :257]).abs().max().item() < 1e-4
    with pytest.raises(UserError, match=f'has {V} embedding rows but the data.s tokenizer has 301 tokens'):
        load_model(path, expect_vocab=301)


# ----------------------------------------------------------------------------- training a llama-family pair
# The byte data has 257 tokens; the teacher has 300 embedding rows and the student 264: both are
# padded (as Qwen2.5-7B's 152,064 rows and 0.5B's 151,936 around one 151,665-token tokenizer).
TRAIN = ['--eval_iters=2', '--log_interval=1', '--warmup_iters=0', '--device=cpu', '--dtype=float32',
         '--block_size=32', '--batch_size=16']


def llama_config(d, rows, **kw):
    return transformers.LlamaConfig(hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=64, vocab_size=rows, **kw)


def write_llama(path, d, rows, seed):
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(llama_config(d, rows)).save_pretrained(str(path))
    return str(path)


def losses(out_dir, key='loss'):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


@pytest.fixture(scope='module')
def llama_pair(tiny_instruct, tmp_path_factory):
    """(student HF dir, teacher HF dir, teacher run dir): the teacher is a llama checkpoint trained
    here by SFT from a transformers init and exported back to a Hugging Face directory."""
    root = tmp_path_factory.mktemp('llama_pair')
    student = write_llama(root / 'student_hf', 32, 264, seed=1)
    run = str(root / 'teacher_run')
    train.main(TRAIN + [f'--data_dir={tiny_instruct}', f'--out_dir={run}', '--method=sft', '--max_iters=60',
                        '--eval_interval=60', '--learning_rate=3e-3', f"--init_from={write_llama(root / 'init', 64, V, 2)}"])
    from components.checkpoint import export_run
    return student, export_run(run, str(root / 'teacher_hf')), run


METHODS = {  # method flags, the logged quantity that must fall
    'sft': (['--method=sft'], 'val_loss'),
    'kd': (['--method=kd'], 'loss'),
    'atkd': (['--method=kd', '--atkd=True'], 'loss'),
    'seqkd': (['--method=seqkd', '--kd_ratio=0.0'], 'val_loss'),
    'minillm': (['--method=minillm', '--rollout_size=16', '--ppo_epochs=2', '--max_new_tokens=6',
                 '--learning_rate=1e-2'], 'loss_single'),  # mean KL(q_t || p_t) at the student's own prefixes
}


@pytest.mark.parametrize('method', list(METHODS))
def test_every_method_trains_a_llama_student_from_a_padded_teacher(llama_pair, tiny_instruct, tmp_path, method):
    student, teacher, teacher_run = llama_pair
    flags, key = METHODS[method]
    data = tiny_instruct
    if method == 'seqkd':
        import sample
        data = str(tmp_path / 'seqkd_data')
        sample.main([f'--init_from={teacher}', f'--data_dir={tiny_instruct}', f'--seqkd_out={data}',
                     '--max_new_tokens=6', '--device=cpu'])
    out = str(tmp_path / method)
    train.main(TRAIN + [f'--data_dir={data}', f'--out_dir={out}', f'--init_from={student}', f'--teacher={teacher}',
                        f'--pt_data_dir={tiny_instruct}', '--max_iters=30', '--eval_interval=30',
                        '--learning_rate=3e-3', *flags])
    seen = losses(out, key)
    if key == 'val_loss':
        assert seen[-1] < seen[0] - 0.5, seen
    else:
        assert sum(seen[-5:]) / 5 < 0.8 * sum(seen[:5]) / 5, seen
    trained, tok = load_model(out)
    assert (trained.config.vocab_size, trained.config.tokenizer_vocab, tok) == (264, 257, 'byte')


def truncated(model, rows=257):
    """The same model with only the first `rows` embedding rows: logits are the real vocabulary's."""
    c = GPTConfig(**{**vars(model.config), 'vocab_size': rows, 'tokenizer_vocab': 0})
    small = GPT(c).eval()
    small.load_state_dict({k: v[:rows] if k in ('transformer.wte.weight', 'lm_head.weight') else v
                           for k, v in model.state_dict().items()})
    return small


@pytest.mark.parametrize('extra', [[], ['--atkd=True'], ['--divergence=reverse_kl', '--chunked_loss=True']])
def test_kd_loss_with_padded_models_equals_the_loss_on_truncated_logits(llama_pair, tiny_instruct, extra):
    from components.parallel import Runtime
    from configurator import configure
    from dataset import InstructSet
    from supervised import supervised_loss
    student_dir, teacher_dir, _ = llama_pair
    cfg = configure(train.DEFAULTS, TRAIN + ['--method=kd', *extra])
    rt = Runtime(chunked=cfg.chunked_loss is True)
    data = InstructSet(tiny_instruct, 'train')
    x, y = data.sft_batch(data.sample_indices(8, torch.Generator().manual_seed(0)), cfg.block_size)
    results = []
    student, _ = load_model(student_dir, expect_vocab=257)
    teacher, _ = load_model(teacher_dir, expect_vocab=257)
    assert (student.config.vocab_size, teacher.config.vocab_size) == (264, V)
    for s, t in ((student, teacher), (truncated(student), truncated(teacher))):
        loss = supervised_loss(cfg, rt, s, t.eval(), x, y, kd_ratio=0.5)
        loss.backward()
        results.append((loss.item(), {k: p.grad[:257] for k, p in s.named_parameters()}))
    (padded, g_pad), (small, g_small) = results
    assert abs(padded - small) < 1e-6 * small
    for k in g_small:
        assert torch.allclose(g_pad[k], g_small[k], atol=1e-7), k
    assert (student.lm_head.weight.grad[257:] == 0).all()  # padding rows take no part


def test_padding_rows_are_never_sampled_alone_or_teacher_mixed(llama_pair):
    student_dir, teacher_dir, _ = llama_pair
    student, _ = load_model(student_dir, expect_vocab=257)
    teacher, _ = load_model(teacher_dir, expect_vocab=257)
    with torch.no_grad():  # every hidden state gets a large constant coordinate 0 after the final RMSNorm...
        teacher.transformer.wte.weight[:, 0] = 100.0
        teacher.lm_head.weight[257:, 0] = 1000.0  # ...which the padding rows turn into the largest logits by far
    idx = torch.randint(0, 257, (6, 5), generator=torch.Generator().manual_seed(0))
    teacher.config.tokenizer_vocab = 0  # all 300 rows as logits: padding wins every draw
    full = generate(teacher, idx, 16, generator=torch.Generator().manual_seed(1))[:, 5:]
    assert (full >= 257).all()
    teacher.config.tokenizer_vocab = 257
    for temperature in (1.0, 0.0):
        for mix_alpha in (0.0, 0.2, 0.9):  # the student alone; MiniLLM's teacher-mixed sampling
            out = generate(student, idx, 16, temperature=temperature, mix_model=teacher, mix_alpha=mix_alpha,
                                   generator=torch.Generator().manual_seed(2))
            assert out.max().item() < 257
        assert generate(teacher, idx, 16, temperature=temperature).max().item() < 257
