"""
The precision a run computes in, in one place for train.py, sample.py and evaluate.py:

- `run_dtype`: the torch dtype of the `dtype` setting; `autocast`: its context (CUDA or CPU autocast,
  the same code path: on a CPU the GPU's bf16 path runs and is tested);
- `enable_tf32`: fp32 matmuls and convolutions on TF32 tensor cores (Ampere and later), for fp32
  runs and the fp32 parts of mixed-precision ones;
- `cpu_has_bf16_matmul`: whether dtype='bfloat16' pays on this CPU (README "bf16 on the CPU").
"""
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
