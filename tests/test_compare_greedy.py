"""scripts/compare_greedy.py: sample.py's greedy replies from a Hugging Face directory equal
transformers' greedy generation of it (a tiny random Llama, the byte-level test task), and a
difference is reported with a non-zero exit."""
import os
import sys

import pytest
import torch

transformers = pytest.importorskip('transformers')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts'))
import compare_greedy  # noqa: E402
from gguf_files import nudge  # noqa: E402


@pytest.fixture
def llama_dir(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64, vocab_size=257,
                                   tie_word_embeddings=False)
    path = tmp_path / 'hf'
    nudge(transformers.LlamaForCausalLM(cfg), 3).save_pretrained(path)
    return str(path)


def test_greedy_replies_equal_transformers(llama_dir, tiny_instruct, tmp_path):
    out = tmp_path / 'examples.md'
    compare_greedy.main([f'--models=a={llama_dir}', f'--data_dir={tiny_instruct}', '--num_prompts=2',
                         '--max_new_tokens=6', f'--out={out}'])
    text = out.read_text()
    assert "generation of the same directory: yes" in text
    assert text.count('| a | ') == 2 and 'Q: ' in text


def test_a_difference_exits_nonzero(llama_dir, tiny_instruct, tmp_path, monkeypatch):
    real = compare_greedy.theirs
    monkeypatch.setattr(compare_greedy, 'theirs', lambda *a: [t + 'x' for t in real(*a)])
    with pytest.raises(SystemExit, match='differ for a'):
        compare_greedy.main([f'--models=a={llama_dir}', f'--data_dir={tiny_instruct}', '--num_prompts=2',
                             '--max_new_tokens=4', f'--out={tmp_path / "e.md"}'])
    assert 'NO (a)' in (tmp_path / 'e.md').read_text()
