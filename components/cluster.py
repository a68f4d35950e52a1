"""
What a training run needs on a shared cluster, besides the training itself (train.py calls these):

- Preemption. SLURM sends SIGTERM before it kills a preempted job (after its GraceTime), and
  `#SBATCH --signal=USR1@120` sends SIGUSR1 two minutes before the time limit. `StopSignals`
  turns both into a flag; train.py checks it between steps, agreed over the ranks by an
  all-reduce (so every rank saves at the same step), writes the resumable last state (ckpt.pt,
  FSDP: dcp/) and exits with PREEMPTED_EXIT = 75, EX_TEMPFAIL of sysexits.h ("temporary failure,
  retry"): the job script requeues on that status and the next start resumes. Ctrl-C (SIGINT)
  does the same: the step in progress finishes, the last state is saved and the command that
  resumes is printed (`stopped`); a second Ctrl-C ends the process at once.
- Ranks never outlive their launcher (`die_with_launcher`), and a collective that waits on a rank
  that failed or hangs raises after dist_timeout (parallel.setup_distributed).
- One run per out_dir. `run_lock` writes out_dir/run.lock (host, pid, SLURM job) at the start; a
  second run refuses with a message naming the holder. A lock left by a dead process on this host,
  or by an earlier start of the same (requeued) SLURM job, is taken over.
- Non-finite steps. `nonfinite_terms` names the loss terms (or gradient norm) that are NaN or inf
  on any rank, so that every rank skips the same step; `nonfinite_weights` keeps a checkpoint of
  broken weights from being written.
- Watching. `start_wandb` mirrors log.jsonl to Weights & Biases when wandb_log=True.
"""
import contextlib
import ctypes
import glob
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time

import torch
import torch.distributed as dist

from configurator import UserError
from components.parallel import on_rank0

PREEMPTED_EXIT = 75  # sysexits.h EX_TEMPFAIL: the job script requeues on it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
LAUNCHER_PID = os.getppid()  # the parent when this process started (torchrun's agent for a rank)
LOCK_NAME = 'run.lock'


class StopSignals:
    """While entered, SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) set `received` (the signal's name) instead
    of ending the process; on exit the previous handlers come back. After the first Ctrl-C, SIGINT
    gets the system's default action back, so a second one ends the process at once (even inside a
    collective, where no Python handler runs). Handlers live in the main thread only (a run started
    from another thread keeps the default behaviour). Under torchrun, entering also ties the process's
    life to the launcher's (`die_with_launcher`)."""

    def __enter__(self):
        self.received, self._previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        if 'TORCHELASTIC_RUN_ID' in os.environ:  # a torchrun worker (a plain run's parent may be a shell)
            die_with_launcher()
        return self

    def _handle(self, signum, frame):
        self.received = self.received or signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            print("Ctrl-C: finishing the step, then saving the last state (Ctrl-C again to abort at once)",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, cfg):
        """The name of a signal any rank has received, on every rank (collective), or None."""
        code = getattr(signal, self.received) if self.received else 0
        if cfg.world_size > 1:
            flag = torch.tensor([float(code)], device=cfg.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        return signal.Signals(code).name if code else None


def stopped(cfg, argv, script='train.py'):
    """After a run stopped by a signal: print (rank 0) the command that resumes it and return the exit
    status, PREEMPTED_EXIT (the job script requeues on it, whatever the signal)."""
    if cfg.rank == 0:
        args = [a for a in argv if not a.startswith(('--init_from=', '--overwrite='))] + ['--init_from=resume']
        launch = f"torchrun --nproc_per_node={cfg.world_size}" if cfg.world_size > 1 else "python"
        print(f"resume with: {launch} {script} {' '.join(shlex.quote(a) for a in args)}", flush=True)
    return PREEMPTED_EXIT


def die_with_launcher():
    """Linux: the kernel kills this process (SIGKILL) when its parent, the launcher (torchrun), exits, so
    that a rank whose launcher was killed never stays behind waiting in a collective. Elsewhere a no-op."""
    if not sys.platform.startswith('linux'):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != LAUNCHER_PID:  # the launcher died before the request: nobody is left to wait for
        os.kill(os.getpid(), signal.SIGKILL)


def nonfinite_terms(cfg, terms):
    """The names among `terms` (name -> number or 0-dim tensor) whose value is NaN or inf on any
    rank; the same list on every rank (collective)."""
    names = list(terms)
    values = torch.stack([torch.as_tensor(terms[k], dtype=torch.float32).to(cfg.device).reshape(()) for k in names])
    finite = torch.isfinite(values).float()
    if cfg.world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return [k for k, ok in zip(names, finite.tolist()) if not ok]


def nonfinite_weights(cfg, model):
    """(any rank has a NaN/inf weight, this rank's offending parameter names); FSDP: this rank's shards."""
    bad = [name for name, p in model.named_parameters()
           if not torch.isfinite(p.to_local() if hasattr(p, 'to_local') else p).all()]
    count = float(len(bad))
    if cfg.world_size > 1:
        flag = torch.tensor([count], device=cfg.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        count = flag.item()
    return count > 0, bad


# ----------------------------------------------------------------------------- one run per out_dir
def _identity():
    return dict(host=socket.gethostname(), pid=os.getpid(), job=os.environ.get('SLURM_JOB_ID'),
                restart=int(os.environ.get('SLURM_RESTART_COUNT') or 0), started=time.strftime('%Y-%m-%d %H:%M:%S'))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(holder, me):
    """A lock whose run is certainly gone: its process is dead (on this host), it is this very
    process, or it is an earlier start of this SLURM job (a requeue restarts the job under its id)."""
    if holder is None or not isinstance(holder.get('pid'), int):  # unreadable: not a lock this code wrote whole
        return True
    if holder.get('host') == me['host'] and (holder['pid'] == me['pid'] or not _alive(holder['pid'])):
        return True
    return me['job'] is not None and holder.get('job') == me['job'] and int(holder.get('restart') or 0) < me['restart']


def _create_whole(tmp, path):
    """Create `path` with tmp's content, or raise FileExistsError: a hard link appears complete at
    once; on a filesystem without hard links, an exclusive create (a reader may see it empty)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, 'w') as f, open(tmp) as src:
            f.write(src.read())


def _take_lock(out_dir):
    created = not os.path.isdir(out_dir)
    path, me = os.path.join(out_dir, LOCK_NAME), dict(_identity(), created=created)
    tmp = f"{path}.{me['host']}.{me['pid']}"
    try:  # the run's first write: a read-only, full or missing place fails here, before any work
        os.makedirs(out_dir, exist_ok=True)
        with open(tmp, 'w') as f:
            json.dump(me, f)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise UserError(f"cannot write in {out_dir} ({e.strerror or e}: {e.filename or out_dir}): nothing was "
                        f"written and what it holds is as it was; pick another --out_dir, free space or fix "
                        f"permissions") from None
    try:
        for _ in range(3):
            try:
                _create_whole(tmp, path)
                break
            except FileExistsError:
                try:
                    with open(path) as f:
                        holder = json.load(f)
                except FileNotFoundError:
                    continue
                except (OSError, ValueError):
                    holder = None
                holder = holder if isinstance(holder, dict) else None
                if not _stale(holder, me):
                    raise UserError(
                        f"{out_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} (since "
                        f"{holder.get('started')}): one run per out_dir; wait for it, pick another --out_dir, "
                        f"or delete {path} if that run is gone") from None
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        else:
            raise UserError(f"could not take {path}: other runs keep taking it; start one run per out_dir")
    finally:
        os.remove(tmp)
    # a save killed half way leaves its temp file; no other run writes here now
    for leftover in glob.glob(os.path.join(glob.escape(out_dir), '*.pt.tmp.*')):
        os.remove(leftover)
    return path, me


@contextlib.contextmanager
def run_lock(cfg):
    """Hold out_dir/run.lock for the duration of the run (rank 0 takes it; its refusal is raised on
    every rank, so none waits in a collective). Released on the way out, unless another run has
    taken it over meanwhile."""
    taken = on_rank0(cfg, lambda: _take_lock(cfg.out_dir))  # (lock path, what it says) on rank 0
    try:
        yield
    finally:
        if taken is not None:
            path, me = taken
            with contextlib.suppress(OSError, ValueError):
                with open(path) as f:
                    holder = json.load(f)
                if (holder.get('host'), holder.get('pid')) == (me['host'], me['pid']):
                    os.remove(path)
            if me['created']:  # a run that stopped before writing anything leaves no empty out_dir
                with contextlib.suppress(OSError):
                    os.rmdir(cfg.out_dir)


# ----------------------------------------------------------------------------- watching
def start_wandb(cfg, config):
    """A Weights & Biases run (project wandb_project, name wandb_run_name or out_dir's last part)
    with the run's `config`; wandb is imported only here, when wandb_log=True."""
    try:
        import wandb
    except ImportError:
        raise UserError("wandb_log=True needs the wandb package: pip install wandb and wandb login "
                        "(or leave wandb_log=False; log.jsonl has the same numbers)") from None
    name = cfg.wandb_run_name or os.path.basename(os.path.normpath(cfg.out_dir))
    return wandb.init(project=cfg.wandb_project, name=name, config=config)
