"""
Timing and memory helpers shared by the benchmarks (bench.py, bench_minillm.py): interleaved runs,
medians with their spread, the resident set of this process, and StepClock, which times every
optimizer step of one train.py run and the functions a step is made of.
"""
import contextlib
import io
import statistics
import time

# glibc mmaps every block over 128 KiB and unmaps it on free (its default threshold adapts up to
# 32 MiB and keeps smaller freed blocks), so that the resident set follows the live tensors
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '131072'}


def interleaved(variants, repeats):
    """{name: fn} -> {name: {'wall': [s], 'cpu': [s]}}, in rounds A B C, C B A, A B C, ... so that
    bursts of load and slow drifts land on every variant alike. `repeats`: a count or {name: count}
    (a variant with fewer repeats sits out the later rounds). CPU time is `time.process_time`."""
    counts = repeats if isinstance(repeats, dict) else dict.fromkeys(variants, repeats)
    times = {name: dict(wall=[], cpu=[]) for name in variants}
    for r in range(max(counts.values())):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            if r < counts[name]:
                w0, c0 = time.perf_counter(), time.process_time()
                variants[name]()
                times[name]['cpu'].append(time.process_time() - c0)
                times[name]['wall'].append(time.perf_counter() - w0)
    return times


med = statistics.median
VERDICT = {True: '**PASS**', False: '**MISS**'}


def spread(xs, digits=2):
    """'median s (min–max)': the spread shows how much the machine's load moved the numbers."""
    return f'{med(xs):.{digits}f} s ({min(xs):.{digits}f}–{max(xs):.{digits}f})'


def memory_mib():
    """(resident set now, its high-water mark) of this process in MiB, from /proc/self/status.
    Not ru_maxrss: Linux carries that over fork + exec from the parent process."""
    with open('/proc/self/status') as f:
        kb = {k: int(v.split()[0]) for k, v in (line.split(':', 1) for line in f) if k in ('VmRSS', 'VmHWM')}
    return kb['VmRSS'] / 1024, kb['VmHWM'] / 1024


def reset_peak_memory():
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # the high-water mark restarts from the current resident set (Linux >= 4.0)


def now():
    return time.perf_counter(), time.process_time()


class StepClock:
    """For one train.main run: (wall, CPU) time of every optimizer step, plus time and token counts
    of the functions that make up a step (wrapped where the method sources look them up, undone on exit)."""

    def __init__(self):
        self.steps, self.spans, self._undo = [], [], []

    def __enter__(self):
        import onpolicy
        import rollout
        import supervised
        from components import validation
        from torch.optim.optimizer import register_optimizer_step_post_hook
        self._undo.append(register_optimizer_step_post_hook(lambda *_: self.steps.append(now())).remove)
        self._wrap(rollout, 'collect_rollouts', 'rollout', lambda args, out: out['mask'].sum().item())
        self._wrap(onpolicy, 'sample_responses', 'sample', lambda args, out: sum(len(r) for r in out))  # gkd, distillm
        for module in (rollout, onpolicy, validation):  # sampling.generate, where each looks it up
            self._wrap(module, 'generate', 'generate', lambda args, out: 0)
        self._wrap(rollout, 'minillm_micro_loss', 'update', lambda args, out: float(out[1]))
        # supervised_loss(cfg, rt, model, teacher, x, y, ...): the tokens with a loss (y != -1), the
        # same count whether the batch is packed or padded; wrapped where each method source looks it up
        for module in (supervised, onpolicy, rollout):
            self._wrap(module, 'supervised_loss', 'supervised', lambda args, out: (args[5] != -1).sum().item())
        return self

    def _wrap(self, owner, name, label, count):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = now()
            out = original(*args, **kwargs)
            self.spans.append((label, t0, [b - a for a, b in zip(t0, now())], count(args, out)))
            return out
        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def __exit__(self, *exc):
        for undo in reversed(self._undo):
            undo()

    def intervals(self):
        """Per step after the first (whose start is unmarked: set-up and the first eval):
        {'wall': s, 'cpu': s, label: [wall s, CPU s] spent inside, label + ' tokens': count}."""
        out = []
        for a, b in zip(self.steps, self.steps[1:]):
            step = dict(wall=b[0] - a[0], cpu=b[1] - a[1])
            for label, t0, dt, n in self.spans:
                if a[0] <= t0[0] < b[0]:
                    inside = step.setdefault(label, [0.0, 0.0])
                    inside[0], inside[1] = inside[0] + dt[0], inside[1] + dt[1]
                    step[label + ' tokens'] = step.get(label + ' tokens', 0) + n
            out.append(step)
        return out


def quiet_train(argv):
    import train
    with contextlib.redirect_stdout(io.StringIO()):
        return train.main(argv)
