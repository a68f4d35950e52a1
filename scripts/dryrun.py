"""
Dry runs of the real multi-GPU configs on this CPU, at any world size: the student and teacher of
a config are built on fake tensors (FakeTensorMode: shapes and dtypes, no memory, no arithmetic),
and rank 0 of a fake process group (torch.testing's FakeStore, backend "fake": every collective
returns at once) runs the loop's own code on them: parallel.setup_distributed, runtime and wrap
(FSDP2), train.make_optimizer; for MiniLLM a rollout batch inside sampling.fsdp_gathered (both
models' KV caches, the prompts' prefill, a decoding step, the scoring forwards); then one micro-step
of the method's source (rollout.MiniLLMSource.loss: policy loss, its backward, L_PT; or
supervised.supervised_loss), its backward and train.step_optimizer (clip, non-finite check, AdamW).
PyTorch's FSDPMemTracker (what torchtitan's memory estimation runs on) records rank 0's peak by
category, a dispatch mode counts the collectives, and both are printed beside
components/memory.py's estimate for the same config and world size.

    python scripts/dryrun.py config/minillm_13b_fsdp.py --world=64      # one config of DRY_RUNS
    python scripts/dryrun.py --table                                    # the README table: DRY_RUNS at 8 and 64

No tensor holds a number, so where the code reads one the dry run takes the worst case
(`WorstCase`): every target position carries a loss (a mask's nonzero() is every position), no
row finishes early, no check fails. The rank is treated as a GPU: the loss chunks are
loss_chunk_size rows as on CUDA (rollout.chunk_rows limits them on CPU) and AdamW runs its foreach
kernels as it does on CUDA for FSDP's DTensor parameters (on CPU it goes one tensor at a time).

The optimizer puzzle (issue 28): run as-is under FakeTensorMode, the tracker reports AdamW's state
as 3 x 4 P bytes of the *unsharded* model (167.65 GiB per rank for the 14.77B student at 64 ranks).
DTensor computes each op's output shape by running the op on fake tensors of the global shape in
`detect_fake_mode() or FakeTensorMode()` (_sharding_prop._propagate_tensor_meta_non_cached); inside
a dry run that is the dry run's own fake mode, the one the tracker takes as real, so it counts those
global-shape stand-ins. A foreach op over all parameters keeps three such lists alive at once
(the arguments and the output). On a GPU there is no outer fake mode and nothing is counted.
`tracked_dtensor_propagation(False)` gives the propagation a fake mode of its own; what remains is
real: exp_avg and exp_avg_sq (8 P / S) and, for the step, foreach AdamW's sqrt(exp_avg_sq)
temporary (4 P / S); tests/test_dryrun.py checks both to the byte.
"""
import argparse
import dataclasses
import os
import sys
import time
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch._subclasses.fake_tensor import DataDependentOutputException  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import rollout  # noqa: E402
import supervised  # noqa: E402
import train  # noqa: E402
from components.memory import GiB, decode_gathered, device_memory_gb, estimate_run  # noqa: E402
from components.parallel import runtime, setup_distributed, wrap  # noqa: E402
from dataset import LMStream  # noqa: E402
from model import GPT, KVCache  # noqa: E402
from sampling import _next_logits, fsdp_gathered  # noqa: E402
from scripts.memory_table import TABLE_RUNS, on_gpus, table_run  # noqa: E402

# every FSDP config of config/ (the MiniLLM pairs and the SFT of each model they train or teach)
DRY_RUNS = [r for r in TABLE_RUNS if not r[3]] + [
    ('opt-1.3b', None, 'config/sft_opt_1.3b.py', []),
    ('llama-7b', None, 'config/sft_llama_7b.py', []),
    ('qwen2.5-1.5b', None, 'config/sft_qwen2.5_1.5b.py', []),
]

aten, c10d, funcol = torch.ops.aten, torch.ops.c10d, torch.ops._c10d_functional


# ----------------------------------------------------------------------------- the fake cluster
def fake_world(world_size):
    """A fake process group of `world_size` ranks (this process is rank 0) and its 1-D device mesh,
    made before FakeTensorMode is entered (a mesh reads its ranks from a real tensor)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group('fake', store=FakeStore(), rank=0, world_size=world_size)
    return init_device_mesh('cpu', (world_size,))


@contextmanager
def tracked_dtensor_propagation(tracked):
    """tracked=False: DTensor's shape propagation runs its global-shape fake ops in a FakeTensorMode
    of its own, which FSDPMemTracker does not count (see the module docstring); True: as PyTorch
    does it, in the active fake mode, where they are counted as this rank's memory."""
    from torch.distributed.tensor import _sharding_prop
    detect = _sharding_prop.detect_fake_mode
    if not tracked:
        _sharding_prop.detect_fake_mode = lambda *args: None
    try:
        yield
    finally:
        _sharding_prop.detect_fake_mode = detect


@contextmanager
def gpu_loss_chunks():
    """rollout.chunk_rows as on a GPU: loss_chunk_size rows of logits per chunk."""
    chunk_rows = rollout.chunk_rows
    rollout.chunk_rows = lambda cfg, vocab, device: cfg.loss_chunk_size
    try:
        yield
    finally:
        rollout.chunk_rows = chunk_rows


class WorstCase(TorchDispatchMode):
    """The values the dry run assumes where code reads one: every element of a mask is set, so
    nonzero() is every position and a boolean index keeps every row (the largest shapes the real
    run can reach: every target position carries a loss); a boolean read from a tensor is False (no
    check fails, no row finishes early, a batch counts as padded, as rollout prompts are) and a number
    is 1 (a token count, a finite flag, a data offset)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(t is DTensor for t in types):
            return NotImplemented
        if func is aten.nonzero.default:
            x = args[0]
            idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in x.shape], indexing='ij'), -1)
            return idx.reshape(-1, x.dim())
        if func is aten._local_scalar_dense.default:  # .item(), bool()
            try:
                return func(*args, **kwargs)  # a constant the fake mode knows (AdamW's step count)
            except DataDependentOutputException:
                return False if args[0].dtype == torch.bool else 1 if not args[0].dtype.is_floating_point else 1.0
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            indices = []  # a boolean index over k dims: k integer indices, every position
            for i in args[1]:
                if i is not None and i.dtype == torch.bool:
                    grids = torch.meshgrid(*[torch.arange(n) for n in i.shape], indexing='ij')
                    indices += [g.reshape(-1) for g in grids]
                else:
                    indices.append(i)
            return func(args[0], indices, *args[2:], **kwargs)
        return func(*args, **kwargs)


# ----------------------------------------------------------------------------- collectives
COLLECTIVES = {  # op -> (kind, index of the argument whose bytes are the message)
    c10d._allgather_base_.default: ('all-gather', 0),        # the gathered output
    c10d.allgather_.default: ('all-gather', 0),
    c10d.allgather_into_tensor_coalesced_.default: ('all-gather', 0),
    c10d._reduce_scatter_base_.default: ('reduce-scatter', 1),  # the input being reduced
    c10d.reduce_scatter_.default: ('reduce-scatter', 1),
    c10d.reduce_scatter_tensor_coalesced_.default: ('reduce-scatter', 1),
    c10d.allreduce_.default: ('all-reduce', 0),
    c10d.broadcast_.default: ('broadcast', 0),
    funcol.all_reduce.default: ('all-reduce', 0),
    funcol.all_gather_into_tensor.default: ('all-gather', 0),   # x group size below
    funcol.reduce_scatter_tensor.default: ('reduce-scatter', 0),
}


class CollectiveCounter(TorchDispatchMode):
    """Counts every collective rank 0 issues and the bytes of each message (all-gather: the gathered
    tensor; reduce-scatter: the tensor before reduction; all-reduce, broadcast: the tensor), by kind."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(t is DTensor for t in types):
            return NotImplemented
        if func in COLLECTIVES:
            kind, at = COLLECTIVES[func]
            leaves = torch.utils._pytree.tree_leaves(args[at])
            nbytes = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
            if func is funcol.all_gather_into_tensor.default:
                nbytes *= args[1]
            n, b = self.counts.get(kind, (0, 0))
            self.counts[kind] = (n + 1, b + nbytes)
        return func(*args, **(kwargs or {}))

    def take(self):
        out, self.counts = self.counts, {}
        return out


# ----------------------------------------------------------------------------- one dry run
def build(cfg, rt, student_shape, teacher_shape, mesh):
    """Student and frozen teacher on the meta device, as train.setup_models hands them to `wrap` under
    FSDP, sharded by `wrap`; train.make_optimizer's AdamW, with the foreach kernels AdamW picks on CUDA
    for DTensors (on CPU it would go tensor by tensor), its state made by a step on zero gradients
    (the state of a run past its first step)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    with unset_fake_temporarily(), torch.device('meta'):  # plain meta tensors: .to(dtype) converts them in place
        student = GPT(student_shape)
        teacher = GPT(teacher_shape) if teacher_shape is not None else None
    if teacher is not None:
        teacher.requires_grad_(False).eval()
    student = wrap(cfg, student, teacher, ptdtype=rt.ptdtype, mesh=mesh)
    optimizer = train.make_optimizer(cfg, student)
    for group in optimizer.param_groups:
        group['foreach'] = True
    trained = [p for p in student.parameters() if p.requires_grad]
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return student, teacher, optimizer


def accumulated_grads(cfg, student):
    """With gradient accumulation every micro-step after the first starts with the sharded fp32
    gradients of the ones before (FSDP2 accumulates into them): the micro-step the dry run tracks."""
    if cfg.gradient_accumulation_steps > 1:
        for p in student.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)


def local_bytes(module):
    """Bytes of this rank's shards of a module's parameters."""
    return sum(p.to_local().untyped_storage().nbytes() if isinstance(p, DTensor) else p.untyped_storage().nbytes()
               for p in module.parameters())


def tokens(rows, length, vocab):
    return torch.randint(0, vocab, (rows, length))


def rollout_phase(cfg, rt, student, teacher, rows, counter):
    """A MiniLLM rollout batch of `rows` prompts (rollout.collect_rollouts): inside sampling.fsdp_gathered,
    as `generate` runs (a model that parallel.wrap flagged gather_for_decoding is all-gathered whole
    for the generation), both models' KV caches (allocated whole, block_size tokens, in the dtype
    collect_rollouts asks for), the prefill of block_size - max_new_tokens prompt tokens and one
    decoding step through generate's own _next_logits (every later step holds the same caches);
    then the scoring forwards of the student and the teacher (rollout.response_scores). Returns the
    caches' bytes and the collectives of each part ({'prefill', 'decoding step', 'scoring'})."""
    Tp, V = cfg.block_size - cfg.max_new_tokens, student.config.vocab_size
    mixing = teacher is not None and cfg.teacher_mix_alpha > 0
    prompt, amask = tokens(rows, Tp, V), torch.ones(rows, Tp, dtype=torch.long)
    parts = {}

    @fsdp_gathered
    def decode(model, idx, mix_model=None):
        models = [model] + ([mix_model] if mix_model is not None else [])
        caches = [KVCache(m.config, rows, Tp + cfg.max_new_tokens, 'cpu', rt.ptdtype) for m in models]
        for m, c in zip(models, caches):
            _next_logits(m, c, idx, amask, None, 'eager')
        parts['prefill'] = counter.take()
        step = tokens(rows, 1, V)
        for m, c in zip(models, caches):
            _next_logits(m, c, step, None, None, 'eager')
        parts['decoding step'] = counter.take()
        return sum(t.untyped_storage().nbytes() for c in caches for t in c.k + c.v)

    with torch.no_grad():
        kv = decode(student, prompt, mix_model=teacher if mixing else None)  # prefill: with the gathering's
        seq = tokens(rows, cfg.block_size, V)
        full = torch.ones_like(seq)
        for m in [student] + ([teacher] if mixing else []):
            rollout.response_scores(cfg, rt, m, seq, full, Tp, seq[:, Tp:])
        parts['scoring'] = counter.take()
    return kv, parts


def fake_stream(cfg):
    """dataset.LMStream over zeros: L_PT batches of the real shape, drawn by its own batch()."""
    stream = LMStream.__new__(LMStream)
    stream.tokens = np.zeros(4 * cfg.block_size, dtype=np.uint16)
    return stream


def train_micro_step(cfg, rt, student, teacher, optimizer):
    """One micro-step of the method's loss on full-length rows, its backward, then train.step_optimizer
    (gradient clip, the non-finite check, AdamW). MiniLLM: rollout.MiniLLMSource's own loss() (policy
    loss, its backward, L_PT) on a buffer of full-length rows; else supervised_loss, what
    SupervisedSource runs on its batch."""
    V = student.config.vocab_size
    if cfg.method == 'minillm':
        Tp, Tr, n = cfg.block_size - cfg.max_new_tokens, cfg.max_new_tokens, cfg.batch_size * cfg.world_size
        zeros = torch.zeros(n, Tr)
        pt_data = fake_stream(cfg) if cfg.pt_data_dir and cfg.pt_weight > 0 else None
        source = rollout.MiniLLMSource(cfg, rt, student, teacher, range(cfg.rollout_size), pt_data,
                                       torch.Generator().manual_seed(cfg.seed), None,
                                       backward=lambda loss: (loss / cfg.gradient_accumulation_steps).backward())
        source.buffer = dict(rows=[(list(range(Tp)), list(range(Tr)))] * n,  # token ids: shapes only
                             logp_old=zeros, logp_teacher=zeros, logp_mix=zeros, advantages=zeros,
                             mask=torch.ones(n, Tr, dtype=torch.bool))
        source.queue = [list(range(n))]  # one global PPO minibatch: this rank's share is batch_size rows
        loss = source.loss(1)[0]
    else:
        x = tokens(cfg.batch_size, cfg.block_size, V)
        kd = cfg.kd_ratio if cfg.method in ('kd', 'seqkd') else 0.0
        loss = supervised.supervised_loss(cfg, rt, student, teacher, x, x, kd)
    (loss / cfg.gradient_accumulation_steps).backward()
    scaler = torch.amp.GradScaler('cuda', enabled=False)  # bf16: no loss scaling
    train.step_optimizer(cfg, student, optimizer, scaler, dict(loss=1.0))


CATEGORIES = ('params', 'grads', 'optimizer', 'teacher', 'unsharded', 'activations', 'kv_cache')


def categories(snapshot, teacher_bytes):
    """FSDPMemTracker's categories (one device's snapshot) in memory.py's terms."""
    by = {str(k).split('.')[-1]: v for k, v in snapshot.items()}
    get = lambda *names: sum(by.get(n, 0) for n in names)  # noqa: E731
    return dict(params=get('SHARDED_PARAM') - teacher_bytes, grads=get('SHARDED_GRAD'), optimizer=get('OptState', 'OPT'),
                teacher=teacher_bytes,
                unsharded=get('UNSHARDED_PARAM', 'UNSHARDED_GRAD', 'ALL_GATHER', 'REDUCE_SCATTER'),
                activations=get('ACT', 'TEMP', 'INP', 'BUFFER'), total=by['Total'])


def peak_tracker_class():
    """FSDPMemTracker keeping the global peak only: its per-module peaks (a walk over every tracked
    module at every op, a third of a dry run's time) are not read here."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    class PeakTracker(FSDPMemTracker):
        def _update_peak_stats(self, peak_state):
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap['Total']:
                    self._peak_mem[dev], self._peak_mem_snap[dev] = snap['Total'], dict(snap)
                    self.peak_at = ('backward ' if self._mod_tracker.is_bw else 'forward ') + \
                        max(self._mod_tracker.parents, key=len)  # the innermost module running
    return PeakTracker


@contextmanager
def tracker(student, teacher, optimizer):
    """The tracker over student and teacher (two FSDP roots): it instruments the FSDP modules
    under its root, so the root it walks is a container of both; and since a step calls each root
    more than once (MiniLLM: rollout, policy loss, L_PT), each root's per-module statistics are
    dropped before its next call (the tracker refuses a second root call; its peak is kept)."""
    roots = [student] + ([teacher] if teacher is not None else [])
    t = peak_tracker_class()(student, optimizer)
    t._root_mod = torch.nn.ModuleList(roots)
    with t:
        hooks = [m.register_forward_pre_hook(lambda mod, args: t.memory_tracking.pop(mod, None) and None,
                                             prepend=True) for m in roots]
        try:
            yield t
        finally:
            for h in hooks:
                h.remove()


def dry_run(cfg, student_shape, teacher_shape, world_size, track_propagation=False):
    """One dry run of `cfg` (train.py's config, written for its own world size: on_gpus scales it)
    at `world_size` ranks. Returns dict(train=, rollout=: tracked categories at each phase's peak,
    estimate=: memory.estimate_run, collectives=: {phase: {kind: (count, bytes)}}, seconds=)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    t0 = time.time()
    # logits over the shared real vocabulary, as train.py's data give it (tokenizer_vocab): here the
    # smaller embedding of the two, an upper bound within 0.3% for every pair of TABLE_RUNS
    real = min(m.vocab_size for m in (student_shape, teacher_shape) if m is not None)
    student_shape = dataclasses.replace(student_shape, tokenizer_vocab=real)
    teacher_shape = dataclasses.replace(teacher_shape, tokenizer_vocab=real) if teacher_shape is not None else None
    mesh = fake_world(world_size)
    cfg.device, cfg.parallel = 'cpu', 'fsdp'
    setup_distributed(cfg)  # rank 0 of the fake group
    rt = runtime(cfg, dict(vocab_size=student_shape.logit_vocab, eot_token=0))
    counter, out = CollectiveCounter(), dict(collectives={})
    with FakeTensorMode(allow_non_fake_inputs=True), tracked_dtensor_propagation(track_propagation), gpu_loss_chunks():
        student, teacher, optimizer = build(cfg, rt, student_shape, teacher_shape, mesh)
        teacher_bytes = local_bytes(teacher) if teacher is not None else 0
        if cfg.method == 'minillm':
            rows = min(cfg.rollout_batch_size, cfg.rollout_size // world_size)
            with tracker(student, teacher, optimizer) as t, counter, WorstCase():
                kv, parts = rollout_phase(cfg, rt, student, teacher, rows, counter)
            (snap,) = t.get_tracker_snapshot('peak').values()
            out['rollout'] = dict(categories(snap, teacher_bytes), kv_cache=kv, at=t.peak_at)
            out['rollout']['activations'] -= kv  # the tracker counts the caches as activations
            out['collectives'].update({'rollout ' + k: v for k, v in parts.items()})
        accumulated_grads(cfg, student)
        with tracker(student, teacher, optimizer) as t, counter, WorstCase():
            train_micro_step(cfg, rt, student, teacher, optimizer)
        (snap,) = t.get_tracker_snapshot('peak').values()
        out['train'] = dict(categories(snap, teacher_bytes), kv_cache=0, at=t.peak_at)
        out['collectives']['train'] = counter.take()
    dist.destroy_process_group()
    # the estimate parallel.wrap decided the gathering with (memory.decode_gathered, from gpu_memory_gb)
    out['gathered'] = decode_gathered(cfg, student_shape, teacher_shape, device_memory_gb(cfg))
    out['estimate'] = estimate_run(cfg, student_shape, teacher_shape, world_size, gathered=out['gathered'])
    out['seconds'] = time.time() - t0
    return out


# ----------------------------------------------------------------------------- reports
def peak(result):
    """The tracked peak of the run: the larger of its phases'."""
    return max(result[p]['total'] for p in ('train', 'rollout') if p in result)


def describe(result):
    """Tracked bytes per category at each phase's peak beside the estimate's parts (GiB), each
    phase's peak tracked / estimated, and the collectives."""
    est, lines = result['estimate'], []
    g = lambda x: f"{x / GiB:8.2f}"  # noqa: E731
    est_cat = dict(est, activations=est['activations'] + est['logits'])
    lines.append(f"{'GiB per rank':14s}" + ''.join(f"{p:>10s}" for p in ('train', 'rollout', 'estimate')))
    for k in CATEGORIES:
        row = [result[p][k] if p in result else None for p in ('train', 'rollout')]
        lines.append(f"{k:14s}" + ''.join(f"  {g(v)}" if v is not None else ' ' * 10 for v in row)
                     + f"  {g(est_cat[k])}")
    for p in ('train', 'rollout'):
        if p in result:
            lines.append(f"{p} peak: tracked {result[p]['total'] / GiB:.2f} GiB (in {result[p]['at']}), "
                         f"estimated {est[p + '_peak'] / GiB:.2f} GiB")
    for phase, kinds in result['collectives'].items():
        lines.append(f"collectives, {phase}: " + ', '.join(
            f"{n} {kind}s {b / GiB:.2f} GiB" for kind, (n, b) in sorted(kinds.items())) or "none")
    lines.append(f"gathered for the whole generation (student, teacher): {result['gathered']}; {result['seconds']:.1f} s")
    return '\n'.join(lines)


def table_row(student, teacher, config_file, overrides):
    """(name, cfg, student shape, teacher shape) of one TABLE_RUNS row."""
    cfg, s, t = table_run(student, teacher, config_file, overrides)
    return os.path.basename(config_file) + (' ' + overrides[0] if overrides else ''), cfg, s, t


TABLE_HEAD = ["| student | teacher | config | GPUs | training step, tracked / est. | rollout, tracked / est. "
              "| peak, tracked / est. | micro-step: all-gather / reduce-scatter | rollout: all-gather per token | dry run |",
              "|---|---|---|---|---|---|---|---|---|---|"]


def table_line(student, teacher, name, world_size, r):
    """One row of the README table for the dry run `r` (GiB per GPU)."""
    g = lambda x: f"{x / GiB:.1f}"  # noqa: E731
    est, coll = r['estimate'], r['collectives']
    rollout = f"{g(r['rollout']['total'])} / {g(est['rollout_peak'])}" if 'rollout' in r else '-'
    per_token = g(coll['rollout decoding step'].get('all-gather', (0, 0))[1]) if 'rollout' in r else '-'
    diff = (est['total'] - peak(r)) / peak(r)
    return (f"| {student} | {teacher or '-'} | `{name}` | {world_size} | {g(r['train']['total'])} / {g(est['train_peak'])} "
            f"| {rollout} | {g(peak(r))} / {g(est['total'])} ({diff:+.0%}) "
            f"| {g(coll['train']['all-gather'][1])} / {g(coll['train']['reduce-scatter'][1])} | {per_token} "
            f"| {r['seconds']:.0f} s |")


def markdown_table(world_sizes=(8, 64), rows=DRY_RUNS):
    """The README table, for every DRY_RUNS row (its config's own batch, sequence length and
    activation checkpointing, written for 8 GPUs; on 64 the same global batch) at each world size:
    rank 0's tracked peak of the training micro-step and of the rollout batch beside memory.py's
    estimate of each, and the bytes of the collectives rank 0 takes part in."""
    out = list(TABLE_HEAD)
    for student, teacher, config_file, overrides in rows:
        name, cfg, s, t = table_row(student, teacher, config_file, overrides)
        for w in world_sizes:
            out.append(table_line(student, teacher, name, w, dry_run(on_gpus(cfg, w), s, t, w)))
            print(out[-1], flush=True)
    return '\n'.join(out)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('config', nargs='?', help='a config file of DRY_RUNS')
    ap.add_argument('--world', default='8,64', help='world sizes, comma-separated')
    ap.add_argument('--table', action='store_true', help='the README table: every DRY_RUNS row')
    args, overrides = ap.parse_known_args(argv)
    worlds = [int(w) for w in args.world.split(',')]
    if args.table:
        print(markdown_table(worlds))
        return
    match = [r for r in DRY_RUNS if r[2] == args.config or os.path.basename(r[2]) == os.path.basename(args.config or '')]
    if not match:
        raise SystemExit(f"dryrun: pick one of {', '.join(r[2] for r in DRY_RUNS)}")
    student, teacher, config_file, extra = match[0]
    name, cfg, s, t = table_row(student, teacher, config_file, list(extra) + overrides)
    for w in worlds:
        print(f"== {name}: {student} <- {teacher or '-'}, world size {w}")
        print(describe(dry_run(on_gpus(cfg, w), s, t, w)), flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
