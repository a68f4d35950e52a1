"""
Writers shared by every data/<name>/prepare.py, and the on-disk formats they define.

meta.json        {"kind": "lm" | "instruct", "tokenizer": "gpt2" | "qwen" | "byte" | <HF model dir>,
                  "tokenizer_fingerprint": sha256 of the vocabulary (tokenizer.tokenizer_fingerprint),
                  "vocab_size": n_vocab, "eot_token": int, "bos_token": int | null,
                  "dtype": "uint16" | "uint32", ...}
train.bin/val.bin  LM corpora: one flat token stream (np.memmap-able, dtype from meta.json),
                   documents each preceded by bos_token (when the tokenizer has one) and
                   followed by eot_token.
{split}.jsonl      instruction data, one {"prompt", "response", "references", ...} per line.
{split}.tokens.bin prompt tokens (bos first when the tokenizer has one) + response tokens + eot.
{split}.idx.npy    int64 [n, 3]: (offset into tokens.bin, prompt_len, response_len incl. eot).

Every file is written to a temporary name in the same folder and renamed into place, so a crash
never leaves a half-written file under the final name.
"""

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from components.tokenizer import get_encoding, tokenizer_fingerprint


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
    meta = {"kind": kind, "tokenizer": tokenizer, "tokenizer_fingerprint": tokenizer_fingerprint(enc),
            "vocab_size": enc.n_vocab, "eot_token": enc.eot_token, "bos_token": enc.bos_token,
            "dtype": np.dtype(token_dtype(enc.n_vocab)).name, **extra}
    with atomic_path(Path(out_dir) / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def encode_documents(enc, texts, batch_size=1024):
    """Yield one uint32 array per batch of documents: bos (if the tokenizer has one), each
    document's tokens, then eot. Text that looks like '<|endoftext|>' is encoded as plain text
    (encode_ordinary)."""
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
    bos = [enc.bos_token] if enc.bos_token is not None else []
    for doc in enc.encode_ordinary_batch(texts, num_threads=2):
        ids.extend(bos + doc)
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


def write_instruct_split(out_dir, split, examples, tokenizer, prompt_special=False):
    """Write {split}.jsonl, {split}.tokens.bin and {split}.idx.npy for a list of example dicts
    (each with at least "prompt", "response", "references"). Prompt and response are encoded
    separately (so the boundary is a token boundary), then eot is appended. `prompt_special`:
    special-token text in prompts ('<|im_start|>' of a chat template) becomes its token id.
    Returns {"n", "tokens", "max_prompt_len", "max_len"}, lengths in tokens (max_len includes eot)."""
    enc = get_encoding(tokenizer)
    dtype = token_dtype(enc.n_vocab)
    out_dir = Path(out_dir)
    prompts = encode_prompts(enc, [ex["prompt"] for ex in examples], prompt_special)
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
    """Records from a .json file (a list of objects) or .jsonl file (one object per line). Bad
    records (invalid JSON, not an object, a field of `fields` missing or not a string) end the
    program with one message that lists each of them, up to 20, by line (or record) number and
    defect, so that one look at the file fixes them all."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"input file {path} does not exist")
    numbered = []  # (where, record, defect found while parsing)
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(records, list):
            raise SystemExit(f"{path}: expected a JSON list of objects")
        numbered = [(f"record {i}", r, None) for i, r in enumerate(records)]
    else:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    numbered.append((f"line {lineno}", json.loads(line), None))
                except json.JSONDecodeError as e:
                    numbered.append((f"line {lineno}", None, f"invalid JSON ({e.msg})"))
    bad = []
    for where, record, defect in numbered:
        defect = defect or record_defect(record, fields)
        if defect:
            bad.append(f"{where}: {defect}")
    if bad:
        more = f"; and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else ""
        noun = "record" if path.suffix == ".json" else "line"
        raise SystemExit(f"{path}: {'; '.join(bad[:MAX_REPORTED])}{more}; fix or remove "
                         + (f"that {noun}" if len(bad) == 1 else f"these {len(bad)} {noun}s"))
    return [r for _, r, _ in numbered]


MAX_REPORTED = 20  # bad lines listed by read_records


def record_defect(record, fields):
    """What is wrong with one parsed record, or None: not an object, or fields missing / not strings."""
    if not isinstance(record, dict):
        return "expected a JSON object"
    missing = [k for k in fields if k not in record or record[k] is None]
    wrong = [f"{k} is {repr(record[k])[:40]} ({type(record[k]).__name__}), not a string" for k in fields
             if k not in missing and not isinstance(record[k], str)]
    return "; ".join(([f"missing string field(s) {', '.join(missing)}"] if missing else []) + wrong) or None


def repo_relative(path):
    """A path as printed in logs: relative to the cwd when possible."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- instruction prompts and records
# The Alpaca template (Taori et al., 2023), which the MiniLLM paper formats every instruction set
# with (§3.1, Appendix C); the reference's tools/process_data_dolly.py uses the same wording.
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat")


def alpaca_prompt(instruction, input_text=""):
    """The Alpaca prompt of one record, with an '### Input:' block when the input is non-empty."""
    instruction, input_text = instruction.strip(), (input_text or "").strip()
    if input_text:
        return ALPACA_TEMPLATE_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_TEMPLATE.format(instruction=instruction)


def chat_user_message(instruction, input_text=""):
    """The single user message of a chat-template prompt: the instruction, then a blank line and
    the input when there is one."""
    instruction, input_text = instruction.strip(), (input_text or "").strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def _token_text(value):
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def read_chat_template(tokenizer_dir):
    """(template, special tokens) of a Hugging Face model directory: the "chat_template" of its
    tokenizer_config.json (a string, or a list of named templates, of which 'default' is taken),
    else a chat_template.jinja beside it; bos/eos/unk/pad tokens as strings, for the template."""
    from components.gguf import is_gguf
    if is_gguf(str(tokenizer_dir)):  # a GGUF's metadata, as the tokenizer directory it reads as
        tokenizer_dir = get_encoding(str(tokenizer_dir)).source_dir
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    if not path.is_file():
        raise SystemExit(f"--template=chat needs --tokenizer=<model dir> with a tokenizer_config.json; "
                         f"{path} does not exist")
    config = json.loads(path.read_text(encoding="utf-8"))
    template = config.get("chat_template")
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    jinja_file = path.with_name("chat_template.jinja")
    if not template and jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    if not isinstance(template, str) or not template:
        raise SystemExit(f"{path} has no chat_template (a base model?): use --template=alpaca")
    special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    return template, {k: v for k, v in special.items() if isinstance(v, str)}


def render_chat_prompt(template, user_message, special_tokens=None):
    """A chat template rendered for one user turn (a str) or a conversation (a list of
    {"role", "content"} messages ending with a user turn) with add_generation_prompt=True: the text a model
    sees before its reply. jinja2's ImmutableSandboxedEnvironment keeps the template (data from a
    model directory) from reaching Python; trim_blocks/lstrip_blocks, `raise_exception`,
    `strftime_now` and a non-escaping `tojson` are what Hugging Face templates are written against."""
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        messages = [{"role": "user", "content": user_message}] if isinstance(user_message, str) else user_message
        return env.from_string(template).render(messages=messages,
                                                add_generation_prompt=True, **(special_tokens or {}))
    except jinja2.exceptions.TemplateError as e:
        raise SystemExit(f"the chat template failed to render ({type(e).__name__}: {e})") from None


def prompt_formatter(template, tokenizer):
    """f(instruction, input) -> prompt text for --template: 'alpaca' (the paper's) or 'chat' (the
    chat template of the model directory `tokenizer`, one user message of instruction + input)."""
    if template == "alpaca":
        return alpaca_prompt
    if template != "chat":
        raise SystemExit(f"--template must be one of {', '.join(TEMPLATES)}, got {template!r}")
    chat, special = read_chat_template(tokenizer)
    return lambda instruction, input_text="": render_chat_prompt(chat, chat_user_message(instruction, input_text),
                                                                 special)


def encode_prompts(enc, prompts, special=False):
    """Token ids of each prompt; with `special`, special-token text becomes its id (chat templates).
    A chat template writes its own BOS ('{{ bos_token }}'), as transformers' apply_chat_template
    relies on: a chat prompt needs no BOS prepended. Other prompts get the tokenizer's bos_token
    (LLaMA/Mistral <s>, OPT </s>, Llama-3 <|begin_of_text|>; none for GPT-2, Qwen), as
    transformers' tokenizer(prompt) adds it."""
    if special:
        return enc.encode_batch(prompts, allowed_special="all", num_threads=2)
    bos = [enc.bos_token] if enc.bos_token is not None else []
    return [bos + p for p in enc.encode_ordinary_batch(prompts, num_threads=2)]


def instruction_examples(records, format_prompt, given_prompts=True, source="input"):
    """Example dicts ("prompt", "response", "references", + category/task when given) from records in
    any of the layouts the sets ship in: databricks-dolly-15k (instruction, context, response) and
    the MiniLLM reference's files (instruction, input, output: a string or a list of references,
    and usually the formatted prompt, with '<n>' for newlines). With `given_prompts` a record's own
    "prompt" is kept as it is (the reference's prompts, exactly); otherwise prompts are built by
    `format_prompt(instruction, input)`. Records without an instruction/prompt or a response are
    skipped. A record of the wrong shape ends the program naming it."""
    examples = []
    for i, r in enumerate(records, start=1):
        outputs = r.get("output", r.get("response"))
        outputs = [outputs] if isinstance(outputs, str) else outputs
        given = r.get("prompt") if given_prompts else None
        instruction = r.get("instruction")
        if (not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)
                or not isinstance(given or instruction or "", str)):
            raise SystemExit(f"{source}: record {i}: expected string fields instruction (or prompt) and "
                             f"output / response (a string or a list of strings)")
        references = [o.strip() for o in outputs if o.strip()]
        if not references or not (given or (instruction or "").strip()):
            continue
        input_text = r.get("input", r.get("context")) or ""
        prompt = given.replace("<n>", "\n") if given else format_prompt(instruction, input_text)
        ex = {"prompt": prompt, "response": references[0], "references": references}
        ex.update({k: r[k] for k in ("category", "task") if isinstance(r.get(k), str)})
        examples.append(ex)
    return examples


def filter_lengths(examples, enc, max_prompt_tokens=0, min_response_tokens=0, max_response_tokens=0,
                   prompt_special=False):
    """(kept examples, {reason: count dropped}): prompts of at most `max_prompt_tokens` tokens,
    responses (the first reference, eot not counted) of at least `min_response_tokens` and at most
    `max_response_tokens` tokens; 0 turns a bound off."""
    n_prompt = [len(p) for p in encode_prompts(enc, [e["prompt"] for e in examples], prompt_special)]
    n_resp = [len(r) for r in enc.encode_ordinary_batch([e["response"] for e in examples], num_threads=2)]
    kept, dropped = [], {}
    for ex, lp, lr in zip(examples, n_prompt, n_resp):
        reason = (f"prompts over {max_prompt_tokens} tokens" if max_prompt_tokens and lp > max_prompt_tokens else
                  f"responses under {min_response_tokens} tokens" if lr < min_response_tokens else
                  f"responses over {max_response_tokens} tokens" if max_response_tokens and lr > max_response_tokens
                  else None)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            kept.append(ex)
    return kept, dropped


def load_hub_records(name, data_file=None):
    """Records of a dataset on the Hugging Face hub through `datasets` (network): its train split,
    or the one `data_file` of its repository. Any failure ends the program saying what to do."""
    try:
        import datasets
        ds = datasets.load_dataset(name, data_files=data_file, split="train")
    except Exception as e:  # no network, no datasets, hub errors: all end the same way
        where = f"{name}, file {data_file}" if data_file else name
        raise SystemExit(f"could not load {where} ({type(e).__name__}: {e}); "
                         f"download it yourself and pass --input FILE.jsonl") from None
    return [dict(r) for r in ds]


def add_instruction_args(parser, out_dir, input_help):
    """The flags every instruction-set prepare.py shares: --input, --template, --tokenizer,
    --max_prompt_tokens, --out_dir."""
    parser.add_argument("--input", help=input_help)
    parser.add_argument("--template", choices=TEMPLATES, default="alpaca",
                        help="alpaca: the paper's prompt (default); chat: the --tokenizer dir's chat template")
    parser.add_argument("--tokenizer", default="gpt2",
                        help="a tokenizer name, or a Hugging Face model dir (whose chat template --template=chat uses)")
    parser.add_argument("--max_prompt_tokens", type=int, default=256, help="longer prompts are dropped (0 = keep all)")
    parser.add_argument("--out_dir", default=str(out_dir))


def prepare_test_set(argv, doc, hub_name, hub_file, out_dir, min_response_tokens=0, max_examples=0):
    """main() of an evaluation-only instruction set (SelfInst, Vicuna, S-NI, UnNI): its records
    (--input, else `hub_file` of the hub dataset `hub_name`), formatted by --template, filtered by
    length, the first --max_examples kept, written as the split 'test' with meta.json."""
    import argparse
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_instruction_args(parser, out_dir, "local .json/.jsonl (instruction, input, output, [prompt])")
    parser.add_argument("--min_response_tokens", type=int, default=min_response_tokens,
                        help="drop examples whose response is shorter (tokens, eot not counted)")
    parser.add_argument("--max_examples", type=int, default=max_examples, help="keep the first N (0 = all)")
    args = parser.parse_args(argv)
    chat = args.template == "chat"
    format_prompt = prompt_formatter(args.template, args.tokenizer)
    records = read_records(args.input, ()) if args.input else load_hub_records(hub_name, hub_file)
    source = Path(args.input).name if args.input else f"{hub_name}/{hub_file}"
    examples = instruction_examples(records, format_prompt, given_prompts=not chat, source=source)
    enc = get_encoding(args.tokenizer)
    kept, dropped = filter_lengths(examples, enc, args.max_prompt_tokens, args.min_response_tokens,
                                   prompt_special=chat)
    if args.max_examples > 0:
        kept = kept[:args.max_examples]
    print(f"{len(records)} records, {len(records) - len(examples)} without instruction or response"
          + "".join(f", {n} with {why} dropped" for why, n in dropped.items()) + f": {len(kept)} kept")
    if not kept:
        raise SystemExit(f"no example of {source} is left: check the file and the length limits")
    stats = write_instruct_split(args.out_dir, "test", kept, args.tokenizer, prompt_special=chat)
    write_meta(args.out_dir, "instruct", args.tokenizer, source=source, template=args.template,
               max_prompt_tokens=args.max_prompt_tokens, min_response_tokens=args.min_response_tokens,
               counts={"test": stats["n"]})
    print(f"test: {stats['n']} examples, {stats['tokens']:,} tokens, longest prompt {stats['max_prompt_len']}; "
          f"wrote {repo_relative(args.out_dir)}")
    return stats
