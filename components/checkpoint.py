"""
Checkpoints. A run directory holds two, each written atomically (temp file + rename) so a crash
never leaves half a checkpoint, and loaders turn every mismatch into one clear message:

    ckpt.pt   the last state, for `init_from='resume'`: weights, optimizer, iteration, RNG and
              data-sampler states, the method source's state (rollout buffer, replay buffer)
    best.pt   the weights at the best evaluation by the run's selection metric (train.py's
              `select_metric`: validation Rouge-L or loss), for sample.py, evaluate.py, init_from
              and teacher

Both hold the model weights, its GPTConfig and the tokenizer it was trained with. A model spec
(`load_model`) is a run directory (its best.pt; ckpt.pt when it has none), `<run>/best` or
`<run>/last` (ckpt.pt), a .pt file, or a Hugging Face checkpoint of any family hf.py reads
(a directory with config.json, or a hub name).

FSDP runs write sharded checkpoints instead (torch.distributed.checkpoint, "DCP"): every rank
saves its own shards into `out_dir/dcp/` (the last state, AdamW included, next to a small
`trainer_state.pt`) and `out_dir/dcp_best/` (the best weights only). The last resumes on any
number of ranks (DCP reshards); both load as they are in one process (`load_model` reads the
shards), and

    python scripts/convert_checkpoint.py --consolidate out/<run>

turns them into the ordinary ckpt.pt (weights only) and best.pt. Any model spec goes back to a
Hugging Face checkpoint (hf.export_hf: config.json, safetensors, tokenizer files) with

    python scripts/convert_checkpoint.py --export_hf out/<run> <out dir>     (an FSDP run: read from its shards)
"""
import glob
import os
import pickle
import re
import shutil
import warnings
from dataclasses import asdict

import torch
import torch.distributed as dist

from components import cluster, gguf, hf, tokenizer
from components.hf import model_state
from components.parallel import on_rank0
from components.rundir import check_resume, file_kind, truncate_log
from configurator import UserError
from model import FAMILIES, GPT, GPTConfig

CKPT_NAME, BEST_NAME = 'ckpt.pt', 'best.pt'  # last (resume) / best (selection metric)


def atomic_save(obj, path):
    """torch.save to a temp file, flushed to disk, renamed over `path`: a crash, a kill or a failed
    write (disk full, permission) at any moment leaves the previous file whole; a failed write is
    one UserError that says so."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save's writer turns the file's OSError into a RuntimeError
        cause = e if isinstance(e, OSError) else e.__context__ or e.__cause__
        if not isinstance(cause, OSError):
            raise
        kept = f"the previous {path} is whole" if os.path.exists(path) else f"no {path} was written"
        raise UserError(f"could not write {path} ({cause.strerror or cause}): {kept}; free space or fix "
                        f"permissions, then resume") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def torch_load(path):
    """torch.load with weights_only=True: tensors and plain Python values only, so that loading a
    file never runs code from it; anything else is refused with one line that says why."""
    kind = file_kind(path)
    if kind is not None:
        raise UserError(f"{path} is not a PyTorch checkpoint: it is {kind}; point to a run directory, a "
                        f"ckpt.pt / best.pt written by train.py, or a Hugging Face checkpoint directory")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if 'Weights only load failed' not in str(e):  # garbage where a pickle should be
            raise UserError(f"checkpoint {path} is unreadable (UnpicklingError): delete it and retrain") from None
        found = re.search(r'GLOBAL (\S+)', str(e))
        raise UserError(f"checkpoint {path} refused: it holds {found.group(1) if found else 'a Python object'}, not "
                        f"only tensors and plain values, and unpickling it could run code; use checkpoints "
                        f"written by train.py or safetensors") from None
    except Exception as e:  # truncated or not a torch file
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}): delete it and retrain") from None


def ckpt_path(where):
    """The checkpoint file a spec names: a file as it is; a run directory -> its best.pt (ckpt.pt
    when it has no best, e.g. a run from before best.pt existed); '<run>/best' -> best.pt and
    '<run>/last' -> ckpt.pt. FSDP runs: the same names, read from dcp_best/ and dcp/ (`load_checkpoint`)."""
    if os.path.isdir(where):
        has_best = os.path.exists(os.path.join(where, BEST_NAME)) or os.path.isdir(os.path.join(where, DCP_BEST_DIR))
        return os.path.join(where, BEST_NAME if has_best else CKPT_NAME)
    run_dir, name = os.path.split(os.path.normpath(where))
    if name in ('best', 'last') and not os.path.exists(where) and os.path.isdir(run_dir or '.'):
        return os.path.join(run_dir, BEST_NAME if name == 'best' else CKPT_NAME)
    return where


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
    """The checkpoint dict a spec names (ckpt_path); from an FSDP run's shards when it has no .pt."""
    path = ckpt_path(where)
    run_dir, name = os.path.split(path)
    sharded = os.path.join(run_dir, {BEST_NAME: DCP_BEST_DIR, CKPT_NAME: DCP_DIR}.get(name, ''))
    if not os.path.exists(path) and name in (BEST_NAME, CKPT_NAME) and os.path.isdir(sharded):
        model, state = load_sharded_weights(run_dir, os.path.basename(sharded))
        return checkpoint_payload(model, state['tokenizer'], **{k: v for k, v in state.items() if k in PAYLOAD_KEYS})
    if not os.path.exists(path):
        run = run_dir if name in (BEST_NAME, CKPT_NAME) else where
        raise UserError(f"no checkpoint at {path}: train it first ({config_that_writes(run)}) "
                        f"or point to the right run directory")
    return torch_load(path)


def check_model_spec(spec):
    """Before any work: the UserError load_model would raise for a spec that names no checkpoint (a
    missing run directory or file), without reading one. Hugging Face names are left to load_model."""
    if (os.path.isdir(spec) and os.path.exists(os.path.join(spec, 'config.json'))) or is_hub_name(spec):
        return
    path = ckpt_path(spec)
    run_dir, name = os.path.split(path)
    sharded = os.path.join(run_dir, {BEST_NAME: DCP_BEST_DIR, CKPT_NAME: DCP_DIR}.get(name, ''))
    if not os.path.exists(path) and not (name in (BEST_NAME, CKPT_NAME) and os.path.isdir(sharded)):
        run = run_dir if name in (BEST_NAME, CKPT_NAME) else spec
        raise UserError(f"no checkpoint at {path}: train it first ({config_that_writes(run)}) "
                        f"or point to the right run directory")


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
    if tokenizer_spec in tokenizer.ENCODINGS or os.path.isdir(tokenizer_spec) or gguf.is_gguf(tokenizer_spec):
        return tokenizer.tokenizer_fingerprint(tokenizer.get_encoding(tokenizer_spec))
    return None


def load_model(spec, device='cpu', expect_vocab=None, expect_tokenizer=None, dropout=None, dtype=None):
    """A GPT from a run directory / .pt of ours, or a Hugging Face checkpoint of any family hf.py
    reads (a directory with config.json, or a hub name such as 'Qwen/Qwen2.5-0.5B'), in `dtype`
    (None: as stored). Returns (model, tokenizer): ours records it; a Hugging Face directory is its
    own tokenizer (tokenizer.get_encoding reads it) when it holds tokenizer files, else None (then
    only the vocabulary is checked).

    expect_vocab: the data's vocabulary. A model with more embedding rows than that (Qwen2.5-7B's
    152,064 rows for 151,665 tokens) gets config.tokenizer_vocab = expect_vocab: the extra rows
    are padding, outside every logit; fewer rows than tokens is an error.
    A GGUF (components/gguf.py: a .gguf path or a packaged name) is read by the gguf package, never torch.load."""
    if gguf.is_gguf(spec):
        hf_config, tensors = gguf.read_model(spec, dtype)
        model, tok = hf.build(hf_config, tensors, None, dropout or 0.0, gguf.resolve(spec)), spec
    elif (os.path.isdir(spec) and os.path.exists(os.path.join(spec, 'config.json'))) or is_hub_name(spec):
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
        if dtype is not None:
            model.to(dtype)
    if expect_tokenizer is not None and tok is not None and tok != expect_tokenizer:
        # two names, one vocabulary? ('qwen' and a Qwen2.5 directory: yes)
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


def torch_rng_state(device):
    """This process's torch RNG states for a checkpoint: the CPU generator's and, on CUDA, the
    device's (dropout on a GPU draws from it: without it a resume is not bit-exact)."""
    state = dict(torch_rng=torch.get_rng_state())
    if str(device).startswith('cuda'):
        state['cuda_rng'] = torch.cuda.get_rng_state(device)
    return state


def set_torch_rng_state(state, device):
    """Restore what torch_rng_state saved (a checkpoint written on CPU has no CUDA state: left as seeded)."""
    torch.set_rng_state(state['torch_rng'])
    if str(device).startswith('cuda') and state.get('cuda_rng') is not None:
        torch.cuda.set_rng_state(state['cuda_rng'], device)


def load_student(cfg, vocab, tok):
    """train.py's student on CPU from cfg.init_from ('resume' / 'scratch' with cfg's shape / a run dir
    or HF GPT-2) and its resume checkpoint (or None); vocab/tok: the data's."""
    ckpt = None
    if cfg.init_from == 'resume':
        ckpt = load_checkpoint(os.path.join(cfg.out_dir, CKPT_NAME))  # the last state, not the best
        model = GPT(GPTConfig(**ckpt['model_args']))
        model.load_state_dict(ckpt['model'])
    elif cfg.init_from == 'scratch':
        if cfg.family not in FAMILIES:
            raise UserError(f"unknown family '{cfg.family}': pick one of {', '.join(FAMILIES)}")
        shape = dict(block_size=cfg.block_size, vocab_size=vocab, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, tie_embeddings=cfg.tie_embeddings,
                     init=cfg.init, n_kv_head=cfg.n_kv_head, intermediate_size=cfg.intermediate_size)
        model = GPT(GPTConfig(**{**shape, **FAMILIES[cfg.family]}))  # the family's switches win over `bias`
    else:
        # fp32 master weights whatever the checkpoint stores (a hub model in bf16 would train badly)
        model, _ = load_model(cfg.init_from, expect_vocab=vocab, expect_tokenizer=tok, dropout=cfg.dropout,
                              dtype=torch.float32)
    if model.config.logit_vocab != vocab:
        raise UserError(f"model vocabulary {model.config.logit_vocab} does not match the data's {vocab} ({tok})")
    return model, ckpt


def load_teacher(cfg, vocab, tok, dtype=None):
    """train.py's frozen teacher on CPU (cfg.teacher), or None when cfg.method uses none; in `dtype`
    (the run's compute dtype; None: as stored)."""
    if not (cfg.method in ('kd', 'minillm', 'gkd', 'distillm') or (cfg.method == 'seqkd' and cfg.kd_ratio > 0) or cfg.pt_kd_ratio > 0):
        return None
    if not cfg.teacher:
        raise UserError(f"method '{cfg.method}' needs a teacher: set --teacher=<run dir, HF directory or hub name>")
    # in the dtype it computes in (frozen: no fp32 master copy needed, and autocast, which caches the casts
    # of trained weights only, would otherwise cast every teacher weight at every forward)
    teacher, _ = load_model(cfg.teacher, expect_vocab=vocab, expect_tokenizer=tok, dtype=dtype)
    return teacher.requires_grad_(False).eval()


def build_models(cfg, meta, ptdtype=None, prune=None):
    """train.py's student (scratch / checkpoint / HF GPT-2 / resume) and the frozen teacher (a
    Hugging Face one in `ptdtype`). Returns (student, teacher or None, resume state or None,
    weights): `weights` are what parallel.wrap loads into the two models after sharding them
    (FSDP), else (None, None). `prune(cfg, student, ckpt) -> (student, ckpt)` cuts the loaded
    student down (prune.prune_student: cfg.student_layers of init_from's blocks)."""
    vocab, tok = meta['vocab_size'], meta['tokenizer']

    def student():
        return (prune or (lambda c, m, k: (m, k)))(cfg, *load_student(cfg, vocab, tok))
    if cfg.parallel != 'fsdp':
        model, ckpt = student()
        if ckpt is not None:  # resume continues the same run: its method and architecture
            check_resume(vars(cfg), ckpt.get('config'), cfg.out_dir)
        teacher = load_teacher(cfg, vocab, tok, ptdtype)
        return model.to(cfg.device), teacher.to(cfg.device) if teacher is not None else None, ckpt, (None, None)
    # FSDP: only rank 0 builds the models, on CPU, exactly as one process would (same seed, same
    # files: the run starts from the same weights). Every rank gets empty meta-device copies that
    # `wrap` shards and fills from rank 0's state dicts, so no GPU ever holds a whole model and only
    # rank 0's CPU RAM does, once. At resume the student's shards come from dcp/ (load_sharded).
    ckpt = load_trainer_state(cfg.out_dir) if cfg.init_from == 'resume' else None
    if ckpt is not None:
        check_resume(vars(cfg), ckpt.get('config'), cfg.out_dir)
    (model, teacher), weights = models_from_rank0(
        lambda: (None if ckpt else student()[0], load_teacher(cfg, vocab, tok, ptdtype)))
    if ckpt is not None:
        with torch.device('meta'):
            model = GPT(GPTConfig(**ckpt['model_args']))
    if teacher is not None:
        teacher.requires_grad_(False).eval()
    return model, teacher, ckpt, weights


# ----------------------------------------------------------------------------- sharded (FSDP)
DCP_DIR, DCP_BEST_DIR, TRAINER_STATE = 'dcp', 'dcp_best', 'trainer_state.pt'
PAYLOAD_KEYS = ('iter_num', 'best', 'val_loss', 'metrics', 'config')  # what a weights-only checkpoint keeps


def save_sharded(out_dir, model, optimizer, tokenizer, name=DCP_DIR, **state):
    """Every rank writes its shards of the model and AdamW state (optimizer=None: the weights
    only, for dcp_best/) with DCP into out_dir/<name>/, and rank 0 adds trainer_state.pt
    (model_args, tokenizer and `state`: step, RNGs, data position).

    Collective: every rank calls it. The files go to <name>.tmp/, which replaces <name>/ only after
    all ranks have finished, so a crash mid-save leaves the previous checkpoint whole. With several
    nodes out_dir must be a filesystem that every node sees."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
    final, tmp, old = (os.path.join(out_dir, name + suffix) for suffix in ('', '.tmp', '.old'))
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    error = None
    try:  # a failed write on any rank raises on every rank (DCP gathers the ranks' results)
        if optimizer is None:
            dcp.save({'model': get_model_state_dict(model)}, checkpoint_id=tmp)
        else:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({'model': model_sd, 'optimizer': optim_sd}, checkpoint_id=tmp)
    except (Exception, dcp.CheckpointException) as e:  # CheckpointException is a BaseException
        error = _write_failure(e)
    dist.barrier()
    if dist.get_rank() == 0 and error is None:
        try:  # at every moment one complete checkpoint is <name>/ or <name>.old/ (sharded_dir)
            torch.save(dict(model_args=asdict(model.config), tokenizer=tokenizer, **state), os.path.join(tmp, TRAINER_STATE))
            if os.path.exists(final):
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            error = _write_failure(e)
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)  # every rank raises, or none
    error = next((e for e in errors if e), None)
    if error:
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        whole = any(os.path.exists(os.path.join(out_dir, name + s, TRAINER_STATE)) for s in ('', '.old'))
        raise UserError(f"could not write {final} ({error}): "
                        + (f"the previous {final} is whole" if whole else f"no {final} was written")
                        + "; free space or fix permissions, then resume")


def _write_failure(e):
    """Why a write failed, in a few words (DCP wraps each rank's exception in a CheckpointException)."""
    failures = getattr(e, 'failures', None)
    if failures:
        e = next(iter(failures.values()))[0]
    return getattr(e, 'strerror', None) or (str(e).splitlines() or [''])[0][:200] or type(e).__name__


def sharded_dir(out_dir, name=DCP_DIR):
    """The run's complete sharded checkpoint: <name>/, or <name>.old/ when a save died between its renames."""
    for candidate in (name, name + '.old'):
        path = os.path.join(out_dir, candidate)
        if os.path.exists(os.path.join(path, TRAINER_STATE)):
            return path
    raise UserError(f"no sharded checkpoint in {os.path.join(out_dir, name)}: runs with parallel='fsdp' write one "
                    f"there (a run that wrote ckpt.pt resumes with parallel='ddp' or 'none')")


def load_trainer_state(out_dir):
    return torch_load(os.path.join(sharded_dir(out_dir), TRAINER_STATE))


def load_sharded(out_dir, model, optimizer):
    """Fill an FSDP-sharded model and its optimizer, in place, from out_dir/dcp/ (collective).
    Each rank reads only the pieces of its own shards, whatever world size wrote them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {'model': model_sd, 'optimizer': optim_sd}
    dcp.load(state, checkpoint_id=sharded_dir(out_dir))
    set_state_dict(model, optimizer, model_state_dict=state['model'], optim_state_dict=state['optimizer'])


def load_sharded_weights(run_dir, name=DCP_DIR):
    """(model on CPU, trainer state) from a sharded checkpoint, in one process without torchrun.
    Needs CPU RAM for the weights only; the AdamW state stays on disk."""
    import torch.distributed.checkpoint as dcp
    path = sharded_dir(run_dir, name)
    state = torch_load(os.path.join(path, TRAINER_STATE))
    with torch.device('meta'):  # no random init: every value is overwritten by the load
        model = GPT(GPTConfig(**state['model_args']))
    model.to_empty(device='cpu')
    if model.config.tie_embeddings:
        model.transformer.wte.weight = model.lm_head.weight  # to_empty gives the tied pair two tensors
    weights = model.state_dict()
    with warnings.catch_warnings():  # DCP warns that it loads in one process: that is the point here
        warnings.simplefilter('ignore')
        dcp.load({'model': weights}, checkpoint_id=path, no_dist=True)
    return model, state


def consolidate(run_dir):
    """Write run_dir/ckpt.pt from dcp/ and run_dir/best.pt from dcp_best/, those the run has
    (checkpoint_payload: weights, model_args, tokenizer, step). Returns the first path written; the
    AdamW state stays in dcp/ (resume the run with parallel='fsdp', on any number of GPUs)."""
    written = []
    for name, out in ((DCP_DIR, CKPT_NAME), (DCP_BEST_DIR, BEST_NAME)):
        if not any(os.path.isdir(os.path.join(run_dir, name + s)) for s in ('', '.old')):
            continue
        model, state = load_sharded_weights(run_dir, name)
        written.append(os.path.join(run_dir, out))
        atomic_save(checkpoint_payload(model, state['tokenizer'], **{k: state[k] for k in PAYLOAD_KEYS if k in state}),
                    written[-1])
    return written[0] if written else sharded_dir(run_dir)  # sharded_dir raises: no sharded checkpoint here


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
    model, tok = load_model(spec)
    if tok is None:
        raise UserError(f"{spec} records no tokenizer: export a run of ours "
                        f"(or a Hugging Face directory with its tokenizer files)")
    return hf.export_hf(model, tok, out_dir, max_shard_size=max_shard_size)


# ----------------------------------------------------------------------------- the run's state
# the method-state keys every ckpt.pt holds, and their value for a method without them
METHOD_STATE = dict(rollout_buffer=None, rollout_queue=[], prompt_order=None, distillm=None)


class CheckpointManager:
    """Save and restore of a training run (torchtitan's CheckpointManager): what ckpt.pt / dcp/ hold is
    assembled by asking the objects that own it, and restored into them at resume:

        model, optimizer   the (unwrapped) student's weights, AdamW's state (FSDP: this rank's shards)
        source             the method's micro-batch source: source.state_dict() (rollout buffer and
                           queue, prompt order; DistiLLM's replay buffer and φ), top-level keys
        RNG states         data_gen (shared by every rank), sample_gen and torch's own, CPU and CUDA
                           (each rank's: `ranks` when distributed)
        iter_num, best     the step and the best.pt record dict(metric, value, iter)

    best.pt (FSDP: dcp_best/) holds the weights with the same step record. `settings` are the
    user's settings, written into both. Collective when distributed."""

    def __init__(self, cfg, model, optimizer, source, tokenizer_name, data_gen, sample_gen, settings):
        self.cfg, self.model, self.optimizer, self.source = cfg, model, optimizer, source
        self.tokenizer, self.data_gen, self.sample_gen, self.settings = tokenizer_name, data_gen, sample_gen, settings
        self.sharded = cfg.parallel == 'fsdp'
        self.last_saved = None  # the iteration of the last state on disk (None: none written by this run)

    def where(self, which):
        """The file (or, FSDP, directory) of 'best' or 'last' in out_dir."""
        name = {'best': DCP_BEST_DIR, 'last': DCP_DIR} if self.sharded else {'best': BEST_NAME, 'last': CKPT_NAME}
        return f"{self.cfg.out_dir}/{name[which]}"

    def rng_state(self):
        """The run's random streams: the shared data generator's, and this rank's sampling and torch streams."""
        return dict(data_gen=self.data_gen.get_state(), sample_gen=self.sample_gen.get_state(),
                    **torch_rng_state(self.cfg.device))

    def save(self, which, iter_num, best, metrics):
        """which='best': the weights (best.pt from rank 0; FSDP: dcp_best/, shards without AdamW state,
        from every rank); 'last': the whole state resume needs (ckpt.pt; FSDP: dcp/). Weights with a NaN
        or inf are never written: the checkpoint on disk stays the last finite one."""
        cfg = self.cfg
        broken, where = cluster.nonfinite_weights(cfg, self.model)
        if broken:
            raise UserError(f"iter {iter_num}: non-finite weights ({', '.join(where[:3]) or 'on another rank'}): "
                            f"{self.where(which)} not written, it keeps the last finite state; "
                            f"lower learning_rate, then resume")
        info = dict(iter_num=iter_num, best=best, metrics=metrics, config=self.settings)
        if which == 'best':
            if self.sharded:
                save_sharded(cfg.out_dir, self.model, None, self.tokenizer, name=DCP_BEST_DIR, **info)
            else:
                self._write(BEST_NAME, lambda: checkpoint_payload(self.model, self.tokenizer, **info))
            return
        state = dict(info, **self.rng_state(), **{**METHOD_STATE, **self.source.state_dict()})
        if cfg.world_size > 1:  # each rank's own sampling and dropout streams
            state['ranks'] = [None] * cfg.world_size
            mine = self.rng_state()
            dist.all_gather_object(state['ranks'], {k: v for k, v in mine.items() if k != 'data_gen'})
        if self.sharded:
            save_sharded(cfg.out_dir, self.model, self.optimizer, self.tokenizer, **state)
        else:
            self._write(CKPT_NAME, lambda: checkpoint_payload(self.model, self.tokenizer,
                                                              optimizer=self.optimizer.state_dict(), **state))
        self.last_saved = iter_num

    def _write(self, name, payload):
        """Rank 0 writes out_dir/name (atomic_save of payload()); a failed write is raised on every rank."""
        on_rank0(self.cfg, lambda: atomic_save(payload(), os.path.join(self.cfg.out_dir, name)))

    def restore(self, ckpt, select):
        """Resume from `ckpt` (ckpt.pt, or FSDP's trainer_state.pt with the shards in dcp/): fills the
        optimizer (and FSDP's sharded model), the source and the random streams in place. Returns
        (iter_num, best); best is dropped when it was chosen by another metric than `select`."""
        cfg = self.cfg
        if self.sharded:  # this rank's shards of the weights and of the AdamW state
            load_sharded(cfg.out_dir, self.model, self.optimizer)
        elif 'optimizer' not in ckpt:
            raise UserError(f"{cfg.out_dir}/ckpt.pt holds weights only (a consolidated FSDP checkpoint): resume "
                            f"with parallel='fsdp', or start a new run from it with init_from='{cfg.out_dir}'")
        else:
            self.optimizer.load_state_dict(ckpt['optimizer'])
        iter_num, best = ckpt['iter_num'], ckpt.get('best')
        if best is not None and best['metric'] != select:  # selection changed at resume: start it afresh
            best = None
        self.source.load_state_dict(ckpt)
        # log.jsonl without the rows the resumed run writes again: each iteration once
        on_rank0(cfg, lambda: truncate_log(os.path.join(cfg.out_dir, 'log.jsonl'), iter_num))
        self.data_gen.set_state(ckpt['data_gen'])
        ranks = ckpt.get('ranks') or [ckpt]  # per-rank RNG streams; on another world size they start afresh
        if len(ranks) == cfg.world_size:
            self.sample_gen.set_state(ranks[cfg.rank]['sample_gen'])
            set_torch_rng_state(ranks[cfg.rank], cfg.device)
        self.last_saved = iter_num
        return iter_num, best
