"""
Students pruned from their teacher: a student that starts as a subset of the teacher's blocks, with
the teacher's embeddings, final norm and head, instead of random weights. Any model spec works as
the source (a run of ours, a Hugging Face directory or hub name, a GGUF: checkpoint.load_model).

    even        blocks evenly spaced through the depth: n blocks of N, the first of every N/n
                (DistilBERT's initialisation, Sanh et al. 2019, §3: one layer out of two)
    importance  the n blocks of largest block influence on a few batches of the training data
                (ShortGPT, Men et al., arXiv 2403.03853, §3.1, Eq. 1:
                BI_i = 1 - E_{X,t} [x_i,t . x_i+1,t / (|x_i,t| |x_i+1,t|)], the hidden state
                entering block i and the one leaving it; depth pruning then distillation as
                Minitron, Muralidharan et al., arXiv 2407.14679, §2)
    0,5,10      these blocks

In train.py: `--init_from=<teacher> --student_layers=6 --student_layer_selection=importance` (the
student is built where train.py loads it, before any DDP / FSDP wrapping; FSDP builds it on rank 0).
By hand, the blocks each rule picks and the validation loss of each student before training:

    python prune.py --init_from=smollm2 --student_layers=6 --data_dir=data/chat_smollm2 [--out=out/student6]

(--out writes the student as a checkpoint of ours, a valid init_from or export source).
"""
import dataclasses
import os

import numpy as np
import torch

from components.checkpoint import atomic_save, checkpoint_payload, load_model
from components.hf import model_state
from configurator import UserError, configure, run
from dataset import load_meta
from model import GPT

SELECTIONS = ('even', 'importance')


def even_layers(n_layer, n):
    """The first block of each of n equal groups of the depth: 12 -> 6 keeps 0, 2, ..., 10 (DistilBERT)."""
    return [i * n_layer // n for i in range(n)]


def data_windows(data_dir, split, n_rows, block_size):
    """n_rows windows of block_size + 1 tokens, evenly spaced through a split's token stream
    (train.bin / val.bin, else an instruction set's {train,valid}.tokens.bin): (x, y)."""
    meta = load_meta(data_dir)
    names = ('train.bin', 'train.tokens.bin') if split == 'train' else ('val.bin', 'valid.tokens.bin')
    path = next((os.path.join(data_dir, n) for n in names if os.path.exists(os.path.join(data_dir, n))), None)
    if path is None:
        raise UserError(f"{data_dir} has no {' or '.join(names)}: prepare it first")
    tokens = np.memmap(path, dtype=np.dtype(meta['dtype']), mode='r')
    span = len(tokens) - block_size - 1
    if span <= 0:
        raise UserError(f"{path} holds {len(tokens)} tokens, fewer than block_size {block_size} + 1")
    starts = np.linspace(0, span, n_rows).astype(np.int64)
    rows = torch.stack([torch.from_numpy(tokens[s:s + block_size + 1].astype(np.int64)) for s in starts])
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def block_influence(model, x, batch_size=8):
    """ShortGPT's block influence (arXiv 2403.03853, Eq. 1) of every block, [n_layer]:
    BI_i = 1 - mean over tokens of cos(x_in, x_out), x_in / x_out the hidden state before / after block i."""
    sums = torch.zeros(model.config.n_layer, dtype=torch.float64)
    count = 0

    def hook(i):
        def record(module, args, output):
            a, b = args[0].float(), (output[0] if isinstance(output, tuple) else output).float()
            sums[i] += torch.nn.functional.cosine_similarity(a, b, dim=-1).double().sum()
        return record

    handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(model.transformer.h)]
    try:
        model.eval()
        for s in range(0, len(x), batch_size):
            model(x[s:s + batch_size])
            count += x[s:s + batch_size].numel()
    finally:
        for h in handles:
            h.remove()
    return 1 - sums / count


def importance_layers(model, n, x):
    """The n blocks of largest block influence, in depth order (ShortGPT removes the smallest)."""
    bi = block_influence(model, x)
    return sorted(torch.argsort(bi, descending=True)[:n].tolist()), bi


def keep_blocks(model, layers):
    """A model of the same config but only `layers` (in that order) of the source's blocks; every
    other tensor (embeddings, positions, final norm, head) copied."""
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i < model.config.n_layer for i in layers):
        raise UserError(f"blocks {layers} are not distinct blocks of the source's {model.config.n_layer}")
    new_index = {old: new for new, old in enumerate(layers)}
    config = dataclasses.replace(model.config, n_layer=len(layers))
    sd = {}
    for name, t in model_state(model).items():
        if name.startswith('transformer.h.'):
            i = int(name.split('.')[2])
            if i not in new_index:
                continue
            name = f"transformer.h.{new_index[i]}." + name.split('.', 3)[3]
        sd[name] = t.detach().clone()
    with torch.device('meta'):
        student = GPT(config)
    student.load_state_dict(sd, strict=True, assign=True)
    if config.tie_embeddings:
        student.transformer.wte.weight = student.lm_head.weight
    return student


def choose_layers(model, n, selection, data_dir='', block_size=256, rows=32):
    """The blocks a student of n keeps: 'even', 'importance' (on `rows` windows of data_dir's
    training split) or an explicit 'i,j,k'. Returns (layers, block influence or None)."""
    if not 0 < n <= model.config.n_layer:
        raise UserError(f"student_layers={n}: pick 1..{model.config.n_layer} (the source has {model.config.n_layer} blocks)")
    if selection == 'even':
        return even_layers(model.config.n_layer, n), None
    if selection == 'importance':
        x, _ = data_windows(data_dir, 'train', rows, min(block_size, model.config.block_size))
        return importance_layers(model, n, x)
    try:
        layers = [int(v) for v in selection.split(',')]
    except ValueError:
        raise UserError(f"student_layer_selection={selection!r}: pick even, importance or a list like '0,5,10'") from None
    if len(layers) != n:
        raise UserError(f"student_layer_selection lists {len(layers)} blocks but student_layers is {n}")
    return layers, None


def prune_student(cfg, model, ckpt):
    """train.py's hook: the student loaded from cfg.init_from cut to cfg.student_layers blocks
    (cfg.student_layer_selection); unchanged when student_layers is 0 or the run resumes."""
    if not cfg.student_layers or cfg.init_from == 'resume':
        return model, ckpt
    if cfg.init_from == 'scratch':
        raise UserError("student_layers prunes a checkpoint: set init_from to the teacher (run, HF or GGUF) to prune")
    layers, _ = choose_layers(model, cfg.student_layers, cfg.student_layer_selection, cfg.data_dir, cfg.block_size)
    print(f"student: blocks {layers} of {cfg.init_from}'s {model.config.n_layer} ({cfg.student_layer_selection})")
    return keep_blocks(model, layers), ckpt


@torch.no_grad()
def validation_loss(model, x, y, batch_size=8):
    """Mean next-token cross-entropy over the windows."""
    model.eval()
    total = 0.0
    for s in range(0, len(x), batch_size):
        _, loss = model(x[s:s + batch_size], targets=y[s:s + batch_size])
        total += loss.item() * len(x[s:s + batch_size])
    return total / len(x)


# ----------------------------------------------------------------------------- by hand
init_from = ''
student_layers = 6
data_dir = ''
block_size = 256
rows = 32              # windows of block_size tokens for the importance and for the validation loss
out = ''               # write the student chosen by `selection` here (a checkpoint of ours)
selection = 'importance'


def main(argv):
    cfg = configure(dict(init_from=init_from, student_layers=student_layers, data_dir=data_dir, block_size=block_size,
                         rows=rows, out=out, selection=selection), argv)
    meta = load_meta(cfg.data_dir)
    model, tok = load_model(cfg.init_from, expect_vocab=meta['vocab_size'], expect_tokenizer=meta['tokenizer'],
                            dtype=torch.float32)
    x, y = data_windows(cfg.data_dir, 'valid', cfg.rows, min(cfg.block_size, model.config.block_size))
    print(f"{cfg.init_from}: {model.config.n_layer} blocks, validation loss {validation_loss(model, x, y):.4f} "
          f"({cfg.rows} x {x.shape[1]} tokens of {cfg.data_dir})")
    chosen = {}
    for rule in dict.fromkeys([*SELECTIONS, cfg.selection]):
        layers, bi = choose_layers(model, cfg.student_layers, rule, cfg.data_dir, cfg.block_size, cfg.rows)
        chosen[rule] = layers
        student = keep_blocks(model, layers)
        print(f"{rule:>10}: blocks {layers}, validation loss {validation_loss(student, x, y):.4f}")
        if bi is not None:
            print(f"{'':>10}  block influence {', '.join(f'{v:.3f}' for v in bi.tolist())}")
    if cfg.out:
        student = keep_blocks(model, chosen[cfg.selection])
        atomic_save(checkpoint_payload(student, tok or meta['tokenizer']), os.path.join(cfg.out, 'best.pt'))
        print(f"wrote {os.path.join(cfg.out, 'best.pt')}")


if __name__ == '__main__':
    run(main)
