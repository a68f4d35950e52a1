"""
The README's per-GPU memory table: components/memory.py's estimate for every multi-GPU config of
config/, at 8 and 64 GPUs.

    python scripts/memory_table.py
"""
import os
import sys
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script

import train  # noqa: E402
from components.memory import GiB, estimate_run  # noqa: E402
from components.presets import preset_config  # noqa: E402

# ----------------------------------------------------------------------------- the README table
# The MiniLLM runs of config/ (student training, frozen teacher, rollouts) and the SFT of their
# teachers (the largest model trained): (model trained, teacher or None, config file, overrides).
# components/presets.py holds the shapes of the checkpoints the configs name in init_from / teacher.
TABLE_RUNS = [
    ('opt-1.3b', 'opt-13b', 'config/minillm_opt.py', []),
    ('opt-2.7b', 'opt-13b', 'config/minillm_opt.py', ['--init_from=out/sft_opt_2.7b', '--out_dir=out/minillm_opt_2.7b']),
    ('opt-6.7b', 'opt-13b', 'config/minillm_opt.py', ['--init_from=out/sft_opt_6.7b', '--out_dir=out/minillm_opt_6.7b']),
    ('llama-7b', 'llama-13b', 'config/minillm_llama.py', []),
    ('qwen2.5-1.5b', 'qwen2.5-7b', 'config/minillm_qwen2.5.py', []),
    ('qwen2.5-14b', 'qwen2.5-32b', 'config/minillm_13b_fsdp.py', []),
    ('opt-13b', None, 'config/sft_opt_13b.py', []),
    ('llama-13b', None, 'config/sft_llama_13b.py', []),
    ('qwen2.5-7b', None, 'config/sft_qwen2.5_7b.py', []),
]


def table_run(student, teacher, config_file, overrides):
    """train.py's config for one TABLE_RUNS row and the GPTConfigs of its student and teacher."""
    cwd = os.getcwd()
    os.chdir(ROOT)  # config files exec() each other by repo-relative paths
    try:
        cfg = train.configure(train.DEFAULTS, [config_file] + list(overrides))
    finally:
        os.chdir(cwd)
    return cfg, preset_config(student), preset_config(teacher) if teacher else None


def on_gpus(cfg, world_size, written_for=8):
    """A copy of `cfg` (written for `written_for` GPUs) run on `world_size` GPUs with the same global
    batch: per GPU batch_size and pt_batch_size x written_for / world_size sequences (at least 1)."""
    out = SimpleNamespace(**vars(cfg))
    for key in ('batch_size', 'pt_batch_size'):
        setattr(out, key, max(1, getattr(cfg, key) * written_for // world_size))
    out.world_size = world_size
    return out


def markdown_table(world_sizes=(8, 64)):
    """The README's per-GPU memory table for the runs of TABLE_RUNS, each with its own config's
    batch, sequence length and rollout sizes (written for 8 GPUs; on more, the same global batch),
    bf16 FSDP2, without and with activation checkpointing."""
    rows = ["| student | teacher | config | GPUs | params+grads+AdamW | teacher | activations (no AC / AC) "
            "| rollout KV | peak, no AC | peak, AC |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    g = lambda x: f"{x / GiB:.1f}"  # noqa: E731
    for student, teacher, config_file, overrides in TABLE_RUNS:
        cfg, s, t = table_run(student, teacher, config_file, overrides)
        for w in world_sizes:
            run = on_gpus(cfg, w)
            run.fsdp_activation_checkpointing = False
            plain = estimate_run(run, s, t)
            run.fsdp_activation_checkpointing = True
            ac = estimate_run(run, s, t)
            name = os.path.basename(config_file) + (' ' + overrides[0] if overrides else '')
            rows.append(f"| {student} | {teacher or '-'} | `{name}` | {w} "
                        f"| {g(plain['params'] + plain['grads'] + plain['optimizer'])} | {g(plain['teacher'])} "
                        f"| {g(plain['activations'])} / {g(ac['activations'])} | {g(plain['kv_cache'])} "
                        f"| {g(plain['total'])} | {g(ac['total'])} |")
    return '\n'.join(rows)


if __name__ == '__main__':
    print(markdown_table())
