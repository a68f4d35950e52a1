"""
How one run spreads over ranks (torchrun): the process group, token means over the global batch,
the global MiniLLM rollout buffer, and wrapping the models for DDP or sharding them with FSDP2.
With parallel='none' every function here is the identity, so train.py's loop reads the same for
one process and for many. `Runtime` holds what the loop works out once at start-up and passes
down (autocast, the ranks' agreement, eot, the chunked head loss): the config holds the user's
settings only.
"""
import datetime
import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from components import memory
from components.precision import autocast
from configurator import UserError


PTDTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


@dataclass
class Runtime:
    """What train.py works out once at start-up, from the settings, the launch and the data, and
    passes to whatever needs it; tests build one directly (Runtime(eot=..., chunked=...))."""
    ctx: object = field(default_factory=nullcontext)  # autocast around forwards (CUDA or CPU, half precision, not FSDP)
    ptdtype: torch.dtype = torch.float32  # the dtype models compute in (FSDP's param_dtype, the teacher's storage)
    chunked: bool = False    # the head losses run chunk by chunk, never holding [N, V] logits for backward
    eot: int = None          # the data's end-of-text token
    all_done: object = None  # decoding_agreement under FSDP: every rank runs the same number of forwards
                             # (DDP decodes with the unwrapped student: no collective to agree on)
    own_group: bool = False  # setup_distributed made the process group, so the run tears it down


def runtime(cfg, meta, own_group=False):
    """The Runtime of config `cfg` on data with `meta` (dataset.load_meta), after setup_distributed."""
    chunked = meta['vocab_size'] > 8192 if cfg.chunked_loss == 'auto' else bool(cfg.chunked_loss)
    if chunked and cfg.dtype == 'float16':  # its gradients are cast to fp16 before the grad scaler scales them
        raise UserError("dtype='float16' with the chunked loss underflows its gradients: use dtype='bfloat16' "
                        "or chunked_loss=False")
    # CUDA or CPU autocast (a CPU runs the GPU's bf16 code path); FSDP casts by its MixedPrecisionPolicy
    return Runtime(ctx=autocast(cfg.device, cfg.dtype, cfg.parallel), ptdtype=PTDTYPES[cfg.dtype], chunked=chunked,
                   eot=meta['eot_token'], all_done=decoding_agreement(cfg.device, cfg.rank) if cfg.parallel == 'fsdp' else None,
                   own_group=own_group)


def unwrap(model):
    """The bare GPT inside a DDP wrapper (.module) or a torch.compile'd module (._orig_mod): what
    decoding runs on, and what checkpoints save (DDP's hooks and compile's graphs serve training steps)."""
    return model.module if hasattr(model, 'module') else getattr(model, '_orig_mod', model)


def decoding_agreement(device, rank, group=None):
    """sampling.generate's `all_done(finished, step)` under FSDP: True when every rank is finished
    (a MIN all-reduce of the flags). Every rank calls it before every decoding step, so the ranks run
    the same number of forwards (each all-gathers parameters) whatever their rows sample; a rank
    that never arrives (it failed, or hangs) becomes one error naming the step after dist_timeout."""
    def all_done(finished, step):
        flag = torch.tensor([float(bool(finished))], device=device)
        try:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
        except RuntimeError as e:  # gloo / nccl timeouts (DistBackendError is a RuntimeError)
            raise UserError(f"rank {rank}: the ranks did not agree at decoding step {step} "
                            f"({(str(e).splitlines() or [''])[0][:160]}): another rank failed or hangs, "
                            f"see its output") from None
        return bool(flag.item())
    return all_done


def setup_distributed(cfg):
    """torchrun sets RANK/WORLD_SIZE (cfg.rank, cfg.world_size, and this rank's cfg.device on GPU);
    nccl on GPU, gloo on CPU. A process group that already exists (main() called from a script that
    set one up) is used and left open. Returns True when this call made the group."""
    cfg.rank, cfg.world_size = 0, 1
    if cfg.parallel == 'none':
        return False
    if 'RANK' not in os.environ and not dist.is_initialized():
        raise UserError(f"parallel='{cfg.parallel}' needs a torchrun launch: "
                        f"torchrun --nproc_per_node=N train.py <config>")
    on_gpu = cfg.device.startswith('cuda')
    if on_gpu:
        cfg.device = local_device(int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(cfg.device)
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(backend_for(cfg), timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    cfg.rank, cfg.world_size = dist.get_rank(), dist.get_world_size()
    return own_group


def local_device(local_rank):
    """This rank's GPU: cuda:LOCAL_RANK, or cuda:0 when the launcher shows each task one GPU only
    (SLURM's --gpus-per-task=1 sets CUDA_VISIBLE_DEVICES per task: LOCAL_RANK 3 sees its GPU as 0)."""
    return 'cuda:0' if torch.cuda.device_count() == 1 else f"cuda:{local_rank}"


def backend_for(cfg):
    """The process group's backends: nccl on GPU, gloo on CPU, and both with fsdp_cpu_offload (the
    offloaded shards, the clipped gradient norm and full_tensor() are CPU tensors: NCCL cannot
    all-reduce them)."""
    if not cfg.device.startswith('cuda'):
        return 'gloo'
    return 'cpu:gloo,cuda:nccl' if cfg.fsdp_cpu_offload else 'nccl'


def global_mean(cfg, loss, n_local):
    """Rescale a rank's token-mean loss so that DDP's gradient averaging yields the mean over the
    global batch's tokens (ranks hold different numbers of response tokens)."""
    if cfg.world_size == 1:
        return loss
    n = torch.tensor([float(n_local)], device=loss.device)
    dist.all_reduce(n)
    return loss * (float(n_local) * cfg.world_size / n.clamp(min=1).item())


def rank_mean(cfg, value, weight=1.0):
    """sum_r w_r x_r / sum_r w_r over the ranks, the same on every rank (w = tokens: a global token mean)."""
    if cfg.world_size == 1:
        return value
    t = torch.tensor([float(value) * float(weight), float(weight)], dtype=torch.float64, device=cfg.device)
    dist.all_reduce(t)
    return (t[0] / t[1]).item()


def gather_rollouts(cfg, buf):
    """Every rank's rollout rows on every rank, in rank order. The ranks sample their own prompts
    in parallel; PPO minibatches are then drawn from the global buffer as in one process."""
    if cfg.world_size == 1:
        return buf
    parts = [None] * cfg.world_size
    dist.all_gather_object(parts, {k: v.cpu() if torch.is_tensor(v) else v for k, v in buf.items()})
    Tr = max(p['mask'].shape[1] for p in parts)
    out = {'rows': [row for p in parts for row in p['rows']]}
    for k, v in buf.items():
        if torch.is_tensor(v):
            out[k] = torch.cat([F.pad(p[k], (0, Tr - p[k].shape[1])) for p in parts]).to(cfg.device)
    return out


def wrap(cfg, model, teacher, weights=(None, None), ptdtype=torch.float32, mesh=None):
    """DDP: replicate the student and average its gradients. FSDP2: shard student and teacher per
    block + root (`fully_shard`), all-gathering each block's weights in `ptdtype` just for its
    forward/backward and reduce-scattering gradients in fp32; then allocate this rank's shards and
    fill them from rank 0's `weights` (build_models). `mesh`: the ranks to shard over (default: the
    whole process group; scripts/dryrun.py makes its fake one before entering FakeTensorMode)."""
    if cfg.parallel == 'ddp':
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[cfg.device] if cfg.device.startswith('cuda') else None)
    elif cfg.parallel == 'fsdp':
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=ptdtype, reduce_dtype=torch.float32)
        offload = CPUOffloadPolicy() if cfg.fsdp_cpu_offload else OffloadPolicy()
        if cfg.fsdp_activation_checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
            for i, block in enumerate(model.transformer.h):
                model.transformer.h[i] = checkpoint_wrapper(block)
        gathered = memory.decode_gathered(cfg, model.config, teacher.config if teacher is not None else None,
                                          memory.device_memory_gb(cfg))
        for m, sd, whole in [t for t in zip((model, teacher), weights, gathered) if t[0] is not None]:
            m.gather_for_decoding = whole  # sampling.fsdp_gathered: gathered once per generation, not per token
            if m is teacher:
                m.to(ptdtype)  # frozen: stored in the dtype it computes in, half the memory of fp32
            for block in m.transformer.h:
                fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload)
            fully_shard(m, mesh=mesh, mp_policy=mp, offload_policy=offload)
            m.to_empty(device='cpu' if cfg.fsdp_cpu_offload else cfg.device)
            if sd is not None:
                set_model_state_dict(m, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    if cfg.compile:
        model = torch.compile(model)
    return model


def on_rank0(cfg, fn):
    """fn() on rank 0 only, its UserError raised on every rank (none is left waiting in the next
    collective); returns fn's value on rank 0, None elsewhere. Collective when distributed."""
    value, error = None, None
    if cfg.rank == 0:
        try:
            value = fn()
        except UserError as e:
            error = str(e)
    if cfg.world_size > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise UserError(error)
    return value
