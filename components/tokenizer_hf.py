"""
The Hugging Face side of tokenizer.py: reading a model directory's tokenizer files (tokenizer.json,
vocab.json + merges.txt, *.tiktoken, tokenizer_config.json, generation_config.json) into one of
tokenizer.py's interfaces, fetching them from the hub by name, and writing them back on export.

Byte-level BPE whose ids follow merge order becomes a bpe.BPEEncoding (tiktoken) with the
directory's split regex, normalisation and added tokens; anything else runs through the
`tokenizers` library (what transformers itself runs) as an HFTokenizerEncoding. A named encoding
is exported as a byte-level BPE tokenizer.json whose merges are recovered from tiktoken's ranks.
"""

import functools
import json
import shutil
from pathlib import Path

from components.bpe import (EOT, GPT2_PATTERN, QWEN_PATTERN, BPEEncoding, TokenizerError, TokenizerFileError,
                            load_bpe_ranks)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "tokenizer.model", "chat_template.jinja", "*.tiktoken")
# transformers' tokenizer classes that mean "byte-level BPE with this split" when only
# vocab.json + merges.txt or a .tiktoken file is there
CLASS_PATTERNS = {"GPT2Tokenizer": (GPT2_PATTERN, None), "GPT2TokenizerFast": (GPT2_PATTERN, None),
                  "Qwen2Tokenizer": (QWEN_PATTERN, "NFC"), "Qwen2TokenizerFast": (QWEN_PATTERN, "NFC"),
                  "QWenTokenizer": (QWEN_PATTERN, "NFC")}


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


def _without_dummy_prefix(spec):
    """A tokenizer.json (as a dict) less SentencePiece's dummy prefix: no Prepend('▁') normaliser,
    no Metaspace prepending (LLaMA-1/2 and Mistral write one or the other)."""
    spec = json.loads(json.dumps(spec))
    norm = spec.get("normalizer") or {}
    if norm.get("type") == "Prepend":
        spec["normalizer"] = None
    elif norm.get("type") == "Sequence":
        norm["normalizers"] = [n for n in norm["normalizers"] if n.get("type") != "Prepend"]
    pre = spec.get("pre_tokenizer") or {}
    for p in pre.get("pretokenizers", [pre]):
        if p.get("type") == "Metaspace":
            p["prepend_scheme"], p["add_prefix_space"] = "never", False
    return spec


class HFTokenizerEncoding:
    """A `tokenizers.Tokenizer` (from a tokenizer.json) behind the part of tiktoken's Encoding
    interface this codebase uses. Ids are what that tokenizer.json gives with
    add_special_tokens=False (transformers runs the same library); bos_token is what its
    add_special_tokens=True would prepend."""

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
        self._continuation = Tokenizer.from_str(json.dumps(_without_dummy_prefix(spec)))
        self._continuation.encode_special_tokens = True

    def encode_ordinary(self, text):
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_continuation(self, text):
        """Ids of `text` as it reads after other text (a response after its prompt): without
        SentencePiece's dummy prefix, which encode_ordinary puts before a whole text ('▁Paris'
        alone, but 'Paris' after '...Response:\n')."""
        return self._continuation.encode(text, add_special_tokens=False).ids

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

    def __reduce__(self):  # pickles as the directory it was read from
        return load_hf_dir, (str(self.source_dir), self.name)

    def __repr__(self):
        return f"<HFTokenizerEncoding {self.name!r}>"


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

    def setting(key):
        return config.get(key) or special_map.get(key)

    named = [_token_str(setting(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    named += [_token_str(t) for t in setting("additional_special_tokens") or []]
    template = config.get("chat_template")  # a string, or named templates of which 'default' is the one
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    if not template and (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    return dict(added=added, named=[t for t in named if t], cls=config.get("tokenizer_class"), template=template,
                eos=_token_str(setting("eos_token")), bos=_token_str(setting("bos_token")),
                add_bos=config.get("add_bos_token"), model_type=_read_json(d / "config.json").get("model_type"),
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
    config says it; else the first special token of tokenizer.json's TemplateProcessing; OPT, whose
    hub files say neither, prepends its bos </s> (as fairseq trained it)."""
    if cfg["add_bos"] is not None:
        return token_id(cfg["bos"]) if cfg["add_bos"] and cfg["bos"] else None
    if cfg["model_type"] == "opt" and cfg["bos"]:
        return token_id(cfg["bos"])
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
                       bos_token=bos, normalization=normalization, source_dir=d, chat_template=cfg["template"],
                       rebuild=(load_hf_dir, (str(d), name)))


def fetch_hub_tokenizer(repo_id):
    """Download only the tokenizer files of a hub model (network); returns the local directory."""
    try:
        from huggingface_hub import snapshot_download
        # config.json and generation_config.json are small and say the model type / eos ids
        return snapshot_download(repo_id, allow_patterns=[*TOKENIZER_FILES, "config.json", "generation_config.json"])
    except Exception as e:  # offline, no such repo, gated, no huggingface_hub: all end the same way
        raise TokenizerError(f"cannot fetch the tokenizer of '{repo_id}' from the Hugging Face hub "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); download "
                             f"the model directory yourself and pass its path") from None


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


def write_hf_tokenizer_files(enc, out_dir):
    """Write the tokenizer files of the encoding `enc` into out_dir (a Hugging Face model directory being
    exported) so that transformers.AutoTokenizer.from_pretrained(out_dir) gives our ids. A model
    directory's own files are copied; a named encoding gets tokenizer.json, vocab.json, merges.txt,
    tokenizer_config.json and special_tokens_map.json. Returns the paths written."""
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
