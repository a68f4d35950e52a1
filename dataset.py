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
        meta = json.load(f)
    # meta.json written before tokenizer fingerprints: a named encoding's is computed from its name
    if meta.get('tokenizer_fingerprint') is None:
        from components.tokenizer import fingerprint_for_name
        meta['tokenizer_fingerprint'] = fingerprint_for_name(meta.get('tokenizer'))
    meta.setdefault('bos_token', None)
    return meta


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

    def _sft_pieces(self, indices, block_size, responses=None):
        """Per example: its input tokens and targets, at most block_size of each. targets[t] is the
        token at t+1 where that token is part of the response (eot included), else -1."""
        pieces = []
        for j, i in enumerate(indices):
            p = self.prompt(i)
            r = self.response(i) if responses is None else responses[j]
            row = (p + r)[:block_size + 1]
            pieces.append((row[:-1], ([-1] * (len(p) - 1) + row[len(p):])[:len(row) - 1]))
        return pieces

    def sft_batch(self, indices, block_size, responses=None):
        """Right-padded prompt+response rows x [B, T] and targets y (-1 off the response), so the
        loss sees response tokens only."""
        pieces = self._sft_pieces(indices, block_size, responses)
        T = max(len(xs) for xs, _ in pieces)
        x = torch.full((len(pieces), T), self.eot, dtype=torch.long)
        y = torch.full((len(pieces), T), -1, dtype=torch.long)
        for j, (xs, ys) in enumerate(pieces):
            x[j, :len(xs)], y[j, :len(ys)] = torch.tensor(xs), torch.tensor(ys)
        return x, y

    def packed_sft_batch(self, indices, block_size, responses=None):
        """The examples of sft_batch packed side by side into rows of at most block_size tokens
        (first-fit decreasing), plus `segments` [B, T] numbering them (-1 on padding). With
        GPT.forward(segments=...) the loss equals sft_batch's, without computing most of its padding:
        on the toy task a padded batch is about 1/3 padding."""
        pieces = self._sft_pieces(indices, block_size, responses)
        rows, fill = [], []
        for j in sorted(range(len(pieces)), key=lambda j: -len(pieces[j][0])):
            n = len(pieces[j][0])
            r = next((k for k, f in enumerate(fill) if f + n <= block_size), len(rows))
            if r == len(rows):
                rows.append([])
                fill.append(0)
            rows[r].append(j)
            fill[r] += n
        shape = (len(rows), max(fill))
        x = torch.full(shape, self.eot, dtype=torch.long)
        y = torch.full(shape, -1, dtype=torch.long)
        segments = torch.full(shape, -1, dtype=torch.long)
        for r, members in enumerate(rows):
            c = 0
            for j in members:
                xs, ys = pieces[j]
                x[r, c:c + len(xs)], y[r, c:c + len(xs)] = torch.tensor(xs), torch.tensor(ys)
                segments[r, c:c + len(xs)] = j
                c += len(xs)
        return x, y, segments

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
