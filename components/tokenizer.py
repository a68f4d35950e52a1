"""
Tokenizers: three named ones built offline from vendored files, and any Hugging Face model's own.

get_encoding(spec) takes
- 'gpt2': GPT-2's byte-level BPE (n_vocab 50257, <|endoftext|> = 50256), from assets/gpt2.tiktoken;
- 'qwen': Qwen2/2.5/3's byte-level BPE (151,643 ranks; <|endoftext|> 151643, <|im_start|> 151644,
  <|im_end|> 151645), from assets/qwen.tiktoken, with Qwen's split pattern and NFC normalisation;
- 'byte': one token per UTF-8 byte plus <|endoftext|> = 256 (the toy dataset's; needs no file);
- a Hugging Face model directory (or, online, a hub name: only its tokenizer files are fetched).
Vendored files are checked by sha256 first; tiktoken.get_encoding, which downloads, is never called.

Two engines, one interface (encode_ordinary, encode_ordinary_batch, encode, decode, eot_token,
bos_token, n_vocab, name, special_tokens_set; model directories are read in tokenizer_hf.py):
- BPEEncoding, a tiktoken Encoding, for byte-level BPE whose token ids follow merge order (GPT-2,
  Qwen, Llama-3): tiktoken uses one number as both merge priority and id, so it can reproduce those
  exactly and fast. Built from the directory's tokenizer.json, vocab.json + merges.txt or *.tiktoken,
  with its split regex, its normalisation and its added tokens.
- HFTokenizerEncoding, the `tokenizers` library (what transformers itself runs) on tokenizer.json,
  for everything else: SentencePiece-style vocabularies (LLaMA-1/2, Mistral v0.1: BPE with byte
  fallback and '▁' for spaces) and byte-level vocabularies whose ids are not in merge order (OPT:
  fairseq's frequency-ordered ids over GPT-2's merges).

Special tokens follow tiktoken's rules in both: encode(text) refuses text containing one unless
allowed_special says otherwise, encode_ordinary treats them as plain text. Data preparation uses
encode_ordinary and adds enc.bos_token (when the model's tokenizer prepends one: LLaMA/Mistral <s>,
OPT </s>, Llama-3 <|begin_of_text|>; None for GPT-2, Qwen and the named encodings) and eot itself.
eot_token is the model's end-of-sequence token (tokenizer_config.json eos_token, else
generation_config.json), e.g. OPT's </s> = 2, Qwen2.5-Instruct's <|im_end|> = 151645.

tokenizer_fingerprint(enc) hashes what the ids mean (every id's piece), not file bytes, so the
'qwen' encoding and a Qwen2.5 directory agree; check_same_tokenizer compares two of them.
"""
import base64
import functools
import hashlib
import json
import os
import re
from pathlib import Path

from components import gguf, tokenizer_hf
from components.bpe import (ENCODINGS, EOT, IM_END, IM_START, BPEEncoding, TokenizerError,  # noqa: F401
                            TokenizerFileError, named_encoding)
from components.tokenizer_hf import fetch_hub_tokenizer, load_hf_dir
from configurator import UserError


@functools.lru_cache(maxsize=None)
def get_encoding(spec):
    """The Encoding for a name ('gpt2', 'qwen', 'byte'), a Hugging Face model directory or a hub
    name ('Qwen/Qwen2.5-0.5B', online only); built once per process."""
    if spec in ENCODINGS:
        return named_encoding(spec)
    if gguf.is_gguf(spec):  # a .gguf file's own tokenizer (its metadata)
        return gguf.load_tokenizer(spec)
    if Path(spec).is_dir():
        return load_hf_dir(spec, name=spec)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not Path(spec).exists():
        return load_hf_dir(fetch_hub_tokenizer(spec), name=spec)
    raise TokenizerError(f"unknown tokenizer {spec!r}; choose one of {', '.join(ENCODINGS)} "
                         f"or a Hugging Face model directory")


# ---------------------------------------------------------------- fingerprints

def tokenizer_fingerprint(enc):
    """sha256 (hex) of what every id means: the mergeable vocabulary as sorted 'id base64(piece)'
    lines under a header saying whether pieces are bytes (byte-level BPE, whichever file or engine
    they came from) or SentencePiece strings. Special / added tokens are left out, so one
    vocabulary with more control tokens (Qwen3's dir next to 'qwen') has the same fingerprint;
    a special token beyond the vocabulary shows up in vocab_size instead."""
    if getattr(enc, "_fingerprint", None) is None:
        pieces = enc.pieces()
        h = hashlib.sha256(b"byte-level\n" if enc.byte_level else b"pieces\n")
        for i in sorted(pieces):
            p = pieces[i] if isinstance(pieces[i], bytes) else pieces[i].encode("utf-8")
            h.update(b"%d %s\n" % (i, base64.b64encode(p)))
        enc._fingerprint = h.hexdigest()
    return enc._fingerprint


def fingerprint_for_name(spec):
    """The fingerprint of a named encoding (for meta.json / checkpoints older than fingerprints),
    or None for anything else."""
    return tokenizer_fingerprint(get_encoding(spec)) if spec in ENCODINGS else None


def check_same_tokenizer(a_name, a_fingerprint, b_name, b_fingerprint, what):
    """Raise UserError unless two tokenizers (spec + fingerprint, e.g. a checkpoint's and the
    data's) have the same vocabulary; `what` starts the message (e.g. "teacher runs/t vs data
    data/dolly"). A missing fingerprint (meta.json / checkpoints from before fingerprints) is
    computed from a named encoding or a model directory that still exists; when a side still has
    none, the specs themselves must be equal."""
    def fingerprint(name):  # of a named encoding, or of a model directory / GGUF file that is still there
        if name in ENCODINGS or (name and Path(name).is_dir()) or (gguf.is_gguf(name) and gguf.exists(name)):
            return tokenizer_fingerprint(get_encoding(name))
        return None

    a_fp = a_fingerprint or fingerprint(a_name)
    b_fp = b_fingerprint or fingerprint(b_name)
    if a_fp and b_fp:
        if a_fp == b_fp:
            return
        raise UserError(f"{what}: tokenizer '{a_name}' (vocabulary {a_fp[:12]}) differs from '{b_name}' "
                        f"(vocabulary {b_fp[:12]}): teacher, student and data must share one tokenizer "
                        f"(prepare the data with --tokenizer=<the models' tokenizer>)")
    if a_name != b_name:
        raise UserError(f"{what}: tokenizer '{a_name}' vs '{b_name}' and no fingerprint to compare them: "
                        f"teacher, student and data must share one tokenizer")


def write_hf_tokenizer_files(spec, out_dir):
    """Write the tokenizer files of `spec` into out_dir (an exported Hugging Face model directory)
    so that transformers.AutoTokenizer.from_pretrained(out_dir) gives our ids; see tokenizer_hf.py."""
    return tokenizer_hf.write_hf_tokenizer_files(get_encoding(spec), out_dir)


def special_token_ids(tokenizer_spec):
    """bos / eos ids of the tokenizer (tokenizer.get_encoding: bos None for GPT-2, Qwen and the
    named encodings) and, from a Hugging Face directory's generation_config.json, its pad id and
    its list of eos ids (Llama-3-Instruct stops at any of three) when that list holds our eos."""
    enc = get_encoding(tokenizer_spec)
    ids = {'bos_token_id': enc.bos_token, 'eos_token_id': enc.eot_token}
    source = os.path.join(enc.source_dir, 'generation_config.json') if getattr(enc, 'source_dir', None) else ''
    if os.path.exists(source):
        with open(source) as f:
            gen = json.load(f)
        if isinstance(gen.get('eos_token_id'), list) and enc.eot_token in gen['eos_token_id']:
            ids['eos_token_id'] = gen['eos_token_id']
        ids['pad_token_id'] = gen.get('pad_token_id')
    return {k: v for k, v in ids.items() if v is not None}
