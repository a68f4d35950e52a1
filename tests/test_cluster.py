"""
Cluster-readiness (issue 17): checkpoints that cannot run code, preemption that loses nothing,
non-finite steps that stop cleanly, one run per out_dir, failed writes, bad data lines, wandb and
progress bars. Runs that must be signalled or killed are subprocesses of this file (`worker`
below); they wait at a given iteration until the test has signalled them, so nothing depends on
timing.
"""
import errno
import importlib.machinery
import io
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

if __name__ == '__main__':  # a worker subprocess: make the repo importable as the tests' conftest does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components import checkpoint
from components import cluster
from scripts import convert_checkpoint
import train
from components.checkpoint import atomic_save, checkpoint_payload, load_checkpoint
from configurator import UserError
from model import GPT, GPTConfig

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
SMALL = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=8', '--eval_iters=1',
         '--log_interval=1', '--warmup_iters=0', '--device=cpu', '--dtype=float32', '--eval_rouge_examples=0']


def losses(out_dir, key='loss'):
    """The logged values by iteration; a resumed run logs some iterations again: the last one counts."""
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return {r['iter']: r[key] for r in map(json.loads, f) if key in r}


def random_model_dir(path, seed=1):
    torch.manual_seed(seed)
    atomic_save(checkpoint_payload(GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=32)), 'byte'),
                os.path.join(path, 'ckpt.pt'))
    return str(path)


# ----------------------------------------------------------------------------- worker subprocesses
def hold_at_iteration(at_iter, marker):
    """Make step `at_iter` of the next train.main wait, after writing `marker` (this pid), until a
    stop signal (SIGTERM / SIGUSR1) has reached cluster.StopSignals: the test signals in between."""
    got, handle, get_lr = [], cluster.StopSignals._handle, train.get_lr

    def noting(self, signum, frame):
        handle(self, signum, frame)
        got.append(signum)

    def holding(cfg, it):
        if it == at_iter and not got:
            with open(marker + '.tmp', 'w') as f:
                f.write(str(os.getpid()))
            os.replace(marker + '.tmp', marker)
            deadline = time.time() + 300
            while not got and time.time() < deadline:
                time.sleep(0.01)
        return get_lr(cfg, it)
    cluster.StopSignals._handle, train.get_lr = noting, holding


def kill_while_saving(call, moment, fraction):
    """SIGKILL this process at the `call`-th torch.save: in the middle of writing the bytes
    (`fraction` of them written), just before the temp file's rename, or just after it."""
    count, save, replace = [0], torch.save, os.replace

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def killing_save(obj, f, *args, **kwargs):
        count[0] += 1
        if count[0] == call and moment == 'write':
            buf = io.BytesIO()
            save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[:int(len(buf.getvalue()) * fraction)])
            f.flush()
            die()
        return save(obj, f, *args, **kwargs)

    def killing_replace(src, dst):
        at = count[0] == call and '.tmp.' in str(src)
        if at and moment == 'before_rename':
            die()
        replace(src, dst)
        if at and moment == 'after_rename':
            die()
    torch.save, os.replace = killing_save, killing_replace


def worker(plan, argv):
    torch.set_num_threads(1)  # as conftest does for the in-process runs: the same kernels, the same numbers
    if 'hold' in plan:
        hold_at_iteration(**plan['hold'])
    if 'kill' in plan:
        kill_while_saving(**plan['kill'])
    try:
        train.main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def start_worker(plan, argv, log):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    return subprocess.Popen([sys.executable, HERE, json.dumps(plan), *argv], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def wait_for(path, proc, log_path, timeout=300):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None and time.time() < deadline, open(log_path).read()[-4000:]
        time.sleep(0.02)
    with open(path) as f:
        return int(f.read())


# ----------------------------------------------------------------------------- checkpoints never run code
class RunsCode:
    """Unpickled, it runs a shell command through os.system (the issue's crafted ckpt.pt): here
    one that creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.path)}",)


def test_a_crafted_pickle_is_refused_by_every_loader_and_never_runs(tiny_instruct, tmp_path):
    import evaluate
    import sample
    marker = str(tmp_path / 'code_ran')
    evil = tmp_path / 'evil'
    torch.manual_seed(0)
    payload = checkpoint_payload(GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=32)), 'byte')
    atomic_save(dict(payload, extra=RunsCode(marker)), str(evil / 'ckpt.pt'))
    torch.load(evil / 'ckpt.pt', weights_only=False)  # the file is a real exploit: an unsafe load runs it
    assert os.path.exists(marker)
    os.remove(marker)
    sharded = tmp_path / 'sharded'  # an FSDP run directory whose trainer_state.pt carries the code
    os.makedirs(sharded / 'dcp')
    torch.save(dict(model_args=payload['model_args'], tokenizer='byte', extra=RunsCode(marker)),
               sharded / 'dcp' / 'trainer_state.pt')
    train_args = SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={tmp_path}/out', '--max_iters=1']
    loaders = {
        'checkpoint.load_checkpoint': lambda: load_checkpoint(str(evil)),
        'sample.py': lambda: sample.main([f'--init_from={evil}', '--start=Q: 1+1', '--device=cpu']),
        'evaluate.py': lambda: evaluate.main([f'--models=evil={evil}', f'--data_dir={tiny_instruct}', '--device=cpu',
                                              f'--out={tmp_path}/results']),
        'train.py --init_from': lambda: train.main(train_args + [f'--init_from={evil}']),
        'train.py --teacher': lambda: train.main(train_args + ['--method=kd', f'--teacher={evil}']),
        'scripts/convert_checkpoint.py --export_hf': lambda: convert_checkpoint.main(['--export_hf', str(evil), str(tmp_path / 'hf')]),
        'scripts/convert_checkpoint.py --consolidate': lambda: convert_checkpoint.main(['--consolidate', str(sharded)]),
        'train.py --init_from=resume (FSDP state)': lambda: checkpoint.load_trainer_state(str(sharded)),
    }
    for name, load in loaders.items():
        with pytest.raises(UserError) as e:
            load()
        message = str(e.value)
        assert 'refused: it holds posix.system, not only tensors' in message and 'could run code' in message, (name, message)
        assert '\n' not in message, name
    assert not os.path.exists(marker)
    assert not os.path.exists(tmp_path / 'out') and not os.path.exists(tmp_path / 'hf')


# ----------------------------------------------------------------------------- preemption
MINILLM = ['--method=minillm', '--rollout_size=8', '--ppo_epochs=2', '--batch_size=4', '--pt_batch_size=4',
           '--max_new_tokens=4', '--dropout=0.1', '--max_iters=6', '--eval_interval=100', '--eval_rouge_examples=4',
           '--rollout_batch_size=8']


def test_sigterm_saves_the_step_and_resume_gives_the_uninterrupted_losses(tiny_instruct, tmp_path):
    """MiniLLM with dropout and L_PT (rollout buffer, PPO queue, prompt order, every RNG): SIGTERM
    during step 2 of 6 (a rollout phase is 4 steps); the run finishes that step, writes ckpt.pt at
    iter 3 and exits 75; meanwhile a second run on its out_dir is refused; the resumed run's losses
    are the uninterrupted run's, bit for bit."""
    args = SMALL + MINILLM + [f'--data_dir={tiny_instruct}', f'--pt_data_dir={tiny_instruct}',
                              f'--teacher={random_model_dir(tmp_path / "teacher")}']
    full, half = str(tmp_path / 'full'), str(tmp_path / 'half')
    train.main(args + [f'--out_dir={full}'])
    marker, log_path = str(tmp_path / 'held'), str(tmp_path / 'half.log')
    with open(log_path, 'w') as log:
        proc = start_worker(dict(hold=dict(at_iter=2, marker=marker)), args + [f'--out_dir={half}'], log)
        try:
            pid = wait_for(marker, proc, log_path)
            with pytest.raises(UserError, match=f"{half} is in use by pid {pid} on .*: one run per out_dir"):
                train.main(args + [f'--out_dir={half}'])
            os.kill(pid, signal.SIGTERM)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = open(log_path).read()
    assert rc == cluster.PREEMPTED_EXIT == 75, out[-4000:]
    assert f"iter 3: SIGTERM received, the last state is in {half}/ckpt.pt" in out
    assert not os.path.exists(os.path.join(half, 'run.lock'))
    state = torch.load(os.path.join(half, 'ckpt.pt'), weights_only=True)  # plain values and tensors only
    assert state['iter_num'] == 3 and len(state['rollout_queue']) == 1 and state['prompt_order']['pos'] == 8
    assert all(isinstance(t, int) for prompt, response in state['rollout_buffer']['rows'] for t in prompt + response)
    assert state['torch_rng'].dtype == state['data_gen'].dtype == torch.uint8
    train.main(args + [f'--out_dir={half}', '--init_from=resume'])
    assert len(losses(full)) == 6
    assert losses(half) == losses(full)


def test_sigusr1_in_process_stops_with_the_requeue_status(tiny_instruct, tmp_path, monkeypatch):
    """The SLURM time-limit warning (--signal=USR1@120), delivered during step 1; the previous
    handler comes back afterwards."""
    get_lr = train.get_lr

    def signalling(cfg, it):
        if it == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return get_lr(cfg, it)
    monkeypatch.setattr(train, 'get_lr', signalling)
    before = signal.getsignal(signal.SIGUSR1)
    out = str(tmp_path / 'usr1')
    with pytest.raises(SystemExit) as e:
        train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=5', '--eval_interval=100'])
    assert e.value.code == 75
    assert signal.getsignal(signal.SIGUSR1) is before
    assert load_checkpoint(os.path.join(out, 'last'))['iter_num'] == 2
    assert sorted(losses(out)) == [1, 2]


def test_sigkill_at_random_moments_of_saving_always_resumes(tiny_instruct, tmp_path):
    """Killed (SIGKILL) three times while writing checkpoints: in the middle of the bytes, before or
    after the rename; each restart resumes from a loadable ckpt.pt (taking over the dead run's
    lock, deleting its temp files) and the run ends with the uninterrupted run's losses and weights."""
    args = SMALL + [f'--data_dir={tiny_instruct}', '--max_iters=24', '--eval_interval=2', '--dropout=0.1']
    ref, run = str(tmp_path / 'reference'), str(tmp_path / 'killed')
    train.main(args + [f'--out_dir={ref}'])
    rng = random.Random(17)
    iters, moments = [], rng.sample(['write', 'before_rename', 'after_rename'], 3)  # each moment once
    for k, moment in enumerate(moments):
        plan = dict(kill=dict(call=rng.randint(3, 5) if k == 0 else rng.randint(1, 3), moment=moment,
                              fraction=rng.random()))
        log_path = str(tmp_path / f'kill{k}.log')
        with open(log_path, 'w') as log:
            proc = start_worker(plan, args + [f'--out_dir={run}'] + (['--init_from=resume'] if k else []), log)
            rc = proc.wait(timeout=300)
        assert rc == -signal.SIGKILL, (plan, open(log_path).read()[-4000:])
        iters.append(load_checkpoint(os.path.join(run, 'last'))['iter_num'])  # loadable after every kill
    assert iters == sorted(iters) and iters[0] >= 2
    train.main(args + [f'--out_dir={run}', '--init_from=resume'])
    assert losses(run) == losses(ref) and len(losses(ref)) == 24
    a, b = (load_checkpoint(os.path.join(d, 'last'))['model'] for d in (run, ref))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(os.listdir(run)) == ['best.pt', 'ckpt.pt', 'log.jsonl']  # no temp file, no lock left


# ----------------------------------------------------------------------------- non-finite steps and weights
def test_a_nan_step_is_skipped_and_the_run_ends_with_finite_weights(tiny_instruct, tmp_path, monkeypatch):
    import supervised
    calls, loss_fn = [0], supervised.supervised_loss

    def nan_on_third(*args, **kwargs):
        calls[0] += 1
        loss = loss_fn(*args, **kwargs)
        return loss * float('nan') if calls[0] == 3 else loss
    monkeypatch.setattr(supervised, 'supervised_loss', nan_on_third)  # where SupervisedSource looks it up
    out = str(tmp_path / 'nan')
    train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=6', '--eval_interval=3'])
    logged = losses(out)
    assert sorted(k for k, v in logged.items() if v != v) == [3]  # the third step's loss: NaN, logged as such
    assert losses(out, 'skipped_steps') == {3: 1, 4: 1, 5: 1, 6: 1}
    state = load_checkpoint(os.path.join(out, 'last'))
    assert all(torch.isfinite(v).all() for v in state['model'].values())
    assert {s['step'].item() for s in state['optimizer']['state'].values()} == {5.0}  # 6 steps, 1 skipped


def test_non_finite_steps_in_a_row_stop_naming_the_step_and_the_term(tiny_instruct, tmp_path, monkeypatch):
    """MiniLLM whose L_PT turns NaN from step 2 on: steps 2, 3, 4 are skipped, then the run stops."""
    import rollout
    calls, loss_fn = [0], rollout.supervised_loss

    def nan_from_second(*args, **kwargs):  # L_PT: called once per step
        calls[0] += 1
        loss = loss_fn(*args, **kwargs)
        return loss * float('nan') if calls[0] >= 2 else loss
    monkeypatch.setattr(rollout, 'supervised_loss', nan_from_second)  # where MiniLLMSource looks it up
    args = SMALL + MINILLM + [f'--data_dir={tiny_instruct}', f'--pt_data_dir={tiny_instruct}', '--max_bad_steps=3',
                              f'--teacher={random_model_dir(tmp_path / "teacher")}', f'--out_dir={tmp_path}/stop']
    with pytest.raises(UserError, match=r"iter 4: non-finite loss, pt_loss, grad_norm in 3 steps in a row "
                                        r"\(max_bad_steps=3\), stopped; no checkpoint was written"):
        train.main(args)
    with pytest.raises(UserError, match='max_bad_steps must be >= 1'):
        train.main(args + ['--max_bad_steps=0'])


def test_a_checkpoint_of_non_finite_weights_is_never_written(tiny_instruct, tmp_path, monkeypatch):
    step, calls = torch.optim.AdamW.step, [0]

    def breaking_step(self, *args, **kwargs):  # the 3rd update overflows a weight
        out = step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 3:
            self.param_groups[0]['params'][0].data[0, 0] = float('inf')
        return out
    monkeypatch.setattr(torch.optim.AdamW, 'step', breaking_step)
    out = str(tmp_path / 'inf')
    with pytest.raises(UserError, match=f"iter 4: non-finite weights .*{out}/ckpt.pt not written, it keeps the last "
                                        f"finite state"):
        train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=6', '--eval_interval=2'])
    for name in ('best', 'last'):
        state = load_checkpoint(os.path.join(out, name))
        assert state['iter_num'] == 2 and all(torch.isfinite(v).all() for v in state['model'].values())


def test_a_failed_write_leaves_the_previous_checkpoint_whole_and_says_so(tiny_instruct, tmp_path, monkeypatch):
    save, calls = torch.save, [0]

    def disk_full_after_two(obj, f, *args, **kwargs):  # best.pt and ckpt.pt at iter 2 fit, nothing after
        calls[0] += 1
        if calls[0] > 2:
            f.write(b'PK\x03\x04 half a checkpoint')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', disk_full_after_two)
    out = str(tmp_path / 'full_disk')
    with pytest.raises(UserError, match=f"could not write {out}/(best|ckpt).pt \\(No space left on device\\): the "
                                        f"previous {out}/\\1.pt is whole"):
        train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=6', '--eval_interval=2'])
    monkeypatch.setattr(torch, 'save', save)
    assert [load_checkpoint(os.path.join(out, n))['iter_num'] for n in ('best', 'last')] == [2, 2]
    assert sorted(os.listdir(out)) == ['best.pt', 'ckpt.pt', 'log.jsonl']


class Killed(BaseException):
    """Stands for SIGKILL in-process: the test copies the directory as it is at that moment first."""


def test_a_sharded_save_killed_at_any_file_operation_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    """save_sharded (FSDP's dcp/, here on a 1-rank gloo group) stopped at each of its file
    operations in turn (DCP's writes, the renames, the deletions), starting from dcp/ and from the
    dcp.old/ that a save killed between its two renames leaves: dcp/ or dcp.old/ always holds a
    complete checkpoint of the last or the new iteration. A failed write (disk full) says the
    previous checkpoint is whole."""
    import shutil

    import torch.distributed as dist
    from components.checkpoint import load_sharded_weights, save_sharded
    dist.init_process_group('gloo', store=dist.FileStore(str(tmp_path / 'store'), 1), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=32))
        starts = {'dcp': str(tmp_path / 'start_dcp'), 'dcp.old': str(tmp_path / 'start_old')}
        save_sharded(starts['dcp'], model, None, 'byte', iter_num=1)
        shutil.copytree(starts['dcp'], starts['dcp.old'])
        os.rename(os.path.join(starts['dcp.old'], 'dcp'), os.path.join(starts['dcp.old'], 'dcp.old'))
        run, state = str(tmp_path / 'run'), str(tmp_path / 'state')
        ops, at, originals = [0], [None], {(os, 'replace'): os.replace, (os, 'rename'): os.rename,
                                          (shutil, 'rmtree'): shutil.rmtree, (torch, 'save'): torch.save}

        def counted(original):
            def op(*args, **kwargs):
                ops[0] += 1
                if ops[0] == at[0]:
                    shutil.copytree(run, state)  # the directory as a kill at this moment leaves it
                    raise Killed  # (within dcp.save it arrives wrapped, as a failed write)
                return original(*args, **kwargs)
            return op
        for (module, name), original in originals.items():
            monkeypatch.setattr(module, name, counted(original))
        for start in starts.values():
            k = 0
            while True:
                k += 1
                for d in (run, state):
                    originals[shutil, 'rmtree'](d, ignore_errors=True)
                shutil.copytree(start, run)
                ops[0], at[0] = 0, k
                try:
                    save_sharded(run, model, None, 'byte', iter_num=2)
                    break  # k is past the last file operation: the save completed
                except (Killed, UserError):
                    assert ops[0] >= k
                _, saved = load_sharded_weights(state)  # what init_from=resume / load_model would read
                assert saved['iter_num'] in (1, 2), (start, k)
            assert k > 20 and load_sharded_weights(run)[1]['iter_num'] == 2
            assert sorted(os.listdir(run)) == ['dcp']
        at[0] = None

        def disk_full(obj, f, *args, **kwargs):
            if str(f).endswith('trainer_state.pt'):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return originals[torch, 'save'](obj, f, *args, **kwargs)
        monkeypatch.setattr(torch, 'save', disk_full)
        with pytest.raises(UserError, match=r"could not write .*/run/dcp \(No space left on device\): the previous "
                                            r".*/run/dcp is whole"):
            save_sharded(run, model, None, 'byte', iter_num=3)
        assert load_sharded_weights(run)[1]['iter_num'] == 2 and sorted(os.listdir(run)) == ['dcp']
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- one run per out_dir
def test_a_lock_of_a_dead_run_or_an_earlier_start_of_the_job_is_taken_over(tmp_path, monkeypatch):
    import socket
    from types import SimpleNamespace
    cfg = SimpleNamespace(rank=0, world_size=1, out_dir=str(tmp_path / 'run'))
    lock = tmp_path / 'run' / 'run.lock'
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    os.makedirs(cfg.out_dir)
    (tmp_path / 'run' / 'ckpt.pt.tmp.99999').write_bytes(b'half')  # what a kill mid-save leaves
    for holder, job in [(dict(host=socket.gethostname(), pid=dead.pid), None),  # a dead process here
                        (dict(host='node-7', pid=1, job='42', restart=0), ('42', '1'))]:  # this job before its requeue
        for key, value in zip(('SLURM_JOB_ID', 'SLURM_RESTART_COUNT'), job or (None, None)):
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        lock.write_text(json.dumps(holder))
        with cluster.run_lock(cfg):
            assert json.loads(lock.read_text())['pid'] == os.getpid()
        assert not lock.exists()
    assert sorted(os.listdir(cfg.out_dir)) == []
    monkeypatch.setenv('SLURM_JOB_ID', '43')  # another job's live run on another node: refused
    lock.write_text(json.dumps(dict(host='node-7', pid=1, job='42', restart=0, started='2026-12-01 10:00:00')))
    with pytest.raises(UserError, match=r"run is in use by pid 1 on node-7 \(since 2026-12-01 10:00:00\): one run "
                                        r"per out_dir; wait for it, pick another --out_dir, or delete .*run.lock"):
        with cluster.run_lock(cfg):
            pass
    assert json.loads(lock.read_text())['host'] == 'node-7'  # left as it was


# ----------------------------------------------------------------------------- data, watching
def test_read_records_lists_every_bad_line(tmp_path):
    from data.common import read_records
    lines = [json.dumps(dict(instruction=f'q{i}', response=f'a{i}')) for i in range(1, 25)]
    lines[4] = lines[4][:20]                                      # line 5: cut off
    lines[11] = json.dumps(dict(instruction='q12'))               # line 12: no response
    lines[18] = json.dumps(dict(instruction='q19', response=42))  # line 19: not a string
    path = tmp_path / 'records.jsonl'
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(SystemExit) as e:
        read_records(path, ('instruction', 'response'))
    assert str(e.value) == (f"{path}: line 5: invalid JSON (Expecting ',' delimiter); line 12: missing "
                            f"string field(s) response; line 19: response is 42 (int), not a string; fix or "
                            f"remove these 3 lines")
    path.write_text('\n'.join(['{'] * 23) + '\n')
    with pytest.raises(SystemExit) as e:
        read_records(path, ())
    listed = str(e.value)
    assert listed.count('invalid JSON') == 20 and 'line 20: ' in listed and 'line 21: ' not in listed
    assert listed.endswith('; and 3 more; fix or remove these 23 lines')


def test_wandb_logs_what_log_jsonl_has(tiny_instruct, tmp_path, monkeypatch):
    calls = dict(log=[])
    fake = types.ModuleType('wandb')
    fake.__spec__ = importlib.machinery.ModuleSpec('wandb', None)

    def init(project, name, config):
        calls['init'] = (project, name, config['method'], config['max_iters'])
        return types.SimpleNamespace(log=lambda row, step: calls['log'].append(dict(row, iter=step)),
                                     finish=lambda: calls.setdefault('finished', True))
    fake.init = init
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    out = str(tmp_path / 'wb')
    args = SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=3', '--eval_interval=3']
    train.main(args + ['--wandb_log=True', '--wandb_project=distill', '--wandb_run_name=sft-small'])
    with open(os.path.join(out, 'log.jsonl')) as f:
        assert calls['log'] == [json.loads(line) for line in f] and len(calls['log']) == 5
    assert calls['init'] == ('distill', 'sft-small', 'sft', 3) and calls['finished']
    monkeypatch.setitem(sys.modules, 'wandb', None)  # not installed: a clear error, before anything is written
    with pytest.raises(UserError, match='wandb_log=True needs the wandb package: pip install wandb'):
        train.main(args + ['--wandb_log=True', f'--out_dir={tmp_path}/none'])
    assert not os.path.exists(tmp_path / 'none')


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_generation_shows_a_progress_bar_on_a_terminal_only(tiny_instruct, tmp_path, monkeypatch):
    import evaluate
    import sample
    from dataset import InstructSet
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=32)).eval()
    data = InstructSet(tiny_instruct, 'test')
    cfg = types.SimpleNamespace(batch_size=8, max_new_tokens=4, temperature=1.0, top_k=0, top_p=1.0, device='cpu')
    for terminal in (True, False):
        screen = Terminal() if terminal else io.StringIO()
        monkeypatch.setattr(sys, 'stdout', screen)
        responses = sample.sample_responses(model, [data.prompt(i) for i in range(20)], data.eot, cfg,
                                            torch.Generator().manual_seed(0), desc='seqkd train')
        evaluate.sample_rollouts(model, data, list(range(20)), seed=10, max_new_tokens=4, batch_size=8)
        shown = screen.getvalue()
        monkeypatch.undo()
        assert len(responses) == 20
        if terminal:
            assert 'seqkd train' in shown and 'seed 10' in shown and '20/20' in shown and 'tok/s' in shown
        else:
            assert shown == ''


if __name__ == '__main__':
    worker(json.loads(sys.argv[1]), sys.argv[2:])
