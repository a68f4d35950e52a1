"""
Convert a run of ours: consolidate an FSDP run's sharded checkpoint (dcp/) into one ckpt.pt, or
export any run (or .pt) to a Hugging Face directory that `transformers` loads.

    python scripts/convert_checkpoint.py --consolidate out/<run>
    python scripts/convert_checkpoint.py --export_hf out/<run> <out dir> [--max_shard_size=5GB]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from components.checkpoint import BEST_NAME, DCP_BEST_DIR, consolidate, export_run  # noqa: E402
from configurator import UserError, run  # noqa: E402


USAGE = ("usage: python scripts/convert_checkpoint.py --consolidate out/<run>  (an FSDP run directory with dcp/)\n"
         "       python scripts/convert_checkpoint.py --export_hf out/<run> <out dir> [--max_shard_size=5GB]")


def main(argv):
    if argv[:1] == ['--export_hf'] and len(argv) in (3, 4):
        shard = argv[3].split('=', 1)[1] if len(argv) == 4 and argv[3].startswith('--max_shard_size=') else None
        if len(argv) == 4 and shard is None:
            raise UserError(USAGE)
        print(f"wrote {export_run(argv[1], argv[2], shard or '5GB')}")
        return
    if len(argv) != 2 or argv[0] != '--consolidate':
        raise UserError(USAGE)
    written = consolidate(argv[1])
    best = os.path.join(argv[1], BEST_NAME)
    print(f"wrote {written}" + (f" and {best}" if written != best and os.path.isdir(os.path.join(argv[1], DCP_BEST_DIR)) else ''))


if __name__ == '__main__':
    run(main)
