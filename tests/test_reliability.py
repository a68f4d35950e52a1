"""
Nothing hangs, nothing is lost, nothing surprises (issue 27): every bad input of the README's table
is one line and a non-zero exit before any work; a run never replaces another unasked; Ctrl-C saves
and resumes with one log row per iteration; a full filesystem (a real file-size limit) is one line
naming what is still whole; generation agrees on its step count with the other ranks; and the five
bugs the earlier tests let through (the KD temperature, the best record of ckpt.pt, GKD's coin,
ATKD's reverse KL, inf counted as non-finite) fail here. Generation under real FSDP / DDP ranks is in
test_distributed.py.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F

import kl
import onpolicy
import train
from components import checkpoint, cluster
from components import rundir
from components.checkpoint import atomic_save, checkpoint_payload, load_checkpoint
from components.rundir import truncate_log
from components.parallel import Runtime
from configurator import UserError, configure
from dataset import InstructSet
from model import GPT, GPTConfig
from sampling import generate
from supervised import supervised_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=8', '--eval_iters=1',
         '--log_interval=1', '--warmup_iters=0', '--device=cpu', '--dtype=float32', '--eval_rouge_examples=0']


def rows(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def small_model(seed=1):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=32))


@pytest.fixture(scope='module')
def finished_run(tiny_instruct, tmp_path_factory):
    """A finished 2-step sft run (ckpt.pt, best.pt, log.jsonl) that the refusals below must leave as it is."""
    out = str(tmp_path_factory.mktemp('finished') / 'run')
    train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=2', '--eval_interval=2'])
    return out


# ----------------------------------------------------------------------------- every bad input: one line
def bad_inputs(tmp, data, run):
    """(what the user gave, train.py argv, the message's start). The README's table lists these."""
    syntax, name_error = os.path.join(tmp, 'syntax.py'), os.path.join(tmp, 'name_error.py')
    with open(syntax, 'w') as f:
        f.write("max_iters = 10\nbatch_size = = 4\n")
    with open(name_error, 'w') as f:
        f.write("max_iters = 10\nbatch_size = undefined_name\n")
    text_ckpt, gguf = os.path.join(tmp, 'text', 'ckpt.pt'), os.path.join(tmp, 'model.pt')  # a GGUF under a .pt name
    os.makedirs(os.path.dirname(text_ckpt), exist_ok=True)
    with open(text_ckpt, 'w') as f:
        f.write("these are my notes, not a checkpoint\n")
    with open(gguf, 'wb') as f:
        f.write(b'GGUF\x03\x00\x00\x00' + bytes(64))
    blocker = os.path.join(tmp, 'a_file')
    open(blocker, 'w').close()
    base = SMALL + [f'--data_dir={data}', f'--out_dir={tmp}/new', '--max_iters=2']
    table = [
        ('--dtype=float8', base + ['--dtype=float8'], "unknown dtype 'float8': pick float32, bfloat16, float16"),
        ('--dtype=float16 on CPU', base + ['--dtype=float16'], "dtype='float16' needs CUDA"),
        ('--batch_size=0', base + ['--batch_size=0'], "batch_size must be > 0 (got 0)"),
        ('--eval_interval=0', base + ['--eval_interval=0'], "eval_interval must be > 0 (got 0)"),
        ('--max_iters=-5', base + ['--max_iters=-5'], "max_iters must be >= 0 (got -5)"),
        ('--learning_rate=-1', base + ['--learning_rate=-1'], "learning_rate must be >= 0"),
        ('--gen_top_p=0', base + ['--gen_top_p=0'], "gen_top_p must be in (0, 1]"),
        ('--kd_temperature=0', base + ['--kd_temperature=0'], "kd_temperature must be > 0"),
        ('--device=tpu', base + ['--device=tpu'], "unknown device 'tpu'"),
        ('a config file with a syntax error', [syntax] + base, f"{syntax}, line 2: syntax error"),
        ('a config file that raises', [name_error] + base, f"{name_error}, line 2: NameError"),
        ('a fresh run into a finished run', SMALL + [f'--data_dir={data}', f'--out_dir={run}', '--max_iters=2'],
         f"{run} holds another run (ckpt.pt, best.pt, log.jsonl): continue it with --init_from=resume"),
        ('resume with another method and architecture',
         SMALL + [f'--data_dir={data}', f'--out_dir={run}', '--init_from=resume', '--method=kd', '--n_layer=2',
                  f'--teacher={run}'],
         f"--init_from=resume: {run} was trained with method='sft', n_layer=1 but this config has method='kd', n_layer=2"),
        ('a text file named ckpt.pt', base + [f'--init_from={text_ckpt}'],
         f"{text_ckpt} is not a PyTorch checkpoint: it is a text file (it starts with 'these are my notes"),
        ('a GGUF file named .pt', base + [f'--init_from={gguf}'], f"{gguf} is not a PyTorch checkpoint: it is a GGUF file"),
        ('an out_dir below a file', SMALL + [f'--data_dir={data}', f'--out_dir={blocker}/run'],
         f"cannot write in {blocker}/run (Not a directory"),
        ('atkd with a divergence it has no form of', base + ['--method=kd', '--atkd=True', '--divergence=jsd'],
         "atkd=True takes divergence forward_kl or reverse_kl"),
    ]
    if not torch.cuda.is_available():
        table.append(('--device=cuda without CUDA', base + ['--device=cuda'], "device 'cuda' asked for but this machine has no CUDA GPU"))
    return table


def test_every_bad_input_is_one_line_before_any_work(tiny_instruct, finished_run, tmp_path):
    before = {name: os.path.getmtime(os.path.join(finished_run, name)) for name in os.listdir(finished_run)}
    for what, argv, message in bad_inputs(str(tmp_path), tiny_instruct, finished_run):
        with pytest.raises(UserError) as e:
            train.main(argv)
        assert str(e.value).startswith(message), (what, str(e.value))
        assert '\n' not in str(e.value), what
        assert not os.path.exists(tmp_path / 'new'), what  # nothing written
    assert {name: os.path.getmtime(os.path.join(finished_run, name)) for name in os.listdir(finished_run)} == before


def test_evaluate_checks_every_model_path_before_sampling(tiny_instruct, tmp_path, monkeypatch):
    import evaluate
    teacher = str(tmp_path / 'teacher')
    atomic_save(checkpoint_payload(small_model(), 'byte'), os.path.join(teacher, 'ckpt.pt'))
    monkeypatch.setattr(evaluate, 'sample_rollouts', lambda *a, **k: pytest.fail('sampled before checking the paths'))
    with pytest.raises(UserError, match=f"no checkpoint at {tmp_path}/nope: train it first"):
        evaluate.main([f'--models=kd={tmp_path}/nope', f'--teacher={teacher}', f'--data_dir={tiny_instruct}',
                       '--device=cpu', f'--out={tmp_path}/results'])


def test_evaluate_and_sample_check_where_they_write_before_sampling(tiny_instruct, tmp_path, monkeypatch):
    import evaluate
    import sample
    model = str(tmp_path / 'model')
    atomic_save(checkpoint_payload(small_model(), 'byte'), os.path.join(model, 'ckpt.pt'))
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    monkeypatch.setattr(evaluate, 'sample_rollouts', lambda *a, **k: pytest.fail('sampled before checking --out'))
    with pytest.raises(UserError, match=f"cannot write {blocker}/r/results.md / .json / .png in {blocker}/r \\(Not a"):
        evaluate.main([f'--models=m={model}', f'--data_dir={tiny_instruct}', '--device=cpu', f'--out={blocker}/r/results'])
    monkeypatch.setattr(sample, 'write_seqkd', lambda *a, **k: pytest.fail('sampled before checking --seqkd_out'))
    with pytest.raises(UserError, match=f"cannot write {blocker}/seqkd in {blocker} \\(Not a directory"):
        sample.main([f'--init_from={model}', f'--data_dir={tiny_instruct}', '--device=cpu', f'--seqkd_out={blocker}/seqkd'])


def test_bfloat16_on_cpu_is_honoured(tiny_instruct, tmp_path):
    """CPU autocast: the losses move off float32's (by bf16 rounding), not bit-identical as a silent fp32 run."""
    args = SMALL + [f'--data_dir={tiny_instruct}', '--max_iters=2', '--eval_interval=100']
    train.main(args + [f'--out_dir={tmp_path}/fp32'])
    train.main(args + [f'--out_dir={tmp_path}/bf16', '--dtype=bfloat16'])
    fp32, bf16 = ([r['loss'] for r in rows(tmp_path / d) if 'loss' in r] for d in ('fp32', 'bf16'))
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=2e-2)


# ----------------------------------------------------------------------------- never replace a run unasked
def test_overwrite_replaces_the_run_and_keeps_nothing_of_it(tiny_instruct, tmp_path):
    out = str(tmp_path / 'run')
    args = SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--eval_interval=100']
    train.main(args + ['--max_iters=3'])
    train.main(args + ['--max_iters=1', '--overwrite=True'])
    assert [r['iter'] for r in rows(out)] == [0, 1, 1]  # eval, step, final eval of the new run only
    assert load_checkpoint(os.path.join(out, 'last'))['iter_num'] == 1


def test_resume_refusal_names_only_the_keys_that_differ():
    with pytest.raises(UserError, match=r"was trained with n_embd=64 but this config has n_embd=32: resume"):
        rundir.check_resume(dict(method='kd', n_embd=32, learning_rate=1.0), dict(method='kd', n_embd=64,
                                                                                        learning_rate=2.0), 'out/x')
    rundir.check_resume(dict(method='kd', learning_rate=1.0), dict(method='kd', learning_rate=2.0), 'out/x')


# ----------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_saves_the_step_prints_the_resume_command_and_resumes_exactly(tiny_instruct, tmp_path, monkeypatch,
                                                                           capsys):
    """SIGINT during step 1 of 4 (evaluations at 0, 2, 4): the step finishes, iter 2 is evaluated and
    saved, the run exits 75 naming the resume command; a second Ctrl-C would end the process at once
    (SIGINT's default action is back). The resumed run's losses are the uninterrupted run's and its
    log has each iteration once."""
    args = SMALL + [f'--data_dir={tiny_instruct}', '--max_iters=4', '--eval_interval=2', '--dropout=0.1']
    full, half = str(tmp_path / 'full'), str(tmp_path / 'half')
    train.main(args + [f'--out_dir={full}'])
    get_lr, during = train.get_lr, []

    def ctrl_c(cfg, it):
        if it == 1 and not during:
            os.kill(os.getpid(), signal.SIGINT)
            during.append(signal.getsignal(signal.SIGINT))
        return get_lr(cfg, it)
    monkeypatch.setattr(train, 'get_lr', ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as e:
        train.main(args + [f'--out_dir={half}'])
    assert e.value.code == cluster.PREEMPTED_EXIT and during == [signal.SIG_DFL]
    assert signal.getsignal(signal.SIGINT) is before
    out = capsys.readouterr()
    assert f"iter 2: SIGINT received, the last state is in {half}/ckpt.pt" in out.out
    assert f"resume with: python train.py {' '.join(args)} --out_dir={half} --init_from=resume" in out.out
    assert 'Ctrl-C again to abort at once' in out.err
    monkeypatch.setattr(train, 'get_lr', get_lr)
    train.main(args + [f'--out_dir={half}', '--init_from=resume'])
    def untimed(out):
        return [{k: v for k, v in r.items() if k != 'tokens_per_s'} for r in rows(out)]
    assert untimed(half) == untimed(full)  # losses, val losses, lr: bit for bit, each row once
    keys = [(r['iter'], 'loss' in r) for r in rows(half)]
    assert len(keys) == len(set(keys)) == 4 + 3  # 4 steps, evaluations at 0, 2, 4


def test_resume_drops_the_log_rows_it_writes_again(tmp_path):
    """A run killed at iter 7 after its checkpoint of iter 5: rows after 5 and the evaluation of 5 go."""
    path = str(tmp_path / 'log.jsonl')
    written = [dict(iter=0, val_loss=3.0), dict(iter=5, loss=2.0), dict(iter=5, val_loss=2.5), dict(iter=6, loss=1.9),
               dict(iter=7, loss=1.8)]
    with open(path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in written)
    truncate_log(path, 5)
    assert [json.loads(line) for line in open(path)] == written[:2]


def test_a_failed_log_write_is_one_line_naming_the_file(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    with pytest.raises(UserError, match=f"could not append to {blocker}/log.jsonl \\(Not a directory\\): the "
                                        f"checkpoints in {blocker} are whole"):
        rundir.append_log(str(blocker / 'log.jsonl'), '{}')


# ----------------------------------------------------------------------------- a full filesystem, for real
def limited_run(argv, limit):
    """train.py in a subprocess whose files may not grow past `limit` bytes (RLIMIT_FSIZE: a write past
    it fails with EFBIG, Python ignores SIGXFSZ), as a full disk fails writes."""
    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, 'train.py', *argv], cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=limit_files, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)


def test_a_full_filesystem_is_one_line_and_the_previous_checkpoint_stays_whole(tiny_instruct, finished_run, tmp_path):
    out = str(tmp_path / 'run')
    shutil.copytree(finished_run, out)  # 2 steps done, ckpt.pt and best.pt written
    args = SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--eval_interval=2']
    saved = load_checkpoint(os.path.join(out, 'last'))
    size = os.path.getsize(os.path.join(out, 'ckpt.pt'))
    proc = limited_run(args + ['--max_iters=4', '--init_from=resume'], limit=size // 2)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: could not write {out}/"), proc.stderr[-3000:]
    name = lines[0].split(f"{out}/")[1].split(' ')[0]
    assert f"(File too large): the previous {out}/{name} is whole" in lines[0]
    again = load_checkpoint(os.path.join(out, 'last'))
    assert again['iter_num'] == saved['iter_num'] == 2
    assert all(torch.equal(again['model'][k], v) for k, v in saved['model'].items())
    assert sorted(os.listdir(out)) == ['best.pt', 'ckpt.pt', 'log.jsonl']  # no temp file, no lock left


# ----------------------------------------------------------------------------- ranks and their launcher
def test_a_rank_dies_with_its_launcher(tmp_path):
    """A launcher (here a plain parent) killed with SIGKILL takes its rank along (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith('linux'):
        pytest.skip('prctl is Linux only')
    child = "from components import cluster; import time; cluster.die_with_launcher(); print('ready', flush=True); time.sleep(120)"
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline() == 'ready\\n'
        print(p.pid, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, '-c', parent], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        rank = int(proc.stdout.readline())
        proc.kill()
        proc.wait()
        for _ in range(600):  # the kernel signals the child when the parent exits
            try:
                os.kill(rank, 0)
            except ProcessLookupError:
                break
            with open(f'/proc/{rank}/stat') as f:
                if f.read().split(')')[-1].split()[0] == 'Z':  # a zombie of init: dead
                    break
            time.sleep(0.05)
        else:
            os.kill(rank, signal.SIGKILL)
            pytest.fail('the rank outlived its launcher')
    finally:
        if proc.poll() is None:
            proc.kill()


# ----------------------------------------------------------------------------- the decoding agreement
def test_a_finished_rank_keeps_stepping_until_every_rank_is_done():
    """generate with all_done standing in for a rank that decodes 9 steps longer: this rank's tokens are
    those of a lone run, and it runs one forward per agreed step (idle ones after its own end)."""
    model = small_model(3)
    with torch.no_grad():
        model.lm_head.weight[256] += 3 * model.lm_head.weight.mean(0)  # rows end early and at scattered steps
    idx = torch.randint(0, 256, (4, 5), generator=torch.Generator().manual_seed(0))
    kw = dict(temperature=1.0, top_p=1.0, eos_id=256)
    alone = generate(model, idx, 20, generator=torch.Generator().manual_seed(1), **kw)
    own_steps = alone.shape[1] - 5
    calls, forwards = [], [0]
    model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))

    def other_rank_decodes_longer(finished, step):
        calls.append((finished, step))
        return finished and step >= own_steps + 9
    agreed = generate(model, idx, 20, generator=torch.Generator().manual_seed(1), all_done=other_rank_decodes_longer, **kw)
    assert torch.equal(agreed, alone)
    assert [s for _, s in calls] == list(range(own_steps + 10))  # asked before every step, the same step count
    assert forwards[0] == own_steps + 9 and sum(not f for f, _ in calls) == own_steps


# ----------------------------------------------------------------------------- the five bugs
def word_level_reference(cfg, model, teacher, x, y, kd_ratio):
    """(1 - r) CE + r mean_t D_tau(p_t || q_t), or ATKD's loss (batch split) in place of the mean, from
    the models' full logits and kl's per-position divergences: what supervised_loss must equal."""
    keep = y != -1
    s = model(x, head_fn=lambda h, w: h @ w.T)[keep]
    t = teacher(x)[keep] if teacher is not None else None
    ce = F.cross_entropy(s, y[keep])
    if t is None or kd_ratio == 0:
        return ce
    name = cfg.divergence or {'gkd': 'jsd', 'distillm': 'skew_forward_kl'}.get(cfg.method, 'forward_kl')
    if cfg.atkd:
        kd = kl.atkd_loss(s, t, y[keep], None, cfg.atkd_hard_fraction, cfg.atkd_lambda, reverse=name == 'reverse_kl',
                          temperature=cfg.kd_temperature)
    else:
        kw = dict(beta=cfg.gkd_beta) if name == 'jsd' else dict(alpha=cfg.skew_alpha) if name.startswith('skew') else {}
        kd = kl.DIVERGENCES[name](s, t, temperature=cfg.kd_temperature, **kw).mean()
    return (1 - kd_ratio) * ce + kd_ratio * kd


def test_every_divergence_and_temperature_reaches_every_methods_loss(tiny_instruct):
    """kd / seqkd (kd_ratio 0.5), gkd / distillm (the divergence alone), ATKD (forward and reverse) at
    kd_temperature 1 and 2, plain and chunked: supervised_loss equals the reference built from the logits."""
    data = InstructSet(tiny_instruct, 'train')
    x, y = data.sft_batch(list(range(6)), 32)
    student, teacher = small_model(1), small_model(2).requires_grad_(False)
    with torch.no_grad():  # a confident teacher: the KD term weighs as much as the CE (random models: 1e-5 of it)
        teacher.lm_head.weight.mul_(30)
    cases = [(m, d, False) for m in ('kd', 'seqkd', 'gkd', 'distillm') for d in ('',) + tuple(kl.DIVERGENCES)]
    cases += [(m, d, True) for m in ('kd', 'seqkd') for d in ('', 'forward_kl', 'reverse_kl')]
    seen = {}
    for method, divergence, atkd in cases:
        for tau in (1.0, 2.0):
            for chunked in (False, True):
                cfg = configure(train.DEFAULTS, [f'--method={method}', f'--divergence={divergence}', f'--atkd={atkd}',
                                                 f'--kd_temperature={tau}', '--atkd_split=batch', '--gkd_beta=0.3',
                                                 '--skew_alpha=0.2', '--device=cpu'])
                cfg.world_size, rt = 1, Runtime(chunked=chunked, eot=256)
                ratio = 1.0 if method in ('gkd', 'distillm') else cfg.kd_ratio
                got = supervised_loss(cfg, rt, student, teacher, x, y, ratio).item()
                want = word_level_reference(cfg, student, teacher, x, y, ratio).item()
                assert got == pytest.approx(want, rel=2e-5, abs=1e-7), (method, divergence, atkd, tau, chunked)
                seen[method, divergence, atkd, chunked, tau] = got
    for key, at_1 in seen.items():  # the temperature moves every loss (the tests would not see it ignored otherwise)
        if key[-1] == 1.0:
            assert abs(seen[key[:-1] + (2.0,)] - at_1) > 1e-5 * abs(at_1), key


def test_every_checkpoint_records_the_best_evaluation_so_far(tiny_instruct, tmp_path, monkeypatch):
    """Evaluations at every step: each ckpt.pt and best.pt written carries the best record of all the
    evaluations up to its iteration (never one behind), and best.pt holds that iteration's weights."""
    written, save = [], checkpoint.atomic_save

    def recording(obj, path):
        written.append((os.path.basename(path), obj['iter_num'], obj['best']))
        return save(obj, path)
    monkeypatch.setattr(checkpoint, 'atomic_save', recording)
    out = str(tmp_path / 'run')
    train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=6', '--eval_interval=1',
                        '--select_metric=val_loss', '--learning_rate=3e-2', '--lr_schedule=constant'])
    evals = {r['iter']: r['val_loss'] for r in rows(out) if 'val_loss' in r}
    assert {name for name, _, _ in written} == {'ckpt.pt', 'best.pt'}
    improvements = 0
    for name, it, best in written:
        so_far = {i: v for i, v in evals.items() if 0 < i <= it}
        first_best = min(so_far, key=lambda i: (so_far[i], i))
        assert best == dict(metric='val_loss', value=so_far[first_best], iter=first_best), (name, it)
        improvements += name == 'best.pt'
    assert 1 < improvements < 6  # the loss both improved and worsened along the way
    final = load_checkpoint(os.path.join(out, 'best.pt'))
    assert final['iter_num'] == final['best']['iter']


@pytest.mark.parametrize('lam', [0.25, 0.75])
def test_gkd_takes_student_samples_with_probability_lambda(lam, monkeypatch):
    """GKD, Algorithm 1: u ~ U(0, 1), on-policy when u <= λ. 4000 coins of the data generator: the
    on-policy share is λ within 4.5 standard deviations (1 - λ, the inverted coin, is 7 away)."""
    monkeypatch.setattr(onpolicy, 'sample_responses', lambda cfg, rt, model, *a: model)
    cfg = configure(train.DEFAULTS, ['--method=gkd', f'--gkd_lambda={lam}', '--device=cpu'])
    gen, n = torch.Generator().manual_seed(0), 4000
    on = [onpolicy.gkd_responses(cfg, Runtime(), 'student', 'teacher', None, None, gen, None) for _ in range(n)]
    assert all(r == ('student', True) or r == (None, False) for r in on)
    share = sum(p for _, p in on) / n
    assert abs(share - lam) < 4.5 * (lam * (1 - lam) / n) ** 0.5, share


def test_distillm_sources_take_their_probabilities():
    """DistiLLM's coin on a uniform grid of r: with phi = 0.4 at t/T = 1/4 and a full buffer, fresh
    phi (1 - t/T) = 0.3, replay 0.1, gold 0.6; with room in the buffer, fresh 0.4 and gold 0.6."""
    n = 10000
    grid = [(i + 0.5) / n for i in range(n)]
    for buffer_len, want in ((100, dict(fresh=0.3, replay=0.1, gold=0.6)), (10, dict(fresh=0.4, replay=0.0, gold=0.6))):
        picks = [onpolicy.sgo_choice(r, 0.4, 25, 100, buffer_len, 100) for r in grid]
        assert {k: picks.count(k) / n for k in want} == pytest.approx(want, abs=1e-9), buffer_len


@pytest.mark.parametrize('value', [float('inf'), float('-inf'), float('nan')])
def test_inf_and_nan_are_both_non_finite(value):
    cfg = configure(train.DEFAULTS, ['--device=cpu'])
    cfg.world_size = 1
    assert cluster.nonfinite_terms(cfg, dict(loss=torch.tensor(value), grad_norm=torch.tensor(1.0))) == ['loss']
    assert cluster.nonfinite_terms(cfg, dict(loss=1.0, grad_norm=torch.tensor(value), kl=0.5)) == ['grad_norm']


def test_an_inf_gradient_norm_skips_the_step(tiny_instruct, tmp_path, monkeypatch):
    """One gradient entry inf at step 3 (the loss finite): the step is skipped, no weight turns NaN."""
    clip, calls = torch.nn.utils.clip_grad_norm_, [0]

    def inf_on_third(params, *args, **kwargs):
        params = list(params)
        calls[0] += 1
        if calls[0] == 3:
            params[0].grad.view(-1)[0] = float('inf')
        return clip(params, *args, **kwargs)
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', inf_on_third)
    out = str(tmp_path / 'inf')
    train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--max_iters=4', '--eval_interval=100'])
    assert [r.get('skipped_steps') for r in rows(out) if 'loss' in r] == [None, None, 1, 1]
    state = load_checkpoint(os.path.join(out, 'last'))
    assert all(torch.isfinite(v).all() for v in state['model'].values())
