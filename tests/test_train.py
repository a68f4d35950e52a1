import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from configurator import UserError, configure
from conftest import ROOT

SMALL = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=16',
         '--eval_iters=2', '--log_interval=1', '--warmup_iters=0', '--device=cpu', '--dtype=float32']


def losses(out_dir, key='loss'):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    return [r[key] for r in rows if key in r]


def run_train(tmp_path, name, *args):
    out = str(tmp_path / name)
    train.main(SMALL + [f'--out_dir={out}', *args])
    return out


@pytest.fixture(scope='module')
def teacher(tiny_instruct, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('teacher') / 'teacher')
    train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={out}', '--n_layer=2', '--n_embd=64',
                        '--max_iters=80', '--eval_interval=80', '--learning_rate=3e-3'])
    return out


def test_sft_and_pretrain_losses_go_down(tiny_instruct, tmp_path):
    for method in ('sft', 'pretrain'):
        out = run_train(tmp_path, method, f'--data_dir={tiny_instruct}', f'--method={method}',
                        '--max_iters=30', '--eval_interval=30', '--learning_rate=3e-3')
        val = losses(out, 'val_loss')
        assert val[-1] < val[0] - 0.5, (method, val)


def test_log_lines_carry_tokens_per_s_and_mfu(tiny_instruct, tmp_path):
    """MFU = tokens/s * flops_per_token / peak (PaLM appendix B); on CPU only when peak_flops is given."""
    from checkpoint import load_model
    from model import flops_per_token
    out = run_train(tmp_path, 'mfu', f'--data_dir={tiny_instruct}', '--max_iters=3', '--eval_interval=3',
                    '--peak_flops=1e9')
    rows = [r for r in map(json.loads, open(os.path.join(out, 'log.jsonl'))) if 'loss' in r]
    m, _ = load_model(out)
    assert len(rows) == 3
    for r in rows:
        assert r['tokens_per_s'] > 0
        assert math.isclose(r['mfu'], r['tokens_per_s'] * flops_per_token(m.config, m.num_params()) / 1e9, rel_tol=1e-9)
    plain = run_train(tmp_path, 'no_mfu', f'--data_dir={tiny_instruct}', '--max_iters=1', '--eval_interval=1')
    rows = [r for r in map(json.loads, open(os.path.join(plain, 'log.jsonl'))) if 'loss' in r]
    assert 'tokens_per_s' in rows[0] and 'mfu' not in rows[0]  # CPU: no peak to divide by


@pytest.mark.parametrize('extra', [[], ['--atkd=True'], ['--divergence=reverse_kl'], ['--chunked_loss=True']])
def test_kd_loss_goes_down(tiny_instruct, teacher, tmp_path, extra):
    out = run_train(tmp_path, 'kd', f'--data_dir={tiny_instruct}', '--method=kd', f'--teacher={teacher}',
                    '--max_iters=30', '--eval_interval=30', '--learning_rate=3e-3', *extra)
    seen = losses(out)
    assert sum(seen[-5:]) / 5 < 0.7 * sum(seen[:5]) / 5, seen


def test_seqkd_trains_on_teacher_samples(tiny_instruct, teacher, tmp_path):
    import sample
    seq_dir = str(tmp_path / 'seqkd_data')
    sample.main([f'--init_from={teacher}', f'--data_dir={tiny_instruct}', f'--seqkd_out={seq_dir}',
                 '--max_new_tokens=6', '--device=cpu'])
    with open(os.path.join(seq_dir, 'train.jsonl')) as f:
        row = json.loads(f.readline())
    assert 'gold_response' in row and row['references']
    out = run_train(tmp_path, 'seqkd', f'--data_dir={seq_dir}', '--method=seqkd', '--kd_ratio=0.0',
                    '--max_iters=30', '--eval_interval=30', '--learning_rate=3e-3')
    val = losses(out, 'val_loss')
    assert val[-1] < val[0] - 0.5
    few = str(tmp_path / 'seqkd_few')  # --seqkd_max_train: the first N training prompts, every valid/test one
    sample.main([f'--init_from={teacher}', f'--data_dir={tiny_instruct}', f'--seqkd_out={few}',
                 '--max_new_tokens=6', '--device=cpu', '--seqkd_max_train=5'])
    for split, n in (('train', 5), ('valid', len(np.load(os.path.join(seq_dir, 'valid.idx.npy'))))):
        assert len(np.load(os.path.join(few, f'{split}.idx.npy'))) == n
        with open(os.path.join(few, f'{split}.jsonl')) as f:
            assert sum(1 for _ in f) == n


def test_minillm_reduces_per_token_reverse_kl(tiny_instruct, teacher, tmp_path):
    out = run_train(tmp_path, 'minillm', f'--data_dir={tiny_instruct}', '--method=minillm',
                    f'--teacher={teacher}', f'--pt_data_dir={tiny_instruct}', '--rollout_size=32',
                    '--ppo_epochs=2', '--max_new_tokens=6', '--max_iters=40', '--eval_interval=40',
                    '--learning_rate=1e-2')
    rkl = losses(out, 'loss_single')  # mean KL(q_t || p_t) at the student's own prefixes
    assert sum(rkl[-8:]) / 8 < 0.8 * sum(rkl[:8]) / 8, rkl


def test_resume_reproduces_the_uninterrupted_run(tiny_instruct, teacher, tmp_path):
    for method in ('sft', 'minillm'):
        args = [f'--data_dir={tiny_instruct}', f'--method={method}', f'--teacher={teacher}',
                f'--pt_data_dir={tiny_instruct}', '--rollout_size=32', '--ppo_epochs=2',
                '--max_new_tokens=6', '--eval_interval=5', '--dropout=0.1']
        full = run_train(tmp_path, f'{method}_full', *args, '--max_iters=10')
        half = run_train(tmp_path, f'{method}_half', *args, '--max_iters=5', '--lr_decay_iters=10')
        run_train(tmp_path, f'{method}_half', *args, '--max_iters=10', '--init_from=resume')
        assert losses(half) == losses(full), method  # bit-for-bit on CPU


def perturbed_student_and_teacher(teacher_dir):
    """The teacher twice, the first copy nudged by seeded noise so that student and teacher differ."""
    from checkpoint import load_model
    student, _ = load_model(teacher_dir)
    teach, _ = load_model(teacher_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student, teach


def test_rollout_phase_shapes_masks_and_weights(tiny_instruct, teacher):
    from dataset import InstructSet
    cfg = configure(train.DEFAULTS, SMALL + ['--method=minillm', '--rollout_size=12',
                                             '--rollout_batch_size=5', '--max_new_tokens=7'])
    cfg.rank, cfg.world_size, cfg.all_done, cfg.ctx = 0, 1, None, torch.autocast('cpu', enabled=False)
    cfg.raw = lambda m: m
    data = InstructSet(tiny_instruct, 'train')
    cfg.eot = data.eot
    student, teach = perturbed_student_and_teacher(teacher)
    buf = train.collect_rollouts(cfg, student, teach, data, torch.Generator().manual_seed(0),
                                 torch.Generator().manual_seed(1))
    mask = buf['mask']
    assert mask.shape[0] == 12 and mask.shape[1] <= 7
    for j, (p, r) in enumerate(buf['rows']):
        assert mask[j].sum().item() == len(r) and mask[j, :len(r)].all()   # right-padded responses
        assert r[-1] == data.eot or len(r) == 7                             # ends at eot or at the cap
        assert p == data.prompt(data.rows.index(next(x for x in data.rows if x['prompt'] == bytes(p).decode())))
    # log-probs of the stored tokens recomputed one row at a time, without padding
    for j, (p, r) in enumerate(buf['rows'][:4]):
        x = torch.tensor([p + r])
        with torch.no_grad():
            lq = torch.log_softmax(student(x)[0, len(p) - 1:-1], -1)
            lp = torch.log_softmax(teach(x)[0, len(p) - 1:-1], -1)
        tok = torch.tensor(r)
        assert torch.allclose(buf['logp_old'][j, :len(r)], lq[range(len(r)), tok], atol=1e-5)
        assert torch.allclose(buf['logp_teacher'][j, :len(r)], lp[range(len(r)), tok], atol=1e-5)
        mix = torch.log(0.2 * lp.exp() + 0.8 * lq.exp())[range(len(r)), tok]
        assert torch.allclose(buf['logp_mix'][j, :len(r)], mix, atol=1e-5)
    # advantages: the paper's length-normalised future rewards, zero on padding
    assert (buf['advantages'][~mask] == 0).all()
    row = buf['mask'][0].sum().item()
    rew = (buf['logp_teacher'][0] - buf['logp_old'][0])[:row]
    if row > 1:
        assert math.isclose(buf['advantages'][0, 0].item(), rew[1:].mean().item(), rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize('extra', [['--method=sft'], ['--method=kd'], ['--method=kd', '--atkd=True'],
                                   ['--method=kd', '--chunked_loss=True']])
def test_packed_batch_gives_the_padded_loss_and_gradients(tiny_instruct, teacher, extra):
    from dataset import InstructSet
    cfg = configure(train.DEFAULTS, SMALL + extra)
    cfg.chunked = cfg.chunked_loss is True
    data = InstructSet(tiny_instruct, 'train')
    ids = data.sample_indices(16, torch.Generator().manual_seed(0))
    x, y = data.sft_batch(ids, cfg.block_size)
    xp, yp, seg = data.packed_sft_batch(ids, cfg.block_size)
    assert xp.shape[1] <= cfg.block_size and xp.numel() <= x.numel()
    assert sorted(yp[yp != -1].tolist()) == sorted(y[y != -1].tolist())  # every target kept once
    assert sorted(set(seg[seg >= 0].tolist())) == list(range(16))
    student, teach = perturbed_student_and_teacher(teacher)
    kd_ratio = 0.5 if cfg.method == 'kd' else 0.0
    results = []
    for args in ((x, y, kd_ratio), (xp, yp, kd_ratio, seg)):
        student.zero_grad()
        loss = train.supervised_loss(cfg, student, teach, *args)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in student.parameters()]))
    (padded, g_pad), (packed, g_pack) = results
    assert math.isclose(packed, padded, rel_tol=1e-5), (packed, padded)
    for a, b in zip(g_pad, g_pack):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_bad_input_is_one_clear_error(tiny_instruct, teacher, tmp_path):
    cases = [
        (['--no_such_key=1'], "unknown config key 'no_such_key'"),
        (['--max_iters=ten'], "must be int"),
        (['--batch_size=1.5'], "must be int"),
        (['--atkd=1'], "must be a bool"),
        (['config/nope.py'], "config file config/nope.py not found"),
        ([f'--data_dir={tmp_path}/nodata'], "no prepared data"),
        ([f'--data_dir={tiny_instruct}', '--method=kd'], "needs a teacher"),
        ([f'--data_dir={tiny_instruct}', '--method=kd', f'--teacher={tmp_path}/none'], "no checkpoint"),
        ([f'--data_dir={tiny_instruct}', '--method=dpo'], "unknown method 'dpo'"),
    ]
    for args, msg in cases:
        with pytest.raises(UserError, match=msg.replace('(', r'\(')):
            train.main(SMALL + [f'--out_dir={tmp_path}/o', '--max_iters=1', *args])
    assert not os.path.exists(f'{tmp_path}/o/ckpt.pt')
    # from the command line: one line on stderr, exit status 2, no traceback
    r = subprocess.run([sys.executable, 'train.py', f'--data_dir={tmp_path}/nodata'], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith('error: no prepared data')
    assert len(r.stderr.strip().splitlines()) == 1


def test_teacher_vocab_mismatch_and_corrupt_checkpoint(tiny_instruct, teacher, tmp_path):
    from checkpoint import atomic_save, checkpoint_payload
    from model import GPT, GPTConfig
    other = tmp_path / 'other'
    os.makedirs(other)
    # fewer rows than the data's 257 tokens (more would be padding rows, allowed: tests/test_families.py)
    atomic_save(checkpoint_payload(GPT(GPTConfig(block_size=32, vocab_size=200, n_layer=1, n_head=2, n_embd=32)), 'byte'),
                str(other / 'ckpt.pt'))
    with pytest.raises(UserError, match="has 200 embedding rows but the data's tokenizer has 257 tokens"):
        train.main(SMALL + [f'--data_dir={tiny_instruct}', '--method=kd', f'--teacher={other}', '--max_iters=1'])
    bad = tmp_path / 'bad'
    shutil.copytree(teacher, bad)
    with open(bad / 'ckpt.pt', 'r+b') as f:
        f.truncate(100)
    with pytest.raises(UserError, match='unreadable'):
        train.main(SMALL + [f'--data_dir={tiny_instruct}', '--method=kd', f'--teacher={bad}', '--max_iters=1'])
