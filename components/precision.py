"""
The precision a run computes in, in one place for train.py, sample.py and evaluate.py:

- `run_dtype`: the torch dtype of the `dtype` setting; `autocast`: its context (CUDA or CPU autocast,
  the same code path: on a CPU the GPU's bf16 path runs and is tested);
- `enable_tf32`: fp32 matmuls and convolutions on TF32 tensor cores (Ampere and later), for fp32
  runs and the fp32 parts of mixed-precision ones;
- `cpu_has_bf16_matmul`: whether dtype='bfloat16' pays on this CPU (README "bf16 on the CPU");
- `keep_freed_memory`: on a CPU, freed memory stays in the process for the next allocation, as
  CUDA's caching allocator keeps it on a GPU.
"""
import ctypes
import os
from contextlib import nullcontext

import torch

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def run_dtype(name):
    return DTYPES[name]


def device_type(device):
    """'cuda' for 'cuda:3', 'cpu' for 'cpu'."""
    return str(device).split(':')[0]


def autocast(device, dtype, parallel='none'):
    """Autocast to `dtype` (a name) on `device`, or no context: float32, and FSDP (its
    MixedPrecisionPolicy casts the weights instead)."""
    if dtype == 'float32' or parallel == 'fsdp':
        return nullcontext()
    return torch.autocast(device_type(device), dtype=run_dtype(dtype))


def enable_tf32(device):
    """On CUDA, let fp32 matmuls and cuDNN convolutions use TF32 (10-bit mantissa products, fp32
    accumulation: ~3x the fp32 rate on A100/H100, as nanoGPT and most training code do). Returns
    whether it did (nothing to do off CUDA)."""
    if device_type(device) != 'cuda':
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


# glibc's mallopt parameters (malloc.h), and the same two settings as environment variables (for a
# process that does not call keep_freed_memory itself: the benchmarks give them to TRL's runs)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
NEVER_TRIM = 2 ** 31 - 1  # bytes: the largest value mallopt takes (an int)
KEEP_FREED_ENV = {'MALLOC_MMAP_MAX_': '0', 'MALLOC_TRIM_THRESHOLD_': str(NEVER_TRIM)}


def keep_freed_memory(device):
    """On a CPU, keep freed blocks in the process's heap for the next allocation, as CUDA's caching
    allocator does on a GPU. glibc hands every block over 32 MiB back to the system when it is freed
    (mmap / munmap), and the next allocation faults its pages in again, 4 KiB at a time: a training
    step frees and re-allocates its [V, d] head buffers and [rows, V] logits every time (~110k page
    faults per SFT step of the SmolLM2 pair at 8 x 128 tokens, about a fifth of its CPU time,
    BENCHMARKS.md section 9). After this call large blocks come from the heap (M_MMAP_MAX 0) and the
    heap is never trimmed (M_TRIM_THRESHOLD): the resident set stays at the process's peak, which for a
    training run is unchanged (1.87 GB either way for that step: the same shapes reuse the same blocks;
    a process of many different shapes fragments more: the test suite in one process 2.75 GB, not 2.30).
    Left alone where the environment sets glibc's malloc tunables itself (MALLOC_*, GLIBC_TUNABLES: the
    memory benchmarks do, and it is how a user opts out), off a CPU, and off glibc. Returns whether it
    changed anything."""
    if device_type(device) != 'cpu' or any(k.startswith('MALLOC_') or k == 'GLIBC_TUNABLES' for k in os.environ):
        return False
    mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)  # None: not glibc (macOS)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def cpu_has_bf16_matmul():
    """Whether this CPU multiplies bf16 matrices natively (AVX512_BF16 or AMX-BF16: oneDNN's bf16
    GEMMs, ~4x its fp32 rate on an AVX-512 EPYC), read from /proc/cpuinfo's flags (Linux; else False).
    Without them bf16 matmuls are emulated and slower than fp32: --dtype=bfloat16 pays there only on CUDA."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags
