"""
SelfInst: the user-oriented instructions of Self-Instruct (Wang et al., 2023), an evaluation set of
MiniLLM (arXiv 2306.08543, §3.1 and Table 1).

    python data/self_inst/prepare.py [--input valid.jsonl] [--template alpaca|chat] [--tokenizer gpt2]
        [--max_prompt_tokens 256] [--out_dir data/self_inst]

Without --input it loads valid.jsonl of the MiniLLM authors' hub dataset MiniLLM/self-inst through
`datasets` (network); --input takes that file (or any .json/.jsonl with instruction, input, output)
offline. Writes the split 'test' (data/common.write_instruct_split) and meta.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from data.common import prepare_test_set  # noqa: E402

HF_NAME, HF_FILE = "MiniLLM/self-inst", "valid.jsonl"


def main(argv=None):
    return prepare_test_set(argv, __doc__, HF_NAME, HF_FILE, Path(__file__).resolve().parent)


if __name__ == "__main__":
    main()
