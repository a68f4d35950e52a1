"""
A progress bar for long generation: SeqKD data (sample.py), evaluation (evaluate.py) and MiniLLM
rollouts (rollout.py). It shows prompts done, generated tokens per second and the ETA (tqdm's,
from the prompts' rate) on stdout, and stays silent when stdout is not a terminal (a log file, a
pipe, a SLURM job), so logs never fill with carriage returns.
"""
import sys

from tqdm import tqdm


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
