"""
The first minutes on a GPU: the CUDA paths that no CPU run takes, each checked in seconds on tiny
models, one line each (issue 29; README "Ready for the first GPU"). Run it before any benchmark:

    python scripts/gpu_check.py             # on a CUDA machine; exit status 1 when a check fails
    python scripts/gpu_check.py --dry-run   # the same checks on the CPU (CPU autocast, gloo, aot_eager)
    python scripts/gpu_check.py --dry-run --inductor   # ... with inductor's CPU build (~30 s more)

  decode-{eager,static,compile}  bf16 autocast decoding of a llama-family pair (teacher-mixed, left-padded
                                 prompts): caches in bf16, the cache's tensors never replaced (compiled
                                 decoding marks them static: CUDA graphs replay them), inductor's count of
                                 CUDA-graph skips, the tokens of the three modes against eager
  teacher-dtype                  a frozen teacher checkpoint loads in bf16 and autocast casts none of its weights
  tf32                           TF32 matmuls and convolutions enabled (train.py, sample.py, evaluate.py)
  memory                         memory.py reads the GPU's size (gpu_memory_gb=0)
  rng                            the checkpoint's RNG state holds the CUDA generator's
  fsdp-1gpu                      FSDP2 on one rank (nccl, or gloo + nccl with CPU offload): greedy decoding with the
                                 weights gathered once equals the unsharded model's, then one training step
"""
import argparse
import datetime
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the project's modules

import model as model_module  # noqa: E402
import sampling  # noqa: E402
from components import checkpoint, memory, parallel, precision  # noqa: E402
from model import FAMILIES, GPT, GPTConfig  # noqa: E402

LLAMA = dict(FAMILIES['llama'], vocab_size=257, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=128,
             tie_embeddings=False)


def tiny_llama(device, seed, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**LLAMA, **kw})).to(device).eval()


class RecordedCache(sampling.KVCache):
    """A KVCache that remembers the tensors it was made with."""
    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ptrs = self.tensor_ptrs()
        RecordedCache.made.append(self)

    def tensor_ptrs(self):
        return [t.data_ptr() for t in self.k + self.v + [self.valid, self.n_valid]]


def check_decode(device, dry_run, inductor=False):
    """One line per decode mode; raises AssertionError with what is wrong."""
    compiled = dict(sampling._COMPILED_DECODE)
    if dry_run and not inductor:  # dynamo's capture without inductor's C++ build (slow on a CPU)
        sampling._COMPILED_DECODE['cpu'] = torch.compile(sampling.decode_forward, dynamic=False,
                                                             backend='aot_eager')
    student, teacher = tiny_llama(device, 0), tiny_llama(device, 1, n_layer=3)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 257, (4, 9), generator=g).to(device)
    mask = torch.ones_like(idx)
    mask[0, :4] = mask[1, :2] = 0
    sampling.KVCache, lines, outs = RecordedCache, [], {}
    try:
        for mode in model_module.DECODE_MODES:
            RecordedCache.made.clear()
            from torch._dynamo.utils import counters
            skips = sum(counters['inductor'].get(k, 0) for k in ('cudagraph_skips',))
            t0 = time.time()
            with torch.autocast(precision.device_type(device), dtype=torch.bfloat16):
                outs[mode] = sampling.generate(student, idx, 24, temperature=0, attention_mask=mask, mix_model=teacher,
                                               mix_alpha=0.3, decode=mode)
            dt = time.time() - t0
            dtypes = {t.dtype for c in RecordedCache.made for t in c.k + c.v}
            assert dtypes == {torch.bfloat16}, f"{mode}: caches in {dtypes}, not bf16"
            if mode != 'eager':  # eager drops finished rows (keep_rows): its tensors may change
                moved = [c for c in RecordedCache.made if c.tensor_ptrs() != c.ptrs]
                assert not moved, f"{mode}: a cache tensor was replaced (static addresses lost)"
            skips = sum(counters['inductor'].get(k, 0) for k in ('cudagraph_skips',)) - skips
            assert not (mode == 'compile' and device.startswith('cuda') and skips), \
                f"compile: inductor skipped CUDA graphs {skips} times"
            same = (outs[mode] == outs['eager']).float().mean().item()
            lines.append(f"decode-{mode}: caches bf16, addresses kept, {same:.0%} of tokens = eager's "
                         f"(bf16 rounding may differ), {dt:.1f}s (first call: compile)")
    finally:
        sampling.KVCache = model_module.KVCache
        sampling._COMPILED_DECODE.clear()
        sampling._COMPILED_DECODE.update(compiled)
    return lines


def check_teacher_dtype(device, dry_run):
    from torch.utils._python_dispatch import TorchDispatchMode
    with tempfile.TemporaryDirectory() as d:
        checkpoint.atomic_save(checkpoint.checkpoint_payload(tiny_llama('cpu', 2), 'byte'), os.path.join(d, 'best.pt'))
        cfg = SimpleNamespace(method='kd', teacher=d, dtype='bfloat16', pt_kd_ratio=0.0)
        teacher = checkpoint.load_teacher(cfg, 257, 'byte', torch.bfloat16).to(device)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}, "teacher not in bf16"
    shapes = {tuple(p.shape) for p in teacher.parameters() if p.dim() == 2}

    class Casts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) in shapes:
                Casts.n += 1
            return func(*args, **(kwargs or {}))
    with torch.no_grad(), torch.autocast(precision.device_type(device), dtype=torch.bfloat16), Casts():
        teacher(torch.zeros(2, 5, dtype=torch.long, device=device))
    assert Casts.n == 0, f"autocast cast {Casts.n} teacher weights in one forward"
    return ["teacher-dtype: bf16 weights, 0 casts per forward"]


def check_tf32(device, dry_run):
    enabled = precision.enable_tf32(device)
    if device.startswith('cuda'):
        assert enabled and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32, "TF32 off"
        return ["tf32: on (matmul and cuDNN)"]
    return ["tf32: not on CUDA, left off"]


def check_memory(device, dry_run):
    cfg = SimpleNamespace(gpu_memory_gb=0.0, device=device)
    gb = memory.device_memory_gb(cfg)
    if device.startswith('cuda'):
        assert gb > 1, f"device_memory_gb read {gb}"
        return [f"memory: the GPU reports {gb:.1f} GiB ({torch.cuda.get_device_name(device)})"]
    assert gb == 0
    return ["memory: no GPU size on a CPU (no check)"]


def check_rng(device, dry_run):
    state = checkpoint.torch_rng_state(device)
    if device.startswith('cuda'):
        assert 'cuda_rng' in state, "no CUDA RNG state"
        before = torch.rand(4, device=device)
        checkpoint.set_torch_rng_state(state, device)
        assert torch.equal(torch.rand(4, device=device), before), "CUDA RNG not restored"
        return ["rng: CUDA generator saved and restored"]
    return ["rng: CPU generator only (no CUDA)"]


def check_fsdp(device, dry_run):
    """One rank: FSDP2 sharding (world 1 still runs its hooks and all-gathers), gathered decoding."""
    import torch.distributed as dist
    import train
    from configurator import configure
    cfg = configure(train.DEFAULTS, ['--parallel=fsdp', f'--device={device}',
                                     f"--dtype={'bfloat16' if device.startswith('cuda') else 'float32'}"])
    os.environ.setdefault('LOCAL_RANK', '0')
    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group(parallel.backend_for(cfg), init_method=f"file://{os.path.join(d, 'store')}", rank=0,
                                world_size=1, timeout=datetime.timedelta(seconds=cfg.dist_timeout))
        try:
            parallel.setup_distributed(cfg)
            ptdtype = precision.run_dtype(cfg.dtype)
            reference = tiny_llama('cpu', 3)
            with torch.device('meta'):
                sharded = GPT(reference.config)
            parallel.wrap(cfg, sharded, None, (reference.state_dict(), None), ptdtype)
            assert sharded.gather_for_decoding, "tiny model not kept gathered for decoding"
            idx = torch.randint(0, 257, (2, 6), generator=torch.Generator().manual_seed(1)).to(device)
            ref = reference.to(device).to(ptdtype)
            out = sampling.generate(sharded, idx, 12, temperature=0)
            same = (out == sampling.generate(ref, idx, 12, temperature=0)).float().mean().item()
            loss = sharded(idx, idx)[1]
            loss.backward()
            assert all(p.grad is not None for p in sharded.parameters()), "no gradient after decoding"
        finally:
            dist.destroy_process_group()
    return [f"fsdp-1gpu: {parallel.backend_for(cfg)}, gathered decoding, {same:.0%} of tokens = the unsharded "
            f"model's, a training step after it"]


CHECKS = [check_tf32, check_memory, check_rng, check_teacher_dtype, check_decode, check_fsdp]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--dry-run', action='store_true', help='run the checks on the CPU (no GPU needed)')
    parser.add_argument('--inductor', action='store_true', help='with --dry-run: compile with inductor, not aot_eager')
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run for the CPU emulation")
        return 2
    device = 'cpu' if args.dry_run else 'cuda'
    failed = 0
    for check in CHECKS:
        try:
            extra = dict(inductor=args.inductor) if check is check_decode else {}
            for line in check(device, args.dry_run, **extra):
                print(f"ok    {line}", flush=True)
        except Exception as e:  # every check runs; each failure is one line
            failed += 1
            print(f"FAIL  {check.__name__[6:]}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
    print(f"{len(CHECKS) - failed}/{len(CHECKS)} checks passed on {device}")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
