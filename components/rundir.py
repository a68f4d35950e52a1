"""
A run directory's safety: a run never replaces another unasked (`claim_out_dir`), resume continues
the same run (`check_resume`) with a log that holds each iteration once (`truncate_log`), every
failed write is one line naming the path and what is still whole (`append_log`, `check_writable`,
checkpoint.atomic_save), and a file that is not a checkpoint says what it is (`file_kind`).
"""
import json
import os
import shutil

from configurator import UserError


def file_kind(path):
    """What a file that cannot be a torch.save checkpoint is, read from its first bytes (a zip archive,
    torch.save's format, or a pickle, its legacy one, start with PK and 0x80): None when it may be
    one (or cannot be read: torch.load then says why)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(b'PK') or head.startswith(b'\x80'):
        return None
    if not head:
        return "an empty file"
    if head.startswith(b'GGUF'):
        return "a GGUF file (llama.cpp's format: give its path a .gguf suffix and it loads as one)"
    if head.startswith(b'\x89HDF'):
        return "an HDF5 file (Keras / TensorFlow weights)"
    if len(head) >= 8 and int.from_bytes(head[:8], 'little') < (1 << 28) and head[8:9] == b'{':
        return "a safetensors file (load its Hugging Face directory instead)"
    if b'\x00' in head:
        return f"a binary file of another format (it starts with {head[:8].hex(' ')})"
    text = head.decode('utf-8', 'replace')
    first = text.strip().splitlines()[0][:60] if text.strip() else ''
    return f"a text file (it starts with {first!r})"


def check_writable(directory, what):
    """Before long work whose result goes to `directory`: create it and a probe file there, so that a
    read-only, full or missing place is one line now rather than a traceback at the end."""
    probe = os.path.join(directory, f".write_probe.{os.getpid()}")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"cannot write {what} in {directory} (Not a directory: it is a file): nothing was "
                        f"written; pick another place")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write {what} in {directory} ({e.strerror or e}): nothing was written; pick "
                        f"another place, free space or fix permissions") from None


def append_log(path, line):
    """Append one line to a run's log (log.jsonl); a failed write (disk full, read-only, permission) is
    one UserError naming the file and saying that the checkpoints next to it are whole."""
    try:
        with open(path, 'a') as f:
            f.write(line + '\n')
    except OSError as e:
        raise UserError(f"could not append to {path} ({e.strerror or e}): the checkpoints in "
                        f"{os.path.dirname(path) or '.'} are whole; free space or fix permissions, then resume") from None


def truncate_log(path, iter_num):
    """At resume from the state of iteration `iter_num`: drop the rows of log.jsonl that the resumed run
    writes again, those of later iterations (logged after that state was saved) and the evaluation
    rows of `iter_num` itself (the resumed run evaluates there again when the stopped one did), so
    that the log holds each iteration once. Rewritten atomically; no log: nothing to do."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
                it = int(row['iter'])
            except (ValueError, KeyError, TypeError):
                kept.append(line)  # not a row of ours: left as it is
                continue
            if it < iter_num or (it == iter_num and 'val_loss' not in row):
                kept.append(line)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, 'w') as f:
            f.writelines(kept)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"could not rewrite {path} ({e.strerror or e}): it is whole; free space or fix "
                        f"permissions, then resume") from None


RUN_FILES = ('ckpt.pt', 'best.pt', 'log.jsonl', 'dcp', 'dcp_best', 'dcp.old', 'dcp_best.old')  # checkpoint.py's names
RESUME_KEYS = ('method', 'atkd', 'family', 'n_layer', 'n_head', 'n_embd', 'n_kv_head', 'intermediate_size',
               'block_size', 'bias', 'tie_embeddings')  # what a run is: its method and its architecture


def claim_out_dir(out_dir, init_from, overwrite):
    """Before a run writes anything: a fresh run (init_from other than 'resume') into an out_dir that
    holds another run's checkpoints or log is refused, unless overwrite=True, which removes them first
    (so the new run's best.pt, ckpt.pt and log.jsonl are its own, never a mix of two runs)."""
    if init_from == 'resume':
        return
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]
    if not found:
        return
    if not overwrite:
        raise UserError(f"{out_dir} holds another run ({', '.join(found)}): continue it with --init_from=resume, "
                        f"pick another --out_dir, or replace it with --overwrite=True")
    for name in found:
        path = os.path.join(out_dir, name)
        try:
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        except OSError as e:
            raise UserError(f"--overwrite=True could not remove {path} ({e.strerror or e}): fix permissions "
                            f"or pick another --out_dir") from None


def check_resume(config, saved, where):
    """Resume continues the run in `where` as it was: refuse a config (dict) whose method or
    architecture (RESUME_KEYS) differs from the one the checkpoint was trained with (`saved`, its
    recorded config; None for checkpoints that record none), naming the keys."""
    if not saved:
        return
    diff = [k for k in RESUME_KEYS if k in saved and k in config and saved[k] != config[k]]
    if diff:
        raise UserError(f"--init_from=resume: {where} was trained with "
                        + ', '.join(f"{k}={saved[k]!r}" for k in diff) + " but this config has "
                        + ', '.join(f"{k}={config[k]!r}" for k in diff)
                        + ": resume with the run's own config, or start a new run in another --out_dir")
