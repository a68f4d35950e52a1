"""
Tokenizers, both as tiktoken Encodings, built entirely offline.

- 'gpt2': GPT-2's byte-level BPE (n_vocab 50257, <|endoftext|> = 50256), from the vendored
  rank file assets/gpt2.tiktoken, whose sha256 is checked before use. We never call
  tiktoken.get_encoding('gpt2'), which would download the ranks.
- 'byte': one token per UTF-8 byte (rank i = byte i) plus <|endoftext|> = 256, n_vocab 257.
  It round-trips any string and needs no file at all; the toy dataset uses it.

Both behave the same way with special tokens (tiktoken's rules): enc.encode(text) refuses text
that contains '<|endoftext|>' unless allowed_special says otherwise, and enc.encode_ordinary
treats it as plain text. Data preparation uses encode_ordinary and appends enc.eot_token itself.
"""

import base64
import functools
import hashlib
from pathlib import Path

import tiktoken

EOT = "<|endoftext|>"

# GPT-2's pre-tokenizer (r50k_base): English contractions, runs of letters / digits / other
# symbols each with at most one leading space, and whitespace. Every character falls into one
# of the alternatives, so no text is ever dropped by the split.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

GPT2_RANKS_PATH = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_REFETCH = (
    "re-fetch it with `pip download --no-deps --no-binary :all: openai-whisper==20250625` "
    "and copy whisper/assets/gpt2.tiktoken from the sdist to assets/gpt2.tiktoken"
)
ENCODINGS = ("gpt2", "byte")


class TokenizerFileError(ValueError):
    """The vendored vocabulary file is missing, corrupt, or not the one we expect."""


def load_bpe_ranks(path, expected_sha256=GPT2_RANKS_SHA256):
    """Read a .tiktoken rank file (one 'base64(token) rank' per line) into {token_bytes: rank}.

    Parsed here rather than by tiktoken.load.load_tiktoken_bpe, which keys a shared cache in the
    temp dir by path and would happily return a stale cached copy instead of this file.
    expected_sha256=None skips the hash check.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenizerFileError(f"tokenizer file {path} is missing; {GPT2_REFETCH}")
    data = path.read_bytes()
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise TokenizerFileError(
                f"tokenizer file {path} has sha256 {digest}, expected {expected_sha256} "
                f"(corrupt or wrong file); {GPT2_REFETCH}")
    ranks = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except ValueError as e:  # binascii.Error is a ValueError too
            raise TokenizerFileError(
                f"tokenizer file {path}, line {lineno}: cannot parse {line[:60]!r} ({e}); "
                f"{GPT2_REFETCH}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerFileError(
            f"tokenizer file {path}: ranks are not 0..{len(ranks) - 1} without gaps; {GPT2_REFETCH}")
    return ranks


def build_gpt2(path=GPT2_RANKS_PATH, expected_sha256=GPT2_RANKS_SHA256):
    """GPT-2's BPE as a tiktoken Encoding, from a local rank file (no network)."""
    ranks = load_bpe_ranks(path, expected_sha256)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: len(ranks)},  # 50256 for the real file
        explicit_n_vocab=len(ranks) + 1,
    )


def build_byte():
    """Byte-level Encoding: token i is the single byte i, <|endoftext|> is 256.

    With no merges the BPE step is the identity on bytes, so any UTF-8 string round-trips.
    The split pattern only chunks text before that step; chunks of up to 64 characters of
    anything are ~3x faster than GPT-2's word-level split and give the same tokens.
    """
    ranks = {bytes([i]): i for i in range(256)}
    return tiktoken.Encoding(
        name="byte",
        pat_str=r"[\s\S]{1,64}",
        mergeable_ranks=ranks,
        special_tokens={EOT: 256},
        explicit_n_vocab=257,
    )


@functools.lru_cache(maxsize=None)
def get_encoding(name):
    """The named Encoding ('gpt2' or 'byte'), built once per process."""
    if name == "gpt2":
        return build_gpt2()
    if name == "byte":
        return build_byte()
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(ENCODINGS)}")
