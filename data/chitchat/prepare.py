"""
Real human conversations as instruction data: the Chit Chat Challenge dataset (the PyPI package
`chitchat-dataset`, MIT licence; 7,168 conversations between two people, written in 2018), for
distilling a chat model on human replies (the real-model experiment, real_model.sh).

    pip install chitchat-dataset
    python data/chitchat/prepare.py --tokenizer=<model: a .gguf, an HF dir, gpt2, ...>
        [--context_turns 4] [--n_valid 200] [--n_test 200] [--max_train 20000] [--seed 0]
        [--max_prompt_tokens 192] [--max_response_tokens 48] [--system ""] [--input dataset.json]
        [--out_dir data/chitchat]

An example is one turn of a conversation: the prompt is the `--context_turns` turns before it,
rendered with the model's chat template (the turn to answer is the user's, the one before it the
assistant's, and so on backwards), and the response, which is also the Rouge-L reference, is the
turn the person actually wrote next. A turn is a speaker's consecutive messages joined by a space.
A tokenizer without a chat template gets a plain transcript ("A: ...\nB: ...\nB:").

The split is by conversation, shuffled by --seed: no conversation gives examples to two splits.
Valid and test take one example from each of their conversations (a turn drawn by --seed, with at
least one turn of context); train takes every turn of its conversations, then at most --max_train
of them (drawn by --seed: turns in a random order, the first max_train that pass the length filter).
Examples whose prompt exceeds --max_prompt_tokens or whose reply exceeds --max_response_tokens tokens
(or is empty) are dropped from every split, before the draws.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from components.tokenizer import get_encoding  # noqa: E402
from data.common import (filter_lengths, render_chat_prompt, repo_relative, write_instruct_split,  # noqa: E402
                         write_meta)

PACKAGE = "chitchat_dataset"


def default_input():
    """dataset.json inside the installed chitchat-dataset package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the chitchat data comes from PyPI: pip install chitchat-dataset (or pass --input dataset.json)")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset.json"


def read_conversations(path):
    """[(conversation id, [turn text, ...])] in file order; a turn is one speaker's messages joined."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read it as the chitchat dataset.json ({e})") from None
    out = []
    for cid, conv in data.items():
        turns = [" ".join(u["text"].strip() for u in msg if u.get("text", "").strip()) for msg in conv["messages"]]
        turns = [t for t in turns if t]
        if len(turns) >= 2:
            out.append((cid, turns))
    return out


def prompt_renderer(enc, system):
    """f(context turns) -> prompt text: the model's chat template (the last turn is the user's), or a
    plain A/B transcript when the tokenizer has none."""
    template = getattr(enc, "chat_template", None)
    if not template:
        def transcript(context):  # B answers; the turn before B's is A's, and so on backwards
            n = len(context)
            return "\n".join(f"{'A' if (n - 1 - i) % 2 == 0 else 'B'}: {t}" for i, t in enumerate(context)) + "\nB:"
        return transcript, False
    special = {}
    if enc.bos_token is not None:
        special["bos_token"] = enc.decode([enc.bos_token])
    special["eos_token"] = enc.decode([enc.eot_token])

    def chat(context):
        roles = ["user" if (len(context) - 1 - i) % 2 == 0 else "assistant" for i in range(len(context))]
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": r, "content": t} for r, t in zip(roles, context)]
        return render_chat_prompt(template, messages, special)
    return chat, True


def examples_of(cid, turns, positions, context_turns, render, lead):
    """One example per turn position t >= 1: prompt = turns[t - context_turns : t], response = turns[t]
    (after `lead`: a space after a transcript's "B:", nothing after a chat template's assistant header)."""
    return [dict(prompt=render(turns[max(0, t - context_turns):t]), response=lead + turns[t],
                 references=[turns[t]], conversation=cid, turn=t) for t in positions]


def build_splits(conversations, enc, render, special, args):
    """{train, valid, test} example lists, split by conversation (see the module docstring)."""
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(conversations))
    n_eval = args.n_valid + args.n_test
    if len(conversations) <= n_eval:
        raise SystemExit(f"only {len(conversations)} conversations: lower --n_valid / --n_test")
    groups = {"valid": order[:args.n_valid], "test": order[args.n_valid:n_eval], "train": order[n_eval:]}
    splits, dropped_all = {}, {}
    lead = "" if special else " "
    for split, members in groups.items():
        turns_of = [(conversations[i][0], conversations[i][1], t) for i in members for t in range(1, len(conversations[i][1]))]
        if split == "train":  # a random order, kept in turn until max_train pass the length filters
            turns_of = [turns_of[j] for j in rng.permutation(len(turns_of))]
        kept, dropped, start = [], {}, 0
        while start < len(turns_of) and not (split == "train" and args.max_train and len(kept) >= args.max_train):
            chunk = turns_of[start:start + 4096]
            start += len(chunk)
            examples = [examples_of(cid, turns, [t], args.context_turns, render, lead)[0] for cid, turns, t in chunk]
            more, why = filter_lengths(examples, enc, args.max_prompt_tokens, min_response_tokens=1,
                                       max_response_tokens=args.max_response_tokens, prompt_special=special)
            kept += more
            for k, n in why.items():
                dropped[k] = dropped.get(k, 0) + n
        for why, n in dropped.items():
            dropped_all[f"{split}: {why}"] = n
        if split == "train":
            kept = kept[:args.max_train] if args.max_train else kept
            splits[split] = sorted(kept, key=lambda ex: (ex["conversation"], ex["turn"]))
        else:  # one turn per conversation, drawn among the kept ones
            by_conv = {}
            for ex in kept:
                by_conv.setdefault(ex["conversation"], []).append(ex)
            splits[split] = [c[int(rng.integers(len(c)))] for c in by_conv.values()]
    return splits, dropped_all


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="gpt2", help="the models' tokenizer (its chat template renders prompts)")
    parser.add_argument("--input", help="dataset.json of chitchat-dataset (default: the installed package's)")
    parser.add_argument("--context_turns", type=int, default=4)
    parser.add_argument("--n_valid", type=int, default=200, help="conversations (one example each)")
    parser.add_argument("--n_test", type=int, default=200, help="conversations (one example each)")
    parser.add_argument("--max_train", type=int, default=20000, help="train examples kept (0 = all)")
    parser.add_argument("--max_prompt_tokens", type=int, default=192)
    parser.add_argument("--max_response_tokens", type=int, default=48)
    parser.add_argument("--system", default="", help="a system message for every prompt (default: none; "
                                                      "the template may add its own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)
    if args.context_turns < 1 or args.n_valid < 1 or args.n_test < 1 or args.max_train < 0:
        raise SystemExit("--context_turns, --n_valid and --n_test must be >= 1, --max_train >= 0")

    path = Path(args.input) if args.input else default_input()
    conversations = read_conversations(path)
    enc = get_encoding(args.tokenizer)
    render, special = prompt_renderer(enc, args.system)
    splits, dropped = build_splits(conversations, enc, render, special, args)
    print(f"{len(conversations)} conversations with two turns or more" +
          "".join(f"; {n} {why}" for why, n in dropped.items() if n))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {}
    for split in ("train", "valid", "test"):
        stats[split] = write_instruct_split(out_dir, split, splits[split], args.tokenizer, prompt_special=special)
        print(f"{split}: {stats[split]['n']} examples, {stats[split]['tokens']:,} tokens, "
              f"longest prompt {stats[split]['max_prompt_len']}, longest example {stats[split]['max_len']}")
    write_meta(out_dir, "instruct", args.tokenizer, source=f"chitchat-dataset ({path.name}, MIT)",
               template="chat" if special else "transcript", split=f"by conversation, seed {args.seed}",
               seed=args.seed, context_turns=args.context_turns, max_prompt_tokens=args.max_prompt_tokens,
               max_response_tokens=args.max_response_tokens, system=args.system,
               counts={s: stats[s]["n"] for s in stats})
    print(f"wrote {repo_relative(out_dir)}")


if __name__ == "__main__":
    main()
