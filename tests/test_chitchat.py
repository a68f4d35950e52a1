"""data/chitchat/prepare.py on a small dataset.json in the package's format: the split is by
conversation, prompts are the model's chat template over the turns before (transformers'
apply_chat_template gives the same ids), the response is the turn the person wrote next."""
import json

import pytest

from data.common import read_instruct_split
from test_data import write_chat_model_dir


def write_dataset(path, n_conv=12, turns=5):
    """Conversations c0..c{n-1}; conversation i has `turns` turns (speakers alternate, two messages in
    the first turn), plus one conversation nobody answered (it gives no example)."""
    data = {}
    for i in range(n_conv):
        msgs = []
        for t in range(turns):
            sender = "s1" if t % 2 == 0 else "s2"
            texts = [f"hello {i}", f"how are you {i}"] if t == 0 else [f"conv {i} turn {t} says hi"]
            msgs.append([{"text": x, "timestamp": "2018", "sender": sender} for x in texts])
        data[f"c{i}"] = {"messages": msgs}
    data["lonely"] = {"messages": [[{"text": "anyone?", "timestamp": "2018", "sender": "s1"}]]}
    path.write_text(json.dumps(data))
    return str(path)


def chat_model_dir(tmp_path):
    return write_chat_model_dir(tmp_path / "chat_model", "conv turn says hi hello how are you")


def test_chitchat_split_by_conversation_with_the_chat_template(tmp_path):
    from transformers import AutoTokenizer

    from data.chitchat import prepare
    model_dir, out = chat_model_dir(tmp_path), tmp_path / "out"
    prepare.main(["--input", write_dataset(tmp_path / "dataset.json"), "--tokenizer", model_dir,
                  "--n_valid", "3", "--n_test", "3", "--context_turns", "3", "--out_dir", str(out)])
    splits = {s: read_instruct_split(out, s) for s in ("train", "valid", "test")}
    convs = {s: {ex["conversation"] for ex in splits[s][0]} for s in splits}
    assert len(convs["valid"]) == len(convs["test"]) == 3 and len(convs["train"]) == 6
    assert not (convs["train"] & convs["valid"] or convs["train"] & convs["test"] or convs["valid"] & convs["test"])
    assert [len(splits[s][0]) for s in ("train", "valid", "test")] == [6 * 4, 3, 3]   # every turn t >= 1 / one each
    hf = AutoTokenizer.from_pretrained(model_dir)
    for s, (examples, tokens, idx) in splits.items():
        for ex, (off, lp, lr) in zip(examples, idx):
            i, t = int(ex["conversation"][1:]), ex["turn"]
            turns = ["hello {0} how are you {0}".format(i)] + [f"conv {i} turn {k} says hi" for k in range(1, 5)]
            assert ex["response"] == ex["references"][0] == turns[t]
            context = turns[max(0, t - 3):t]   # the turn to answer is the user's, the one before the assistant's
            roles = ["user" if (len(context) - 1 - j) % 2 == 0 else "assistant" for j in range(len(context))]
            expected = hf.apply_chat_template([{"role": r, "content": c} for r, c in zip(roles, context)],
                                              add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            assert tokens[off:off + lp].tolist() == expected
            assert tokens[off + lp:off + lp + lr - 1].tolist() == hf(turns[t])["input_ids"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["template"] == "chat" and meta["counts"] == {"train": 24, "valid": 3, "test": 3}


def test_chitchat_transcript_without_a_chat_template_and_bad_input(tmp_path):
    from data.chitchat import prepare
    out = tmp_path / "out"
    prepare.main(["--input", write_dataset(tmp_path / "dataset.json", n_conv=4, turns=3), "--tokenizer", "byte",
                  "--n_valid", "1", "--n_test", "1", "--context_turns", "2", "--out_dir", str(out)])
    examples, _, _ = read_instruct_split(out, "train")
    ex = next(e for e in examples if e["turn"] == 2)
    i = ex["conversation"][1:]
    assert ex["prompt"] == f"B: hello {i} how are you {i}\nA: conv {i} turn 1 says hi\nB:"
    assert ex["response"] == f" conv {i} turn 2 says hi"
    with pytest.raises(SystemExit, match="only 5 conversations"):
        prepare.main(["--input", write_dataset(tmp_path / "d2.json", n_conv=5), "--tokenizer", "byte",
                      "--n_valid", "3", "--n_test", "2", "--out_dir", str(tmp_path / "o2")])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read it"):
        prepare.main(["--input", str(tmp_path / "bad.json"), "--tokenizer", "byte", "--out_dir", str(tmp_path / "o3")])
