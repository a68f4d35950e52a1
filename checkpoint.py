"""
Checkpoints: one `ckpt.pt` per run directory, written atomically (temp file + rename) so a crash
never leaves half a checkpoint, and loaders that turn every mismatch into one clear message.

A checkpoint holds the model weights, its GPTConfig, the tokenizer it was trained with, and, for
`init_from='resume'`, the optimizer, iteration, RNG and data-sampler states.

FSDP runs write a sharded checkpoint instead (torch.distributed.checkpoint, "DCP"): every rank
saves its own shards into `out_dir/dcp/`, next to a small `trainer_state.pt` with everything
else. It resumes on any number of ranks (DCP reshards), and

    python checkpoint.py --consolidate out/<run>

turns it into the ordinary `ckpt.pt` that sample.py, evaluate.py and init_from read.
"""
import glob
import os
import shutil
import warnings
from dataclasses import asdict

import torch

from configurator import UserError, run
from model import GPT, GPTConfig

CKPT_NAME = 'ckpt.pt'


def atomic_save(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ckpt_path(where):
    return os.path.join(where, CKPT_NAME) if os.path.isdir(where) else where


def config_that_writes(out_dir):
    """The command that produces a run directory, found by its out_dir in config/*.py."""
    target = os.path.normpath(out_dir)
    for name in sorted(glob.glob('config/*.py')):
        with open(name) as f:
            for line in f:
                if line.replace(' ', '').startswith('out_dir=') and os.path.normpath(
                        line.split('=', 1)[1].split('#')[0].strip().strip('\'"')) == target:
                    return f"python train.py {name}"
    return "python train.py <config>"


def load_checkpoint(where):
    path = ckpt_path(where)
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}: train it first ({config_that_writes(where)}) "
                        f"or point to the right run directory")
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # truncated or not a torch file
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}): delete it and retrain") from None


def model_state(model):
    """State dict without any wrapper prefixes (torch.compile's `_orig_mod.`, DDP's `module.`)."""
    sd = model.state_dict()
    for prefix in ('_orig_mod.', 'module.'):
        sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    return sd


def checkpoint_payload(model, tokenizer, **extra):
    return dict(model=model_state(model), model_args=asdict(model.config), tokenizer=tokenizer, **extra)


def is_hub_name(spec):
    """'org/name' that is no local path (its first part no local directory), or one of GPT-2's names."""
    parts = spec.split('/')
    return not os.path.exists(spec) and (spec in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or (
        len(parts) == 2 and all(parts) and not spec.startswith(('.', '~')) and not os.path.isdir(parts[0])
        and not spec.endswith('.pt')))


def vocabulary_fingerprint(tokenizer_spec):
    """tokenizer.tokenizer_fingerprint of a named encoding or a directory here, else None."""
    import tokenizer
    if tokenizer_spec in tokenizer.ENCODINGS or os.path.isdir(tokenizer_spec):
        return tokenizer.tokenizer_fingerprint(tokenizer.get_encoding(tokenizer_spec))
    return None


def load_model(spec, device='cpu', expect_vocab=None, expect_tokenizer=None, dropout=None, dtype=None):
    """A GPT from a run directory / .pt of ours, or a Hugging Face checkpoint of any family hf.py
    reads (a directory with config.json, or a hub name such as 'Qwen/Qwen2.5-0.5B'; that one in
    `dtype`, None: as stored). Returns (model, tokenizer): ours records it; a Hugging Face directory is its
    own tokenizer (tokenizer.get_encoding reads it) when it holds tokenizer files, else None (then
    only the vocabulary is checked).

    expect_vocab: the data's vocabulary. A model with more embedding rows than that (Qwen2.5-7B's
    152,064 rows for 151,665 tokens) gets config.tokenizer_vocab = expect_vocab: the extra rows
    are padding, outside every logit; fewer rows than tokens is an error."""
    if (os.path.isdir(spec) and os.path.exists(os.path.join(spec, 'config.json'))) or is_hub_name(spec):
        import hf
        try:
            path = hf.local_dir(spec)
        except UserError as e:  # 'out/run' of a run not trained yet reads as 'org/name' too
            raise UserError(f"no checkpoint at {spec}: train it first ({config_that_writes(spec)}), or name a "
                            f"Hugging Face checkpoint ({e})") from None
        model = hf.from_pretrained(path, dropout=dropout or 0.0, dtype=dtype)
        tok = path if hf.has_tokenizer_files(path) else None
    else:
        ckpt = load_checkpoint(spec)
        args = dict(ckpt['model_args'])
        if dropout is not None:
            args['dropout'] = dropout
        model = GPT(GPTConfig(**args))
        try:
            model.load_state_dict(ckpt['model'])
        except RuntimeError as e:
            raise UserError(f"checkpoint {ckpt_path(spec)} does not match its own model_args: "
                            f"{str(e).splitlines()[0]}") from None
        tok = ckpt.get('tokenizer')
    if expect_tokenizer is not None and tok is not None and tok != expect_tokenizer:
        import tokenizer  # two names, one vocabulary? ('qwen' and a Qwen2.5 directory: yes)
        tokenizer.check_same_tokenizer(tok, vocabulary_fingerprint(tok), expect_tokenizer,
                                       vocabulary_fingerprint(expect_tokenizer), what=spec)
    rows, real = model.config.vocab_size, model.config.tokenizer_vocab
    if expect_vocab is not None and (rows < expect_vocab or real not in (0, expect_vocab)):
        have = f"a {real}-token vocabulary" if real else f"{rows} embedding rows"
        raise UserError(f"{spec} has {have} but the data's tokenizer has {expect_vocab} tokens: "
                        f"teacher, student and data must share one tokenizer")
    if expect_vocab is not None and rows > expect_vocab:
        model.config.tokenizer_vocab = expect_vocab
    return model.to(device), tok


def load_student(cfg, vocab, tok):
    """train.py's student on CPU from cfg.init_from ('resume' / 'scratch' with cfg's shape / a run dir
    or HF GPT-2) and its resume checkpoint (or None); vocab/tok: the data's."""
    ckpt = None
    if cfg.init_from == 'resume':
        ckpt = load_checkpoint(cfg.out_dir)
        model = GPT(GPTConfig(**ckpt['model_args']))
        model.load_state_dict(ckpt['model'])
    elif cfg.init_from == 'scratch':
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=vocab, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias,
                              tie_embeddings=cfg.tie_embeddings, init=cfg.init))
    else:
        # fp32 master weights whatever the checkpoint stores (a hub model in bf16 would train badly)
        model, _ = load_model(cfg.init_from, expect_vocab=vocab, expect_tokenizer=tok, dropout=cfg.dropout,
                              dtype=torch.float32)
    if model.config.logit_vocab != vocab:
        raise UserError(f"model vocabulary {model.config.logit_vocab} does not match the data's {vocab} ({tok})")
    return model, ckpt


def load_teacher(cfg, vocab, tok):
    """train.py's frozen teacher on CPU (cfg.teacher), or None when cfg.method uses none."""
    if not (cfg.method in ('kd', 'minillm') or (cfg.method == 'seqkd' and cfg.kd_ratio > 0) or cfg.pt_kd_ratio > 0):
        return None
    if not cfg.teacher:
        raise UserError(f"method '{cfg.method}' needs a teacher: set --teacher=<run dir, HF directory or hub name>")
    # a Hugging Face teacher in the dtype it computes in (frozen: no fp32 master copy needed)
    teacher, _ = load_model(cfg.teacher, expect_vocab=vocab, expect_tokenizer=tok, dtype=getattr(cfg, 'ptdtype', None))
    return teacher.requires_grad_(False).eval()

# ----------------------------------------------------------------------------- sharded (FSDP)
DCP_DIR, TRAINER_STATE = 'dcp', 'trainer_state.pt'


def save_sharded(out_dir, model, optimizer, tokenizer, **state):
    """Every rank writes its shards of the model and AdamW state with DCP into out_dir/dcp/, and
    rank 0 adds trainer_state.pt (model_args, tokenizer and `state`: step, RNGs, data position).

    Collective: every rank calls it. The files go to dcp.tmp/, which replaces dcp/ only after all
    ranks have finished, so a crash mid-save leaves the previous checkpoint whole. With several
    nodes out_dir must be a filesystem that every node sees."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    final, tmp, old = (os.path.join(out_dir, DCP_DIR + suffix) for suffix in ('', '.tmp', '.old'))
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({'model': model_sd, 'optimizer': optim_sd}, checkpoint_id=tmp)
    dist.barrier()
    if dist.get_rank() == 0:
        torch.save(dict(model_args=asdict(model.config), tokenizer=tokenizer, **state), os.path.join(tmp, TRAINER_STATE))
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def sharded_dir(out_dir):
    """The run's complete sharded checkpoint: dcp/, or dcp.old/ when a save died between its renames."""
    for name in (DCP_DIR, DCP_DIR + '.old'):
        path = os.path.join(out_dir, name)
        if os.path.exists(os.path.join(path, TRAINER_STATE)):
            return path
    raise UserError(f"no sharded checkpoint in {os.path.join(out_dir, DCP_DIR)}: runs with parallel='fsdp' write one "
                    f"there (a run that wrote ckpt.pt resumes with parallel='ddp' or 'none')")


def load_trainer_state(out_dir):
    return torch.load(os.path.join(sharded_dir(out_dir), TRAINER_STATE), map_location='cpu', weights_only=False)


def load_sharded(out_dir, model, optimizer):
    """Fill an FSDP-sharded model and its optimizer, in place, from out_dir/dcp/ (collective).
    Each rank reads only the pieces of its own shards, whatever world size wrote them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {'model': model_sd, 'optimizer': optim_sd}
    dcp.load(state, checkpoint_id=sharded_dir(out_dir))
    set_state_dict(model, optimizer, model_state_dict=state['model'], optim_state_dict=state['optimizer'])


def consolidate(run_dir):
    """Write run_dir/ckpt.pt (checkpoint_payload: weights, model_args, tokenizer, step) from the
    sharded checkpoint, in one process without torchrun. Needs CPU RAM for the weights only; the
    AdamW state stays in dcp/ (resume the run with parallel='fsdp', on any number of GPUs)."""
    import torch.distributed.checkpoint as dcp
    path = sharded_dir(run_dir)
    state = load_trainer_state(run_dir)
    with torch.device('meta'):  # no random init: every value is overwritten by the load
        model = GPT(GPTConfig(**state['model_args']))
    model.to_empty(device='cpu')
    if model.config.tie_embeddings:
        model.transformer.wte.weight = model.lm_head.weight  # to_empty gives the tied pair two tensors
    weights = model.state_dict()
    with warnings.catch_warnings():  # DCP warns that it loads in one process: that is the point here
        warnings.simplefilter('ignore')
        dcp.load({'model': weights}, checkpoint_id=path, no_dist=True)
    extra = {k: state[k] for k in ('iter_num', 'best_val_loss', 'val_loss', 'config') if k in state}
    out = os.path.join(run_dir, CKPT_NAME)
    atomic_save(checkpoint_payload(model, state['tokenizer'], **extra), out)
    return out


def models_from_rank0(build):
    """FSDP model loading. `build()` runs on rank 0 only and returns full CPU models (or None);
    every rank gets empty meta-device models of the same shapes, plus the weights to load after
    sharding: rank 0's full state dicts, {} elsewhere (set_model_state_dict with
    broadcast_from_rank0=True). A UserError on rank 0 is raised on every rank, so none waits forever."""
    import torch.distributed as dist
    full, box = None, [None]
    if dist.get_rank() == 0:
        try:
            full = build()
            box[0] = [asdict(m.config) if m is not None else None for m in full]
        except UserError as e:
            box[0] = e
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], UserError):
        raise box[0]
    with torch.device('meta'):
        models = [GPT(GPTConfig(**c)) if c is not None else None for c in box[0]]
    weights = [None if m is None else full[i].state_dict() if full else {} for i, m in enumerate(models)]
    return models, weights


def export_run(spec, out_dir, max_shard_size='5GB'):
    """A model of ours (any load_model spec: a run directory, an FSDP run's shards read in one
    process, a .pt) as a Hugging Face checkpoint in out_dir (hf.export_hf), with its tokenizer."""
    import hf
    model, tok = load_model(spec)
    if tok is None:
        raise UserError(f"{spec} records no tokenizer: export a run of ours (or a Hugging Face directory with its tokenizer files)")
    return hf.export_hf(model, tok, out_dir, max_shard_size=max_shard_size)


USAGE = ("usage: python checkpoint.py --consolidate out/<run>  (an FSDP run directory with dcp/)\n"
         "       python checkpoint.py --export_hf out/<run> <out dir> [--max_shard_size=5GB]")


def main(argv):
    if argv[:1] == ['--export_hf'] and len(argv) in (3, 4):
        shard = argv[3].split('=', 1)[1] if len(argv) == 4 and argv[3].startswith('--max_shard_size=') else None
        if len(argv) == 4 and shard is None:
            raise UserError(USAGE)
    print(f"wrote {consolidate(argv[1])}")


if __name__ == '__main__':
    run(main)
