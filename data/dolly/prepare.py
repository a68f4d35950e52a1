"""
databricks-dolly-15k as instruction data for the GPT-2 runs
(MiniLLM arXiv 2306.08543, experimental setup §3.1).

    python data/dolly/prepare.py [--input dolly.jsonl | --split_dir DIR [--test_input valid.jsonl]]
        [--seed 0] [--n_valid 1000] [--n_test 500] [--template alpaca|chat] [--tokenizer gpt2]
        [--max_prompt_tokens 256] [--max_response_tokens 0] [--out_dir data/dolly]

The split, two ways:
- the reference's (--split_dir): DIR holds the MiniLLM authors' processed train.jsonl and
  valid.jsonl (processed_data/dolly/full/gpt2/ of the hub dataset MiniLLM/dolly-processed) and
  either test.jsonl or --test_input (valid.jsonl of the hub dataset MiniLLM/dolly, the 500 test
  prompts their evaluation uses). Each split keeps the files' examples in the files' order, with
  the files' own prompts under --template=alpaca.
- a random one (otherwise): databricks/databricks-dolly-15k through `datasets` (network) or
  --input, a local .json (list) or .jsonl with instruction, context, response (category optional);
  shuffled by --seed into valid / test / train (about 1K / 500 / 12.4K, as in the paper).

Prompts use the Alpaca template (with an '### Input:' block when the context is non-empty) or,
with --template=chat, the chat template of the --tokenizer model directory. Examples whose prompt
exceeds --max_prompt_tokens tokens are dropped from every split (the reference drops them too).
Responses are kept whole by default: the training loader truncates to block_size.
--max_response_tokens N > 0 drops train examples whose response is longer than N tokens
(valid/test keep them: their responses only serve as Rouge-L references).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from data.common import (add_instruction_args, filter_lengths, instruction_examples, load_hub_records,  # noqa: E402
                         prompt_formatter, read_records, repo_relative, write_instruct_split, write_meta)
from components.tokenizer import get_encoding  # noqa: E402

HF_NAME = "databricks/databricks-dolly-15k"
FIELDS = ("instruction", "context", "response")


def reference_splits(split_dir, test_input, format_prompt, given_prompts):
    """{train, valid, test}: examples of the reference's split files, in their order."""
    split_dir = Path(split_dir)
    files = {"train": split_dir / "train.jsonl", "valid": split_dir / "valid.jsonl",
             "test": Path(test_input) if test_input else split_dir / "test.jsonl"}
    if not files["test"].is_file():
        raise SystemExit(f"{files['test']} does not exist: pass --test_input <valid.jsonl of MiniLLM/dolly>")
    return {split: instruction_examples(read_records(path, ()), format_prompt, given_prompts, source=str(path))
            for split, path in files.items()}


def random_splits(examples, seed, n_valid, n_test):
    """{train, valid, test} of examples shuffled by `seed`."""
    if len(examples) <= n_valid + n_test:
        raise SystemExit(f"only {len(examples)} usable examples, not enough for --n_valid {n_valid} "
                         f"+ --n_test {n_test} and a train split: lower them")
    order = np.random.default_rng(seed).permutation(len(examples))
    return {"valid": [examples[i] for i in order[:n_valid]],
            "test": [examples[i] for i in order[n_valid:n_valid + n_test]],
            "train": [examples[i] for i in order[n_valid + n_test:]]}


def report(name, before, dropped):
    print(f"{name}: {before} examples" + "".join(f", {n} with {why} dropped" for why, n in dropped.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_instruction_args(parser, Path(__file__).resolve().parent,
                         "local .json/.jsonl with instruction, context, response")
    parser.add_argument("--split_dir", help="the reference's processed train.jsonl / valid.jsonl (and test.jsonl)")
    parser.add_argument("--test_input", help="with --split_dir: the test file (MiniLLM/dolly valid.jsonl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_valid", type=int, default=1000)
    parser.add_argument("--n_test", type=int, default=500)
    parser.add_argument("--max_response_tokens", type=int, default=0, help="0 = no limit")
    args = parser.parse_args(argv)
    if args.split_dir and args.input:
        raise SystemExit("pass either --split_dir (the reference's split) or --input (a random split), not both")

    chat = args.template == "chat"
    format_prompt = prompt_formatter(args.template, args.tokenizer)
    enc = get_encoding(args.tokenizer)
    if args.split_dir:  # the reference's split: each file filtered as it is
        splits = reference_splits(args.split_dir, args.test_input, format_prompt, given_prompts=not chat)
        for split, examples in splits.items():
            splits[split], dropped = filter_lengths(examples, enc, args.max_prompt_tokens, prompt_special=chat)
            report(split, len(examples), dropped)
        source = f"split files in {args.split_dir}"
    else:  # long prompts go first, so that valid and test have exactly n_valid and n_test examples
        records = read_records(args.input, FIELDS) if args.input else load_hub_records(HF_NAME)
        source = Path(args.input).name if args.input else HF_NAME
        examples = instruction_examples(records, format_prompt, given_prompts=False, source=source)
        kept, dropped = filter_lengths(examples, enc, args.max_prompt_tokens, prompt_special=chat)
        report(f"{len(records)} records, {len(records) - len(examples)} empty; usable", len(examples), dropped)
        splits = random_splits(kept, args.seed, args.n_valid, args.n_test)
    if args.max_response_tokens > 0:
        before = len(splits["train"])
        splits["train"], dropped = filter_lengths(splits["train"], enc, max_response_tokens=args.max_response_tokens)
        report("train", before, dropped)

    out_dir = Path(args.out_dir)
    stats = {}
    for split in ("train", "valid", "test"):
        stats[split] = write_instruct_split(out_dir, split, splits[split], args.tokenizer, prompt_special=chat)
        print(f"{split}: {stats[split]['n']} examples, {stats[split]['tokens']:,} tokens, "
              f"longest prompt {stats[split]['max_prompt_len']}, longest example {stats[split]['max_len']}")
    write_meta(out_dir, "instruct", args.tokenizer, source=source, template=args.template,
               split="reference" if args.split_dir else f"random, seed {args.seed}",
               seed=args.seed, max_prompt_tokens=args.max_prompt_tokens,
               max_response_tokens=args.max_response_tokens, counts={s: stats[s]["n"] for s in stats})
    print(f"wrote {repo_relative(out_dir)}")


if __name__ == "__main__":
    main()
