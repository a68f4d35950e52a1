"""
Writers shared by every data/<name>/prepare.py, and the on-disk formats they define.

meta.json        {"kind": "lm" | "instruct", "tokenizer": "gpt2" | "byte", "vocab_size": n_vocab,
                  "eot_token": int, "dtype": "uint16" | "uint32", ...}
train.bin/val.bin  LM corpora: one flat token stream (np.memmap-able, dtype from meta.json),
                   documents each followed by <|endoftext|>.
{split}.jsonl      instruction data, one {"prompt", "response", "references", ...} per line.
{split}.tokens.bin prompt tokens + response tokens + eot, example after example.
{split}.idx.npy    int64 [n, 3]: (offset into tokens.bin, prompt_len, response_len incl. eot).

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file under the final name.
"""

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from tokenizer import get_encoding


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success rename it to `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def token_dtype(vocab_size):
    """uint16 while every id fits (vocab_size <= 65535), else uint32."""
    return np.uint16 if vocab_size <= 65535 else np.uint32


def write_meta(out_dir, kind, tokenizer, **extra):
    """Write meta.json for a prepared dataset and return it as a dict."""
    if kind not in ("lm", "instruct"):
        raise ValueError(f"kind must be 'lm' or 'instruct', got {kind!r}")
    enc = get_encoding(tokenizer)
    meta = {"kind": kind, "tokenizer": tokenizer, "vocab_size": enc.n_vocab,
            "eot_token": enc.eot_token, "dtype": np.dtype(token_dtype(enc.n_vocab)).name, **extra}
    with atomic_path(Path(out_dir) / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def encode_documents(enc, texts, batch_size=1024):
    """Yield one uint32 array per batch of documents: each document's tokens, then eot.
    Text that looks like '<|endoftext|>' is encoded as plain text (encode_ordinary)."""
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield _encode_batch(enc, batch)
            batch = []
    if batch:
        yield _encode_batch(enc, batch)


def _encode_batch(enc, texts):
    ids = []
    for doc in enc.encode_ordinary_batch(texts, num_threads=2):
        ids.extend(doc)
        ids.append(enc.eot_token)
    return np.array(ids, dtype=np.uint32)


def write_lm(path, token_chunks, vocab_size):
    """Stream arrays of token ids into one flat .bin file; return the number of tokens."""
    dtype = token_dtype(vocab_size)
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in token_chunks:
            chunk = np.asarray(chunk)
            if chunk.size and chunk.max() >= vocab_size:
                raise ValueError(f"token id {chunk.max()} out of range for vocab {vocab_size}")
            chunk.astype(dtype).tofile(f)
            n += chunk.size
    return n


def write_instruct_split(out_dir, split, examples, tokenizer):
    """Write {split}.jsonl, {split}.tokens.bin and {split}.idx.npy for a list of example dicts
    (each with at least "prompt", "response", "references"). Prompt and response are encoded
    separately (so the boundary is a token boundary), then eot is appended.
    Returns {"n", "tokens", "max_prompt_len", "max_len"}, lengths in tokens (max_len includes eot)."""
    enc = get_encoding(tokenizer)
    dtype = token_dtype(enc.n_vocab)
    out_dir = Path(out_dir)
    prompts = enc.encode_ordinary_batch([ex["prompt"] for ex in examples], num_threads=2)
    responses = enc.encode_ordinary_batch([ex["response"] for ex in examples], num_threads=2)
    idx = np.zeros((len(examples), 3), dtype=np.int64)
    offset = 0
    with atomic_path(out_dir / f"{split}.tokens.bin") as tmp_bin, open(tmp_bin, "wb") as f:
        for i, (p, r) in enumerate(zip(prompts, responses)):
            np.array(p + r + [enc.eot_token], dtype=dtype).tofile(f)
            idx[i] = (offset, len(p), len(r) + 1)
            offset += len(p) + len(r) + 1
        # the index and jsonl are renamed first, so tokens.bin appearing means the split is whole
        with atomic_path(out_dir / f"{split}.idx.npy") as tmp_idx:
            with open(tmp_idx, "wb") as fi:
                np.save(fi, idx)
        with atomic_path(out_dir / f"{split}.jsonl") as tmp_jsonl:
            with open(tmp_jsonl, "w", encoding="utf-8") as fj:
                for ex in examples:
                    fj.write(json.dumps(ex, ensure_ascii=False) + "\n")
    lengths = idx[:, 1] + idx[:, 2]
    return {"n": len(examples), "tokens": int(offset),
            "max_prompt_len": int(idx[:, 1].max(initial=0)), "max_len": int(lengths.max(initial=0))}


def read_instruct_split(data_dir, split):
    """(examples, tokens, idx) of a written split, for checks and tests."""
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    tokens = np.fromfile(data_dir / f"{split}.tokens.bin", dtype=meta["dtype"])
    idx = np.load(data_dir / f"{split}.idx.npy")
    with open(data_dir / f"{split}.jsonl", encoding="utf-8") as f:
        examples = [json.loads(line) for line in f]
    return examples, tokens, idx


def read_records(path, fields):
    """Records from a .json file (a list of objects) or .jsonl file (one object per line).
    Any malformed line or missing field ends the program with a message naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"input file {path} does not exist")
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(records, list):
            raise SystemExit(f"{path}: expected a JSON list of objects")
        numbered = [(f"record {i}", r) for i, r in enumerate(records)]
    else:
        numbered = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    numbered.append((f"line {lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}: line {lineno}: invalid JSON ({e.msg}); "
                                     f"fix or remove that line") from None
    for where, record in numbered:
        if not isinstance(record, dict):
            raise SystemExit(f"{path}: {where}: expected a JSON object")
        missing = [k for k in fields if not isinstance(record.get(k), str)]
        if missing:
            raise SystemExit(f"{path}: {where}: missing string field(s) {', '.join(missing)}")
    return [r for _, r in numbered]


def repo_relative(path):
    """A path as printed in logs: relative to the cwd when possible."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
