"""
bench.py's sections `train`, `distributed` and `onpolicy`: whole train.py runs on the toy task,
timed step by step (timing.StepClock), with their settings from bench.py's config.

    python scripts/bench.py --only=train,distributed,onpolicy

train: a step of sft (packed and padded), kd and minillm, minillm split into its rollout phase
(generation, scoring) and its update; with --train_baseline=DIR the same minillm run in an older
checkout beside it. distributed: DDP and FSDP with 1 and 2 processes through torchrun, time and
peak memory per rank (this file is each rank's entry point, --dist-child). onpolicy: a GKD, a
DistiLLM and a MiniLLM step, each named by where its responses came from.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script (a torchrun rank): the project's modules

from configurator import configure  # noqa: E402
from scripts.timing import MALLOC_ENV, StepClock, med, memory_mib, quiet_train, reset_peak_memory, spread  # noqa: E402


# ----------------------------------------------------------------------------- 3. train
def toy_data(tmp):
    """A small copy of the toy instruction task (byte tokenizer), written by its prepare.py."""
    d = os.path.join(tmp, 'toy_instruct')
    subprocess.run([sys.executable, os.path.join(ROOT, 'data', 'toy_instruct', 'prepare.py'), '--n_train', '2000',
                    '--n_valid', '64', '--n_test', '64', '--out_dir', d], check=True, capture_output=True)
    return d


TRAIN_FLAGS = ['--device=cpu', '--dtype=float32', '--eval_iters=1', '--eval_interval=100000',
               '--log_interval=100000', '--warmup_iters=0', '--always_save_checkpoint=False']


def bench_train(cfg):
    import train
    with tempfile.TemporaryDirectory(prefix='bench_train_') as tmp:
        data, teacher = toy_data(tmp), os.path.join(tmp, 'teacher')
        common = [f'--data_dir={data}', f'--seed={cfg.seed}'] + TRAIN_FLAGS
        quiet_train(common + shlex.split(cfg.teacher_args) + ['--method=sft', '--max_iters=1', f'--out_dir={teacher}'])
        student = common + shlex.split(cfg.train_args) + [f'--max_iters={cfg.train_iters}']
        runs = {'sft': ['--method=sft'], 'sft, padded': ['--method=sft', '--pack=False'],
                'kd': ['--method=kd', f'--teacher={teacher}'],
                'minillm': ['--method=minillm', f'--teacher={teacher}', f'--pt_data_dir={data}', *shlex.split(cfg.minillm_args)]}
        trees = {'minillm': ROOT, 'minillm (before)': os.path.abspath(cfg.train_baseline)} if cfg.train_baseline else {}
        if cfg.train_baseline:
            runs['minillm (before)'] = runs['minillm']
        steps = {m: [] for m in runs}
        for r in range(cfg.train_repeats):
            for method, extra in (runs.items() if r % 2 == 0 or not trees else list(runs.items())[::-1]):
                argv = student + extra + [f'--out_dir={os.path.join(tmp, f"{method}{r}")}']
                if method in trees:
                    steps[method] += steps_in_tree(trees[method], argv, cfg.threads, os.path.join(tmp, f'{method}{r}.json'))
                    print(f"  {method} run {r}: {med([x['cpu'] for x in steps[method]]):.2f} s CPU per step")
                    continue
                with StepClock() as clock:
                    quiet_train(argv)
                steps[method] += clock.intervals()
                print(f"  {method} run {r}: {med([x['cpu'] for x in clock.intervals()]):.2f} s CPU per step")
    rows = ['| method | phase | CPU time (median) | wall time (median) | tokens | tokens/s: CPU (wall) | what is timed and counted |',
            '|---|---|---|---|---|---|---|']

    def row(method, phase, cpu, wall, tok, what):
        rows.append(f'| {method} | {phase} | {cpu * 1e3:.0f} ms | {wall * 1e3:.0f} ms | {tok:.0f} | '
                    f'{tok / cpu:,.0f} ({tok / wall:,.0f}) | {what} |')
    for method in ('sft', 'sft, padded', 'kd'):
        s = steps[method]
        row(method, 'step', med([x['cpu'] for x in s]), med([x['wall'] for x in s]),
            med([x.get('supervised tokens', 0) for x in s]), 'one step: forward + backward + AdamW'
            + (' + the teacher forward' if method == 'kd' else '')
            + ('; padded rows (`--pack=False`)' if 'padded' in method else '; packed rows') + '; response tokens')
    mc = configure(train.DEFAULTS, shlex.split(cfg.train_args) + shlex.split(cfg.minillm_args))
    per_rollout = mc.ppo_epochs * (mc.rollout_size // mc.batch_size)  # as train.py queues them
    phases = {}
    for method in [m for m in runs if m.startswith('minillm')]:
        s = steps[method]
        roll = [x for x in s if 'rollout' in x]
        if roll:
            r_tok = med([x['rollout tokens'] for x in roll])
            (r_wall, r_cpu), (g_wall, g_cpu) = ([med([x[k][c] for x in roll]) for c in (0, 1)] for k in ('rollout', 'generate'))
            phases[method, 'rollout'] = r_cpu
            row(method, 'rollout', r_cpu, r_wall, r_tok, f'one rollout phase (one per {per_rollout} updates): '
                'sampling + scoring; response tokens')
            row(method, '├ generation', g_cpu, g_wall, r_tok, '`GPT.generate` (teacher-mixed sampling, both KV caches)')
            row(method, '└ scoring', r_cpu - g_cpu, r_wall - g_wall, r_tok,
                'teacher and old-student forward, rewards, advantages')
        phases[method, 'update'] = med([x['cpu'] - x.get('rollout', [0, 0])[1] for x in s])
        row(method, 'update', phases[method, 'update'], med([x['wall'] - x.get('rollout', [0, 0])[0] for x in s]),
            med([x.get('update tokens', 0) + x.get('supervised tokens', 0) for x in s]),
            'one step minus any rollout in it: policy gradient + single-step KL (teacher forward) + L_PT, '
            'backward + AdamW; response + L_PT tokens')
    before = [f"- minillm {phase}: {phases['minillm (before)', phase] / phases['minillm', phase]:.2f}x faster than "
              f"before (CPU time, {phases['minillm (before)', phase] * 1e3:.0f} → {phases['minillm', phase] * 1e3:.0f} ms)"
              for phase in ('rollout', 'update') if ('minillm (before)', phase) in phases and ('minillm', phase) in phases]
    return '\n'.join([
        f'Student `{cfg.train_args}`, teacher `{cfg.teacher_args}` (one SFT step from random), minillm '
        f'`{cfg.minillm_args}` with L_PT; CPU, fp32. Medians over {cfg.train_repeats} runs × {cfg.train_iters - 1} '
        f'timed steps, methods interleaved.'
        + (f' "minillm (before)" is the same run in `{cfg.train_baseline}` (an older checkout); both minillm runs '
           'are fresh processes.' if cfg.train_baseline else ''), '', *rows] + (['', *before] if before else []))


def steps_in_tree(tree, argv, threads, report):
    """StepClock.intervals() of one train.main(argv) run in a fresh process whose imports come from `tree`
    (this checkout or an older one: its own StepClock and train.py)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import torch\n"
            "try:\n from scripts import timing\nexcept ImportError:\n import bench as timing  # a checkout from before scripts/\n"
            "threads = int(sys.argv[2]); threads and torch.set_num_threads(threads); clock = timing.StepClock(); "
            "clock.__enter__(); timing.quiet_train(json.loads(sys.argv[3])); clock.__exit__(); "
            "json.dump(clock.intervals(), open(sys.argv[4], 'w'))")
    res = subprocess.run([sys.executable, '-c', code, tree, str(threads), json.dumps(argv), report], cwd=tree,
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"train run in {tree} failed:\n{res.stderr[-2000:]}")
    with open(report) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- 4. distributed
def dist_child():
    """One torchrun rank: train.main with a step clock; writes its step times, its peak memory
    over the whole run, and its peak over the training steps after the first (set-up excluded)."""
    import train  # noqa: F401  (imported before the baseline is read)
    from torch.optim.optimizer import register_optimizer_step_post_hook
    report_dir, argv = sys.argv[1].split('=', 1)[1], sys.argv[2:]
    base, run_peak, step_peaks = memory_mib()[0], [0.0], []

    def at_step(*_):
        if not step_peaks:  # first step done: keep the peak so far, restart the high-water mark
            run_peak[0] = memory_mib()[1]
            reset_peak_memory()
        step_peaks.append(memory_mib()[1])
    hook = register_optimizer_step_post_hook(at_step)
    with StepClock() as clock:
        quiet_train(argv)
    hook.remove()
    with open(os.path.join(report_dir, f"rank{os.environ.get('RANK', '0')}.json"), 'w') as f:
        json.dump(dict(steps=clock.intervals(), base=base, peak=max(run_peak[0], memory_mib()[1]),
                       step_peak=step_peaks[-1]), f)


def bench_distributed(cfg):
    """Every (parallel, processes) runs twice: timed with the default allocator, and measured for
    memory with MALLOC_ENV (which slows the steps)."""
    import train
    batch = configure(train.DEFAULTS, shlex.split(cfg.dist_args)).batch_size
    results, command = {}, None
    with tempfile.TemporaryDirectory(prefix='bench_dist_') as tmp:
        argv = [f'--data_dir={toy_data(tmp)}', *TRAIN_FLAGS, f'--max_iters={cfg.dist_iters}', *shlex.split(cfg.dist_args)]
        for r in range(cfg.dist_repeats):
            for nproc in cfg.dist_nprocs:
                for par in cfg.dist_parallel.split(','):
                    for kind, extra_env in (('time', {}), ('memory', MALLOC_ENV)):
                        rep = os.path.join(tmp, f'{par}{nproc}_{kind}_{r}')
                        os.makedirs(rep)
                        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
                               'scripts/bench_train.py', f'--dist-child={rep}', *argv, f'--parallel={par}', f'--out_dir={rep}/out']
                        command = command or (' '.join(['python'] + [shlex.quote(c) for c in cmd[1:]])
                                              .replace(rep, '$TMP/RUN').replace(tmp, '$TMP')
                                              .replace(f'--nproc_per_node={nproc}', '--nproc_per_node=N')
                                              .replace(f'--parallel={par}', '--parallel=P'))
                        env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads or 1), **extra_env)
                        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                        if res.returncode:
                            err = [ln for ln in (res.stderr + res.stdout).splitlines() if 'rror' in ln] or [f'exit status {res.returncode}']
                            results.setdefault((par, nproc, kind), []).append(err[-1][:300])
                            print(f"  {par} x{nproc} ({kind}): failed: {err[-1][:300]}")
                            continue
                        ranks = [json.load(open(os.path.join(rep, f'rank{i}.json'))) for i in range(nproc)]
                        results.setdefault((par, nproc, kind), []).append(ranks)
                        print(f"  {par} x{nproc} ({kind}): {med([x['wall'] for x in ranks[0]['steps']]):.2f} s/step")
    rows = ['| parallel | processes | wall time per step: median (min–max) | CPU time per step, rank 0 | '
            'sequences/step (all ranks) | sequences/s (wall) | peak resident set per rank: whole run | '
            'peak resident set per rank: timed steps |', '|---|---|---|---|---|---|---|---|']
    ok = {key: [x for x in runs if not isinstance(x, str)] for key, runs in results.items()}
    base = max((r['base'] for runs in ok.values() for ranks in runs for r in ranks), default=0)
    for par, nproc in sorted({key[:2] for key in results}):
        timed, mem = ok.get((par, nproc, 'time'), []), ok.get((par, nproc, 'memory'), [])
        if timed:
            wall = [x['wall'] for ranks in timed for x in ranks[0]['steps']]
            cpu = med([x['cpu'] for ranks in timed for x in ranks[0]['steps']])
            cells = [spread(wall), f'{cpu:.2f} s', f'{batch * nproc}', f'{batch * nproc / med(wall):.2f}']
        else:
            cells = [f'not measured: {results[par, nproc, "time"][-1].replace("|", "/")}', '', '', '']
        for key in ('peak', 'step_peak'):
            cells.append(' / '.join(f"{max(ranks[i][key] for ranks in mem):.0f}" for i in range(nproc)) + ' MiB'
                         if mem else 'not measured')
        rows.append(f'| {par} | {nproc} | ' + ' | '.join(cells) + ' |')
    return '\n'.join([
        f'`{cfg.dist_args}` per rank, gloo, fp32, {cfg.threads or 1} thread per rank; {cfg.dist_iters} steps of '
        f'which the first is not timed; {cfg.dist_repeats} repeat(s). A rank holds {base:.0f} MiB after importing '
        f'torch and train.py.', '', *rows, '',
        f'Command (N in {{{",".join(map(str, cfg.dist_nprocs))}}}, P in {{{cfg.dist_parallel}}}, $TMP/RUN a fresh '
        f'directory; the memory runs add `{" ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())}` in front): '
        f'`{command}`'])


# ----------------------------------------------------------------------------- 5. on-policy steps
def bench_onpolicy(cfg):
    """GKD, DistiLLM and MiniLLM runs of train.main under the step clock of section 3, interleaved;
    each GKD / DistiLLM step is named by its data source from the run's log.jsonl (on_policy, fresh,
    replay), each MiniLLM step by whether it started a rollout phase."""
    with tempfile.TemporaryDirectory(prefix='bench_onpolicy_') as tmp:
        data, teacher = toy_data(tmp), os.path.join(tmp, 'teacher')
        common = [f'--data_dir={data}', f'--seed={cfg.seed}'] + TRAIN_FLAGS
        quiet_train(common + shlex.split(cfg.teacher_args) + ['--method=sft', '--max_iters=1', f'--out_dir={teacher}'])
        student = (common + shlex.split(cfg.train_args) + [f'--max_iters={cfg.train_iters}', f'--teacher={teacher}',
                                                          '--log_interval=1', '--eval_rouge_examples=0'])
        runs = {'gkd': ['--method=gkd', *shlex.split(cfg.onpolicy_gkd_args)],
                'distillm': ['--method=distillm', *shlex.split(cfg.onpolicy_distillm_args)],
                'minillm': ['--method=minillm', f'--pt_data_dir={data}', *shlex.split(cfg.minillm_args)]}
        steps = {m: [] for m in runs}
        for r in range(cfg.train_repeats):
            for method, extra in (runs.items() if r % 2 == 0 else reversed(list(runs.items()))):
                out = os.path.join(tmp, f'{method}{r}')
                with StepClock() as clock:
                    quiet_train(student + extra + [f'--out_dir={out}'])
                with open(os.path.join(out, 'log.jsonl')) as f:
                    logged = {row['iter']: row for row in map(json.loads, f) if 'loss' in row}
                for i, step in enumerate(clock.intervals()):  # interval i ends at optimizer step i + 2
                    row = logged[i + 2]
                    step['source'] = ('rollout step' if 'rollout' in step else 'update step') if method == 'minillm' else (
                        ('on-policy' if row['on_policy'] else 'gold') if method == 'gkd' else
                        'fresh' if row['fresh'] else 'replay' if row['replay'] else 'gold')
                    steps[method].append(step)
                print(f"  {method} run {r}: {med([x['cpu'] for x in clock.intervals()]):.2f} s CPU per step")
    rows = ['| method | step | steps timed | CPU time (median) | wall time (median) | of which `GPT.generate`, CPU | '
            'tokens with a loss | what the step does |', '|---|---|---|---|---|---|---|---|']
    what = {('gkd', 'on-policy'): 'sample the batch\'s responses from the student (KV cache), then JSD on them '
                                  '(teacher + student forward, backward, AdamW)',
            ('gkd', 'gold'): 'JSD on the gold responses: a kd step without CE',
            ('distillm', 'fresh'): 'sample the student, add the rows to the replay buffer, skew KL on them',
            ('distillm', 'replay'): 'skew KL on a batch drawn from the replay buffer (no generation)',
            ('distillm', 'gold'): 'skew KL on the gold responses',
            ('minillm', 'rollout step'): 'a rollout phase (teacher-mixed sampling, scoring) + one policy update',
            ('minillm', 'update step'): 'one policy update: PPO loss + single-step KL (teacher forward) + L_PT'}
    mean = {}
    for method, s in steps.items():
        mean[method] = (sum(x['cpu'] for x in s) / len(s), len(s))
        for source in dict.fromkeys(x['source'] for x in s):
            part = [x for x in s if x['source'] == source]
            tokens = med([x.get('supervised tokens', 0) + x.get('update tokens', 0) for x in part])
            rows.append(f"| {method} | {source} | {len(part)} | {med([x['cpu'] for x in part]) * 1e3:.0f} ms | "
                        f"{med([x['wall'] for x in part]) * 1e3:.0f} ms | "
                        f"{med([x.get('generate', [0, 0])[1] for x in part]) * 1e3:.0f} ms | {tokens:.0f} | "
                        f"{what[method, source]} |")
    return '\n'.join([
        f'Student `{cfg.train_args}`, teacher `{cfg.teacher_args}` (one SFT step from random); gkd '
        f'`{cfg.onpolicy_gkd_args}`, distillm `{cfg.onpolicy_distillm_args}`, minillm `{cfg.minillm_args}` with '
        f'L_PT; CPU, fp32. {cfg.train_repeats} runs × {cfg.train_iters - 1} timed steps per method, methods '
        f'interleaved; each step is named by its data source and medians are per source.', '', *rows, '',
        'Mean CPU time per timed step in these runs (the mix of sources above): '
        + ', '.join(f'{m} {t * 1e3:.0f} ms ({n} steps)' for m, (t, n) in mean.items()) + '.'])


if __name__ == '__main__' and len(sys.argv) > 1 and sys.argv[1].startswith('--dist-child='):
    dist_child()
