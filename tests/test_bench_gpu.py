"""scripts/bench_gpu.py --dry-run: the GPU speed script's every measurement on the CPU at tiny shapes
(SFT eager, eager vs static decoding, a MiniLLM step through train.py, FSDP2 on one rank through
torchrun), so that it still runs when a GPU comes. Nothing about speed is asserted."""
import re

from scripts import bench_gpu


def test_bench_gpu_dry_run_writes_every_row(tmp_path):
    out = tmp_path / 'BENCHMARKS.md'
    assert bench_gpu.main(['--dry-run', f'--out={out}']) == 0
    text = out.read_text()
    section = text[text.index('<!-- bench:gpu -->'):text.index('<!-- /bench:gpu -->')]
    rows = [line for line in section.splitlines() if line.startswith('| ') and not line.startswith('| measurement')]
    assert [r.split(' | ')[1] for r in rows] == ['eager', 'eager', 'eager', 'static', 'train.py', 'torchrun']
    for r in rows:
        assert float(re.sub('[^0-9.]', '', r.split(' | ')[2])) > 0
    # the static-shape decoding step picks the same greedy tokens as the eager one
    assert 'agree at 100.0% of positions' in section
