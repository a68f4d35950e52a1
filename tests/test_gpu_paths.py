"""
The CUDA paths a first GPU run takes, emulated on the CPU (issue 29, "Ready for the first GPU"):
CPU autocast for CUDA autocast (the same code runs), tensor identities for CUDA graphs, gloo ranks
with the timeout the NCCL group gets, and fakes of the few CUDA queries (device count, memory size,
RNG state) where the code only asks the GPU a question.
"""
import datetime
import json
import os
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sampling
import train
from components import checkpoint, memory, parallel, precision
from configurator import UserError, configure
from model import FAMILIES, GPT, GPTConfig
from sampling import generate

LLAMA = dict(FAMILIES['llama'], vocab_size=257, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64,
             tie_embeddings=False)


def tiny_llama(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**LLAMA, **kw})).eval()


@pytest.fixture
def caches_made(monkeypatch):
    """Every KVCache that sampling.generate makes, and the tensors each held when it was made."""
    made = []

    class Recorded(sampling.KVCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((self, [t.data_ptr() for t in self.k + self.v + [self.valid, self.n_valid]]))
    monkeypatch.setattr(sampling, 'KVCache', Recorded)
    return made


def prompts():
    idx = torch.randint(0, 257, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(idx)
    mask[0, :3] = mask[1, :1] = 0  # left padding: the masked prefill path of rollouts and evaluation
    return idx, mask


# ----------------------------------------------------------------------------- 1, 4: bf16 decoding, cache identities
@pytest.mark.parametrize('decode', ['eager', 'static'])
def test_rope_family_decodes_under_bf16_autocast_with_a_bf16_cache(decode, caches_made):
    """Item 1: RoPE's fp32 cos/sin made q and k fp32 while v stayed bf16: static decoding crashed in
    index_copy_ and eager kept an fp32 cache. Both caches (student and teacher-mixed) are bf16 now."""
    student, teacher = tiny_llama(0), tiny_llama(1, n_layer=3)
    idx, mask = prompts()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = generate(student, idx, 9, attention_mask=mask, mix_model=teacher, mix_alpha=0.5, decode=decode,
                       generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 16) and torch.equal(out[:, :7], idx)
    assert len(caches_made) == 2
    for cache, _ in caches_made:
        assert {t.dtype for t in cache.k + cache.v} == {torch.bfloat16}


def test_decoding_mutates_the_cache_in_place(caches_made):
    """Item 4: compiled decoding marks the cache's tensors as static addresses (CUDA graphs replay
    them). Prefill with a prompt mask replaced n_valid, and autocast replaced k/v by casts: every
    tensor of the cache must be the one it was made with after prefill and every decoding step.
    Here the static step runs eagerly; compiled (dynamo, aot_eager), the same check runs in the
    MiniLLM run below and in scripts/gpu_check.py's dry run."""
    m = tiny_llama()
    idx, mask = prompts()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        generate(m, idx, 6, temperature=0, attention_mask=mask, decode='static')
    (cache, ptrs), = caches_made
    assert [t.data_ptr() for t in cache.k + cache.v + [cache.valid, cache.n_valid]] == ptrs
    assert cache.n_valid.tolist() == mask.sum(1).add(5).tolist()  # real prompt tokens + the 5 fed back (of 6 drawn)


def test_cache_bytes_are_what_memory_counts(caches_made):
    """Item 9: memory.kv_cache_bytes counts the caches in the compute dtype (2 bytes under bf16);
    generate now allocates them so (before: fp32 for the fp32-weight student of an autocast run)."""
    m = tiny_llama()
    idx, mask = prompts()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        generate(m, idx, 5, attention_mask=mask)
    (cache, _), = caches_made
    allocated = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert allocated == memory.kv_cache_bytes(m.config, 3, 12, b=2)


# ----------------------------------------------------------------------------- 5: the teacher's dtype
class CountCasts(TorchDispatchMode):
    """Counts dtype conversions (aten._to_copy) of tensors shaped like a weight matrix."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes, self.casts = shapes, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) in self.shapes:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_teacher_is_loaded_in_the_compute_dtype_and_never_cast(tmp_path):
    """Item 5: our own teacher checkpoints ignored the run's dtype: autocast then cast each of its
    weight matrices at every forward (it caches the casts of trained leaves only)."""
    t = tiny_llama()
    checkpoint.atomic_save(checkpoint.checkpoint_payload(t, 'byte'), str(tmp_path / 'best.pt'))
    cfg = configure(train.DEFAULTS, ['--method=kd', f'--teacher={tmp_path}', '--dtype=bfloat16', '--device=cpu',
                                     '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32'])
    rt = parallel.runtime(cfg, dict(vocab_size=257, eot_token=256))
    student, teacher, _, _ = checkpoint.build_models(cfg, dict(vocab_size=257, tokenizer='byte'), rt.ptdtype)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in student.parameters()} == {torch.float32}  # trained: fp32 master weights
    assert not any(p.requires_grad for p in teacher.parameters())
    shapes = {tuple(p.shape) for p in teacher.parameters() if p.dim() == 2}
    counter = CountCasts(shapes)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16), counter:
        teacher(torch.zeros(2, 5, dtype=torch.long))
    assert counter.casts == 0
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16), counter:
        t.requires_grad_(False)(torch.zeros(2, 5, dtype=torch.long))  # the fp32 teacher it was before
    assert counter.casts == 2 * 4 + 1  # per block c_attn, c_proj, c_fc, c_proj; the untied head


# ----------------------------------------------------------------------------- 2, 3, 10: process group, device, RNG
def test_process_group_backend_timeout_and_device(monkeypatch):
    """Items 2, 3, 10: gloo + nccl when FSDP offloads to the CPU; the configured timeout reaches
    init_process_group (gloo and NCCL alike); one visible GPU per task is cuda:0."""
    cfg = configure(train.DEFAULTS, ['--device=cuda', '--parallel=fsdp', '--fsdp_cpu_offload=True'])
    assert cfg.dist_timeout == 3600
    assert parallel.backend_for(cfg) == 'cpu:gloo,cuda:nccl'
    cfg.fsdp_cpu_offload = False
    assert parallel.backend_for(cfg) == 'nccl'
    cfg.device = 'cpu'
    assert parallel.backend_for(cfg) == 'gloo'
    seen = {}
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: False)
    monkeypatch.setattr(torch.distributed, 'get_rank', lambda: 1)
    monkeypatch.setattr(torch.distributed, 'get_world_size', lambda: 2)
    monkeypatch.setenv('RANK', '1')
    cfg = configure(train.DEFAULTS, ['--device=cpu', '--parallel=ddp', '--dist_timeout=90.0'])
    assert parallel.setup_distributed(cfg)  # it made the group
    assert seen == dict(backend='gloo', timeout=datetime.timedelta(seconds=90))
    assert (cfg.rank, cfg.world_size) == (1, 2)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    assert parallel.local_device(3) == 'cuda:0'
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 8)
    assert parallel.local_device(3) == 'cuda:3'


def test_checkpoint_carries_the_cuda_rng(monkeypatch):
    """Item 10: on CUDA the device's RNG state (dropout's) is saved and restored (a stub CUDA RNG)."""
    state = {'rng': torch.tensor([7], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device='cuda': state['rng'].clone())
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda s, device='cuda': state.update(rng=s.clone()))
    manager = checkpoint.CheckpointManager(SimpleNamespace(device='cuda:0', parallel='ddp'), None, None, None, 'byte',
                                           torch.Generator(), torch.Generator(), {})
    saved = manager.rng_state()  # what ckpt.pt (and each rank's entry of `ranks`) holds
    assert saved['cuda_rng'].tolist() == [7] and torch.equal(saved['torch_rng'], torch.get_rng_state())
    assert 'cuda_rng' not in checkpoint.torch_rng_state('cpu')
    state['rng'] = torch.tensor([9], dtype=torch.uint8)
    torch.rand(3)
    checkpoint.set_torch_rng_state(saved, 'cuda:0')
    assert state['rng'].tolist() == [7] and torch.equal(torch.get_rng_state(), saved['torch_rng'])


# ----------------------------------------------------------------------------- 7, 8, 9: refusals, TF32, memory
def test_fp16_refusals(tiny_instruct, tmp_path):
    """Item 7: fp16 with the chunked loss is refused (its gradients underflow before the scaler),
    also when 'auto' picks it (a vocabulary over 8192); fp16 on a CPU too (no grad scaler there)."""
    common = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', f'--data_dir={tiny_instruct}',
              f'--out_dir={tmp_path}/run', '--max_iters=1']
    for chunked, vocab in (('True', 257), ('auto', 50257)):
        cfg = configure(train.DEFAULTS, common + ['--dtype=float16', f'--chunked_loss={chunked}', '--device=cuda'])
        with pytest.raises(UserError, match="dtype='float16' with the chunked loss underflows"):
            parallel.runtime(cfg, dict(vocab_size=vocab, eot_token=256))
    assert not parallel.runtime(cfg, dict(vocab_size=257, eot_token=256)).chunked  # fp16 without it: as before
    with pytest.raises(UserError, match="dtype='float16' needs CUDA"):
        train.main(common + ['--dtype=float16', '--device=cpu'])
    assert not os.path.exists(f'{tmp_path}/run')


def test_tf32_on_cuda_only():
    """Item 8: fp32 matmuls and convolutions on TF32 when on CUDA (the flags exist on CPU builds);
    train.py, sample.py and evaluate.py call it."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert not precision.enable_tf32('cpu') and not torch.backends.cuda.matmul.allow_tf32
        assert precision.enable_tf32('cuda:1')
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ('train.py', 'sample.py', 'evaluate.py'):
        assert 'enable_tf32(' in open(os.path.join(root, name)).read(), name


def test_memory_check_reads_the_gpu_size(monkeypatch):
    """Item 9: gpu_memory_gb=0 asks the GPU (a fake 40 GB card here): a run estimated at ~38 GiB per
    GPU passes on 80 GB and stops on 40 GB; on a CPU nothing is checked."""
    from components.presets import preset_config
    cfg = configure(train.DEFAULTS, ['--parallel=fsdp', '--device=cuda:0', '--method=minillm', '--dtype=bfloat16',
                                     '--block_size=512', '--batch_size=4', '--rollout_batch_size=8'])
    cfg.rank, cfg.world_size = 0, 8
    student, teacher = preset_config('qwen2.5-7b'), preset_config('qwen2.5-14b')
    total = memory.estimate_run(cfg, student, teacher)['total'] / memory.GiB
    assert 40 * 0.9 < total < 80 * 0.9
    for gb, ok in ((80, True), (40, False)):
        monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device=None, gb=gb: (gb * memory.GiB // 2, gb * memory.GiB))
        assert memory.device_memory_gb(cfg) == gb
        if ok:
            memory.check_run(cfg, student, teacher)
        else:
            with pytest.raises(UserError, match='does not fit in 90% of gpu_memory_gb=40'):
                memory.check_run(cfg, student, teacher)
    cfg.device = 'cpu'
    assert memory.device_memory_gb(cfg) == 0


def test_memory_counts_the_teacher_in_the_compute_dtype_and_gathered_decoding():
    """Items 5, 6, 9 in the estimate: without FSDP the frozen teacher is b bytes per parameter, not
    fp32; under FSDP a model kept gathered for generation counts whole in the rollout phase, and
    decode_gathered keeps only what fits (14B + 32B on 8 GPUs: the student on 80 GB, neither on 40)."""
    from components.presets import preset_config
    s, t = preset_config('qwen2.5-1.5b'), preset_config('qwen2.5-7b')
    plain = memory.estimate_memory(s, t, parallel='none', param_bytes=2)
    assert plain['teacher'] == 2 * memory.count_params(t)
    cfg = configure(train.DEFAULTS, ['--parallel=fsdp', '--method=minillm', '--dtype=bfloat16', '--block_size=512',
                                     '--batch_size=2', '--rollout_batch_size=8'])
    cfg.world_size = 8
    s14, t32 = preset_config('qwen2.5-14b'), preset_config('qwen2.5-32b')
    assert memory.decode_gathered(cfg, s14, t32, 80) == (True, False)   # 64 GiB with the student whole, 119 with both
    assert memory.decode_gathered(cfg, s14, t32, 40) == (False, False)
    assert memory.decode_gathered(cfg, s14, t32, 0) == (True, True)
    assert memory.decode_gathered(cfg, s, t, 80) == (True, True)
    whole = memory.estimate_run(cfg, s, t, gathered=(True, True))
    sharded = memory.estimate_run(cfg, s, t)
    assert whole['total'] > sharded['total']


# ----------------------------------------------------------------------------- CI: every method, llama pair, CPU bf16
@pytest.fixture(scope='module')
def llama_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp('llama_teacher')
    checkpoint.atomic_save(checkpoint.checkpoint_payload(tiny_llama(3), 'byte'), str(out / 'best.pt'))
    return str(out)


RUN = ['--family=llama', '--n_layer=1', '--n_head=2', '--n_kv_head=1', '--n_embd=32', '--block_size=32',
       '--batch_size=4', '--eval_iters=1', '--eval_interval=2', '--eval_rouge_examples=4', '--log_interval=1',
       '--warmup_iters=0', '--device=cpu', '--dtype=bfloat16', '--max_iters=2', '--max_new_tokens=4',
       '--rollout_size=4', '--rollout_batch_size=4', '--ppo_epochs=1', '--tie_embeddings=False']
METHODS = [('pretrain', []), ('sft', []), ('kd', []), ('kd', ['--atkd=True']), ('seqkd', []),
           ('gkd', []), ('distillm', ['--distillm_init_prob=1.0', '--distillm_capacity=8']),
           ('minillm', ['--gen_decode=eager']), ('minillm', ['--gen_decode=static'])]


@pytest.mark.parametrize('method,extra', METHODS, ids=[f"{m}{'-' + e[0][2:] if e else ''}" for m, e in METHODS])
def test_every_method_trains_a_llama_pair_under_cpu_bf16_autocast(method, extra, tiny_instruct, llama_teacher, tmp_path,
                                                                  monkeypatch):
    out, runtimes = str(tmp_path / 'run'), []
    monkeypatch.setattr(train, 'runtime', lambda *a, **kw: runtimes.append(parallel.runtime(*a, **kw)) or runtimes[-1])
    train.main(RUN + [f'--method={method}', f'--data_dir={tiny_instruct}', f'--teacher={llama_teacher}',
                      f'--out_dir={out}', *extra])
    rows = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    losses = [r['loss'] for r in rows if 'loss' in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert runtimes[0].ctx.fast_dtype == torch.bfloat16  # the run computed under CPU autocast


def test_minillm_compiled_decoding_under_cpu_bf16_autocast(tiny_instruct, llama_teacher, tmp_path, caches_made,
                                                           monkeypatch):
    """MiniLLM rollouts with gen_decode='compile' and teacher-mixed decoding of a llama-family pair
    under CPU bf16 autocast: both caches stay bf16 and keep their tensors. torch.compile with the
    aot_eager backend (dynamo's capture and AOTAutograd's functionalization, where a replaced input
    would show); inductor's C++ build takes ~30 s on a cold cache here, so its lowering is left to
    scripts/gpu_check.py on the GPU (and `--dry-run --inductor` on a CPU)."""
    monkeypatch.setitem(sampling._COMPILED_DECODE, 'cpu', torch.compile(sampling.decode_forward, dynamic=False,
                                                                        backend='aot_eager'))
    out = str(tmp_path / 'run')
    train.main(RUN + ['--method=minillm', '--gen_decode=compile', '--max_iters=1', '--eval_rouge_examples=0',
                      f'--data_dir={tiny_instruct}', f'--teacher={llama_teacher}', f'--out_dir={out}',
                      '--teacher_mix_alpha=0.2'])
    assert len(caches_made) == 2  # student and teacher
    for cache, ptrs in caches_made:
        assert {t.dtype for t in cache.k + cache.v} == {torch.bfloat16}
        assert [t.data_ptr() for t in cache.k + cache.v + [cache.valid, cache.n_valid]] == ptrs


# ----------------------------------------------------------------------------- 6: FSDP decoding, 2 gloo ranks
def _fsdp_decoding_worker(rank, store_path, out_path):
    """One of 2 gloo ranks: a tiny llama model sharded by parallel.wrap, greedy generation of 2 and 6
    tokens with and without gather_for_decoding, the bytes FSDP all-gathers counted."""
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{store_path}', rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    gathered_bytes = [0]
    all_gather_single = dist.all_gather_single

    def counting(output, *args, **kwargs):
        gathered_bytes[0] += output.numel() * output.element_size()
        return all_gather_single(output, *args, **kwargs)
    dist.all_gather_single = counting  # FSDP2's all-gather (DefaultAllGather)
    cfg = configure(train.DEFAULTS, ['--parallel=fsdp', '--device=cpu', '--dtype=float32'])
    parallel.setup_distributed(cfg)
    reference = tiny_llama()
    with torch.device('meta'):
        sharded = GPT(reference.config)
    parallel.wrap(cfg, sharded, None, (reference.state_dict() if rank == 0 else {}, None))
    report = dict(flag=sharded.gather_for_decoding, bytes={}, equal=True)
    idx = torch.randint(0, 257, (2, 5), generator=torch.Generator().manual_seed(rank))
    for keep in (False, True):  # gathered last: its wrapper reshards the root too (plain FSDP2 keeps it)
        sharded.gather_for_decoding = keep
        for n in (2, 6):
            before = gathered_bytes[0]
            out = generate(sharded, idx, n, temperature=0)
            report['bytes'][f'{keep}-{n}'] = gathered_bytes[0] - before
            report['equal'] &= torch.equal(out, generate(reference, idx, n, temperature=0))
    report['resharded'] = all(p.to_local().numel() < p.numel() or p.numel() == 1 for p in sharded.parameters())
    sharded(idx, idx)[1].backward()  # training goes on as before
    report['grads'] = all(p.grad is not None for p in sharded.parameters())
    padded = lambda p: -(-p.shape[0] // 2) * 2 * p[0].numel() * 4  # noqa: E731  (FSDP pads dim 0 to the ranks)
    report['block_bytes'] = sum(padded(p) for p in reference.transformer.h.parameters())
    report['model_bytes'] = sum(padded(p) for p in reference.parameters())
    with open(f'{out_path}.{rank}', 'w') as f:
        json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp_decoding_gathers_the_weights_once_per_generation(tmp_path):
    """Item 6: under FSDP every decoding step all-gathered every block again (reshard_after_forward):
    the whole model's bytes per generated token. With gather_for_decoding (parallel.wrap sets it when
    memory.decode_gathered finds it fits) the bytes per generation do not grow with its length; the
    tokens are those of the unsharded model and the shards are back for training afterwards."""
    import torch.multiprocessing as mp
    # fork: the ranks start with this process's imports (spawn would import train and torch twice more)
    mp.start_processes(_fsdp_decoding_worker, args=(str(tmp_path / 'store'), str(tmp_path / 'report')), nprocs=2,
                       start_method='fork')
    for rank in (0, 1):
        r = json.load(open(tmp_path / f'report.{rank}'))
        b, blocks = r['bytes'], r['block_bytes']
        assert r['flag'] and r['equal'] and r['resharded'] and r['grads'], r
        # plain FSDP2: the root once (it stays gathered after its forward), every block at every step
        assert b['False-2'] == r['model_bytes'] + blocks and b['False-6'] == 6 * blocks
        # gathered: each weight once per generation (the first, blocks only: the root was still gathered)
        assert b['True-2'] == blocks and b['True-6'] == r['model_bytes']


# ----------------------------------------------------------------------------- the GPU check script
def test_gpu_check_dry_run(capsys):
    """scripts/gpu_check.py --dry-run: every check of the first GPU run, on the CPU."""
    from scripts import gpu_check
    compiled = dict(sampling._COMPILED_DECODE)
    assert gpu_check.main(['--dry-run']) == 0
    assert sampling._COMPILED_DECODE == compiled  # its aot_eager stand-in for inductor is gone
    out = capsys.readouterr().out
    assert f"{len(gpu_check.CHECKS)}/{len(gpu_check.CHECKS)} checks passed on cpu" in out
    for name in ('decode-eager', 'decode-static', 'decode-compile', 'teacher-dtype', 'fsdp-1gpu'):
        assert f"ok    {name}:" in out
