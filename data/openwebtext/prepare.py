"""
OpenWebText as the plain-text corpus D_PT for MiniLLM's L_PT term on the GPT-2 runs
(MiniLLM arXiv 2306.08543, experimental setup §3.1), tokenized (GPT-2's by default) into
train.bin / val.bin.

    python data/openwebtext/prepare.py [--max_docs 100000] [--val_every 200] [--out_dir DIR]
        [--tokenizer gpt2|qwen|<HF model dir>]
    python data/openwebtext/prepare.py --input some.txt more_texts/ ...

Without --input it reads Skylion007/openwebtext with the `datasets` library (streamed when
--max_docs is set, so only that many documents are downloaded; the full corpus is ~9B tokens,
~18 GB of uint16). With --input, every .txt file given, or found under a given directory, is
one document. Document i goes to val.bin when i % val_every == 0, else to train.bin; no
randomness, so the output depends only on the input and flags.

The files are flat token streams with <|endoftext|> after every document; packing into
512-token chunks (as in the paper) happens at load time by cutting windows from the stream.
"""

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from data.common import atomic_path, encode_documents, repo_relative, token_dtype, write_meta  # noqa: E402
from components.tokenizer import get_encoding  # noqa: E402

HF_NAME = "Skylion007/openwebtext"


def text_files(inputs):
    """The .txt files named in `inputs`, directories expanded recursively, in sorted order."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(path.rglob("*.txt"))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"--input {item} does not exist")
    if not files:
        raise SystemExit(f"no .txt files found in {' '.join(inputs)}")
    return files


def local_documents(inputs):
    for path in text_files(inputs):
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SystemExit(f"{path}: not UTF-8 text ({e})") from None


def hub_documents(max_docs):
    try:
        import datasets
        ds = datasets.load_dataset(HF_NAME, split="train", streaming=max_docs > 0)
    except Exception as e:  # no network, no datasets, hub errors: all end the same way
        raise SystemExit(f"could not load {HF_NAME} ({type(e).__name__}: {e}); "
                         f"pass local text files with --input") from None
    return (row["text"] for row in ds)


def _batched(iterable, n):
    it = iter(iterable)
    while batch := list(itertools.islice(it, n)):
        yield batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", help=".txt files or directories of them (one file = one document)")
    parser.add_argument("--max_docs", type=int, default=0, help="0 = all")
    parser.add_argument("--val_every", type=int, default=200, help="every N-th document goes to val")
    parser.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), qwen, or a Hugging Face model directory")
    parser.add_argument("--out_dir", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)
    if args.val_every < 2:
        raise SystemExit("--val_every must be at least 2")

    enc = get_encoding(args.tokenizer)
    dtype = token_dtype(enc.n_vocab)
    docs = local_documents(args.input) if args.input else hub_documents(args.max_docs)
    if args.max_docs > 0:
        docs = itertools.islice(docs, args.max_docs)
    out_dir = Path(args.out_dir)
    counts = {"train": [0, 0], "val": [0, 0]}  # documents, tokens
    with atomic_path(out_dir / "train.bin") as tmp_train, atomic_path(out_dir / "val.bin") as tmp_val, \
            open(tmp_train, "wb") as f_train, open(tmp_val, "wb") as f_val:
        i = 0
        # encode_documents returns one array per batch of documents, so encode batches per split
        for batch in _batched(docs, 1024):
            for split, f in (("val", f_val), ("train", f_train)):
                texts = [t for j, t in enumerate(batch, start=i) if (j % args.val_every == 0) == (split == "val")]
                for ids in encode_documents(enc, texts):
                    ids.astype(dtype).tofile(f)
                    counts[split][1] += ids.size
                counts[split][0] += len(texts)
            i += len(batch)
            if i % (1024 * 100) == 0:
                print(f"{i:,} documents, {counts['train'][1] + counts['val'][1]:,} tokens", flush=True)
        if counts["train"][0] == 0:  # raised inside the with block, so nothing is renamed into place
            raise SystemExit("no documents went to train.bin: give more documents or a larger --val_every")
    write_meta(out_dir, "lm", args.tokenizer, source="local files" if args.input else HF_NAME,
               documents={k: v[0] for k, v in counts.items()},
               train_tokens=counts["train"][1], val_tokens=counts["val"][1], pack_block_size=512)
    for split in ("train", "val"):
        print(f"{split}.bin: {counts[split][0]:,} documents, {counts[split][1]:,} tokens")
    print(f"wrote {repo_relative(out_dir)}")


if __name__ == "__main__":
    main()
