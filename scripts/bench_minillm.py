"""
bench.py's section `trl`: one MiniLLM step of train.py against the distillation trainers of TRL,
on TRL's test shapes (issue 15), in one run, interleaved.

    pip install --target /tmp/trl114 trl==1.14.2 --no-deps   # the last release with MiniLLMTrainer
    pip install --target /tmp/trl116 trl==1.16.0 --no-deps   # the current one: GKDTrainer, DistillationTrainer
    pip install --target /tmp/trl_deps accelerate psutil --no-deps
    python scripts/bench.py --only=trl

Both sides train the same random GPT-2-shaped pair (student 2 layers / 2 heads / d 128, teacher
4 / 4 / 256, vocabulary 50257, block 512): ours built here and exported with hf.export_hf, TRL
loading the export with transformers. The prompts are the same token ids on both sides: 8 Alpaca
prompts of about 62 tokens, written as our instruction data with the GPT-2 tokenizer and given to
TRL as text with the exported tokenizer (hf's export test: transformers' tokenizer from those files
gives our ids). Every step samples one response of up to 32 tokens per prompt at temperature 1,
top-k 0, top-p 1 and takes one optimizer step on it: ours with rollout_size = rollout_batch_size =
batch_size = 8 and ppo_epochs = 1, no L_PT; TRL with per_device_train_batch_size 8 and one
generation per prompt. TRL is a bench-only dependency: each TRL run is a child process with its
target directory first on sys.path, since two TRL versions cannot share one process.

A step is the time between two optimizer steps (torch's global optimizer step hook, the same clock
on both sides); the first step of each run (set-up) is not timed. Variants run in rounds A B C ..,
.. C B A, each round a fresh process per variant.
"""
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the project's modules

from configurator import UserError  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"   # GKD's collator needs one: the text as is

# name: (trainer, what it is)
VARIANTS = {
    'ours, α = 0': ('ours', 'train.py --method=minillm --teacher_mix_alpha=0 (student-only sampling, as TRL)'),
    'ours, α = 0.2': ('ours', 'train.py --method=minillm --teacher_mix_alpha=0.2 (the paper\'s teacher-mixed sampling)'),
    'TRL MiniLLMTrainer': ('minillm', 'trl.experimental.minillm.MiniLLMTrainer (single-step decomposition, '
                                      'reverse-KL advantage, length normalisation: its defaults)'),
    'TRL GKDTrainer': ('gkd', 'trl.experimental.gkd.GKDTrainer, lmbda = 1 (on-policy), beta = 1 (reverse KL)'),
    'TRL DistillationTrainer': ('distillation', 'trl.DistillationTrainer, beta = 1 (reverse KL), on-policy'),
}


def prompt_texts(n, target_tokens, seed):
    """n Alpaca prompts of about target_tokens GPT-2 tokens: toy-task questions as the instruction,
    more of them as the input until the prompt is long enough. (prompt, response) pairs."""
    from data.common import alpaca_prompt
    from data.toy_instruct.task import generate
    from components.tokenizer import get_encoding
    enc, pool = get_encoding('gpt2'), generate('train', 8 * n, seed)
    pairs = []
    for i in range(n):
        head, extra = pool[i], pool[n + i * 7:n + i * 7 + 7]
        context = []
        while extra and len(enc.encode_ordinary(alpaca_prompt(head['prompt'], '\n'.join(context)))) < target_tokens - 6:
            context.append(extra.pop(0)['prompt'].replace('\n', ' '))
        pairs.append((alpaca_prompt(head['prompt'], '\n'.join(context)), head['response']))
    return pairs


def build_setup(cfg, tmp):
    """Random student and teacher exported as Hugging Face GPT-2 directories, and our instruction
    data of the same prompts (GPT-2 tokenizer). Returns dirs and the prompt pairs."""
    from components import hf
    from data.common import write_instruct_split, write_meta
    from model import GPT, GPTConfig
    dirs = {}
    for name, spec, seed in (('student', cfg.trl_student, cfg.seed), ('teacher', cfg.trl_teacher, cfg.seed + 1)):
        n_layer, n_head, n_embd = map(int, spec.split(','))
        torch.manual_seed(seed)
        model = GPT(GPTConfig(block_size=cfg.trl_block_size, vocab_size=50257, n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd))
        dirs[name] = hf.export_hf(model, 'gpt2', os.path.join(tmp, name))
    pairs = prompt_texts(cfg.trl_prompts, cfg.trl_prompt_tokens, cfg.seed)
    dirs['data'] = os.path.join(tmp, 'data')
    os.makedirs(dirs['data'])
    examples = [dict(prompt=p, response=r, references=[r]) for p, r in pairs]
    for split in ('train', 'valid'):
        write_instruct_split(dirs['data'], split, examples, 'gpt2')
    write_meta(dirs['data'], 'instruct', 'gpt2', block_size=cfg.trl_block_size)
    return dirs, pairs


# the flags every timed train.py run of ours takes: no evaluation, no logging, no checkpoints, a constant rate
QUIET_RUN = ['--device=cpu', '--eval_interval=1000000', '--eval_iters=1', '--eval_rouge_examples=0',
             '--log_interval=1000000', '--warmup_iters=0', '--lr_schedule=constant', '--learning_rate=1e-5',
             '--always_save_checkpoint=False']
SAMPLING = ['--gen_temperature=1.0', '--gen_top_k=0', '--gen_top_p=1.0']  # τ = 1 over the full vocabulary, as TRL


def check_dtype(dtype):
    if dtype not in ('float32', 'bfloat16'):
        raise UserError(f"trl_dtype={dtype!r}: pick float32 or bfloat16 (both sides: our dtype=bfloat16 autocast, "
                        f"TRL's bf16=True, fp32 master weights and a bf16 teacher on both)")
    return dtype


def ours_argv(cfg, dirs, alpha, out_dir):
    return ['--method=minillm', f"--init_from={dirs['student']}", f"--teacher={dirs['teacher']}",
            f"--data_dir={dirs['data']}", f'--dtype={check_dtype(cfg.trl_dtype)}', f'--seed={cfg.seed}',
            f'--rollout_size={cfg.trl_prompts}', f'--rollout_batch_size={cfg.trl_prompts}',
            f'--batch_size={cfg.trl_prompts}', '--ppo_epochs=1', f'--max_new_tokens={cfg.trl_new_tokens}',
            f'--teacher_mix_alpha={alpha}', *SAMPLING, *QUIET_RUN, f'--max_iters={cfg.trl_steps}',
            f'--out_dir={out_dir}', *shlex.split(cfg.trl_ours_args)]


def trl_spec(cfg, trainer, dirs, pairs, out_dir, steps, new_tokens, dtype, prompt_ids=None):
    """What a TRL child needs (JSON): its sys.path entries, trainer, models, prompts, step count, dtype
    and, when given, the prompt token ids of our data (the child checks that its tokenizer gives them)."""
    target = cfg.trl_minillm_dir if trainer == 'minillm' else cfg.trl_current_dir
    return dict(trainer=trainer, paths=[target] + [p for p in cfg.trl_deps_dirs.split(',') if p], seed=cfg.seed,
                student=dirs['student'], teacher=dirs['teacher'], pairs=pairs, steps=steps, batch=len(pairs),
                new_tokens=new_tokens, out_dir=out_dir, dtype=check_dtype(dtype), prompt_ids=prompt_ids)


def step_clock():
    """[(wall, CPU)] at every optimizer step of this process."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    marks = []
    register_optimizer_step_post_hook(lambda *_: marks.append((time.perf_counter(), time.process_time())))
    return marks


def intervals(marks):
    return [dict(wall=b[0] - a[0], cpu=b[1] - a[1]) for a, b in zip(marks, marks[1:])]


def ours_child(argv, report):
    """One train.py run (timing.StepClock: steps and phases); its step times go to `report`."""
    from scripts import timing
    with timing.StepClock() as clock:
        timing.quiet_train(argv)
    with open(report, 'w') as f:
        json.dump(dict(steps=clock.intervals(), version='this tree', threads=torch.get_num_threads()), f)


def trl_child(spec, report):
    """One TRL trainer run on the spec's models and prompts; to `report`: step times, generated tokens,
    the dtypes that both models' matmuls gave (what autocast made of them), the student's weights.
    bfloat16: the student in fp32 under TrainingArguments' bf16=True (accelerate's CPU autocast), the
    frozen teacher loaded in bf16, as ours. With spec['prompt_ids'], the trainer's prompt ids are checked."""
    sys.path[:0] = spec['paths']
    os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
    import datasets
    import transformers
    import trl
    tok = transformers.AutoTokenizer.from_pretrained(spec['student'])
    tok.pad_token, tok.padding_side, tok.chat_template = tok.eos_token, 'left', CHAT_TEMPLATE
    prompts = [p for p, _ in spec['pairs']]

    def check_ids(theirs):  # TRL tokenizes the prompt text itself: it must give our data's ids
        bad = [i for i, (a, b) in enumerate(zip(theirs, spec['prompt_ids'])) if list(a) != list(b)]
        if bad:
            raise RuntimeError(f"prompt {bad[0]}: {spec['trainer']}'s tokenization gives {len(theirs[bad[0]])} ids, "
                               f"our data {len(spec['prompt_ids'][bad[0]])}, not the same ids ({len(bad)} prompts differ)")
    if spec.get('prompt_ids') is not None:
        check_ids(tok(prompts)['input_ids'])  # what MiniLLMTrainer (GRPO's) and DistillationTrainer do
    bf16 = spec.get('dtype', 'float32') == 'bfloat16'
    student = transformers.AutoModelForCausalLM.from_pretrained(spec['student'], dtype=torch.float32)
    teacher = transformers.AutoModelForCausalLM.from_pretrained(spec['teacher'],
                                                                dtype=torch.bfloat16 if bf16 else torch.float32)
    matmuls = {'student': set(), 'teacher': set()}  # the output dtype of each model's first Linear (block 0)
    for name, m in (('student', student), ('teacher', teacher)):
        next(x for x in m.modules() if isinstance(x, torch.nn.Linear)).register_forward_hook(
            lambda mod, args, out, name=name: matmuls[name].add(str(out.dtype).removeprefix('torch.')))
    generated = []
    original = transformers.GenerationMixin.generate

    def counting_generate(self, *args, **kwargs):  # sampled tokens, each row's up to its first eos (included)
        out = original(self, *args, **kwargs)
        seqs = out if torch.is_tensor(out) else out.sequences
        prompt = kwargs.get('input_ids', args[0] if args else None)
        new = seqs[:, prompt.shape[1] if prompt is not None else 0:]
        is_eos = (new == tok.eos_token_id).int()
        ended = is_eos.any(1)
        generated.append(int(torch.where(ended, is_eos.argmax(1) + 1, new.shape[1]).sum()))
        return out
    transformers.GenerationMixin.generate = counting_generate
    common = dict(output_dir=spec['out_dir'], per_device_train_batch_size=spec['batch'], learning_rate=1e-5,
                  lr_scheduler_type='constant', max_steps=spec['steps'], logging_steps=10 ** 6, save_strategy='no',
                  report_to=[], use_cpu=True, bf16=bf16, seed=spec['seed'], dataloader_num_workers=0,
                  disable_tqdm=True)
    if spec['trainer'] == 'minillm':
        from trl.experimental.minillm import MiniLLMConfig, MiniLLMTrainer
        args = MiniLLMConfig(num_generations=1, max_completion_length=spec['new_tokens'], temperature=1.0, top_k=0,
                             top_p=1.0, **common)
        trainer = MiniLLMTrainer(model=student, teacher_model=teacher, args=args, processing_class=tok,
                                 train_dataset=datasets.Dataset.from_dict({'prompt': prompts}))
    elif spec['trainer'] == 'gkd':
        from trl.experimental.gkd import GKDConfig, GKDTrainer
        args = GKDConfig(lmbda=1.0, beta=1.0, max_new_tokens=spec['new_tokens'], temperature=1.0, **common)
        messages = [[dict(role='user', content=p), dict(role='assistant', content=r)] for p, r in spec['pairs']]
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, processing_class=tok,
                             train_dataset=datasets.Dataset.from_dict({'messages': messages}))
        if spec.get('prompt_ids') is not None:  # its collator's prompts, from the chat template's rendering
            batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(messages))])
            check_ids([row[m.bool()].tolist() for row, m in zip(batch['prompts'], batch['prompt_attention_mask'])])
    else:
        args = trl.DistillationConfig(beta=1.0, max_completion_length=spec['new_tokens'], temperature=1.0, top_k=0,
                                      top_p=1.0, **common)
        trainer = trl.DistillationTrainer(model=student, teacher_model=teacher, args=args, processing_class=tok,
                                          train_dataset=datasets.Dataset.from_dict({'prompt': prompts}))
    marks = step_clock()
    trainer.train()
    with open(report, 'w') as f:
        json.dump(dict(steps=intervals(marks), version=f'trl {trl.__version__} (transformers {transformers.__version__})',
                       generated=generated, threads=torch.get_num_threads(),
                       matmuls={k: sorted(v) for k, v in matmuls.items()},
                       weights=sorted({str(p.dtype).removeprefix('torch.') for p in student.parameters()})), f)


def run_child(threads, kind, payload, tmp, tag, keep_freed=True):
    """A fresh process for one run (`threads` per process; 0 = torch's default); returns its report
    or the last error line. keep_freed: glibc keeps freed memory for reuse in the child, ours or TRL's
    (precision.KEEP_FREED_ENV, what train.py does itself on a CPU: precision.keep_freed_memory); False:
    glibc's defaults for TRL, ours as it ships."""
    from components.precision import KEEP_FREED_ENV
    report = os.path.join(tmp, f'{tag}.json')
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from scripts import bench_minillm; import json; "
            f"bench_minillm.{kind}_child(json.loads(sys.argv[1]), sys.argv[2])")
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE='1', TOKENIZERS_PARALLELISM='false',
               **(KEEP_FREED_ENV if keep_freed else {}))
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    else:  # torch's default: as many threads as cores
        env.pop('OMP_NUM_THREADS', None)
    res = subprocess.run([sys.executable, '-c', code, json.dumps(payload), report], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if res.returncode:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        return dict(error=next((ln for ln in reversed(lines) if 'Error' in ln), lines[-1] if lines else '?')[:300])
    with open(report) as f:
        return json.load(f)


def malloc_note(keep_freed):
    """How the children's glibc treats freed memory (run_child), for the tables' set-up line."""
    from components.precision import KEEP_FREED_ENV
    return (f"glibc keeps freed memory in every child ({' '.join(f'{k}={v}' for k, v in KEEP_FREED_ENV.items())})"
            if keep_freed else "TRL under glibc's default malloc, ours as it ships (train.py keeps freed memory itself)")


def run_rounds(names, repeats, launch):
    """Rounds A B C .., .. C B A, ..: launch(name, round) -> a child's report, each a fresh process.
    {name: [report]}; every run's median step is printed as it ends."""
    from scripts.timing import med
    results = {n: [] for n in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            rep = launch(name, r)
            results[name].append(rep)
            shown = rep.get('error') or f"{med([s['wall'] for s in rep['steps']]):.2f} s/step"
            print(f"  round {r} {name}: {shown}", flush=True)
    return results


def step_times(results):
    """The runs that ended, and their steps' wall and CPU seconds pooled per variant."""
    ok = {n: [x for x in runs if 'steps' in x] for n, runs in results.items()}
    wall = {n: [s['wall'] for x in runs for s in x['steps']] for n, runs in ok.items() if runs}
    cpu = {n: [s['cpu'] for x in runs for s in x['steps']] for n, runs in ok.items() if runs}
    return ok, wall, cpu


def tokens_per_step(report_runs, ours):
    """Tokens sampled per step, each row's up to its first eos (included): our rollout's or sampler's
    count (timing.StepClock), TRL's from its generate calls (per call: the first step's included)."""
    from scripts.timing import med
    if ours:
        return f"{med([s.get('rollout tokens', s.get('sample tokens', 0)) for x in report_runs for s in x['steps']]):.0f}"
    gen = report_runs[0].get('generated')
    return f"{med(gen):.0f}" if gen else ''


def phase_line(name, runs):
    """Where one of our variant's steps goes (timing.StepClock's spans), or None."""
    from scripts.timing import med
    steps = [s for x in runs for s in x['steps']]
    if not steps:
        return None
    parts = {k: med([s[k][0] for s in steps if k in s]) for k in ('generate', 'rollout', 'update') if
             any(k in s for s in steps)}
    if 'rollout' not in parts:  # gkd / distillm: sampling, then the divergence step
        return f"- {name}: generation {parts.get('generate', 0):.2f} s of the step (wall, median)"
    return (f"- {name}: generation {parts.get('generate', 0):.2f} s, scoring "
            f"{parts.get('rollout', 0) - parts.get('generate', 0):.2f} s, update (policy loss, "
            f"backward, AdamW) {parts.get('update', 0):.2f} s of the step (wall, medians)")


def bench_trl(cfg):
    """The `trl` section of BENCHMARKS.md."""
    from scripts.timing import VERDICT, med
    names = [n for n in VARIANTS if VARIANTS[n][0] in cfg.trl_variants.split(',') or n in cfg.trl_variants.split(',')]
    with tempfile.TemporaryDirectory(prefix='bench_trl_') as tmp:
        dirs, pairs = build_setup(cfg, tmp)

        def launch(name, r):
            kind, tag = VARIANTS[name][0], f"{VARIANTS[name][0]}{name[-1]}_{r}"
            out = os.path.join(tmp, tag)
            if kind == 'ours':
                return run_child(cfg.trl_threads, 'ours', ours_argv(cfg, dirs, name.split('= ')[1], out), tmp, tag, cfg.trl_keep_freed)
            spec = trl_spec(cfg, kind, dirs, pairs, out, cfg.trl_steps, cfg.trl_new_tokens, cfg.trl_dtype)
            return run_child(cfg.trl_threads, 'trl', spec, tmp, tag, cfg.trl_keep_freed)
        results = run_rounds(names, cfg.trl_repeats, launch)
    from components.tokenizer import get_encoding
    lengths = [len(get_encoding('gpt2').encode_ordinary(p)) for p, _ in pairs]
    ok, wall, cpu = step_times(results)
    base = 'TRL MiniLLMTrainer'
    rows = ['| trainer | version | s / step, wall: median (min–max) | CPU s / step | tokens generated / step | '
            f'vs {base}: wall (CPU) | what runs |', '|---|---|---|---|---|---|---|']
    for n in names:
        if n not in wall:
            err = next((x['error'] for x in results[n] if 'error' in x), 'no run')
            rows.append(f"| {n} | | not measured: {err.replace('|', '/')} | | | | {VARIANTS[n][1]} |")
            continue
        vs = (f"{med(wall[base]) / med(wall[n]):.2f}x ({med(cpu[base]) / med(cpu[n]):.2f}x)" if base in wall else '')
        rows.append(f"| {n} | {ok[n][0]['version']} | {med(wall[n]):.2f} s ({min(wall[n]):.2f}–{max(wall[n]):.2f}) | "
                    f"{med(cpu[n]):.2f} s | {tokens_per_step(ok[n], VARIANTS[n][0] == 'ours')} | {vs} | {VARIANTS[n][1]} |")
    verdicts = []
    for ours, theirs, target in (('ours, α = 0', base, 2.5), ('ours, α = 0.2', base, 2.0),
                                 ('ours, α = 0', 'TRL GKDTrainer', 2.0)):
        if ours in wall and theirs in wall:
            ratio = med(wall[theirs]) / med(wall[ours])
            verdicts.append(f"- {ours} vs {theirs}: {ratio:.2f}x per step, wall (target ≥ {target:g}x): "
                            f"{VERDICT[ratio >= target]}")
    phases = [line for n in ('ours, α = 0', 'ours, α = 0.2') if (line := phase_line(n, ok.get(n, [])))]
    threads = '/'.join(map(str, sorted({x.get('threads') for runs in ok.values() for x in runs})))
    return '\n'.join([
        f'Student {cfg.trl_student.replace(",", "/")} (layers/heads/d), teacher {cfg.trl_teacher.replace(",", "/")}, '
        f'GPT-2 vocabulary 50257, block {cfg.trl_block_size}, random weights, {cfg.trl_dtype} on CPU, {threads} thread(s) per '
        f'process ({"set" if cfg.trl_threads else "torch default"}); {malloc_note(cfg.trl_keep_freed)}; {cfg.trl_prompts} prompts of '
        f'{min(lengths)}–{max(lengths)} tokens (mean {statistics.mean(lengths):.1f}), up to {cfg.trl_new_tokens} new '
        f'tokens each at τ = 1, top-k 0, top-p 1, one optimizer step per batch. {cfg.trl_steps} steps per run, the '
        f'first not timed; {cfg.trl_repeats} interleaved rounds, a fresh process per run; medians over '
        f'{cfg.trl_repeats * (cfg.trl_steps - 1)} steps. Ours: `{" ".join(ours_argv(cfg, dict(student="S", teacher="T", data="D"), "A", "OUT"))}`.',
        '', *rows, '', *verdicts, '', *phases])


# ----------------------------------------------------------------------------- 7. the update loss, plain vs chunked
def update_inputs(cfg):
    """The MiniLLM update's inputs at GPT-2 vocabulary: student hidden states and lm_head (trained),
    teacher hidden states and head, sampled tokens, and rollout log-probs (q_old off the current
    policy by noise, so that ratios and clipping are not trivial)."""
    g = torch.Generator().manual_seed(cfg.seed)
    B, T, d, V = cfg.update_rows, cfg.update_tokens, cfg.update_dim, cfg.loss_vocab
    hidden = torch.randn(B, T, d, generator=g).requires_grad_()
    head = torch.randn(V, d, generator=g).mul_(0.02).requires_grad_()
    t_hidden, t_head = torch.randn(B, T, d, generator=g), torch.randn(V, d, generator=g).mul_(0.02)
    tokens = torch.randint(V, (B, T), generator=g)
    with torch.no_grad():  # row by row: no [B, T, V] array exists before the measured pass
        lp_q, lp_p = (torch.stack([torch.log_softmax(h[b] @ w.T, -1).gather(-1, tokens[b, :, None]).squeeze(-1)
                                   for b in range(B)]) for h, w in ((hidden, head), (t_hidden, t_head)))
    old = lp_q + 0.2 * torch.randn(B, T, generator=g)
    mix = torch.logaddexp(old + torch.log(torch.tensor(0.8)), lp_p + torch.log(torch.tensor(0.2)))
    return dict(hidden=hidden, head=head, t_hidden=t_hidden, t_head=t_head, tokens=tokens, old=old, lp_p=lp_p, mix=mix,
                mask=torch.ones(B, T, dtype=torch.bool))


def update_step(variant, x):
    """One forward + backward of the MiniLLM loss (single-step term, α = 0.2 weights, clipping):
    'plain' as rollout.minillm_micro_loss computed it before chunking ([B, T, V] student logits with
    autograd, teacher logits from its head), 'chunked-C' pg.chunked_minillm_loss(chunk_size=C)."""
    import policy_gradient as pg
    x['hidden'].grad = x['head'].grad = None
    if variant == 'plain':
        logits = x['hidden'] @ x['head'].T
        with torch.no_grad():
            t_logits = x['t_hidden'] @ x['t_head'].T
        logp = torch.log_softmax(logits, -1).gather(-1, x['tokens'][..., None]).squeeze(-1)
        loss, _ = pg.minillm_loss(logp, x['old'], x['lp_p'], x['mask'], logits, t_logits, logp_mix=x['mix'])
    else:
        loss, _ = pg.chunked_minillm_loss(x['hidden'], x['head'], x['tokens'], x['old'], x['lp_p'], x['mask'],
                                          teacher_hidden=x['t_hidden'], teacher_head_weight=x['t_head'],
                                          logp_mix=x['mix'], chunk_size=int(variant.split('-')[1]))
    loss.backward()
    return loss.detach()


def update_memory_child():
    """In a fresh process: peak resident set of one update_step above the set with its inputs."""
    from scripts import timing
    cfg, variant = type('Cfg', (), json.loads(sys.argv[1])), sys.argv[2]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    x = update_inputs(cfg)
    timing.reset_peak_memory()
    base, base_peak = timing.memory_mib()
    if base_peak > base + 1:
        raise RuntimeError(f"could not reset the memory high-water mark ({base_peak:.0f} vs {base:.0f} MiB)")
    update_step(variant, x)
    print(json.dumps(dict(base=base, extra=timing.memory_mib()[1] - base)))


def bench_update_loss(cfg):
    """The `update` section of BENCHMARKS.md: plain vs chunked MiniLLM loss, time, memory, equality."""
    from scripts import timing
    from scripts.timing import VERDICT, med, spread
    variants = ['plain'] + [f'chunked-{c}' for c in cfg.update_chunk_sizes]
    x = update_inputs(cfg)
    ref = update_step('plain', x)  # also the untimed warm-up pass
    ref_grads = [x[k].grad.clone() for k in ('hidden', 'head')]
    err = {}
    for v in variants[1:]:
        loss = update_step(v, x)
        err[v] = max([abs(loss - ref).item() / abs(ref).item()] +
                     [((x[k].grad - r).abs().max() / r.abs().max()).item() for k, r in zip(('hidden', 'head'), ref_grads)])
    del ref_grads
    times = timing.interleaved({v: (lambda v=v: update_step(v, x)) for v in variants}, cfg.update_repeats)
    del x
    mem = {}
    for v in variants:
        res = subprocess.run([sys.executable, '-c', 'from scripts import bench_minillm; bench_minillm.update_memory_child()',
                              json.dumps({k: getattr(cfg, k) for k in vars(cfg) if not k.startswith('_')
                                          and isinstance(getattr(cfg, k), (int, float, str, tuple, list, bool))}), v],
                             cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, **timing.MALLOC_ENV))
        if res.returncode:
            raise RuntimeError(f"memory child for {v} failed:\n{res.stderr[-2000:]}")
        mem[v] = json.loads(res.stdout.strip().splitlines()[-1])['extra']
        print(f"  {v}: peak +{mem[v]:.0f} MiB, {med(times[v]['cpu']):.2f} s CPU")
    rows = ['| loss | fwd+bwd CPU time: median (min–max) | time / plain (CPU) | peak memory above inputs | memory / plain | '
            'largest relative difference from plain (loss, both gradients) | target |', '|---|---|---|---|---|---|---|']
    for v in variants:
        m = mem[v] / max(mem['plain'], 1e-9)
        ok = v == 'plain' or (m <= 1 / 4 and err[v] <= 1e-5)
        rows.append(f"| {v} | {spread(times[v]['cpu'])} | {med(times[v]['cpu']) / med(times['plain']['cpu']):.2f}x | "
                    f"{mem[v]:.0f} MiB | {m:.3f} | {'' if v == 'plain' else f'{err[v]:.1e}'} | "
                    f"{'(reference)' if v == 'plain' else VERDICT[ok]} |")
    B, T, d, V = cfg.update_rows, cfg.update_tokens, cfg.update_dim, cfg.loss_vocab
    return '\n'.join([
        f'{B} rows × {T} response tokens, student and teacher heads [{V}, {d}] (GPT-2 124M), fp32: the loss of '
        f'`rollout.minillm_micro_loss` (policy term with α = 0.2 weights and clipping + weighted single-step KL) from '
        f'hidden states, forward + backward into the hidden states and lm_head. One [N, V] fp32 array is '
        f'{B * T * V * 4 / 2**20:.0f} MiB. Times: median of {cfg.update_repeats} interleaved repeats after an untimed '
        f'pass; memory as in section 1 (a fresh process per variant).', '', *rows, '',
        'Target: chunked peak ≤ 1/4 of plain, loss and gradients equal to plain within 1e-5 (relative to the '
        'largest entry).'])


# ----------------------------------------------------------------------------- 8. decoding: eager, static, compiled
def bench_decode(cfg):
    """The `decode` section: sampling.generate's decode modes on a `decode_preset` model (random weights),
    greedy, exactly decode_new_tokens per row: 'eager' (dynamic shapes), 'static' (sampling.decode_step
    uncompiled) and 'compile' (torch.compile of that step; CUDA graphs on GPU). The compile run is
    timed once untimed first (its compile time is reported on its own)."""
    from scripts.timing import med, spread
    from components.presets import preset_config
    from model import GPT
    from sampling import generate
    device = cfg.decode_device or ('cuda' if torch.cuda.is_available() else 'cpu')
    dtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[cfg.decode_dtype]
    torch.manual_seed(cfg.seed)
    model = GPT(preset_config(cfg.decode_preset)).to(device=device, dtype=dtype).eval()
    B, n = cfg.decode_batch, cfg.decode_new_tokens
    idx = torch.randint(model.config.vocab_size, (B, cfg.decode_prompt_len),
                        generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    outs = {}

    def run(mode):
        outs[mode] = generate(model, idx, n, temperature=0, decode=mode)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
    t0 = time.perf_counter()
    run('compile')
    first = time.perf_counter() - t0
    from scripts import timing
    times = timing.interleaved({m: (lambda m=m: run(m)) for m in cfg.decode_modes.split(',')}, cfg.decode_repeats)
    rows = ['| decode | wall time: median (min–max) | new tokens/s (wall) | vs eager | same greedy tokens as eager |',
            '|---|---|---|---|---|']
    for mode, tm in times.items():
        rows.append(f"| {mode} | {spread(tm['wall'])} | {B * n / med(tm['wall']):,.0f} | "
                    f"{med(times['eager']['wall']) / med(tm['wall']):.2f}x | "
                    f"{(outs[mode] == outs['eager']).float().mean().item():.1%} of positions |")
    name = torch.cuda.get_device_name(device) if device.startswith('cuda') else 'CPU'
    return '\n'.join([
        f'`{cfg.decode_preset}` shape, random weights, {cfg.decode_dtype} on {name}, batch {B}, '
        f'{cfg.decode_prompt_len} random prompt tokens, {n} new tokens per row (greedy, no eos). Medians of '
        f'{cfg.decode_repeats} interleaved repeats; the first compiled call (compilation included) took {first:.1f} s '
        'and is not in the table.', '', *rows])
