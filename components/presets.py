"""
The released checkpoints people distil as named shapes, plain data (gpt-fast's table of configs):
each preset is the GPTConfig that hf.gpt_config builds from the model's published config.json
(huggingface.co/<hub name>/blob/main/config.json), its family's switches from model.FAMILIES.
Parameter counts (memory.count_params, = transformers' on the same config) are in the comments;
Instruct/chat checkpoints share their base model's shapes (Qwen2.5-*-Instruct: block_size 32768).
The table sits beside model.py, not in it, because model.py imports no project module.
"""
from model import FAMILIES, GPTConfig

PRESETS = {
    # OpenAI's GPT-2 releases (openai-community/gpt2, -medium, -large, -xl)
    'gpt2':        dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),      # 124.4M
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),     # 354.8M
    'gpt2-large':  dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),     # 774.0M
    'gpt2-xl':     dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),     # 1.56B
    # facebook/opt-*: LayerNorm, ReLU, learned positions from 2, tied head, 50272 rows (copies of
    # the config.json files: EasyDeL 0.0.8, EasyDel/configs/configs.py)
    'opt-1.3b':  dict(FAMILIES['opt'], n_layer=24, n_head=32, n_embd=2048, intermediate_size=8192,
                      vocab_size=50272, block_size=2048),                         # 1.32B
    'opt-2.7b':  dict(FAMILIES['opt'], n_layer=32, n_head=32, n_embd=2560, intermediate_size=10240,
                      vocab_size=50272, block_size=2048),                         # 2.65B
    'opt-6.7b':  dict(FAMILIES['opt'], n_layer=32, n_head=32, n_embd=4096, intermediate_size=16384,
                      vocab_size=50272, block_size=2048),                         # 6.66B
    'opt-13b':   dict(FAMILIES['opt'], n_layer=40, n_head=40, n_embd=5120, intermediate_size=20480,
                      vocab_size=50272, block_size=2048),                         # 12.85B
    # LLaMA-1 (huggyllama/llama-7b, -13b) and Llama 2 (meta-llama/Llama-2-7b-hf, -13b-hf): no GQA
    'llama-7b':    dict(FAMILIES['llama'], n_layer=32, n_head=32, n_kv_head=32, n_embd=4096, intermediate_size=11008,
                        vocab_size=32000, block_size=2048, norm_eps=1e-6, tie_embeddings=False),   # 6.74B
    'llama-13b':   dict(FAMILIES['llama'], n_layer=40, n_head=40, n_kv_head=40, n_embd=5120, intermediate_size=13824,
                        vocab_size=32000, block_size=2048, norm_eps=1e-6, tie_embeddings=False),   # 13.02B
    'llama-2-7b':  dict(FAMILIES['llama'], n_layer=32, n_head=32, n_kv_head=32, n_embd=4096, intermediate_size=11008,
                        vocab_size=32000, block_size=4096, norm_eps=1e-5, tie_embeddings=False),   # 6.74B
    'llama-2-13b': dict(FAMILIES['llama'], n_layer=40, n_head=40, n_kv_head=40, n_embd=5120, intermediate_size=13824,
                        vocab_size=32000, block_size=4096, norm_eps=1e-5, tie_embeddings=False),   # 13.02B
    # meta-llama/Llama-3.1-8B, Llama-3.2-1B: GQA, theta 500000 with llama3 scaling (copies:
    # citsjtu2020/LLM-Prof sglang/Model_Config.md; kevinstephano/thunder_model_blocks hf_llama/llama_config.py)
    'llama-3.1-8b': dict(FAMILIES['llama'], n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, intermediate_size=14336,
                         vocab_size=128256, block_size=131072, norm_eps=1e-5, tie_embeddings=False,
                         rope_theta=500000.0, rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192)),              # 8.03B
    'llama-3.2-1b': dict(FAMILIES['llama'], n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, intermediate_size=8192,
                         vocab_size=128256, block_size=131072, norm_eps=1e-5, tie_embeddings=True,
                         rope_theta=500000.0, rope_scaling=dict(rope_type='llama3', factor=32.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192)),              # 1.24B
    # HuggingFaceTB/SmolLM2-135M(-Instruct): 30 narrow blocks, GQA 9/3, tied 49152-row head (bench_real.py's
    # shapes; a 6-block student is the same with n_layer=6, 49.6M)
    'smollm2-135m': dict(FAMILIES['llama'], n_layer=30, n_head=9, n_kv_head=3, n_embd=576, intermediate_size=1536,
                         vocab_size=49152, block_size=8192, norm_eps=1e-5, rope_theta=100000.0,
                         tie_embeddings=True),                                    # 134.5M
    # Qwen/Qwen2.5-*: q/k/v biases, theta 1e6; 151936 rows (tied) up to 1.5B, 152064 (untied) from 7B;
    # one tokenizer of 151665 tokens (copies: citsjtu2020/LLM-Prof sglang/Model_Config.md)
    'qwen2.5-0.5b': dict(FAMILIES['qwen2'], n_layer=24, n_head=14, n_kv_head=2, n_embd=896, intermediate_size=4864,
                         vocab_size=151936, block_size=32768, norm_eps=1e-6, rope_theta=1e6,
                         tie_embeddings=True),                                    # 0.49B
    'qwen2.5-1.5b': dict(FAMILIES['qwen2'], n_layer=28, n_head=12, n_kv_head=2, n_embd=1536, intermediate_size=8960,
                         vocab_size=151936, block_size=131072, norm_eps=1e-6, rope_theta=1e6,
                         tie_embeddings=True),                                    # 1.54B
    'qwen2.5-7b':   dict(FAMILIES['qwen2'], n_layer=28, n_head=28, n_kv_head=4, n_embd=3584, intermediate_size=18944,
                         vocab_size=152064, block_size=131072, norm_eps=1e-6, rope_theta=1e6,
                         tie_embeddings=False),                                   # 7.62B
    'qwen2.5-14b':  dict(FAMILIES['qwen2'], n_layer=48, n_head=40, n_kv_head=8, n_embd=5120, intermediate_size=13824,
                         vocab_size=152064, block_size=131072, norm_eps=1e-5, rope_theta=1e6,
                         tie_embeddings=False),                                   # 14.77B
    'qwen2.5-32b':  dict(FAMILIES['qwen2'], n_layer=64, n_head=40, n_kv_head=8, n_embd=5120, intermediate_size=27648,
                         vocab_size=152064, block_size=131072, norm_eps=1e-5, rope_theta=1e6,
                         tie_embeddings=False),                                   # 32.76B
    # Qwen/Qwen3-*: q/k RMSNorm, head_dim 128 (explicit where d / n_head differs), untied
    'qwen3-8b':  dict(FAMILIES['qwen3'], n_layer=36, n_head=32, n_kv_head=8, n_embd=4096, intermediate_size=12288,
                      vocab_size=151936, block_size=40960, norm_eps=1e-6, rope_theta=1e6,
                      tie_embeddings=False),                                      # 8.19B
    'qwen3-32b': dict(FAMILIES['qwen3'], n_layer=64, n_head=64, n_kv_head=8, head_dim=128, n_embd=5120,
                      intermediate_size=25600, vocab_size=151936, block_size=40960, norm_eps=1e-6,
                      rope_theta=1e6, tie_embeddings=False),                      # 32.76B
}


def preset_config(name, **overrides):
    """The GPTConfig of preset `name`, with `overrides` (GPTConfig fields) on top."""
    return GPTConfig(**{**PRESETS[name], **overrides})
