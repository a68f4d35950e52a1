"""
UnNI: the core set of Unnatural Instructions (Honovich et al., 2023), an evaluation set of MiniLLM
(arXiv 2306.08543, §3.1 and Table 1), kept to the examples whose response has at least 11 tokens,
as the paper does, and to the first 10,000 of them, as the reference's eval_main_uinst.sh
(--dev-num 10000).

    python data/unni/prepare.py [--input valid.jsonl] [--min_response_tokens 11] [--max_examples 10000]
        [--template alpaca|chat] [--tokenizer gpt2] [--max_prompt_tokens 256] [--out_dir data/unni]

Without --input it loads 11_/valid.jsonl (the >= 11-token part) of the MiniLLM authors' hub dataset
MiniLLM/uinst through `datasets` (network); --input takes that file (or any .json/.jsonl with
instruction, input, output) offline. Responses are counted in --tokenizer tokens, eot excluded.
Writes the split 'test' (data/common.write_instruct_split) and meta.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from data.common import prepare_test_set  # noqa: E402

HF_NAME, HF_FILE = "MiniLLM/uinst", "11_/valid.jsonl"


def main(argv=None):
    return prepare_test_set(argv, __doc__, HF_NAME, HF_FILE, Path(__file__).resolve().parent,
                            min_response_tokens=11, max_examples=10000)


if __name__ == "__main__":
    main()
