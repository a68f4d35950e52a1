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


@pytest.mark.parametrize('T,S,mask_kind', [(1, 11, None), (1, 11, 'bool'), (7, 7, 'causal'), (7, 7, 'bool'),
                                             (4, 9, 'causal'), (4, 9, 'bool')])
@pytest.mark.parametrize('Hkv', [2, 6])
def test_grouped_attention_equals_sdpa(T, S, mask_kind, Hkv):
    """model.grouped_attention (decoding steps; whole sequences on CPU in bf16) against SDPA with the
    key/value heads repeated, in fp64: outputs and the gradients of q, k, v. 'causal' with T < S is
    bottom-right aligned (the T new queries are the last positions)."""
    import torch.nn.functional as F
    from model import grouped_attention
    g = torch.Generator().manual_seed(T * 100 + S + Hkv)
    B, H, d = 3, 6, 8
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True) for shape in
               ((B, H, T, d), (B, Hkv, S, d), (B, Hkv, S, d)))
    own = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    if mask_kind == 'bool':
        mask = (torch.rand(B, 1, T, S, generator=g) < 0.6) | (own & ~own.tril(S - T - 1))  # own key kept
        ref_mask = mask
    else:
        mask, ref_mask = mask_kind, (own if mask_kind == 'causal' else None)
    reps = H // Hkv
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(reps, 1), v.repeat_interleave(reps, 1), attn_mask=ref_mask)
    out = grouped_attention(q, k, v, mask)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_grouped_attention_is_used_on_cpu_bf16_only():
    """The model takes grouped_attention for whole sequences only on CPU in bf16/fp16, without dropout and
    while one layer's fp32 scores fit model.GROUPED_ATTENTION_BYTES; and a CPU bf16 forward + backward
    through it matches the same model in fp32 within bf16's rounding."""
    import model as model_lib
    q = torch.zeros(8, 9, 127, 64, dtype=torch.bfloat16)
    assert model_lib.use_grouped_attention(q, 127, 0.0)
    assert not model_lib.use_grouped_attention(q.float(), 127, 0.0)          # fp32: SDPA's flash kernel is as fast
    assert not model_lib.use_grouped_attention(q, 127, 0.1)                  # dropout: SDPA
    big = torch.zeros(8, 9, 1024, 64, dtype=torch.bfloat16)                  # 302 MB of fp32 scores: SDPA
    assert 8 * 9 * 1024 * 1024 * 4 > model_lib.GROUPED_ATTENTION_BYTES and not model_lib.use_grouped_attention(big, 1024, 0.0)
    from components.presets import preset_config
    torch.manual_seed(0)
    cfg = preset_config('smollm2-135m', n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=128,
                        vocab_size=97, block_size=32)
    m = model_lib.GPT(cfg)
    idx = torch.randint(0, 97, (2, 24))
    calls = []
    real = model_lib.grouped_attention
    model_lib.grouped_attention = lambda *a: calls.append(a[0].shape) or real(*a)
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss_bf16 = m(idx, targets=idx)[1]
        loss_bf16.backward()
    finally:
        model_lib.grouped_attention = real
    assert calls == [(2, 4, 24, 16)] * 2                                     # both blocks, whole sequences
    grad_bf16 = m.transformer.h[0].attn.c_attn.weight.grad.clone()
    m.zero_grad()
    loss = m(idx, targets=idx)[1]
    loss.backward()
    assert abs(loss_bf16.item() - loss.item()) < 0.02
    rel = (grad_bf16 - m.transformer.h[0].attn.c_attn.weight.grad).norm() / m.transformer.h[0].attn.c_attn.weight.grad.norm()
    assert rel < 0.05, rel


KEEP_FREED_CHILD = r'''
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
from components.precision import keep_freed_memory

def faults(mib=64):  # minor page faults of allocating and filling `mib` MiB, freed after
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(mib * 2 ** 18)
    n = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del x
    return n

first = faults()
did = keep_freed_memory(sys.argv[2])
faults()
print(first, did, faults(60))  # a smaller block: fits in the freed one (the same size may not, by alignment)
'''


@pytest.mark.parametrize('env,device,kept', [({}, 'cpu', True), ({'MALLOC_MMAP_THRESHOLD_': '131072'}, 'cpu', False),
                                             ({}, 'cuda:0', False)])
def test_keep_freed_memory_reuses_big_blocks_on_cpu(env, device, kept):
    """precision.keep_freed_memory: after it, a freed 64 MiB block is reused by the next 60 MiB (no page
    faults; glibc's default unmaps the block and faults all 15,360 4 KiB pages of the next one in again);
    a user's own malloc settings (MALLOC_* in the environment) and non-CPU devices are left alone."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clean = {k: v for k, v in os.environ.items() if not (k.startswith('MALLOC_') or k == 'GLIBC_TUNABLES')}
    out = subprocess.run([sys.executable, '-c', KEEP_FREED_CHILD, root, device], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    first, did, again = int(out[0]), out[1] == 'True', int(out[2])
    assert first >= 16384 and did == kept
    assert (again < 100) if kept else (again >= 15360)
