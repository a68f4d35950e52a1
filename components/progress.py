"""
A progress bar for long generation: SeqKD data (sample.py), evaluation (evaluate.py) and MiniLLM
rollouts (rollout.py). It shows prompts done, generated tokens per second and the ETA (tqdm's,
from the prompts' rate) on stdout, and stays silent when stdout is not a terminal (a log file, a
pipe, a SLURM job), so logs never fill with carriage returns. `Speedometer`: train.py's tokens/s,
MFU and ETA in its log lines.
"""
import sys
import time

import torch
from tqdm import tqdm

from model import mfu
from model import peak_flops as gpu_peak_flops


class GenerationProgress:
    """bar = GenerationProgress(n_prompts, 'seqkd train'); per batch bar.update(prompts, tokens); bar.close()"""

    def __init__(self, total, desc, enabled=True):
        self.tokens = 0
        self.bar = tqdm(total=total, desc=desc, unit='prompt', file=sys.stdout, leave=False, dynamic_ncols=True,
                        disable=not (enabled and sys.stdout.isatty()))

    def update(self, prompts, tokens):
        """`prompts` more prompts answered with `tokens` generated tokens between them."""
        if self.bar.disable:
            return
        self.tokens += tokens
        self.bar.update(prompts)
        elapsed = max(self.bar.format_dict['elapsed'], 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s")  # redrawn at every batch (each takes seconds)

    def close(self):
        self.bar.close()


class Speedometer:
    """Tokens/s and MFU of the training steps (evaluation and saving left out), and the ETA. MFU
    counts the student's training FLOPs only (a KD teacher's forward and MiniLLM's generation take
    time but are not in flops_per_token), so it is the sft / pretrain step's figure of merit."""

    def __init__(self, cfg, raw_model, iter_num):
        on_gpu = cfg.device.startswith('cuda')
        self.peak = cfg.peak_flops or (gpu_peak_flops(torch.cuda.get_device_name(cfg.device)) if on_gpu else 0.0)
        self.cfg, self.config, self.n_params = cfg, raw_model.config, raw_model.num_params()
        self.t0 = self.t_start = time.time()
        self.it_start, self.tokens = iter_num, 0

    def read(self, iter_num):
        """(dict(tokens_per_s[, mfu]) since the last read, seconds left); every rank's tokens."""
        dt = time.time() - self.t0
        self.t0 = time.time()
        speed = dict(tokens_per_s=self.tokens * self.cfg.world_size / dt)
        if self.peak:  # per device: this rank's tokens/s against one device's peak
            speed['mfu'] = mfu(self.tokens / dt, self.config, self.n_params, self.peak)
        self.tokens = 0
        per_iter = (time.time() - self.t_start) / (iter_num - self.it_start)
        return speed, per_iter * (self.cfg.max_iters - iter_num)
