"""
databricks-dolly-15k as instruction data for the GPT-2 runs
(MiniLLM arXiv 2306.08543, experimental setup §3.1).

    python data/dolly/prepare.py [--input dolly.jsonl] [--seed 0] [--n_valid 1000] [--n_test 500]
        [--max_prompt_tokens 256] [--max_response_tokens 0] [--out_dir data/dolly]

Without --input it loads databricks/databricks-dolly-15k with the `datasets` library (network);
--input takes a local .json (list) or .jsonl file with the same string fields: instruction,
context, response (category optional).

Prompts use the Alpaca template (with an '### Input:' block when the context is non-empty).
Examples whose prompt exceeds --max_prompt_tokens GPT-2 tokens are dropped from every split,
then the rest is shuffled by --seed into valid / test / train (about 12.4K / 1K / 500, as in
the paper). Responses are kept whole by default: the training loader truncates to block_size.
--max_response_tokens N > 0 drops train examples whose response is longer than N tokens
(valid/test keep them: their responses only serve as Rouge-L references).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from data.common import read_records, repo_relative, write_instruct_split, write_meta  # noqa: E402
from tokenizer import get_encoding  # noqa: E402

HF_NAME = "databricks/databricks-dolly-15k"
FIELDS = ("instruction", "context", "response")

TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)


def format_prompt(instruction, context=""):
    """The Alpaca-style prompt for one Dolly record."""
    instruction, context = instruction.strip(), context.strip()
    if context:
        return TEMPLATE_WITH_INPUT.format(instruction=instruction, context=context)
    return TEMPLATE.format(instruction=instruction)


def load_records(input_path):
    if input_path:
        return read_records(input_path, FIELDS)
    try:
        import datasets
        ds = datasets.load_dataset(HF_NAME, split="train")
    except Exception as e:  # no network, no datasets, hub errors: all end the same way
        raise SystemExit(f"could not load {HF_NAME} ({type(e).__name__}: {e}); "
                         f"download it yourself and pass --input FILE.jsonl") from None
    return [dict(r) for r in ds]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="local .json/.jsonl with instruction, context, response")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_valid", type=int, default=1000)
    parser.add_argument("--n_test", type=int, default=500)
    parser.add_argument("--max_prompt_tokens", type=int, default=256)
    parser.add_argument("--max_response_tokens", type=int, default=0, help="0 = no limit")
    parser.add_argument("--out_dir", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)

    enc = get_encoding("gpt2")
    records = load_records(args.input)
    examples = []
    for r in records:
        if not r["instruction"].strip() or not r["response"].strip():
            continue
        prompt = format_prompt(r["instruction"], r.get("context") or "")
        response = r["response"].strip()
        examples.append({"prompt": prompt, "response": response, "references": [response],
                         "category": r.get("category", "")})
    n_prompt = [len(p) for p in enc.encode_ordinary_batch([e["prompt"] for e in examples], num_threads=2)]
    kept = [e for e, n in zip(examples, n_prompt) if n <= args.max_prompt_tokens]
    print(f"{len(records)} records, {len(records) - len(examples)} empty, "
          f"{len(examples) - len(kept)} with prompts over {args.max_prompt_tokens} tokens dropped")
    if len(kept) <= args.n_valid + args.n_test:
        raise SystemExit(f"only {len(kept)} usable examples, not enough for --n_valid {args.n_valid} "
                         f"+ --n_test {args.n_test} and a train split: lower them")

    order = np.random.default_rng(args.seed).permutation(len(kept))
    splits = {"valid": [kept[i] for i in order[:args.n_valid]],
              "test": [kept[i] for i in order[args.n_valid:args.n_valid + args.n_test]],
              "train": [kept[i] for i in order[args.n_valid + args.n_test:]]}
    if args.max_response_tokens > 0:
        n_resp = enc.encode_ordinary_batch([e["response"] for e in splits["train"]], num_threads=2)
        before = len(splits["train"])
        splits["train"] = [e for e, r in zip(splits["train"], n_resp) if len(r) <= args.max_response_tokens]
        print(f"train: {before - len(splits['train'])} responses over {args.max_response_tokens} tokens dropped")

    out_dir = Path(args.out_dir)
    stats = {}
    for split in ("train", "valid", "test"):
        stats[split] = write_instruct_split(out_dir, split, splits[split], "gpt2")
        print(f"{split}: {stats[split]['n']} examples, {stats[split]['tokens']:,} tokens, "
              f"longest prompt {stats[split]['max_prompt_len']}, longest example {stats[split]['max_len']}")
    write_meta(out_dir, "instruct", "gpt2", source=Path(args.input).name if args.input else HF_NAME,
               seed=args.seed, max_prompt_tokens=args.max_prompt_tokens,
               max_response_tokens=args.max_response_tokens,
               counts={s: stats[s]["n"] for s in stats})
    print(f"wrote {repo_relative(out_dir)}")


if __name__ == "__main__":
    main()
