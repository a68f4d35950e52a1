import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train
from components.parallel import Runtime
from rollout import collect_rollouts, minillm_micro_loss
from supervised import supervised_loss
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
    from components.checkpoint import load_model
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


def test_sample_dtype(tiny_instruct, teacher, tmp_path):
    import sample
    bad = str(tmp_path / 'bad')
    with pytest.raises(UserError, match="unknown dtype 'float64'"):
        sample.main([f'--init_from={teacher}', f'--data_dir={tiny_instruct}', f'--seqkd_out={bad}', '--device=cpu',
                     '--dtype=float64'])
    assert not os.path.exists(bad)
    out = str(tmp_path / 'bf16')  # bf16 autocast: the same prompts, responses sampled in bf16
    sample.main([f'--init_from={teacher}', f'--data_dir={tiny_instruct}', f'--seqkd_out={out}', '--max_new_tokens=6',
                 '--device=cpu', '--dtype=bfloat16', '--seqkd_max_train=4'])
    with open(os.path.join(out, 'train.jsonl')) as f, open(os.path.join(tiny_instruct, 'train.jsonl')) as g:
        assert [json.loads(r)['prompt'] for r in f] == [json.loads(next(g))['prompt'] for _ in range(4)]


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
    from components.checkpoint import load_model
    student, _ = load_model(teacher_dir)
    teach, _ = load_model(teacher_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student, teach


def test_rollout_phase_shapes_masks_and_weights(tiny_instruct, teacher):
    from dataset import InstructSet
    from rollout import PromptOrder
    cfg = configure(train.DEFAULTS, SMALL + ['--method=minillm', '--rollout_size=12',
                                             '--rollout_batch_size=5', '--max_new_tokens=7'])
    cfg.rank, cfg.world_size = 0, 1
    data = InstructSet(tiny_instruct, 'train')
    rt = Runtime(eot=data.eot)
    student, teach = perturbed_student_and_teacher(teacher)
    order = PromptOrder(len(data), 0)
    buf = collect_rollouts(cfg, rt, student, teach, data, order, torch.Generator().manual_seed(1))
    mask = buf['mask']
    assert mask.shape[0] == 12 and mask.shape[1] <= 7
    assert [p for p, _ in buf['rows']] == [data.prompt(i) for i in order.permutation(0)[:12]]  # epoch 0, in order
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
    rt = Runtime(chunked=cfg.chunked_loss is True)
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
        loss = supervised_loss(cfg, rt, student, teach, *args)
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
    from components.checkpoint import atomic_save, checkpoint_payload
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
    with open(bad / 'best.pt', 'r+b') as f:  # the file a run directory resolves to
        f.truncate(100)
    with pytest.raises(UserError, match='unreadable'):
        train.main(SMALL + [f'--data_dir={tiny_instruct}', '--method=kd', f'--teacher={bad}', '--max_iters=1'])


# ----------------------------------------------------------------------------- checkpoint selection (issue 16)
def write_copy_task(d, n_train=256, n_eval=32, seed=0):
    """Byte-level 'repeat the four letters' task: a 1-layer model learns it partly in tens of
    steps, so validation Rouge-L moves (the addition task stays at ~0 for such models)."""
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('valid', n_eval), ('test', n_eval)):
        toks, index, off = [], [], 0
        with open(os.path.join(d, f'{split}.jsonl'), 'w') as f:
            for _ in range(n):
                words = ' '.join(rng.choice(list('abcdef'), 4))
                p, r = f"Q: {words}\nA:", f" {words}"
                pt, rt = list(p.encode()), list(r.encode()) + [256]
                index.append((off, len(pt), len(rt)))
                toks += pt + rt
                off += len(pt) + len(rt)
                f.write(json.dumps(dict(prompt=p, response=r, references=[words])) + '\n')
        np.array(toks, dtype=np.uint16).tofile(os.path.join(d, f'{split}.tokens.bin'))
        np.save(os.path.join(d, f'{split}.idx.npy'), np.array(index, dtype=np.int64))
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(dict(kind='instruct', tokenizer='byte', vocab_size=257, eot_token=256, dtype='uint16'), f)
    return str(d)


def eval_rows(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [r for r in map(json.loads, f) if 'val_loss' in r]


def test_best_checkpoint_survives_a_later_worse_evaluation(tmp_path):
    """Issue 16's bug: with always_save_checkpoint=False the last evaluation overwrote the best
    ckpt.pt. Now best.pt keeps the best evaluation by the selection metric, ckpt.pt the last state."""
    from components.checkpoint import ckpt_path
    data = write_copy_task(tmp_path / 'copy')
    args = [f'--data_dir={data}', '--max_iters=60', '--eval_interval=10', '--learning_rate=0.3', '--lr_schedule=constant',
            '--max_new_tokens=10', '--eval_rouge_examples=32', '--always_save_checkpoint=False']
    for metric, pick in (('rouge_l', max), ('val_loss', min)):  # max / min return the first of equals: ties keep the earlier
        out = run_train(tmp_path, metric, *args, f'--select_metric={metric}')
        rows = eval_rows(out)
        assert [r['iter'] for r in rows] == list(range(0, 61, 10)) and all('rouge_l' in r for r in rows)
        top = pick(rows[1:], key=lambda r: r[metric])  # iter 0, the init, is not a candidate
        assert top['iter'] < 60 and pick(top[metric], rows[-1][metric]) == top[metric] != rows[-1][metric]  # later, worse
        best, last = (torch.load(os.path.join(out, n), weights_only=True) for n in ('best.pt', 'ckpt.pt'))
        assert best['iter_num'] == top['iter'] and best['metrics'] == {k: top[k] for k in ('val_loss', 'rouge_l')}
        assert best['best'] == dict(metric=metric, value=top[metric], iter=top['iter']) == last['best']
        assert last['iter_num'] == 60 and 'optimizer' in last and 'optimizer' not in best
        # a run dir is its best; <run>/last the resume state; files as given
        assert ckpt_path(out) == ckpt_path(f'{out}/best') == os.path.join(out, 'best.pt')
        assert ckpt_path(f'{out}/last') == os.path.join(out, 'ckpt.pt')
        assert ckpt_path(os.path.join(out, 'ckpt.pt')) == os.path.join(out, 'ckpt.pt')
        # the weights loaded through each spec score exactly what was logged for them
        for spec, row in ((out, top), (f'{out}/last', rows[-1])):
            again = eval_rows(run_train(tmp_path, f'{metric}_again', *args, f'--init_from={spec}', '--max_iters=0'))
            assert len(again) == 1 and again[0]['rouge_l'] == row['rouge_l']
            assert math.isclose(again[0]['val_loss'], row['val_loss'], rel_tol=1e-6)
            shutil.rmtree(tmp_path / f'{metric}_again')
    os.remove(os.path.join(out, 'best.pt'))  # a run from before best.pt existed: its ckpt.pt
    assert ckpt_path(out) == os.path.join(out, 'ckpt.pt')


def test_selection_metric_by_method_and_bad_choices(tiny_instruct, tmp_path):
    from components.validation import rouge_subset, selection_metric
    from dataset import InstructSet
    val = InstructSet(tiny_instruct, 'valid')
    for method, metric in (('sft', 'val_loss'), ('pretrain', 'val_loss'), ('kd', 'rouge_l'), ('seqkd', 'rouge_l'),
                           ('minillm', 'rouge_l')):
        cfg = configure(train.DEFAULTS, [f'--method={method}', '--eval_rouge_examples=20'])
        cfg.world_size = 3
        ids = rouge_subset(cfg, val)
        assert selection_metric(cfg, ids) == metric
        assert ids == ([] if method == 'pretrain' else sorted(range(18), key=lambda i: int(val.index[i][1])))
        cfg.eval_rouge_examples = 0  # no Rouge-L measured: auto falls back to the loss
        assert selection_metric(cfg, rouge_subset(cfg, val)) == 'val_loss'
    for args, msg in ((['--select_metric=bleu'], "unknown select_metric 'bleu'"),
                      (['--select_metric=rouge_l', '--eval_rouge_examples=0'], "needs instruction data"),
                      (['--epochs=2', '--method=pretrain'], "epochs counts passes")):
        with pytest.raises(UserError, match=msg):
            train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={tmp_path}/o', *args])


def test_epochs_set_max_iters_as_the_reference_counts_them(tiny_instruct, tmp_path):
    """LMOps minillm/finetune.py: int(n_train / (batch x ranks x accumulation)) steps per epoch."""
    cfg = configure(train.DEFAULTS, ['--batch_size=8', '--gradient_accumulation_steps=4'])
    cfg.world_size = 8
    assert train.iters_per_epoch(cfg, 12_400) == 48             # int(12400 / 256)
    cfg.method, cfg.ppo_epochs = 'minillm', 4
    assert train.iters_per_epoch(cfg, 12_400) == 193            # int(12400 x 4 policy epochs / 256)
    out = run_train(tmp_path, 'ep', f'--data_dir={tiny_instruct}', '--epochs=2', '--max_iters=0', '--eval_interval=100')
    assert len(losses(out)) == 2 * (256 // 16)                  # tiny_instruct: 256 training examples
    capped = run_train(tmp_path, 'cap', f'--data_dir={tiny_instruct}', '--epochs=2', '--max_iters=5', '--eval_interval=100')
    assert len(losses(capped)) == 5


def test_rollout_prompts_are_shuffled_epoch_by_epoch():
    from rollout import PromptOrder
    order = PromptOrder(10, seed=3)
    taken = order.take(4) + order.take(4) + order.take(4) + order.take(8)  # 2 epochs; a phase straddles them
    assert taken[:10] == order.permutation(0) and taken[10:] == order.permutation(1)
    assert sorted(taken[:10]) == sorted(taken[10:]) == list(range(10)) and taken[:10] != taken[10:]
    a, b = PromptOrder(10, seed=3), PromptOrder(10, seed=0)
    a.take(7)
    b.load_state_dict(a.state_dict())  # what a resume restores: (n, seed, epoch, position)
    assert b.take(9) == a.take(9) == taken[7:16]


# (key, value here, value of the LMOps script) for the GPT-2 recipes; sources in the config comments
GPT2_RECIPES = {
    'sft_gpt2': dict(learning_rate=5e-4, epochs=20, weight_decay=1e-2, min_lr=1e-7, warmup_iters=0, lr_schedule='cosine',
                     beta2=0.999, grad_clip=1.0, dropout=0.1, block_size=512, select_metric='val_loss', init_from='gpt2'),
    'sft_gpt2_baseline': dict(learning_rate=5e-4, epochs=20, select_metric='rouge_l'),
    'sft_gpt2_xl': dict(learning_rate=5e-5, epochs=10, weight_decay=1e-2, min_lr=1e-7, select_metric='rouge_l',
                        init_from='gpt2-xl'),
    'kd_gpt2': dict(method='kd', learning_rate=5e-4, epochs=20, kd_ratio=0.5, weight_decay=1e-2, select_metric='rouge_l',
                    init_from='gpt2'),
    'seqkd_gpt2': dict(method='seqkd', learning_rate=5e-4, epochs=20, kd_ratio=0.5, teacher='out/sft_gpt2_xl',
                       select_metric='rouge_l'),
    'minillm_gpt2': dict(learning_rate=5e-6, lr_schedule='constant', warmup_iters=100, epochs=10, max_iters=5000,
                         weight_decay=1e-6, beta1=0.9, beta2=0.95, rollout_size=256, ppo_epochs=4, max_new_tokens=256,
                         teacher_mix_alpha=0.2, pt_kd_ratio=0.0, eval_interval=100, eval_rouge_examples=1000,
                         select_metric='rouge_l', dropout=0.0),
    'minillm_gpt2_refcode': dict(pt_kd_ratio=0.5, returns_mode='reference', gamma=0.95, reward_scale=0.5,
                                 reward_clip=100.0, weight_decay=1e-6),
}


@pytest.mark.parametrize('name', list(GPT2_RECIPES))
def test_gpt2_configs_follow_the_reference_scripts(name):
    cfg = configure(train.DEFAULTS, [os.path.join(ROOT, f'config/{name}.py')])
    assert {k: getattr(cfg, k) for k in GPT2_RECIPES[name]} == GPT2_RECIPES[name]
    per_step = cfg.batch_size * 8 * cfg.gradient_accumulation_steps  # on 8 GPUs
    assert per_step == (256 if cfg.method == 'minillm' else 32)       # the reference's 16 GPUs x 2 (x 16 for MiniLLM)
    if cfg.method == 'minillm':
        assert cfg.pt_batch_size * 8 * cfg.gradient_accumulation_steps == 256


def test_scratch_family_switches_and_weight_decay_groups(tiny_instruct, tmp_path):
    """--family sets the scratch model's switches (here LLaMA's: RMSNorm, RoPE, SwiGLU, no biases, GQA);
    AdamW decays matrices and embeddings only, as the LMOps reference's parameter groups."""
    from components.checkpoint import load_model
    out = run_train(tmp_path, 'llama', f'--data_dir={tiny_instruct}', '--family=llama', '--n_head=4', '--n_kv_head=2',
                    '--intermediate_size=48', '--max_iters=30', '--eval_interval=30', '--learning_rate=3e-3')
    val = losses(out, 'val_loss')
    assert val[-1] < val[0] - 0.5, val
    m, _ = load_model(out)
    c = m.config
    assert (c.norm, c.pos, c.mlp, c.bias, c.n_kv_head, c.ffn) == ('rmsnorm', 'rope', 'swiglu', False, 2, 48)
    state = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['optimizer']
    decay, no_decay = state['param_groups']
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    n_matrices = sum(p.dim() == 2 for p in m.parameters())   # wte = lm_head (tied), c_attn, c_proj, c_fc, c_proj
    assert len(decay['params']) == n_matrices == 1 + 4 * c.n_layer
    assert len(no_decay['params']) == 2 * c.n_layer + 1        # ln_1, ln_2 per block and ln_f: no biases in LLaMA
    with pytest.raises(UserError, match="unknown family 'gpt5'"):
        run_train(tmp_path, 'bad', f'--data_dir={tiny_instruct}', '--family=gpt5', '--max_iters=1')


@pytest.mark.parametrize('flags', [[], ['--gen_temperature=0.8', '--gen_top_k=20', '--teacher_mix_alpha=0.0'],
                                   ['--returns_mode=reference', '--single_step_weighted=False']])
def test_minillm_update_chunked_and_with_cached_teacher_equals_the_plain_update(tiny_instruct, teacher, flags):
    """minillm_micro_loss four ways: full logits or chunked (pg.chunked_minillm_loss from hidden
    states), the teacher's logits recomputed or read from the rollout's cache. Same loss, gradients
    and stats. The rollout (fp32) reads the teacher's logits off the decoding loop; a forward (what a
    buffer without the cache rebuilds it from) gives them up to rounding."""
    from dataset import InstructSet
    from rollout import TEACHER_CACHE, PromptOrder, teacher_cache
    cfg = configure(train.DEFAULTS, SMALL + ['--method=minillm', '--rollout_size=8', '--rollout_batch_size=3',
                                             '--max_new_tokens=7', '--loss_chunk_size=5', *flags])
    cfg.rank, cfg.world_size = 0, 1
    data = InstructSet(tiny_instruct, 'train')
    rt = Runtime(eot=data.eot, chunked=False)
    student, teach = (m.double() for m in perturbed_student_and_teacher(teacher))  # float64: exact up to 1e-12
    buf = collect_rollouts(cfg, rt, student, teach, data, PromptOrder(len(data), 0), torch.Generator().manual_seed(5))
    cache = buf[TEACHER_CACHE]
    assert cache.shape == (8, 7, 257) and (cache[:, buf['mask'].shape[1]:] == 0).all()
    rebuilt = teacher_cache(cfg, rt, teach, {k: v for k, v in buf.items() if k != TEACHER_CACHE})
    valid = F.pad(buf['mask'], (0, 7 - buf['mask'].shape[1]))
    assert torch.allclose(rebuilt[valid], cache[valid], rtol=1e-10, atol=1e-12), (rebuilt[valid] - cache[valid]).abs().max()
    results = {}
    for chunked, cached in [(False, False), (False, True), (True, True), (True, False)]:
        rt.chunked = chunked
        cfg.teacher_logits_cache_gb = 1.0 if cached else 0.0
        b = buf if cached else {k: v for k, v in buf.items() if k != TEACHER_CACHE}
        student.zero_grad()
        loss, n, stats = minillm_micro_loss(cfg, rt, student, teach, b, [6, 0, 3, 5], list(range(8)))
        loss.backward()
        results[chunked, cached] = loss, [p.grad.clone() for p in student.parameters()], stats
    ref_loss, ref_grads, ref_stats = results[False, False]
    assert ref_stats['loss_single'] > 0 and ref_loss != 0
    for key, (loss, grads, stats) in results.items():
        assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=1e-12), key
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, rtol=1e-10, atol=1e-12), key
        for k in ref_stats:
            assert torch.allclose(stats[k].double(), ref_stats[k].double(), rtol=1e-10, atol=1e-12), (key, k)


@pytest.mark.parametrize('alpha', ['0.0', '0.2'])
def test_rollout_scores_off_the_decoding_loop_equal_a_forward(tiny_instruct, teacher, alpha):
    """In fp32 collect_rollouts reads log q_old, log p, log p~ and the teacher-logit cache off the
    decoding loop; under bf16 / fp16 (dtype != float32) it recomputes log q_old with a forward, as the
    reference does, and the teacher's scores too when the teacher did not decode (α = 0). Same samples
    (same generator), same buffer up to float rounding."""
    from dataset import InstructSet
    from rollout import TEACHER_CACHE, PromptOrder
    data = InstructSet(tiny_instruct, 'train')
    student, teach = perturbed_student_and_teacher(teacher)
    bufs = {}
    for dtype in ('float32', 'bfloat16'):
        cfg = configure(train.DEFAULTS, SMALL + ['--method=minillm', '--rollout_size=6', '--rollout_batch_size=3',
                                                 '--max_new_tokens=7', f'--teacher_mix_alpha={alpha}', f'--dtype={dtype}'])
        cfg.rank, cfg.world_size = 0, 1
        rt = Runtime(eot=data.eot, ptdtype=torch.float32)   # bf16 path, fp32 arithmetic
        bufs[dtype] = collect_rollouts(cfg, rt, student, teach, data, PromptOrder(len(data), 0),
                                             torch.Generator().manual_seed(2))
    a, b = bufs['float32'], bufs['bfloat16']
    assert a['rows'] == b['rows']
    for key in ('logp_old', 'logp_teacher', 'logp_mix', 'advantages'):
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    valid = F.pad(a['mask'], (0, 7 - a['mask'].shape[1]))           # the cache positions an update reads
    assert torch.allclose(a[TEACHER_CACHE][valid], b[TEACHER_CACHE][valid], atol=1e-5)


@pytest.mark.parametrize('alpha', [0.0, 0.2])
def test_bf16_rollout_runs_the_teacher_once(tiny_instruct, teacher, alpha, monkeypatch):
    """Under CPU bf16 autocast a rollout scores with forwards only what decoding did not give: log
    q_old always (the update's ratio starts at 1 only against a forward's), the teacher only at α = 0;
    at α > 0 its log p and cached logits are the decoding loop's, within bf16 rounding of a bf16
    forward's on the same rows."""
    import rollout
    from dataset import InstructSet
    from rollout import TEACHER_CACHE, PromptOrder, rollout_batch
    data = InstructSet(tiny_instruct, 'train')
    student, teach = perturbed_student_and_teacher(teacher)
    scored = []
    real = rollout.response_scores
    monkeypatch.setattr(rollout, 'response_scores',
                        lambda cfg, rt, model, *a, **k: scored.append(model is teach) or real(cfg, rt, model, *a, **k))
    cfg = configure(train.DEFAULTS, SMALL + ['--method=minillm', '--rollout_size=6', '--rollout_batch_size=3',
                                             '--max_new_tokens=7', f'--teacher_mix_alpha={alpha}', '--dtype=bfloat16'])
    cfg.rank, cfg.world_size = 0, 1
    rt = Runtime(eot=data.eot, ptdtype=torch.bfloat16, ctx=torch.autocast('cpu', dtype=torch.bfloat16))
    buf = collect_rollouts(cfg, rt, student, teach, data, PromptOrder(len(data), 0), torch.Generator().manual_seed(2))
    assert scored == ([False, True] * 2 if alpha == 0 else [False] * 2), scored  # 2 batches of 3 rows
    assert buf['logp_teacher'].dtype == torch.float32 and buf[TEACHER_CACHE].dtype == torch.bfloat16
    for s in (0, 3):  # the teacher's forward on the buffer's rows, batch by batch
        seq, amask, Tp, rmask = rollout_batch(buf['rows'][s:s + 3], rt.eot, cfg.device)
        forward_cache = torch.zeros(3, 7, buf[TEACHER_CACHE].shape[-1], dtype=torch.bfloat16)
        lp = real(cfg, rt, teach, seq, amask, Tp, seq[:, Tp:], cache=forward_cache)[0]
        Tr = rmask.shape[1]
        got = buf['logp_teacher'][s:s + 3, :Tr]
        assert torch.allclose(got[rmask], lp[rmask], atol=0.05, rtol=0.02), (got[rmask] - lp[rmask]).abs().max()
        cached = buf[TEACHER_CACHE][s:s + 3, :Tr][rmask].float()
        assert torch.allclose(cached, forward_cache[:, :Tr][rmask].float(), atol=0.05, rtol=0.02)


def test_the_config_holds_the_settings_only(tiny_instruct, teacher, tmp_path):
    """What a run works out at start-up (autocast, chunking, eot, the ranks' agreement) lives in
    parallel.Runtime, not in the config: after a MiniLLM run the config holds its keys and the launch's
    rank and world size, nothing else; runtime() derives the chunked loss and eot from the data."""
    from components.parallel import runtime
    from dataset import load_meta
    cfg = train.main(SMALL + [f'--data_dir={tiny_instruct}', f'--out_dir={tmp_path}/m', '--method=minillm',
                              f'--teacher={teacher}', '--max_iters=1', '--rollout_size=4', '--rollout_batch_size=4',
                              '--batch_size=4', '--max_new_tokens=4', '--eval_rouge_examples=0'])
    assert set(vars(cfg)) - set(train.DEFAULTS) == {'rank', 'world_size'}
    meta = load_meta(tiny_instruct)
    rt = runtime(cfg, meta)
    assert (rt.chunked, rt.eot, rt.all_done, rt.ptdtype) == (False, meta['eot_token'], None, torch.float32)
    cfg.chunked_loss = True
    assert runtime(cfg, dict(meta, vocab_size=50257)).chunked
    cfg.chunked_loss = 'auto'
    assert runtime(cfg, dict(meta, vocab_size=50257)).chunked and not runtime(cfg, meta).chunked
