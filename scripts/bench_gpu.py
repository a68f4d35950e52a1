"""
The speed half of the first GPU session (issue 25; scripts/gpu_check.py checks the CUDA paths
first): one command, a few minutes on one H100, that measures

  sft-mfu      SFT steps (forward + backward + AdamW) in bf16 autocast of GPT-2-124M and of the
               6-block SmolLM2 student (bench_real.py's shapes), eager and torch.compile'd: tokens/s
               and MFU (model.mfu against model.peak_flops of the GPU, PaLM appendix B)
  decode       new tokens/s of the 30-block SmolLM2 shape at batch 64 in bf16 weights: sampling.generate
               eager vs compiled (decode='compile': a static-shape step under CUDA graphs)
  minillm      one MiniLLM step (rollout + update) of the SmolLM2 pair through train.py, bf16
  fsdp-1gpu    train.py --parallel=fsdp on one GPU (torchrun, 1 rank), SFT of the student: tokens/s, MFU

and prints a Markdown table for BENCHMARKS.md's GPU section (`--out` writes it there, between the
`<!-- bench:gpu -->` markers). `--dry-run` runs the same code on the CPU at tiny shapes in seconds
(tests/test_bench_gpu.py), so that the script cannot rot before a GPU comes.

    python scripts/gpu_check.py && python scripts/bench_gpu.py --out=BENCHMARKS.md
    python scripts/bench_gpu.py --dry-run
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: the project's modules

import model as model_module  # noqa: E402
from components.presets import preset_config  # noqa: E402

# (name, GPTConfig overrides, batch, tokens per row); the dry run shrinks every shape
SFT_MODELS = [('gpt2-124m', dict(preset='gpt2'), 16, 1024),
              ('smollm2-student-6', dict(preset='smollm2-135m', n_layer=6, block_size=2048), 16, 2048)]
TINY = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, intermediate_size=96, vocab_size=512, block_size=64)


def shape(spec, dry_run):
    spec = dict(spec)
    preset = spec.pop('preset')
    if dry_run:
        spec.update({k: v for k, v in TINY.items() if k != 'n_kv_head' or preset != 'gpt2'})
        if preset == 'gpt2':
            spec.pop('intermediate_size')
    return preset_config(preset, **spec)


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def bench_sft(device, dry_run, steps):
    """Rows (model, mode, tokens/s, MFU) of bf16-autocast SFT steps, eager and compiled."""
    import kl
    from model import GPT
    rows = []
    peak = model_module.peak_flops(torch.cuda.get_device_name()) if device.startswith('cuda') else 0.0
    modes = ('eager',) if dry_run else ('eager', 'compile')
    for name, spec, B, T in SFT_MODELS:
        config = shape(spec, dry_run)
        B, T = (2, 32) if dry_run else (B, T)
        for mode in modes:
            torch.manual_seed(0)
            net = GPT(config).to(device)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
            run = torch.compile(net) if mode == 'compile' else net
            x = torch.randint(config.vocab_size, (B, T), device=device)

            def step():
                with torch.autocast(device.split(':')[0], dtype=torch.bfloat16):
                    loss = run(x, head_fn=lambda h, w: kl.chunked_kd_loss(h, w, targets=x, ce_weight=1.0, kd_weight=0.0))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            for _ in range(2):  # warm-up (and compilation)
                step()
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            tok_s = steps * B * T / (time.perf_counter() - t)
            mfu = model_module.mfu(tok_s, config, net.num_params(), peak) if peak else None
            rows.append((name, mode, tok_s, mfu))
            print(f"  sft {name} {mode}: {tok_s:,.0f} tok/s" + (f", MFU {mfu:.1%}" if mfu else ''), flush=True)
    return rows


def bench_decode(device, dry_run, new_tokens):
    """Rows (mode, new tokens/s) of generate at batch 64 with bf16 weights; the dry run's 'static'
    stands in for 'compile' (inductor's CPU build takes minutes)."""
    from model import GPT
    from sampling import generate
    config = shape(dict(preset='smollm2-135m', block_size=1024), dry_run)
    torch.manual_seed(0)
    net = GPT(config).to(device=device, dtype=torch.bfloat16).eval()
    B, T = (4, 8) if dry_run else (64, 128)
    idx = torch.randint(config.vocab_size, (B, T), device=device)
    rows, outs = [], {}
    for mode in ('eager', 'static' if dry_run else 'compile'):
        generate(net, idx, 4, temperature=0, decode=mode)  # warm-up (and compilation)
        sync(device)
        t = time.perf_counter()
        outs[mode] = generate(net, idx, new_tokens, temperature=0, decode=mode)
        sync(device)
        rows.append((mode, B * new_tokens / (time.perf_counter() - t)))
        print(f"  decode {mode}: {rows[-1][1]:,.0f} tok/s", flush=True)
    agree = (outs['eager'] == list(outs.values())[1]).float().mean().item()
    return rows, agree


def bench_minillm(device, dry_run, tmp, steps):
    """Median wall time of a MiniLLM step of the SmolLM2 pair through train.py, bf16."""
    from scripts import bench_real
    from scripts.timing import StepClock, med, quiet_train
    cfg = SimpleNamespace(seed=1337, real_student_layers=1 if dry_run else 6, real_batch=2 if dry_run else 8,
                          real_prompt_tokens=8 if dry_run else 95, real_response_tokens=4 if dry_run else 32,
                          real_new_tokens=4 if dry_run else 32, real_iters=steps + 1)
    dirs = bench_real.write_setup(cfg, tmp, TINY if dry_run else None)
    argv = bench_real.method_argv(cfg, dirs, 'minillm', 'bfloat16', os.path.join(tmp, 'minillm')) + [f'--device={device}']
    with StepClock() as clock:
        quiet_train(argv)
    return med([s['wall'] for s in clock.intervals()]), dirs


def bench_fsdp(device, dry_run, tmp, dirs, steps):
    """tokens/s (and MFU on a GPU) of SFT under FSDP2 on one rank, from the run's log.jsonl."""
    out = os.path.join(tmp, 'fsdp')
    argv = ['--method=sft', f"--init_from={dirs['student']}", f"--data_dir={dirs['data']}", f'--device={device}',
            '--dtype=bfloat16', '--parallel=fsdp', '--batch_size=2' if dry_run else '--batch_size=16', '--pack=False',
            f'--max_iters={steps + 1}', '--eval_interval=1000000', '--eval_iters=1', '--eval_rouge_examples=0',
            '--log_interval=1', '--warmup_iters=0', '--always_save_checkpoint=False', f'--out_dir={out}']
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
           os.path.join(ROOT, 'train.py'), *argv]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"fsdp run failed:\n{res.stdout[-1500:]}\n{res.stderr[-1500:]}")
    rows = [r for r in map(json.loads, open(os.path.join(out, 'log.jsonl'))) if 'tokens_per_s' in r][1:]
    tok_s = sorted(r['tokens_per_s'] for r in rows)[len(rows) // 2]
    mfus = sorted(r['mfu'] for r in rows if 'mfu' in r)
    return tok_s, mfus[len(mfus) // 2] if mfus else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--dry-run', action='store_true', help='tiny shapes on the CPU (seconds): the test suite runs this')
    ap.add_argument('--out', default='', help='BENCHMARKS.md to write the table into (between <!-- bench:gpu --> markers)')
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--new_tokens', type=int, default=256)
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu.py needs CUDA (or --dry-run on the CPU)", file=sys.stderr)
        return 2
    device = 'cpu' if args.dry_run else 'cuda'
    steps, new_tokens = (2, 4) if args.dry_run else (args.steps, args.new_tokens)
    where = 'CPU dry run (tiny shapes)' if args.dry_run else torch.cuda.get_device_name()
    lines = [f'- device: {where}; torch {torch.__version__}; {time.strftime("%Y-%m-%d %H:%M", time.gmtime())} UTC',
             '- command: `python scripts/bench_gpu.py' + (' --dry-run' if args.dry_run else '') + '`', '',
             '| measurement | mode | tokens/s | MFU |', '|---|---|---|---|']
    for name, mode, tok_s, mfu in bench_sft(device, args.dry_run, steps):
        lines.append(f'| SFT {name}, bf16 | {mode} | {tok_s:,.0f} | {f"{mfu:.1%}" if mfu else "–"} |')
    decode, agree = bench_decode(device, args.dry_run, new_tokens)
    for mode, tok_s in decode:
        lines.append(f'| decode SmolLM2-135M shape, batch 64, bf16 | {mode} | {tok_s:,.0f} | – |')
    with tempfile.TemporaryDirectory() as tmp:
        step_s, dirs = bench_minillm(device, args.dry_run, tmp, steps=2)
        lines.append(f'| MiniLLM step, SmolLM2 pair, bf16 (8 prompts, 32 new tokens) | train.py | {step_s:.2f} s/step | – |')
        tok_s, mfu = bench_fsdp(device, args.dry_run, tmp, dirs, steps=3)
        lines.append(f'| SFT, FSDP2 on one device, 6-block student, bf16 | torchrun | {tok_s:,.0f} | '
                     f'{f"{mfu:.1%}" if mfu else "–"} |')
    lines += ['', f'Greedy tokens of eager vs {decode[1][0]} decoding agree at {agree:.1%} of positions.']
    text = '\n'.join(lines)
    print(text)
    if args.out:
        from scripts import bench
        bench.SECTIONS.setdefault('gpu', '10. GPU: SFT MFU, decoding, MiniLLM, FSDP on one GPU (bench_gpu.py)')
        bench.write_report(args.out, 'gpu', text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
