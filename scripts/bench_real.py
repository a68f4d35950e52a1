"""
bench.py's section `real`: real shapes (issue 25). SmolLM2-135M's shape (components/presets.py
'smollm2-135m': llama, 30 blocks, d 576, 9 / 3 heads, SwiGLU 1536, tied 49152-row head) as the
teacher and a 6-block student of the same shape (49.6M), random weights, on this machine's CPU.

    python scripts/bench.py --only=real                      # about 20 minutes on 2 loaded cores
    python scripts/bench.py --only=real --real_methods=sft,kd --real_gen_batch_sizes=16,

1. The ceilings: torch.mm of two 2048 x 2048 matrices in fp32 and in bf16, measured between the runs
   of the same section (the best of them is what the steps are divided by).
2. One optimizer step of every method through train.py (timing.StepClock, the first step untimed),
   in fp32 and with dtype=bfloat16 (CPU autocast: bf16 matmuls, fp32 weights, AdamW and losses),
   the dtypes alternating run by run; CPU time of the one thread, steps and ceilings alike. Model FLOPs count the weight matmuls only, 2 per weight per
   token forward and 4 backward (PaLM appendix B without the attention scores: under 3% at 128
   tokens), the blocks at every position and the 28.3M-weight head only where its logits are used
   (the loss's positions; the sampled ones): sft 6 F_s, kd 6 F_s + 2 F_t, gkd / distillm (on-policy
   batches) 2 F_s sampling + 2 F_t scoring + 6 F_s updating, minillm with α = 0.2 the same + 2 F_t
   (the teacher mixed into sampling), F = blocks x positions + head x used positions.
3. Generation with the 30-block model at batch 1 / 16 / 64 against transformers' LlamaForCausalLM
   holding the same weights (components/hf.py export), both in fp32 and both in bf16 weights,
   τ = 1 sampling over the full vocabulary (top-k 0, top-p 1), the same random prompts and exactly
   the same number of new tokens; interleaved.
"""
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.timing import StepClock, interleaved, med, quiet_train  # noqa: E402

PRESET = 'smollm2-135m'
EOT = 0  # the data's end-of-text id (any id works: the weights are random)
ON_POLICY = {  # method: the flags that make every batch the student's own samples, as TRL's trainers at λ = 1
    'minillm': '--teacher_mix_alpha=0.2 --ppo_epochs=1',
    'gkd': '--gkd_lambda=1 --gkd_beta=1',
    'distillm': '--distillm_init_prob=1 --distillm_capacity=64',
}


def mm_ceiling(dtype, n=2048, repeats=5):
    """FLOP/s of torch.mm of two n x n matrices in `dtype`: the best of `repeats` after a warm-up (on a
    shared machine the best is the least disturbed, and the ceiling a step is measured against)."""
    a, b = (torch.randn(n, n).to(dtype) for _ in range(2))
    torch.mm(a, b)
    times = []
    for _ in range(repeats):  # CPU time: the time the product held a core (one thread), as the steps'
        t = time.process_time()
        torch.mm(a, b)
        times.append(time.process_time() - t)
    return 2 * n ** 3 / min(times)


def block_weights(model):
    """The weights a token passes through in the blocks' matmuls (every 2-D block weight)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and '.h.' in n)


def write_setup(cfg, tmp, overrides=None):
    """Random teacher (30 blocks) and student (real_student_layers) as our checkpoints, and instruction
    data of random token ids: prompts of real_prompt_tokens, responses of real_response_tokens.
    `overrides`: GPTConfig fields over the preset for both (bench_gpu.py's dry run: tiny shapes)."""
    from components.checkpoint import atomic_save, checkpoint_payload
    from components.presets import preset_config
    from model import GPT
    dirs, teacher = {}, preset_config(PRESET, **{'block_size': 1024, **(overrides or {})})
    vocab = teacher.vocab_size
    for name, layers, seed in (('teacher', teacher.n_layer, cfg.seed + 1), ('student', cfg.real_student_layers, cfg.seed)):
        torch.manual_seed(seed)
        model = GPT(preset_config(PRESET, **{**vars(teacher), 'n_layer': layers}))
        dirs[name] = os.path.join(tmp, name)
        os.makedirs(dirs[name])
        atomic_save(checkpoint_payload(model, 'byte'), os.path.join(dirs[name], 'ckpt.pt'))
        dirs[name + '_blocks'], dirs['head'] = block_weights(model), model.head_weight().numel()
    dirs['data'] = d = os.path.join(tmp, 'data')
    os.makedirs(d)
    rng = np.random.default_rng(cfg.seed)
    P, R = cfg.real_prompt_tokens, cfg.real_response_tokens
    for split, n in (('train', 256), ('valid', 16)):
        toks = rng.integers(1, vocab, (n, P + R + 1)).astype(np.uint16)
        toks[:, -1] = EOT
        toks.tofile(os.path.join(d, f'{split}.tokens.bin'))
        np.save(os.path.join(d, f'{split}.idx.npy'), np.array([(i * (P + R + 1), P, R + 1) for i in range(n)], dtype=np.int64))
        with open(os.path.join(d, f'{split}.jsonl'), 'w') as f:
            f.writelines(json.dumps(dict(prompt='', response='', references=[''])) + '\n' for _ in range(n))
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(dict(kind='instruct', tokenizer='byte', vocab_size=vocab, eot_token=EOT, dtype='uint16'), f)
    return dirs


def method_argv(cfg, dirs, method, dtype, out_dir):
    on_policy = ON_POLICY.get(method, '').split() + (
        [f'--max_new_tokens={cfg.real_new_tokens}', '--gen_temperature=1.0', '--gen_top_k=0', '--gen_top_p=1.0',
         f'--rollout_size={cfg.real_batch}', f'--rollout_batch_size={cfg.real_batch}'] if method in ON_POLICY else [])
    return [f'--method={method}', f"--init_from={dirs['student']}", f"--data_dir={dirs['data']}",
            *([f"--teacher={dirs['teacher']}"] if method != 'sft' else []), f'--batch_size={cfg.real_batch}',
            f'--block_size={cfg.real_prompt_tokens + max(cfg.real_response_tokens, cfg.real_new_tokens) + 1}',
            '--pack=False', '--device=cpu', f'--dtype={dtype}', f'--seed={cfg.seed}', '--eval_interval=1000000',
            '--eval_iters=1', '--eval_rouge_examples=0', '--log_interval=1000000', '--warmup_iters=0',
            '--lr_schedule=constant', '--learning_rate=1e-5', '--always_save_checkpoint=False',
            f'--max_iters={cfg.real_iters}', f'--out_dir={out_dir}', *on_policy]


def step_flops(cfg, method, dirs):
    """The model FLOPs of one step (the module docstring's counts): the blocks at every position,
    the head at the positions whose logits are used (the loss's, or the sampled ones)."""
    B, s, t, head = cfg.real_batch, dirs['student_blocks'], dirs['teacher_blocks'], dirs['head']
    if method in ('sft', 'kd'):
        every, used = B * (cfg.real_prompt_tokens + cfg.real_response_tokens), B * (cfg.real_response_tokens + 1)
        return 6 * (s * every + head * used) + (2 * (t * every + head * used) if method == 'kd' else 0)
    every, used = B * (cfg.real_prompt_tokens + cfg.real_new_tokens), B * cfg.real_new_tokens
    forward = {name: 2 * (blocks * every + head * used) for name, blocks in (('s', s), ('t', t))}
    # sampling (minillm: the teacher too, for α > 0), the teacher's scores, the student's update
    return forward['s'] + (forward['t'] if method == 'minillm' else 0) + forward['t'] + 3 * forward['s']


def bench_real_train(cfg, dirs, ceilings):
    methods = [m.strip() for m in cfg.real_methods.split(',') if m.strip()]
    dtypes = ('float32', 'bfloat16')
    steps = {(m, dt): [] for m in methods for dt in dtypes}
    sampling = {(m, dt): [] for m in methods for dt in dtypes}  # the wall time inside sampling.generate
    with tempfile.TemporaryDirectory() as runs:
        for r in range(cfg.real_repeats):
            for m in methods:
                for dt in (dtypes if r % 2 == 0 else dtypes[::-1]):
                    with StepClock() as clock:
                        quiet_train(method_argv(cfg, dirs, m, dt, os.path.join(runs, f'{m}_{dt}_{r}')))
                    for s in clock.intervals():  # every row whole: the FLOP count's tokens are the ones trained
                        if m in ('sft', 'kd') and s.get('supervised tokens') != cfg.real_batch * (cfg.real_response_tokens + 1):
                            raise RuntimeError(f"{m}: {s.get('supervised tokens')} loss tokens in a step, not "
                                               f"{cfg.real_batch} x {cfg.real_response_tokens + 1}")
                    steps[m, dt] += [s['cpu'] for s in clock.intervals()]
                    sampling[m, dt] += [s.get('generate', [0.0, 0.0])[1] for s in clock.intervals()]
                    for c in ceilings:
                        ceilings[c].append(mm_ceiling(getattr(torch, c)))
                    print(f"  {m} {dt}: {' '.join(f'{s:.2f}' for s in steps[m, dt])} s; "
                          f"mm {ceilings[dt][-1] / 1e9:.0f} GFLOP/s", flush=True)
    peak = {c: max(v) for c, v in ceilings.items()}  # the conservative ceiling: the best measured
    rows = ['| method | dtype | step, CPU time: median (min–max) | model FLOPs / step | model FLOP/s | of the fp32 mm ceiling '
            '| of the bf16 mm ceiling | bf16 vs fp32 | of which sampling |', '|---|---|---|---|---|---|---|---|---|']
    verdicts = []
    for m in methods:
        flops = step_flops(cfg, m, dirs)
        for dt in dtypes:
            t = med(steps[m, dt])
            speed = '' if dt == 'float32' else f"{med(steps[m, 'float32']) / t:.2f}x"
            rows.append(f"| {m} | {dt} | {t:.2f} s ({min(steps[m, dt]):.2f}–{max(steps[m, dt]):.2f}) | "
                        f"{flops / 1e9:.0f} G | {flops / t / 1e9:.0f} G | {flops / t / peak['float32']:.0%} | "
                        f"{flops / t / peak['bfloat16']:.0%} | {speed} | {med(sampling[m, dt]):.2f} s |")
        if m in ('sft', 'kd'):
            share = flops / med(steps[m, 'bfloat16']) / peak['bfloat16']
            verdicts.append(f"- {m}, bf16: {share:.0%} of the bf16 ceiling (target ≥ 50%): "
                            f"{'**PASS**' if share >= 0.5 else '**MISS**'}")
    return peak, '\n'.join([
        f"Ceilings (torch.mm 2048², the best of {len(ceilings['float32'])} measurements of 5 products each, taken "
        f"between the runs; medians fp32 {med(ceilings['float32']) / 1e9:.0f}, bf16 {med(ceilings['bfloat16']) / 1e9:.0f} GFLOP/s): "
        f"fp32 {peak['float32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s "
        f"({peak['bfloat16'] / peak['float32']:.1f}x). Student {dirs['student_blocks'] / 1e6:.1f}M / teacher "
        f"{dirs['teacher_blocks'] / 1e6:.1f}M block weights, head {dirs['head'] / 1e6:.1f}M; {cfg.real_batch} rows of {cfg.real_prompt_tokens} "
        f"prompt tokens + {cfg.real_response_tokens} response tokens + eot (sft, kd; unpacked) or "
        f"{cfg.real_new_tokens} sampled tokens (minillm: {ON_POLICY['minillm']}; gkd: {ON_POLICY['gkd']}; "
        f"distillm: {ON_POLICY['distillm']}); {cfg.real_iters - 1} timed steps per run, {cfg.real_repeats} run(s) "
        f"per method and dtype. Times are CPU time (one thread: the time the work held a core; on this shared "
        f"machine wall time is mostly the wait for one), steps and ceilings alike.", '', *rows, '', *verdicts])


def gen_models(dtype, tmp, seed):
    """Our 30-block model and transformers' LlamaForCausalLM from its export, both in `dtype`."""
    from transformers import LlamaForCausalLM
    from components import hf
    from components.presets import preset_config
    from model import GPT
    torch.manual_seed(seed)
    ours = GPT(preset_config(PRESET, block_size=1024)).eval()
    path = os.path.join(tmp, 'hf')
    if not os.path.isdir(path):
        hf.export_hf(ours, 'byte', path)
    theirs = LlamaForCausalLM.from_pretrained(path, dtype=dtype).eval()
    theirs.generation_config.eos_token_id = None  # never stop early: exactly n new tokens
    theirs.generation_config.pad_token_id = 0
    return ours.to(dtype), theirs


def bench_real_generate(cfg, tmp):
    import transformers
    from sampling import generate
    rows = ['| dtype | batch | ours: median s | transformers: median s | ours tokens/s | transformers tokens/s | '
            'ours / transformers |', '|---|---|---|---|---|---|---|']
    verdicts, n = [], cfg.real_gen_new_tokens
    for dtype in (torch.float32, torch.bfloat16):
        ours, theirs = gen_models(dtype, tmp, cfg.seed)
        if dtype == torch.float32:  # the same model on both sides: their logits of a prompt agree
            idx = torch.randint(1, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                gap = (ours(idx) - theirs(idx).logits).abs().max().item()
        for B in cfg.real_gen_batch_sizes:
            idx = torch.randint(1, 49152, (B, cfg.real_gen_prompt_tokens), generator=torch.Generator().manual_seed(B))
            gen = torch.Generator().manual_seed(cfg.seed)
            outs = {}
            variants = {
                'ours': lambda: outs.__setitem__('ours', generate(ours, idx, n, temperature=1.0, generator=gen)),
                'transformers': lambda: outs.__setitem__('transformers', theirs.generate(
                    idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n, do_sample=True,
                    temperature=1.0, top_k=0, top_p=1.0, use_cache=True))}
            t = {k: med(v['wall']) for k, v in interleaved(variants, cfg.real_gen_repeats).items()}
            assert outs['ours'].shape == outs['transformers'].shape == (B, cfg.real_gen_prompt_tokens + n)
            ratio = t['transformers'] / t['ours']
            name = str(dtype).split('.')[1]
            print(f"  generate {name} batch {B}: ours {t['ours']:.2f} s, transformers {t['transformers']:.2f} s", flush=True)
            rows.append(f"| {name} | {B} | {t['ours']:.2f} | {t['transformers']:.2f} | {B * n / t['ours']:.1f} | "
                        f"{B * n / t['transformers']:.1f} | {ratio:.2f}x |")
            if B == 16:
                verdicts.append(f"- {name}, batch 16: {ratio:.2f}x transformers (target ≥ 1.5x): "
                                f"{'**PASS**' if ratio >= 1.5 else '**MISS**'}")
    return '\n'.join([
        f"The 30-block model, random weights, {cfg.real_gen_prompt_tokens} random prompt tokens per row, exactly {n} "
        f"new tokens at τ = 1 (full vocabulary) on both sides; transformers {transformers.__version__} "
        f"(LlamaForCausalLM from our export, `generate`); weights in the dtype named (no autocast); medians of "
        f"{cfg.real_gen_repeats} interleaved repeats (wall time). Largest |logit difference| between the two "
        f"models on a prompt, fp32: {gap:.1e}.", '', *rows, '', *verdicts])


def bench_real(cfg):
    if cfg.real_threads:
        torch.set_num_threads(cfg.real_threads)
    from components.precision import cpu_has_bf16_matmul
    ceilings = {'float32': [mm_ceiling(torch.float32)], 'bfloat16': [mm_ceiling(torch.bfloat16)]}
    parts = [f"{torch.get_num_threads()} threads; native bf16 matmuls (AVX512_BF16 / AMX): {cpu_has_bf16_matmul()}; "
             f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}.", '']
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.real_methods:
            dirs = write_setup(cfg, tmp)
            parts += ['### Training steps', '', bench_real_train(cfg, dirs, ceilings)[1], '']
        if cfg.real_gen_batch_sizes:
            parts += ['### Generation against transformers', '', bench_real_generate(cfg, tmp)]
    return '\n'.join(parts)
