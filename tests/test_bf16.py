"""
bf16 on the CPU (torch.autocast('cpu')), the GPU's mixed-precision path: matmuls in bf16, master
weights, AdamW state and losses in fp32. The chunked KD and MiniLLM losses of a tiny llama-family
model in bf16 lie within stated tolerances of the same losses in fp32 on the same batch; a train.py
run with dtype=bfloat16 keeps its weights and optimizer state in fp32.

Tolerances: bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%). The logits' rounding
errors average out in the fp32 log-softmax and token mean, so the losses agree to 0.2% (measured:
5e-6 for KD, 4e-4 for MiniLLM) and the gradients point the same way (cosine > 0.99). A loss rounded
to bf16 (a log-softmax or a loss accumulated in bf16) is off by its own 2^-9 and fails the bound.
"""
import os

import pytest
import torch

import kl
import policy_gradient as pg
import train
from components.precision import cpu_has_bf16_matmul
from model import FAMILIES, GPT, GPTConfig

V, B, T = 512, 4, 24


def tiny_llama(n_layer=2, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**FAMILIES['llama'], n_layer=n_layer, n_head=4, n_kv_head=2, n_embd=64,
                         intermediate_size=96, vocab_size=V, block_size=64))


def grads_and_loss(model, loss_fn, bf16):
    model.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn()
    loss.backward()
    return loss, torch.cat([p.grad.flatten() for p in model.parameters()])


def assert_close_to_fp32(model, loss_fn):
    loss32, g32 = grads_and_loss(model, loss_fn, bf16=False)
    loss16, g16 = grads_and_loss(model, loss_fn, bf16=True)
    assert loss16.dtype == torch.float32  # the loss is accumulated in fp32 under autocast
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert abs(loss16.item() - loss32.item()) < 2e-3 * abs(loss32.item()), (loss16.item(), loss32.item())
    assert torch.cosine_similarity(g16, g32, dim=0) > 0.99
    return loss32, loss16


@pytest.mark.parametrize('divergence', ['forward_kl', 'reverse_kl'])
def test_bf16_kd_loss_is_within_0_2pct_of_fp32(divergence):
    """0.5 CE + 0.5 KD through the chunked head (kl.chunked_kd_loss), teacher logits in bf16 as a
    bf16 teacher gives them, vs everything in fp32."""
    student, teacher = tiny_llama(), tiny_llama(n_layer=3, seed=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(V, (B, T), generator=g), torch.randint(V, (B, T), generator=g)
    y[:, :5] = -1
    with torch.no_grad():
        t32 = teacher(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            t16 = teacher(x)
    assert t16.dtype == torch.bfloat16

    def loss_fn():
        bf16 = torch.is_autocast_enabled('cpu')
        return student(x, head_fn=lambda h, w: kl.chunked_kd_loss(
            h, w, t16 if bf16 else t32, mask=y != -1, targets=y, divergence=divergence, chunk_size=37, ce_weight=0.5, kd_weight=0.5))
    assert_close_to_fp32(student, loss_fn)


def test_bf16_minillm_loss_is_within_0_2pct_of_fp32():
    """policy_gradient.chunked_minillm_loss (L_Long + L_Single), the teacher given by hidden states
    and head (bf16 chunk matmuls under autocast), vs fp32."""
    student, teacher = tiny_llama(), tiny_llama(n_layer=3, seed=1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 15:] = mask[3, 9:] = False
    with torch.no_grad():
        t_hidden = teacher(x, head_fn=lambda h, w: h)
        gather = lambda z: torch.log_softmax(z.float(), -1).gather(-1, x[..., None]).squeeze(-1)  # noqa: E731
        logp_old = gather(student(x)) + 0.1 * torch.randn(B, T, generator=g)
        logp_teacher = gather(teacher(x))

    def loss_fn():
        return student(x, head_fn=lambda h, w: pg.chunked_minillm_loss(
            h, w, x, logp_old, logp_teacher, mask, teacher_hidden=t_hidden, teacher_head_weight=teacher.head_weight(),
            chunk_size=29, teacher_mix_alpha=0.0)[0])
    assert_close_to_fp32(student, loss_fn)


def test_bf16_run_keeps_fp32_master_weights_and_adamw_state(tiny_instruct, tmp_path):
    """train.py with dtype=bfloat16 on the CPU: autocast computes in bf16, the checkpoint's weights and
    AdamW's moments are fp32, and the loss falls as in fp32."""
    out = str(tmp_path / 'bf16')
    train.main(['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=16', '--eval_iters=2',
                '--log_interval=1', '--warmup_iters=0', '--device=cpu', '--dtype=bfloat16', '--family=llama',
                f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=20', '--eval_interval=20',
                '--learning_rate=3e-3', '--chunked_loss=True'])
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert {v.dtype for v in ckpt['model'].values()} == {torch.float32}
    moments = [t for s in ckpt['optimizer']['state'].values() for k, t in s.items() if k in ('exp_avg', 'exp_avg_sq')]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    import json
    rows = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    val = [r['val_loss'] for r in rows if 'val_loss' in r]
    assert val[-1] < val[0] - 0.5, val


def test_cpu_bf16_detection_reads_the_cpu_flags():
    flags = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
    assert cpu_has_bf16_matmul() == ('avx512_bf16' in flags or 'amx_bf16' in flags)


@pytest.mark.parametrize('masked', [False, True])
def test_single_query_attention_equals_sdpa(masked):
    """model.single_query_attention (decoding steps) against SDPA with the key/value heads repeated."""
    import torch.nn.functional as F
    from model import single_query_attention
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, S, d = 3, 6, 2, 11, 8
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in
               ((B, H, 1, d), (B, Hkv, S, d), (B, Hkv, S, d)))
    mask = torch.rand(B, 1, 1, S, generator=g) < 0.6 if masked else None
    if masked:
        mask[..., -1] = True  # a row's own key
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1),
                                         attn_mask=mask)
    torch.testing.assert_close(single_query_attention(q, k, v, mask), ref, rtol=1e-12, atol=1e-12)
