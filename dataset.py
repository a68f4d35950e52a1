"""
Reading what data/<name>/prepare.py wrote, and turning it into batches.

Two kinds of data directory (meta.json says which):
- "lm":       train.bin / val.bin, flat token streams (pretraining, and MiniLLM's L_PT corpus);
- "instruct": {split}.tokens.bin + {split}.idx.npy [n, 3] = (offset, prompt_len, response_len
              incl. eot) + {split}.jsonl with the texts and reference answers. An instruct
              directory may also hold train.bin / val.bin to serve as an LM stream.

Batches are drawn with an explicit torch.Generator whose state goes into checkpoints, so a
resumed run sees exactly the batches the uninterrupted run would have. Under DDP/FSDP every rank
draws the same global batch and keeps its own slice, which makes the losses equal to a
single-process run with the same global batch.
"""
import json
import os

import numpy as np
import torch

from configurator import UserError


def prepare_hint(data_dir):
    if data_dir.rstrip('/').endswith('_seqkd'):  # SeqKD data is made by the teacher, see sample.py
        return (f"python sample.py --init_from=<teacher run dir> --data_dir={data_dir.rstrip('/')[:-6]} "
                f"--seqkd_out={data_dir}")
    script = os.path.join(data_dir, 'prepare.py')
    if os.path.exists(script):
        return f"python {script}"
    return "python data/<name>/prepare.py --out_dir " + data_dir


def load_meta(data_dir):
    path = os.path.join(data_dir, 'meta.json')
    if not os.path.exists(path):
        raise UserError(f"no prepared data in {data_dir} (missing meta.json): run `{prepare_hint(data_dir)}` first")
    with open(path) as f:
        return json.load(f)


def _memmap(path, dtype, data_dir):
    if not os.path.exists(path):
        raise UserError(f"missing {path}: run `{prepare_hint(data_dir)}` first")
    return np.memmap(path, dtype=np.dtype(dtype), mode='r')


class LMStream:
    """A flat token stream; batches are random windows of block_size + 1 tokens."""

    def __init__(self, data_dir, split):
        self.meta = load_meta(data_dir)
        name = 'train.bin' if split == 'train' else 'val.bin'
        self.tokens = _memmap(os.path.join(data_dir, name), self.meta['dtype'], data_dir)

    def batch(self, batch_size, block_size, generator, rank=0, world_size=1):
        n = len(self.tokens) - block_size - 1
        if n <= 0:
            raise UserError(f"LM stream of {len(self.tokens)} tokens is shorter than block_size {block_size}")
        starts = torch.randint(n, (batch_size * world_size,), generator=generator)
        starts = starts[rank * batch_size:(rank + 1) * batch_size].tolist()
        x = torch.stack([torch.from_numpy(self.tokens[s:s + block_size].astype(np.int64)) for s in starts])
        y = torch.stack([torch.from_numpy(self.tokens[s + 1:s + 1 + block_size].astype(np.int64)) for s in starts])
        return x, y


class InstructSet:
    """Prompt/response pairs of one split, with their texts and reference answers."""

    def __init__(self, data_dir, split):
        self.meta = load_meta(data_dir)
        if self.meta.get('kind') != 'instruct':
            raise UserError(f"{data_dir} holds '{self.meta.get('kind')}' data, not instruction data; "
                            f"point data_dir at an instruct set (e.g. data/toy_instruct)")
        idx_path = os.path.join(data_dir, f'{split}.idx.npy')
        if not os.path.exists(idx_path):
            raise UserError(f"missing {idx_path}: run `{prepare_hint(data_dir)}` first")
        self.index = np.load(idx_path)
        if len(self.index) == 0:
            raise UserError(f"{data_dir} split '{split}' is empty: re-run `{prepare_hint(data_dir)}`")
        self.tokens = _memmap(os.path.join(data_dir, f'{split}.tokens.bin'), self.meta['dtype'], data_dir)
        with open(os.path.join(data_dir, f'{split}.jsonl')) as f:
            self.rows = [json.loads(line) for line in f if line.strip()]
        if len(self.rows) != len(self.index):
            raise UserError(f"{data_dir}/{split}.jsonl and {split}.idx.npy disagree "
                            f"({len(self.rows)} vs {len(self.index)} rows): re-run `{prepare_hint(data_dir)}`")
        self.eot = self.meta['eot_token']

    def __len__(self):
        return len(self.index)

    def prompt(self, i):
        off, lp, _ = self.index[i]
        return self.tokens[off:off + lp].astype(np.int64).tolist()

    def response(self, i):
        """Response tokens including the final eot."""
        off, lp, lr = self.index[i]
        return self.tokens[off + lp:off + lp + lr].astype(np.int64).tolist()

    def sample_indices(self, batch_size, generator, rank=0, world_size=1):
        idx = torch.randint(len(self), (batch_size * world_size,), generator=generator)
        return idx[rank * batch_size:(rank + 1) * batch_size].tolist()

    def sft_batch(self, indices, block_size, responses=None):
        """Right-padded prompt+response rows. targets[t] is the token at t+1 where that token is
        part of the response (eot included), else -1, so the loss sees response tokens only."""
        rows, starts = [], []
        for j, i in enumerate(indices):
            p = self.prompt(i)
            r = self.response(i) if responses is None else responses[j]
            rows.append((p + r)[:block_size + 1])
            starts.append(len(p))
        T = max(len(r) for r in rows) - 1
        x = torch.full((len(rows), T), self.eot, dtype=torch.long)
        y = torch.full((len(rows), T), -1, dtype=torch.long)
        for j, (row, s) in enumerate(zip(rows, starts)):
            seq = torch.tensor(row)
            x[j, :len(row) - 1] = seq[:-1]
            y[j, s - 1:len(row) - 1] = seq[s:]
        return x, y

    def prompt_batch(self, indices, pad=None):
        """Left-padded prompts and their attention mask, ready for model.generate."""
        pad = self.eot if pad is None else pad
        prompts = [self.prompt(i) for i in indices]
        return left_pad(prompts, pad)


def left_pad(rows, pad):
    T = max(len(r) for r in rows)
    idx = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for j, r in enumerate(rows):
        idx[j, T - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[j, T - len(r):] = 1
    return idx, mask


def split_responses(generated, prompt_len, eot):
    """Cut the new tokens of `model.generate` output into per-row response lists that end at (and
    include) the first eot; a row that never emitted eot keeps all its tokens."""
    out = []
    for row in generated[:, prompt_len:].tolist():
        out.append(row[:row.index(eot) + 1] if eot in row else row)
    return out
