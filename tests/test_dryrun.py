"""scripts/dryrun.py: FSDP2 on fake tensors over a fake process group of 8 ranks. The optimizer
puzzle of issue 28 (167.65 GiB of AdamW state per rank) by the byte, and a 1B-class config's dry
run with its static memory and collectives in closed form."""
import math

import pytest
import torch
import torch.distributed as dist

from scripts import dryrun
from components.memory import GiB, count_params, root_params
from components.presets import preset_config
from model import GPT

W = 8


@pytest.fixture
def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode
    yield FakeTensorMode(allow_non_fake_inputs=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def small_run(cfg, fake_mode):
    """A 2-block Qwen2-family GPT sharded over W fake ranks with its AdamW (foreach, as on CUDA),
    after one forward and backward: (model, optimizer, local parameter numels)."""
    mesh = dryrun.fake_world(W)
    with fake_mode:
        with torch.device('meta'):
            m = GPT(preset_config('qwen2.5-0.5b', n_layer=2, vocab_size=1024))
        m = dryrun.wrap(cfg, m, None, ptdtype=torch.bfloat16, mesh=mesh)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True)
        x = torch.randint(0, 1024, (1, 8))
        m(x, x)[1].backward()
    return m, opt, [p.to_local().numel() for p in m.parameters()]


def fsdp_cfg():
    """train.py's defaults under FSDP2 on the fake ranks (no activation checkpointing, no offload)."""
    from types import SimpleNamespace
    import train
    return SimpleNamespace(**dict(train.DEFAULTS, parallel='fsdp', device='cpu', rank=0, world_size=W))


@pytest.mark.parametrize('tracked', [True, False])
def test_adamw_state_puzzle(fake_mode, tracked):
    """AdamW's first step under FSDPMemTracker. With DTensor's shape propagation in the dry run's
    fake mode (as PyTorch runs it), the tracker counts its global-shape stand-ins: three fp32 lists
    of the whole model (a foreach op's two inputs and its output) on top of the real 12 bytes per
    local parameter (exp_avg, exp_avg_sq and foreach's sqrt(exp_avg_sq) temporary) and a 4-byte step
    count per tensor. That is 12 P (1 + 1/S) bytes: 167.65 GiB for the 14.77B student at S = 64."""
    m, opt, local = small_run(fsdp_cfg(), fake_mode)
    P, P_local = sum(p.numel() for p in m.parameters()), sum(local)
    assert P == W * P_local  # every row count here divides by 8: no padding
    with fake_mode, dryrun.tracked_dtensor_propagation(tracked):
        with dryrun.peak_tracker_class()(m, opt) as t:
            opt.step()
    (snap,) = t.get_tracker_snapshot('peak').values()
    opt_bytes = {str(k).split('.')[-1]: v for k, v in snap.items()}['OPT']
    steps = 4 * len(local)
    assert opt_bytes == 12 * P_local + steps + (12 * P if tracked else 0)
    P14 = count_params(preset_config('qwen2.5-14b'))
    assert round(12 * P14 * (1 + 1 / 64) / GiB, 2) == 167.65  # the figure, at 64 ranks


def test_dry_run_1b_config_at_8_ranks():
    """config/sft_qwen2.5_1.5b.py (FSDP2, bf16, activation checkpointing) at 8 fake ranks, through
    parallel.setup_distributed, runtime and wrap, train.make_optimizer and train.step_optimizer: the
    tracked fp32 shards, AdamW state and collectives in closed form, the peak within 10% of the estimate."""
    from scripts.memory_table import on_gpus
    name, cfg, s, t = dryrun.table_row('qwen2.5-1.5b', None, 'config/sft_qwen2.5_1.5b.py', [])
    r = dryrun.dry_run(on_gpus(cfg, W), s, t, W)
    P, L = count_params(s), s.n_layer
    with torch.device('meta'):
        n_tensors = len(list(GPT(s).parameters()))
    tr = r['train']
    assert tr['params'] == 4 * P / W and tr['teacher'] == 0   # 28 blocks and the root: every size divides by 8
    assert tr['optimizer'] == 8 * P / W + 4 * n_tensors       # exp_avg, exp_avg_sq; a step count per tensor
    coll = r['collectives']['train']
    # forward: the root and every block; backward: every block again (resharded after forward, and
    # recomputed), not the root (FSDP2 keeps a root whole after forward); bf16 all-gathers, one fp32
    # reduce-scatter per group; train.step_optimizer's all-reduces: the clip's norm, the non-finite check
    blocks = P - root_params(s)
    assert coll['all-gather'] == (1 + 2 * L, 2 * (P + blocks))
    assert coll['reduce-scatter'] == (1 + L, 4 * P)
    assert coll['all-reduce'][0] == 2
    assert math.isclose(dryrun.peak(r), r['estimate']['total'], rel_tol=0.10)
