import json
import os
import sys

import numpy as np
import pytest
import torch

# tests import the flat top-level modules (model, kl, train, ...) from the repo root
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# every model in the suite is tiny: one thread beats two (no intra-op sync), and stays fast
# when the two cores are shared with another job
torch.set_num_threads(1)


def write_tiny_instruct(d, n_train=256, n_eval=32, seed=0):
    """A byte-level addition task in the format data/*/prepare.py writes (see dataset.py)."""
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('valid', n_eval), ('test', n_eval)):
        toks, index, off = [], [], 0
        with open(os.path.join(d, f'{split}.jsonl'), 'w') as f:
            for _ in range(n):
                a, b = (int(v) for v in rng.integers(0, 50, 2))
                p, r = f"Q: {a}+{b}\nA:", f" {a + b}"
                pt, rt = list(p.encode()), list(r.encode()) + [256]
                index.append((off, len(pt), len(rt)))
                toks += pt + rt
                off += len(pt) + len(rt)
                f.write(json.dumps(dict(prompt=p, response=r, references=[str(a + b)])) + '\n')
        np.array(toks, dtype=np.uint16).tofile(os.path.join(d, f'{split}.tokens.bin'))
        np.save(os.path.join(d, f'{split}.idx.npy'), np.array(index, dtype=np.int64))
        if split != 'test':
            np.array(toks, dtype=np.uint16).tofile(os.path.join(d, 'train.bin' if split == 'train' else 'val.bin'))
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(dict(kind='instruct', tokenizer='byte', vocab_size=257, eot_token=256, dtype='uint16'), f)
    return str(d)


@pytest.fixture(scope='session')
def tiny_instruct(tmp_path_factory):
    return write_tiny_instruct(tmp_path_factory.mktemp('tiny_instruct'))
