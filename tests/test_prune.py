"""
Students pruned from their teacher (prune.py): the blocks each rule keeps, ShortGPT's block influence
against transformers' hidden states, a pruned model against transformers with the same blocks
deleted, and train.py with student_layers: a GGUF teacher's 2 of 4 blocks train with every method,
export, and reload in transformers with the same logits.
"""
import json
import os

import pytest
import torch

import prune
import train
from components.checkpoint import export_run, load_model
from configurator import UserError
from gguf_files import nudge, write_gguf

transformers = pytest.importorskip('transformers')


def tiny_llama(n_layer=4, seed=0):
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layer, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64, vocab_size=257,
                                   tie_word_embeddings=False)
    return nudge(transformers.LlamaForCausalLM(cfg), seed)


def test_even_layers_as_distilbert():
    assert prune.even_layers(12, 6) == [0, 2, 4, 6, 8, 10]   # DistilBERT: one of every two
    assert prune.even_layers(30, 6) == [0, 5, 10, 15, 20, 25]
    assert prune.even_layers(4, 4) == [0, 1, 2, 3]


def test_block_influence_is_one_minus_cosine_of_transformers_hidden_states(tmp_path):
    ref = tiny_llama(4)
    with torch.no_grad():  # block 2 made an identity (both residual branches zero): cos = 1, BI = 0
        ref.model.layers[2].self_attn.o_proj.weight.zero_()
        ref.model.layers[2].mlp.down_proj.weight.zero_()
    model, _ = load_model(write_gguf(tmp_path / 't.gguf', ref, 'llama'))
    x = torch.randint(0, 257, (4, 16), generator=torch.Generator().manual_seed(0))
    bi = prune.block_influence(model, x, batch_size=3)
    with torch.no_grad():
        hs = ref(x, output_hidden_states=True).hidden_states   # [i]: entering block i; the last is after the norm
    for i in range(3):
        expect = 1 - torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1).double().mean()
        assert abs(bi[i].item() - expect.item()) < 1e-6
    assert abs(bi[2].item()) < 1e-6
    layers, _ = prune.importance_layers(model, 3, x)
    assert 2 not in layers and layers == sorted(layers)


def test_kept_blocks_compute_transformers_model_with_the_others_deleted(tmp_path):
    ref = tiny_llama(4)
    model, _ = load_model(write_gguf(tmp_path / 't.gguf', ref, 'llama'))
    student = prune.keep_blocks(model, [0, 3])
    ref.model.layers = torch.nn.ModuleList([ref.model.layers[0], ref.model.layers[3]])
    ref.config.num_hidden_layers = 2
    x = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ref(x, use_cache=False).logits - student(x, targets=x)[0]).abs().max().item() < 1e-5
    assert student.config.n_layer == 2 and model.config.n_layer == 4
    for bad in ([], [0, 0], [4]):
        with pytest.raises(UserError, match='not distinct blocks'):
            prune.keep_blocks(model, bad)


TRAIN = ['--eval_iters=2', '--log_interval=1', '--warmup_iters=0', '--device=cpu', '--dtype=float32',
         '--block_size=32', '--batch_size=8', '--max_iters=3', '--eval_interval=3', '--eval_rouge_examples=8',
         '--student_layers=2']
METHODS = {
    'sft': ['--method=sft', '--student_layer_selection=importance'],
    'kd': ['--method=kd', '--student_layer_selection=even'],
    'seqkd': ['--method=seqkd', '--kd_ratio=0.5', '--student_layer_selection=1,3'],
    'minillm': ['--method=minillm', '--rollout_size=8', '--rollout_batch_size=8', '--ppo_epochs=1', '--max_new_tokens=4',
                '--student_layer_selection=importance'],
    'gkd': ['--method=gkd', '--max_new_tokens=4', '--student_layer_selection=even'],
    'distillm': ['--method=distillm', '--max_new_tokens=4', '--distillm_capacity=16', '--student_layer_selection=even'],
}


@pytest.fixture(scope='module')
def gguf_teacher(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp('teacher') / 'teacher.gguf', tiny_llama(4, seed=3), 'llama')


@pytest.mark.parametrize('method', list(METHODS))
def test_pruned_student_trains_with_every_method_and_exports(gguf_teacher, tiny_instruct, tmp_path, method, capsys):
    out = str(tmp_path / method)
    train.main(TRAIN + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', f'--init_from={gguf_teacher}',
                        f'--teacher={gguf_teacher}', f'--pt_data_dir={tiny_instruct}', *METHODS[method]])
    said = capsys.readouterr().out
    selection = METHODS[method][-1].split('=')[1]
    layers = {'even': [0, 2], '1,3': [1, 3]}.get(selection)
    if layers is not None:
        assert f"student: blocks {layers} of {gguf_teacher}'s 4 ({selection})" in said
    with open(os.path.join(out, 'log.jsonl')) as f:
        assert any('loss' in json.loads(line) for line in f)
    student, tok = load_model(out)
    assert student.config.n_layer == 2 and tok == 'byte'
    if method in ('sft', 'kd'):  # export: transformers reloads the same logits
        hf_dir = export_run(out, str(tmp_path / 'hf'))
        ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        x = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert (ref(x).logits - student(x, targets=x)[0]).abs().max().item() < 1e-5


def test_student_layers_errors(gguf_teacher, tiny_instruct, tmp_path):
    base = TRAIN[:-1] + [f'--data_dir={tiny_instruct}', f'--out_dir={tmp_path / "x"}', '--method=sft']
    with pytest.raises(UserError, match='student_layers=5: pick 1..4'):
        train.main(base + [f'--init_from={gguf_teacher}', '--student_layers=5'])
    with pytest.raises(UserError, match='lists 3 blocks but student_layers is 2'):
        train.main(base + [f'--init_from={gguf_teacher}', '--student_layers=2', '--student_layer_selection=0,1,2'])
    with pytest.raises(UserError, match='prunes a checkpoint'):
        train.main(base + ['--init_from=scratch', '--student_layers=2'])
