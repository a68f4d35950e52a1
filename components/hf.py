"""
Hugging Face checkpoints in and out: the families model.GPT can be, read from and written back to
the layout `transformers` uses, so a checkpoint from the hub trains here and a distilled student
goes straight back to the hub, vLLM or llama.cpp's converter.

    from_pretrained(dir or hub name)   config.json's model_type in FAMILIES -> a GPT, same logits
    export_hf(model, tokenizer, out)   config.json, (sharded) safetensors, generation_config.json,
                                       the tokenizer files; transformers reloads the same logits

The families differ only in names and layouts: q|k|v and gate|up are fused into one Linear here
(two stacked on dim 0), GPT-2's Conv1D stores [in, out] where nn.Linear stores [out, in]. Each
family's details (OPT's position offset of 2, Qwen2's q/k/v biases, Qwen3's q/k RMSNorm and head
dim, Llama-3's RoPE scaling) come from its config.json; anything else a config asks for (MoE,
post-LayerNorm OPT-350m, RoPE scalings other than linear / llama3, quantisation, ...) is one
UserError naming it, never a model that silently computes something else. A sliding window
(Mistral v0.1) caps block_size at the window, where it equals full attention (gpt_config).

Loading never holds a second copy of the weights: the model is built on the meta device (no
memory, no random init) and each tensor is assigned as it is read, safetensors one tensor at a
time, pytorch_model.bin memory-mapped (torch.load(weights_only=True): no code runs).
"""
import json
import os
import re
import shutil
import socket
import urllib.parse

import torch

from configurator import UserError
from model import FAMILIES, GPT, GPTConfig


class CheckpointError(UserError, ValueError):
    """A Hugging Face checkpoint (or name) this file cannot read or write; one line via configurator.run."""


# The families are model.FAMILIES (each a set of GPTConfig switches); what follows is how the
# Hugging Face side spells them.
ARCHITECTURES = {'gpt2': 'GPT2LMHeadModel', 'opt': 'OPTForCausalLM', 'llama': 'LlamaForCausalLM',
                 'mistral': 'MistralForCausalLM', 'qwen2': 'Qwen2ForCausalLM', 'qwen3': 'Qwen3ForCausalLM'}
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# Our module names -> the family's, per block and outside the blocks; the RoPE families (pos='rope'
# in model.FAMILIES) all use Llama's. A tuple is several HF tensors stacked along dim 0 into our one
# (q | k | v; SwiGLU's gate | up).
ROPE_FAMILY_BLOCK = {'ln_1': 'input_layernorm', 'ln_2': 'post_attention_layernorm',
                     'attn.c_attn': ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'),
                     'attn.c_proj': 'self_attn.o_proj', 'attn.q_norm': 'self_attn.q_norm',
                     'attn.k_norm': 'self_attn.k_norm', 'mlp.c_fc': ('mlp.gate_proj', 'mlp.up_proj'),
                     'mlp.c_proj': 'mlp.down_proj'}
NAMES = {  # family: (HF prefix of the body, {our top-level module: theirs}, {our block module: theirs})
    'gpt2': ('transformer.', {'wte': 'wte', 'wpe': 'wpe', 'ln_f': 'ln_f', 'h': 'h'}, None),
    'opt': ('model.decoder.', {'wte': 'embed_tokens', 'wpe': 'embed_positions', 'ln_f': 'final_layer_norm',
                               'h': 'layers'},
            {'ln_1': 'self_attn_layer_norm', 'ln_2': 'final_layer_norm',
             'attn.c_attn': ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'),
             'attn.c_proj': 'self_attn.out_proj', 'mlp.c_fc': 'fc1', 'mlp.c_proj': 'fc2'}),
    'llama': ('model.', {'wte': 'embed_tokens', 'ln_f': 'norm', 'h': 'layers'}, ROPE_FAMILY_BLOCK),
}
# Families whose checkpoints hold biases everywhere or nowhere (GPT-2, OPT: zeros are written for a
# bias-free model; Llama: attention_bias = mlp_bias); the others hold their family's biases only.
UNIFORM_BIAS = ('gpt2', 'opt', 'llama')
PLAIN_HEADS = ('gpt2', 'opt')  # no grouped-query attention, head_dim = n_embd / n_head
GPT2_CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# tensors some checkpoints carry that are not weights (causal-mask buffers, cached RoPE frequencies)
NOT_WEIGHTS = re.compile(r'(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$')


# ----------------------------------------------------------------------------- config.json -> GPTConfig
def refuse(model_type, what):
    raise CheckpointError(f"this {model_type} checkpoint uses {what}, which model.GPT does not implement: "
                          f"pick a checkpoint without it")


def read_config(path):
    try:
        with open(os.path.join(path, 'config.json')) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {os.path.join(path, 'config.json')} ({type(e).__name__}): "
                              f"not a Hugging Face checkpoint directory") from None


def rope_settings(hf):
    """(rope_theta, rope_scaling) from transformers 5.x's `rope_parameters` or 4.x's / the hub's
    `rope_theta` + `rope_scaling` (whose type key was once `type`)."""
    params = hf.get('rope_parameters') or {}
    if any(isinstance(v, dict) for v in params.values()):
        refuse(hf['model_type'], "a different RoPE per layer type (nested rope_parameters)")
    scaling = hf.get('rope_scaling') or params
    theta = float(params.get('rope_theta') or hf.get('rope_theta') or 10000.0)
    if (scaling.get('partial_rotary_factor') or hf.get('partial_rotary_factor') or 1.0) != 1.0:
        refuse(hf['model_type'], "partial rotary embeddings (partial_rotary_factor)")
    kind = scaling.get('rope_type') or scaling.get('type') or 'default'
    if kind == 'default':
        return theta, None
    if kind == 'linear':
        return theta, {'rope_type': 'linear', 'factor': float(scaling['factor'])}
    if kind == 'llama3':
        keys = ('factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings')
        return theta, dict(rope_type='llama3', **{k: scaling[k] for k in keys})
    refuse(hf['model_type'], f"RoPE scaling rope_type={kind!r} (default, linear and llama3 are implemented)")


def sliding_window(hf):
    """The attention window when some layer uses one (Mistral v0.1; Qwen with use_sliding_window), else None."""
    if hf['model_type'] == 'mistral':
        return hf.get('sliding_window')
    if hf['model_type'] in ('qwen2', 'qwen3'):
        if hf.get('layer_types'):
            return hf.get('sliding_window') if 'sliding_attention' in hf['layer_types'] else None
        if hf.get('use_sliding_window') and hf.get('max_window_layers', 0) < hf['num_hidden_layers']:
            return hf.get('sliding_window')
    return None


def gpt_config(hf, dropout=0.0):
    """The GPTConfig of a Hugging Face config.json (dict); UserError for what GPT cannot compute.

    A sliding window of W tokens (Mistral v0.1, Qwen with use_sliding_window) caps block_size at W:
    a query then never has more than W keys, so full causal attention over the block is exactly
    the windowed attention (HF: key j is visible to query i when i - W < j <= i), and forward
    refuses anything longer.
    """
    mt = hf.get('model_type')
    if mt not in FAMILIES:
        raise CheckpointError(f"model_type {mt!r} is not supported: model.GPT implements {', '.join(FAMILIES)}")
    if hf.get('quantization_config'):
        refuse(mt, f"quantised weights ({hf['quantization_config'].get('quant_method', 'quantization_config')})")
    for key in ('num_experts', 'num_local_experts', 'n_routed_experts', 'moe_intermediate_size'):
        if hf.get(key):
            refuse(mt, f"mixture-of-experts layers ({key})")
    get = lambda key, default: default if hf.get(key) is None else hf[key]  # noqa: E731
    switches = dict(FAMILIES[mt])  # the shapes come from config.json, the rest from the family
    common = dict(vocab_size=hf['vocab_size'], dropout=dropout, tie_embeddings=get('tie_word_embeddings', mt in ('gpt2', 'opt')))
    if mt == 'gpt2':
        if get('activation_function', 'gelu_new') not in ('gelu_new', 'gelu_pytorch_tanh'):
            refuse(mt, f"activation_function={hf['activation_function']!r} (GPT uses GELU's tanh approximation)")
        if get('scale_attn_by_inverse_layer_idx', False) or not get('scale_attn_weights', True):
            refuse(mt, "non-standard attention scaling (scale_attn_by_inverse_layer_idx / scale_attn_weights)")
        if get('add_cross_attention', False):
            refuse(mt, "cross-attention")
        return GPTConfig(block_size=hf['n_positions'], n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=hf['n_embd'],
                         intermediate_size=get('n_inner', 0), norm_eps=get('layer_norm_epsilon', 1e-5),
                         **switches, **common)
    if mt == 'opt':
        if not get('do_layer_norm_before', True):
            refuse(mt, "post-LayerNorm blocks (do_layer_norm_before=false, as OPT-350m)")
        if get('word_embed_proj_dim', hf['hidden_size']) != hf['hidden_size']:
            refuse(mt, f"word_embed_proj_dim {hf['word_embed_proj_dim']} != hidden_size {hf['hidden_size']} "
                       f"(embedding projections, as OPT-350m)")
        if get('_remove_final_layer_norm', False) or not get('layer_norm_elementwise_affine', True):
            refuse(mt, "no final LayerNorm or LayerNorms without weights")
        if not get('enable_bias', True):
            refuse(mt, "Linear layers without biases but LayerNorms with them (enable_bias=false)")
        if get('activation_function', 'relu') != 'relu':
            refuse(mt, f"activation_function={hf['activation_function']!r}")
        return GPTConfig(block_size=hf['max_position_embeddings'], n_layer=hf['num_hidden_layers'],
                         n_head=hf['num_attention_heads'], n_embd=hf['hidden_size'], intermediate_size=hf['ffn_dim'],
                         **switches, **common)
    # llama, mistral, qwen2, qwen3: RMSNorm, RoPE, SwiGLU, grouped-query attention
    if get('hidden_act', 'silu') != 'silu':
        refuse(mt, f"hidden_act={hf['hidden_act']!r} (SwiGLU uses silu)")
    if mt == 'llama':
        if get('attention_bias', False) != get('mlp_bias', False):
            refuse(mt, "biases in only some Linear layers (attention_bias != mlp_bias)")
        switches['bias'] = get('attention_bias', False)
    elif mt == 'qwen3' and get('attention_bias', False):
        refuse(mt, "attention_bias=true")
    n_head, d = hf['num_attention_heads'], hf['hidden_size']
    head_dim = get('head_dim', 128 if mt == 'qwen3' else d // n_head)  # Qwen3Config's default is 128
    theta, scaling = rope_settings(hf)
    block = min(hf['max_position_embeddings'], sliding_window(hf) or hf['max_position_embeddings'])
    return GPTConfig(block_size=block, n_layer=hf['num_hidden_layers'], n_head=n_head, n_embd=d,
                     n_kv_head=get('num_key_value_heads', n_head), head_dim=0 if head_dim == d // n_head else head_dim,
                     norm_eps=get('rms_norm_eps', 1e-6), rope_theta=theta, rope_scaling=scaling,
                     intermediate_size=hf['intermediate_size'], **switches, **common)


# ----------------------------------------------------------------------------- our names <-> theirs
def weight_layout(config, model_type, our_names):
    """[(our state-dict name, [HF names])] for every tensor of ours, in our order; several HF names
    are stacked along dim 0 (their sizes: split_sizes). lm_head.weight of a tied model maps to the
    HF embedding (transformers ties it on load and does not store it)."""
    prefix, top, block = NAMES['llama' if FAMILIES[model_type].get('pos') == 'rope' else model_type]
    out = []
    for name in our_names:
        if name == 'lm_head.weight':
            out.append((name, [prefix + top['wte'] + '.weight'] if config.tie_embeddings else ['lm_head.weight']))
            continue
        parts = name.split('.')  # transformer.<top>.<param> or transformer.h.<i>.<module...>.<param>
        if parts[1] != 'h':
            out.append((name, [prefix + top[parts[1]] + '.' + parts[2]]))
            continue
        module, param = '.'.join(parts[3:-1]), parts[-1]
        theirs = module if block is None else block[module]
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        out.append((name, [f"{prefix}{top['h']}.{parts[2]}.{t}.{param}" for t in theirs]))
    return out


def split_sizes(config, our_name):
    """Row counts of the HF tensors stacked in one of ours: q | k | v, or SwiGLU's gate | up."""
    if '.attn.c_attn.' in our_name:
        return [config.n_head * config.hd, config.kv_heads * config.hd, config.kv_heads * config.hd]
    return [config.ffn] * 2


# ----------------------------------------------------------------------------- reading
class CheckpointFiles:
    """The tensors of a checkpoint directory by name: model.safetensors, sharded safetensors
    (model.safetensors.index.json), pytorch_model.bin, or sharded .bin (its index). safetensors
    reads one tensor per get(); .bin files are memory-mapped (read as touched)."""

    def __init__(self, path):
        from safetensors import safe_open
        self.path, self.files = path, {}
        for index, single in (('model.safetensors.index.json', 'model.safetensors'),
                              ('pytorch_model.bin.index.json', 'pytorch_model.bin')):
            if os.path.exists(os.path.join(path, index)):
                with open(os.path.join(path, index)) as f:
                    self.where = json.load(f)['weight_map']
                break
            if os.path.exists(os.path.join(path, single)):
                self.where = None
                break
        else:
            raise CheckpointError(f"{path} holds no model.safetensors(.index.json) or pytorch_model.bin(.index.json): "
                                  f"not a complete Hugging Face checkpoint")
        for file in sorted(set(self.where.values()) if self.where else [single]):
            full = os.path.join(path, file)
            try:
                self.files[file] = safe_open(full, framework='pt') if file.endswith('.safetensors') else load_bin(full)
            except Exception as e:  # missing shard, truncated file, pickled code
                raise CheckpointError(f"cannot read {full} ({type(e).__name__}: {str(e)[:80]}): "
                                      f"re-download the checkpoint") from None
        if self.where is None:
            (file, handle), = self.files.items()
            self.where = {k: file for k in handle.keys()}

    def keys(self):
        return self.where.keys()

    def get(self, name):
        handle = self.files[self.where[name]]
        return handle.get_tensor(name) if hasattr(handle, 'get_tensor') else handle[name]


def load_bin(path):
    """A pytorch_model.bin's tensors, memory-mapped (files torch.save wrote before 1.6 cannot be: read whole)."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location='cpu', weights_only=True)


def resolve(name, keys):
    """The checkpoint's own spelling of a canonical *ForCausalLM name: base-model saves (the hub's
    gpt2, facebook/opt-*) drop the `transformer.` / `model.` prefix."""
    if name in keys:
        return name
    for prefix in ('transformer.', 'model.'):
        if name.startswith(prefix) and name[len(prefix):] in keys:
            return name[len(prefix):]
    return None


def convert_state_dict(tensors, config, model_type, our_names, dtype=None, where='the checkpoint'):
    """Our state dict from a Hugging Face one (`tensors`: CheckpointFiles, or a state dict in
    memory), one tensor of ours at a time, fused and transposed as ours are laid out, each cast to
    `dtype` (None: as stored). `where` names the source in errors."""
    keys, used, sd = set(tensors.keys()), set(), {}
    for ours, theirs in weight_layout(config, model_type, our_names):
        found = [resolve(n, keys) for n in theirs]
        if None in found:
            missing = theirs[found.index(None)]
            raise CheckpointError(f"{where} has no tensor {missing!r}: not a complete {model_type} checkpoint")
        used.update(found)
        if ours == 'lm_head.weight' and config.tie_embeddings:
            sd[ours] = sd['transformer.wte.weight']
            continue
        parts = [tensors.get(n) for n in found]
        t = parts[0] if len(parts) == 1 else torch.cat(parts)
        if model_type == 'gpt2' and ours.endswith(GPT2_CONV1D):
            t = t.t().contiguous()
        sd[ours] = t if dtype is None else t.to(dtype)
    extra = sorted(k for k in keys - used if not NOT_WEIGHTS.search(k) and not (
        config.tie_embeddings and k.endswith('lm_head.weight')))
    if extra:
        raise CheckpointError(f"{where} has tensors a {model_type} model of its config.json does not use "
                              f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}): unsupported variant")
    return sd


def local_dir(name_or_dir):
    """A local checkpoint directory; a hub name ('Qwen/Qwen2.5-0.5B', 'gpt2') is downloaded first
    (online only): config, safetensors (else .bin) weights, generation config, tokenizer files."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    if not re.fullmatch(r'[\w.-]+(/[\w.-]+)?', name_or_dir) or name_or_dir.startswith('.'):
        raise CheckpointError(f"{name_or_dir!r} is neither a directory nor a Hugging Face hub name (org/name)")
    from components.tokenizer_hf import TOKENIZER_FILES
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name_or_dir, local_files_only=True)  # downloaded before: no network
    except Exception:
        pass
    if not hub_reachable():  # fail at once, not after the hub client's minute of retries and their log lines
        raise CheckpointError(f"cannot download {name_or_dir!r}: it is not in the local Hugging Face cache and "
                              f"the hub is unreachable (offline?): pass a local directory, or download it on "
                              f"a machine with network")
    try:
        from huggingface_hub import list_repo_files
        files = list_repo_files(name_or_dir)
        weights = (['*.safetensors', 'model.safetensors.index.json'] if any(f.endswith('.safetensors') for f in files)
                   else ['pytorch_model*.bin', 'pytorch_model.bin.index.json'])
        return snapshot_download(name_or_dir, allow_patterns=['config.json', 'generation_config.json',
                                                             *weights, *TOKENIZER_FILES])
    except Exception as e:  # offline, unknown repo, gated model without a token
        raise CheckpointError(f"cannot download {name_or_dir!r} from the Hugging Face hub ({type(e).__name__}): "
                              f"check the name and the network, or pass a local directory") from None


def hub_reachable(timeout=3.0):
    """False when HF_HUB_OFFLINE is set or the hub's host (HF_ENDPOINT) takes no TCP connection."""
    if os.environ.get('HF_HUB_OFFLINE', '0').lower() in ('1', 'true', 'yes'):
        return False
    url = urllib.parse.urlparse(os.environ.get('HF_ENDPOINT', 'https://huggingface.co'))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == 'https' else 80)), timeout).close()
        return True
    except OSError:
        return False


def from_pretrained(name_or_dir, dropout=0.0, dtype=None):
    """A GPT with the weights of a Hugging Face checkpoint (directory or hub name) of any family in
    FAMILIES, in the checkpoint's dtype (config.json's dtype / torch_dtype) unless `dtype` is given."""
    path = local_dir(name_or_dir)
    hf = read_config(path)
    if dtype is None:
        dtype = DTYPES.get(hf.get('dtype') or hf.get('torch_dtype'))
    gpt_config(hf, dropout)  # what GPT cannot compute is refused before any weight file is opened
    return build(hf, CheckpointFiles(path), dtype, dropout, path)


def build(hf, tensors, dtype=None, dropout=0.0, where='the checkpoint'):
    """A GPT from a config.json (dict) and its tensors under the Hugging Face names (CheckpointFiles;
    components/gguf.py's GGUFTensors). Built on the meta device, then each tensor is assigned as it
    is read: one copy of the weights."""
    config = gpt_config(hf, dropout)
    with torch.device('meta'):
        model = GPT(config)
    sd = convert_state_dict(tensors, config, hf['model_type'], list(model.state_dict()), dtype, where)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:  # a shape that disagrees with config.json
        raise CheckpointError(f"{where}: weights do not match its config.json: {str(e).splitlines()[-1].strip()}") from None
    if config.tie_embeddings:  # assign gives the tied pair two Parameters: one again
        model.transformer.wte.weight = model.lm_head.weight
    return model


def has_tokenizer_files(path):
    """Whether a checkpoint directory carries its tokenizer (then tokenizer.get_encoding reads it)."""
    import glob
    from components.tokenizer_hf import TOKENIZER_FILES
    return any(glob.glob(os.path.join(glob.escape(path), pattern)) for pattern in TOKENIZER_FILES
               if pattern not in ('tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja'))


# ----------------------------------------------------------------------------- GPTConfig -> config.json
def model_type_of(config):
    """The Hugging Face family whose computation equals this GPTConfig's: the first in model.FAMILIES
    whose switches it has, with biases and heads the family's checkpoints can hold (UNIFORM_BIAS,
    PLAIN_HEADS). Mistral's switches are Llama's, so a model read from Mistral is written as llama."""
    c = config
    qkv_bias = c.bias if c.qkv_bias is None else c.qkv_bias
    plain_heads = c.kv_heads == c.n_head and c.hd == c.n_embd // c.n_head
    for family, switches in FAMILIES.items():
        f = GPTConfig(**switches)
        keys = ('norm', 'pos', 'mlp', 'qk_norm') + (('pos_offset',) if c.pos == 'learned' else ())
        biases = (qkv_bias == c.bias if family in UNIFORM_BIAS
                  else (c.bias, qkv_bias) == (f.bias, f.bias if f.qkv_bias is None else f.qkv_bias))
        if all(getattr(c, k) == getattr(f, k) for k in keys) and biases and (plain_heads or family not in PLAIN_HEADS):
            return family
    raise CheckpointError(f"no Hugging Face family computes this model (norm={c.norm}, pos={c.pos}, mlp={c.mlp}, "
                          f"pos_offset={c.pos_offset}, qk_norm={c.qk_norm}, qkv_bias={c.qkv_bias}, bias={c.bias}): "
                          f"export supports {', '.join(f for f in FAMILIES if f != 'mistral')}")


def hf_config(config, model_type, dtype, special):
    """config.json for `config` as `model_type`, with the fields transformers (4.x and 5.x) reads."""
    c = config
    out = dict(architectures=[ARCHITECTURES[model_type]], model_type=model_type, vocab_size=c.vocab_size,
               tie_word_embeddings=c.tie_embeddings, dtype=dtype, torch_dtype=dtype, use_cache=True, **special)
    if model_type == 'gpt2':
        out.update(n_positions=c.block_size, n_ctx=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
                   n_inner=c.intermediate_size or None, activation_function='gelu_new', layer_norm_epsilon=c.norm_eps,
                   resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout)
    elif model_type == 'opt':
        out.update(hidden_size=c.n_embd, word_embed_proj_dim=c.n_embd, ffn_dim=c.ffn,
                   num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, max_position_embeddings=c.block_size,
                   do_layer_norm_before=True, activation_function='relu', enable_bias=True,
                   layer_norm_elementwise_affine=True, dropout=c.dropout, attention_dropout=0.0)
    else:
        scaling = dict(c.rope_scaling) if c.rope_scaling else None
        out.update(hidden_size=c.n_embd, intermediate_size=c.ffn,
                   num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads,
                   head_dim=c.hd, hidden_act='silu', max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
                   rope_theta=c.rope_theta, rope_scaling=scaling,   # what hub configs and 4.x readers use
                   rope_parameters={'rope_type': 'default', 'rope_theta': c.rope_theta, **(scaling or {})},  # 5.x
                   attention_dropout=c.dropout)
        if model_type == 'llama':
            out.update(attention_bias=c.bias, mlp_bias=c.bias)
        elif model_type == 'qwen3':
            out.update(attention_bias=False)
        if model_type in ('qwen2', 'qwen3'):
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layer)
    return out


def hf_tensors(model, model_type):
    """[(HF name, tensor view)] of the model in the family's layout: fused tensors split back,
    GPT-2's Conv1D transposed, a tied lm_head left out; biases the family always has but the
    model does not (our bias=False exported as GPT-2 / OPT) are zeros."""
    sd, c = model_state(model), model.config
    out = []
    for ours, theirs in weight_layout(c, model_type, list(sd)):
        if ours == 'lm_head.weight' and c.tie_embeddings:
            continue
        t = sd[ours]
        if model_type == 'gpt2' and ours.endswith(GPT2_CONV1D):
            t = t.t()
        pieces = t.split(split_sizes(c, ours)) if len(theirs) > 1 else [t]
        out += list(zip(theirs, pieces))
    if model_type in ('gpt2', 'opt') and not c.bias:
        have = {n for n, _ in out}
        for n, t in list(out):
            b = n[:-len('weight')] + 'bias'
            if n.endswith('.weight') and b not in have and not n.endswith(('wte.weight', 'wpe.weight', 'embed_tokens.weight',
                                                                            'embed_positions.weight', 'lm_head.weight')):
                out.append((b, torch.zeros(t.shape[-1] if model_type == 'gpt2' and n.endswith(GPT2_CONV1D) else t.shape[0],
                                           dtype=t.dtype)))
    return out


def parse_size(size):
    """Bytes from an int or '5GB' / '500MB' / '20KB' (powers of 1000, as transformers) or 'GiB' / 'MiB'."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*', str(size), re.IGNORECASE)
    if not m:
        raise CheckpointError(f"max_shard_size {size!r}: write it as bytes or like '5GB', '500MB'")
    unit = m.group(2).upper()
    return int(float(m.group(1)) * {'KB': 1e3, 'MB': 1e6, 'GB': 1e9, 'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30}[unit])


def model_state(model):
    """State dict without any wrapper prefixes (torch.compile's `_orig_mod.`, DDP's `module.`)."""
    sd = model.state_dict()
    for prefix in ('_orig_mod.', 'module.'):
        sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    return sd


def export_hf(model, tokenizer_spec, out_dir, max_shard_size='5GB'):
    """Write `model` as a Hugging Face checkpoint of its family (model_type_of) into out_dir:
    config.json, model.safetensors (or shards of at most max_shard_size plus the index),
    generation_config.json and the tokenizer's files, in the model's dtype. Embedding rows past
    the tokenizer's vocabulary (padding) are written as they are. All of it goes to a temporary
    directory renamed to out_dir at the end, so a failure never leaves half a checkpoint; an
    existing out_dir is replaced only when it holds a config.json (an earlier export)."""
    from components import tokenizer
    from safetensors.torch import save_file
    model_type = model_type_of(model.config)
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, 'config.json')):
        raise CheckpointError(f"{out_dir} exists and is not an earlier export: pick a new directory")
    limit = parse_size(max_shard_size)
    tensors = hf_tensors(model, model_type)
    shards, size = [[]], 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, t))
        size += nbytes
    dtype = str(tensors[0][1].dtype).removeprefix('torch.')
    special = tokenizer.special_token_ids(tokenizer_spec)
    tmp = f"{out_dir}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = 'model.safetensors' if len(shards) == 1 else f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
            save_file({n: t.detach().to('cpu').clone(memory_format=torch.contiguous_format) for n, t in shard},
                      os.path.join(tmp, file), metadata={'format': 'pt'})
            weight_map.update({n: file for n, _ in shard})
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for _, t in tensors)
            write_json(os.path.join(tmp, 'model.safetensors.index.json'),
                       {'metadata': {'total_size': total}, 'weight_map': weight_map})
        unset = dict.fromkeys(('bos_token_id', 'eos_token_id', 'pad_token_id'))  # null, not the family's defaults
        write_json(os.path.join(tmp, 'config.json'), hf_config(model.config, model_type, dtype, {**unset, **special}))
        write_json(os.path.join(tmp, 'generation_config.json'), dict(special))
        tokenizer.write_hf_tokenizer_files(tokenizer_spec, tmp)
        old = f"{out_dir}.old.{os.getpid()}"
        if os.path.exists(out_dir):
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_json(path, obj):
    with open(path, 'w') as f:
        f.write(json.dumps(obj, indent=2) + '\n')
