"""
The toy instruction-following dataset (byte tokenizer), generated from a seed. See task.py.

    python data/toy_instruct/prepare.py [--n_train 30000] [--n_valid 500] [--n_test 500]
        [--seed 0] [--families add,sort,...] [--out_dir data/toy_instruct]

The default families are all but sum_to (see task.py).

Writes {train,valid,test}.jsonl/.tokens.bin/.idx.npy, plus train.bin/val.bin (the formatted
train/valid examples as an LM stream, MiniLLM's L_PT corpus) and meta.json.
"""

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from data.common import encode_documents, repo_relative, write_instruct_split, write_lm, write_meta  # noqa: E402
from data.toy_instruct.task import BLOCK_SIZE, DEFAULT_FAMILIES, PROMPT_TEMPLATE, TASKS, generate  # noqa: E402
from components.tokenizer import get_encoding  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_train", type=int, default=30000)
    parser.add_argument("--n_valid", type=int, default=500)
    parser.add_argument("--n_test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES),
                        help=f"comma-separated subset of: {','.join(TASKS)} (default: all but sum_to)")
    parser.add_argument("--tokenizer", default="byte", help="byte (default: the toy's), or any tokenizer spec")
    parser.add_argument("--out_dir", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)
    families = tuple(f for f in args.families.split(",") if f)
    unknown = [f for f in families if f not in TASKS]
    if unknown or not families:
        raise SystemExit(f"--families: unknown {unknown or 'empty list'}; choose from {','.join(TASKS)}")
    if min(args.n_train, args.n_valid, args.n_test) < 1:
        raise SystemExit("--n_train, --n_valid and --n_test must be at least 1")

    out_dir = Path(args.out_dir)
    enc = get_encoding(args.tokenizer)
    stats = {}
    splits = {}
    for split, n in (("train", args.n_train), ("valid", args.n_valid), ("test", args.n_test)):
        splits[split] = generate(split, n, args.seed, families)
        stats[split] = write_instruct_split(out_dir, split, splits[split], args.tokenizer)
        assert stats[split]["max_len"] <= BLOCK_SIZE, stats[split]
        per_family = collections.Counter(ex["task"] for ex in splits[split])
        print(f"{split}: {stats[split]['n']} examples, {stats[split]['tokens']} tokens, "
              f"longest {stats[split]['max_len']} tokens, per family {dict(sorted(per_family.items()))}")
    for split, name in (("train", "train.bin"), ("valid", "val.bin")):
        texts = (ex["prompt"] + ex["response"] for ex in splits[split])
        n_tok = write_lm(out_dir / name, encode_documents(enc, texts), enc.n_vocab)
        print(f"{name}: {n_tok} tokens (LM stream of the {split} examples)")
    write_meta(out_dir, "instruct", args.tokenizer, block_size=BLOCK_SIZE, seed=args.seed,
               families=list(families), template=PROMPT_TEMPLATE + " {answer}",
               counts={s: stats[s]["n"] for s in stats},
               checker="data.toy_instruct.task.is_valid")
    print(f"wrote {repo_relative(out_dir)}")


if __name__ == "__main__":
    main()
