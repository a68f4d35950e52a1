"""
Tiny GGUF files for the tests, written with the `gguf` package's GGUFWriter the way llama.cpp's
convert_hf_to_gguf.py writes a transformers model: its tensor names, Llama's q/k row permutation,
GPT-2's Conv1D transposed, Llama-3's RoPE scaling as rope_freqs, and the tokenizer metadata. Tensor
types are chosen per tensor; Q8_0 / Q4_0 / Q4_1 / BF16 are quantised with gguf.quants.quantize, the
K-quants (which gguf.quants cannot quantise) are random blocks with small scales.
"""
import math

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, quants

from components.tokenizer_hf import byte_to_unicode

T = GGMLQuantizationType
BLOCK = {'attn_norm': 'input_layernorm', 'ffn_norm': 'post_attention_layernorm', 'attn_q': 'self_attn.q_proj',
         'attn_k': 'self_attn.k_proj', 'attn_v': 'self_attn.v_proj', 'attn_output': 'self_attn.o_proj',
         'attn_q_norm': 'self_attn.q_norm', 'attn_k_norm': 'self_attn.k_norm', 'ffn_gate': 'mlp.gate_proj',
         'ffn_up': 'mlp.up_proj', 'ffn_down': 'mlp.down_proj'}
GPT2_BLOCK = {'attn_norm': 'ln_1', 'ffn_norm': 'ln_2', 'attn_qkv': 'attn.c_attn', 'attn_output': 'attn.c_proj',
              'ffn_up': 'mlp.c_fc', 'ffn_down': 'mlp.c_proj'}


def byte_vocab():
    """The 256 byte tokens spelled as byte-level BPE files spell them, then <|endoftext|> (control):
    the vocabulary of tokenizer.py's 'byte' encoding."""
    spell = byte_to_unicode()
    return dict(tokens=[spell[b] for b in range(256)] + ['<|endoftext|>'], types=[1] * 256 + [3], merges=[],
                pre='gpt-2', eos=256)


def permute(w, n_head):
    """llama.cpp's LlamaModel.permute (HF rotate-half rows -> GGML interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def encode_tensor(w, qtype, rng):
    """(data, raw_dtype) for GGUFWriter.add_tensor: `w` [rows, cols] fp32 numpy stored as qtype."""
    if qtype == T.F32:
        return w.astype(np.float32), None
    if qtype == T.F16:
        return w.astype(np.float16), None
    if qtype in (T.Q4_K, T.Q5_K, T.Q6_K):  # random blocks: d (and dmin) fp16 fields set small
        block, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (w.shape[0], w.shape[1] // block, size), dtype=np.uint8)
        small = np.array([1e-4], dtype=np.float16).view(np.uint8)
        if qtype == T.Q6_K:
            raw[..., -2:] = small
        else:
            raw[..., 0:2] = small
            raw[..., 2:4] = small
        return raw.reshape(w.shape[0], -1), qtype
    return quants.quantize(w.astype(np.float32), qtype), qtype


def write_gguf(path, model, arch, types=None, vocab=None, seed=0, rope_freqs=None, extra=None, skip_tensors=False):
    """Write transformers `model` (LlamaForCausalLM, Qwen2/3ForCausalLM, GPT2LMHeadModel) as a GGUF.
    types: {GGUF tensor name or its block-local kind ('attn_q', ...): GGMLQuantizationType}, F32 by default
    (1-D tensors always F32, as llama.cpp). vocab: byte_vocab() by default. rope_freqs: write
    Llama-3's divisors (from the model's rope_parameters). extra: more metadata {key: value}."""
    types, vocab, rng = types or {}, vocab or byte_vocab(), np.random.default_rng(seed)
    c = model.config
    w = GGUFWriter(str(path), arch)
    if arch == 'gpt2':
        w.add_uint32('gpt2.context_length', c.n_positions)
        w.add_uint32('gpt2.embedding_length', c.n_embd)
        w.add_uint32('gpt2.feed_forward_length', c.n_inner or 4 * c.n_embd)
        w.add_uint32('gpt2.block_count', c.n_layer)
        w.add_uint32('gpt2.attention.head_count', c.n_head)
        w.add_float32('gpt2.attention.layer_norm_epsilon', c.layer_norm_epsilon)
    else:
        hd = getattr(c, 'head_dim', None) or c.hidden_size // c.num_attention_heads
        w.add_uint32(f'{arch}.context_length', c.max_position_embeddings)
        w.add_uint32(f'{arch}.embedding_length', c.hidden_size)
        w.add_uint32(f'{arch}.feed_forward_length', c.intermediate_size)
        w.add_uint32(f'{arch}.block_count', c.num_hidden_layers)
        w.add_uint32(f'{arch}.attention.head_count', c.num_attention_heads)
        w.add_uint32(f'{arch}.attention.head_count_kv', c.num_key_value_heads)
        w.add_float32(f'{arch}.rope.freq_base', c.rope_parameters['rope_theta'])
        w.add_float32(f'{arch}.attention.layer_norm_rms_epsilon', c.rms_norm_eps)
        w.add_uint32(f'{arch}.rope.dimension_count', hd)
        if arch == 'qwen3':
            w.add_uint32(f'{arch}.attention.key_length', hd)
            w.add_uint32(f'{arch}.attention.value_length', hd)
    for key, value in (extra or {}).items():
        {str: w.add_string, bool: w.add_bool, int: w.add_uint32, float: w.add_float32}[type(value)](key, value)
    w.add_string('tokenizer.ggml.model', vocab.get('model', 'gpt2'))
    w.add_string('tokenizer.ggml.pre', vocab['pre'])
    w.add_array('tokenizer.ggml.tokens', vocab['tokens'])
    w.add_array('tokenizer.ggml.token_type', vocab['types'])
    if vocab['merges']:
        w.add_array('tokenizer.ggml.merges', vocab['merges'])
    w.add_uint32('tokenizer.ggml.eos_token_id', vocab['eos'])
    w.add_uint32('tokenizer.ggml.bos_token_id', vocab.get('bos', vocab['eos']))
    w.add_bool('tokenizer.ggml.add_bos_token', False)
    if vocab.get('chat_template'):
        w.add_string('tokenizer.chat_template', vocab['chat_template'])
    if skip_tensors:
        w.add_tensor('token_embd.weight', np.zeros((len(vocab['tokens']), 32), dtype=np.float32))
    else:
        for name, t in gguf_tensors(model, arch, rope_freqs):
            kind = name.split('.')[-2]
            qtype = types.get(name, types.get(kind, T.F32)) if t.ndim == 2 else T.F32
            data, raw = encode_tensor(t, qtype, rng)
            w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def gguf_tensors(model, arch, rope_freqs=False):
    """[(GGUF name, fp32 numpy array)] as llama.cpp's converter lays the model out."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    c, out = model.config, []
    if arch == 'gpt2':
        out += [('token_embd.weight', sd['transformer.wte.weight']), ('position_embd.weight', sd['transformer.wpe.weight']),
                ('output_norm.weight', sd['transformer.ln_f.weight']), ('output_norm.bias', sd['transformer.ln_f.bias'])]
        for i in range(c.n_layer):
            for ours, theirs in GPT2_BLOCK.items():
                for p in ('weight', 'bias'):
                    t = sd[f'transformer.h.{i}.{theirs}.{p}']
                    out.append((f'blk.{i}.{ours}.{p}', t.T.copy() if t.ndim == 2 else t))
        return out
    out += [('token_embd.weight', sd['model.embed_tokens.weight']), ('output_norm.weight', sd['model.norm.weight'])]
    if not c.tie_word_embeddings:
        out.append(('output.weight', sd['lm_head.weight']))
    if rope_freqs:
        out.append(('rope_freqs.weight', llama3_divisors(c)))
    for i in range(c.num_hidden_layers):
        for ours, theirs in BLOCK.items():
            for p in ('weight', 'bias'):
                t = sd.get(f'model.layers.{i}.{theirs}.{p}')
                if t is None:
                    continue
                if arch == 'llama' and ours == 'attn_q':
                    t = permute(t, c.num_attention_heads)
                elif arch == 'llama' and ours == 'attn_k':
                    t = permute(t, c.num_key_value_heads)
                out.append((f'blk.{i}.{ours}.{p}', t))
    return out


def llama3_divisors(c):
    """llama.cpp's rope_freqs for a Llama-3 rope_parameters (convert_hf_to_gguf.py's rule)."""
    r = c.rope_parameters
    hd = getattr(c, 'head_dim', None) or c.hidden_size // c.num_attention_heads
    out = []
    for i in range(0, hd, 2):
        wavelen = 2 * math.pi / (1.0 / r['rope_theta'] ** (i / hd))
        if wavelen < r['original_max_position_embeddings'] / r['high_freq_factor']:
            out.append(1.0)
        elif wavelen > r['original_max_position_embeddings'] / r['low_freq_factor']:
            out.append(r['factor'])
        else:
            s = (r['original_max_position_embeddings'] / wavelen - r['low_freq_factor']) / (
                r['high_freq_factor'] - r['low_freq_factor'])
            out.append(1 / ((1 - s) / r['factor'] + s))
    return np.array(out, dtype=np.float32)


def nudge(model, seed=0):
    """Every tensor moved off its init, so each mapping shows in the logits."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()
