"""GKD, DistiLLM and on-policy reverse KL (onpolicy.py and their branch of train.py): the loss
falls, GKD at λ = 0, β = 0 is kd's forward-KL term, the divergences are the ones named, on-policy
reverse KL is MiniLLM's single-step term, and DistiLLM's schedule and buffer follow its rules."""
import json
import os

import pytest
import torch

import kl
import onpolicy
import policy_gradient as pg
import train
from components.parallel import Runtime
from components.checkpoint import atomic_save, checkpoint_payload, load_model
from configurator import UserError, configure
from dataset import InstructSet
from model import GPT, GPTConfig
from rollout import response_logits, rollout_batch
from supervised import supervised_loss

SMALL = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=16', '--eval_iters=1',
         '--log_interval=1', '--warmup_iters=0', '--lr_schedule=constant', '--device=cpu', '--dtype=float32',
         '--eval_rouge_examples=0', '--max_new_tokens=8']


def log(out_dir, key):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    """A random 2-layer GPT: a fixed, peaked target for the students (no training needed)."""
    path = str(tmp_path_factory.mktemp('onpolicy') / 'teacher')
    torch.manual_seed(1)
    model = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # logits of a few units: a teacher worth matching
    atomic_save(checkpoint_payload(model, 'byte'), os.path.join(path, 'ckpt.pt'))
    return path


def run(tmp_path, name, data, teacher, *args):
    out = str(tmp_path / name)
    train.main(SMALL + [f'--data_dir={data}', f'--teacher={teacher}', f'--out_dir={out}', *args])
    return out


@pytest.mark.parametrize('name, args', [
    ('gkd', ['--method=gkd']),                                                       # JSD(0.5), λ = 0.5
    ('onpolicy_rkl', ['--method=gkd', '--gkd_lambda=1.0', '--divergence=reverse_kl']),
    ('gkd_seqkd', ['--method=gkd', '--gkd_lambda=0.0', '--gkd_seqkd=True']),          # teacher samples, drawn afresh
    ('distillm', ['--method=distillm', '--distillm_init_prob=1.0', '--distillm_capacity=32']),
    ('distillm_srkl', ['--method=distillm', '--divergence=skew_reverse_kl', '--distillm_init_prob=1.0',
                       '--distillm_capacity=32']),
])
def test_each_method_trains_and_its_loss_falls(tiny_instruct, teacher, tmp_path, name, args):
    out = run(tmp_path, name, tiny_instruct, teacher, *args, '--max_iters=24', '--eval_interval=24',
              '--learning_rate=1e-2')
    loss = log(out, 'loss')
    assert len(loss) == 24
    first, last = sum(loss[:4]) / 4, sum(loss[-4:]) / 4
    assert last < 0.5 * first, (name, loss)
    if name == 'gkd':  # both sources were used
        assert 0 < sum(log(out, 'on_policy')) < 24
    if name == 'onpolicy_rkl':
        assert log(out, 'on_policy') == [1.0] * 24
    if name.startswith('distillm'):
        fresh, replay = log(out, 'fresh'), log(out, 'replay')
        assert fresh[:2] == [1.0, 1.0]  # φ = 1 and the buffer (32 rows) is not full before 2 batches of 16
        assert sum(replay) > 0 and all(f + r == 1 for f, r in zip(fresh, replay))  # φ = 1: never gold


def test_gkd_at_lambda_0_and_beta_0_is_kds_forward_kl_term(tiny_instruct, teacher, tmp_path):
    """λ = 0: gold responses only (and no coin drawn, so the data stream is kd's); JSD(β = 0) is forward
    KL. The run is kd with kd_ratio = 1 (its forward-KL term alone), step for step."""
    gkd = run(tmp_path, 'gkd0', tiny_instruct, teacher, '--method=gkd', '--gkd_lambda=0.0', '--gkd_beta=0.0',
              '--max_iters=4', '--eval_interval=2')
    kd = run(tmp_path, 'kd1', tiny_instruct, teacher, '--method=kd', '--kd_ratio=1.0', '--max_iters=4',
             '--eval_interval=2')
    assert log(gkd, 'loss') == pytest.approx(log(kd, 'loss'), rel=1e-6)
    assert log(gkd, 'val_loss') == pytest.approx(log(kd, 'val_loss'), rel=1e-6)
    assert log(gkd, 'on_policy') == [0.0] * 4


@pytest.mark.parametrize('chunked', [False, True])
@pytest.mark.parametrize('method, extra, divergence, kwargs', [
    ('gkd', ['--gkd_beta=0.3'], 'jsd', dict(beta=0.3)),
    ('gkd', ['--gkd_beta=1.0'], 'reverse_kl', {}),
    ('distillm', ['--skew_alpha=0.2'], 'skew_forward_kl', dict(alpha=0.2)),
    ('distillm', ['--divergence=skew_reverse_kl'], 'skew_reverse_kl', dict(alpha=0.1)),
])
def test_the_loss_is_the_named_divergence_on_the_batch(tiny_instruct, teacher, method, extra, divergence, kwargs,
                                                       chunked):
    """mean over response tokens of D(p_t || q_t), D = JSD(β) / skew KL(α) with the configured β / α."""
    cfg = configure(train.DEFAULTS, SMALL + [f'--method={method}', f'--chunked_loss={chunked}', *extra])
    rt = Runtime(chunked=chunked)
    data = InstructSet(tiny_instruct, 'train')
    student, teach = load_model(teacher)[0], load_model(teacher)[0]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y, seg = onpolicy.training_batch(cfg, data, list(range(8)))
    loss = supervised_loss(cfg, rt, student, teach, x, y, 1.0, seg)
    with torch.no_grad():
        s, t = student(x, segments=seg), teach(x, segments=seg)
    want = kl.masked_mean(kl.DIVERGENCES[divergence](s, t, **kwargs), y != -1)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_on_policy_reverse_kl_is_minillms_single_step_term(tiny_instruct, teacher):
    """gkd with λ = 1 and divergence='reverse_kl' on the student's samples: the same value and gradient
    as policy_gradient.single_step_loss (MiniLLM §2.2, no importance weights) on those samples."""
    cfg = configure(train.DEFAULTS, SMALL + ['--method=gkd', '--gkd_lambda=1.0', '--divergence=reverse_kl',
                                             '--pack=False'])
    rt = Runtime(chunked=False)
    data = InstructSet(tiny_instruct, 'train')
    student, teach = load_model(teacher)[0], load_model(teacher)[0]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ids = list(range(6))
    responses, on_policy = onpolicy.gkd_responses(cfg, rt, student, teach, data, ids, torch.Generator().manual_seed(0),
                                                  torch.Generator().manual_seed(5))
    assert on_policy and student.training and len(responses) == 6 and any(len(r) > 1 for r in responses)
    x, y, seg = onpolicy.training_batch(cfg, data, ids, responses)
    ours = supervised_loss(cfg, rt, student, teach, x, y, 1.0, seg)
    g_ours = torch.autograd.grad(ours, list(student.parameters()))
    seq, amask, Tp, rmask = rollout_batch([(data.prompt(i), r) for i, r in zip(ids, responses)], data.eot, 'cpu')
    s_logits = response_logits(cfg, rt, student, seq, amask, Tp)
    with torch.no_grad():
        t_logits = response_logits(cfg, rt, teach, seq, amask, Tp)
    theirs = pg.single_step_loss(s_logits, t_logits, rmask)
    g_theirs = torch.autograd.grad(theirs, list(student.parameters()))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for a, b in zip(g_ours, g_theirs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_sgo_choice_by_hand():
    """φ = 0.5, T = 10: at step t = 2 fresh samples below r = 0.5 (1 − 2/10) = 0.4, replay up to 0.5
    once the buffer is full, gold above."""
    full, short = dict(buffer_len=100, capacity=100), dict(buffer_len=99, capacity=100)
    assert onpolicy.sgo_choice(0.39, 0.5, 2, 10, **full) == 'fresh'
    assert onpolicy.sgo_choice(0.41, 0.5, 2, 10, **full) == 'replay'
    assert onpolicy.sgo_choice(0.41, 0.5, 2, 10, **short) == 'fresh'  # buffer not full: SGO are generated
    assert onpolicy.sgo_choice(0.49, 0.5, 2, 10, **full) == 'replay'
    assert onpolicy.sgo_choice(0.51, 0.5, 2, 10, **short) == 'gold'
    assert onpolicy.sgo_choice(0.01, 0.5, 10, 10, **full) == 'replay'  # t = T: no fresh samples left
    assert onpolicy.sgo_choice(0.0, 0.0, 1, 10, buffer_len=0, capacity=100) == 'gold'  # φ = 0: gold always
    assert onpolicy.sgo_choice(0.99, 1.0, 1, 10, **full) == 'replay'  # φ = 1: never gold


def test_adaptive_sgo_probability_by_hand():
    """+0.1 whenever the validation loss is ≥ 0.1 above the loss of the last rise (the first evaluation
    sets it), capped at 1."""
    prob, prev, seen = 0.0, None, []
    for val in (2.0, 2.05, 2.11, 2.15, 2.25, 1.9, 2.4):
        prob, prev = onpolicy.adapt_sgo_prob(prob, prev, val, eps=0.1)
        seen.append((round(prob, 10), prev))
    assert seen == [(0.0, 2.0), (0.0, 2.0), (0.1, 2.11), (0.1, 2.11), (0.2, 2.25), (0.2, 2.25), (0.3, 2.4)]
    assert onpolicy.adapt_sgo_prob(0.95, 1.0, 1.2, eps=0.1) == (1.0, 1.2)
    assert onpolicy.adapt_sgo_prob(0.3, 1.0, 1.05, eps=0.01) == (0.4, 1.05)


def test_replay_buffer_is_fifo_and_samples_distinct_rows_uniformly():
    buf = onpolicy.ReplayBuffer(capacity=4)
    buf.add([(0, [1]), (1, [2]), (2, [3])])
    buf.add([(3, [4]), (4, [5])])
    assert buf.rows == [(1, [2]), (2, [3]), (3, [4]), (4, [5])]  # the oldest left first
    gen, counts = torch.Generator().manual_seed(0), [0] * 5
    for _ in range(2000):
        batch = [i for i, _ in buf.sample(2, gen)]
        assert len(set(batch)) == 2
        for i in batch:
            counts[i] += 1
    assert counts[0] == 0 and all(abs(c - 1000) < 100 for c in counts[1:])  # 2 of 4: each row half the time


def test_distillm_resume_continues_exactly(tiny_instruct, teacher, tmp_path):
    """The buffer, φ and the reference validation loss go into ckpt.pt: 3 + 3 resumed steps are the 6."""
    # eps = -1: every evaluation after the first raises φ by 0.1, the one a resume repeats must not
    args = ['--method=distillm', '--distillm_init_prob=0.7', '--distillm_capacity=16', '--distillm_loss_eps=-1.0',
            '--eval_interval=3', '--gen_temperature=1.0']
    full = run(tmp_path, 'full', tiny_instruct, teacher, *args, '--max_iters=6')
    # stopped at 3 of the same 6-step horizon (T in φ (1 − t/T) is lr_decay_iters or max_iters)
    half = run(tmp_path, 'half', tiny_instruct, teacher, *args, '--lr_decay_iters=6', '--max_iters=3')
    run(tmp_path, 'half', tiny_instruct, teacher, *args, '--max_iters=6', '--init_from=resume')
    assert log(half, 'loss') == log(full, 'loss')
    assert log(half, 'sgo_prob') == log(full, 'sgo_prob') == pytest.approx([0.7] * 3 + [0.8] * 3)
    assert {0.0, 1.0} <= set(log(full, 'fresh')) and 1.0 in log(full, 'replay')  # all three sources were used


@pytest.mark.parametrize('args, message', [
    (['--method=gkd', '--gkd_lambda=1.5'], 'gkd_lambda must lie in [0, 1]'),
    (['--method=distillm', '--distillm_capacity=8'], 'distillm_capacity 8 must hold at least one global batch'),
    (['--method=gkd', '--divergence=jsdd'], "unknown divergence 'jsdd'"),
])
def test_bad_settings_are_one_clear_error(tiny_instruct, teacher, tmp_path, args, message):
    with pytest.raises(UserError, match=message.replace('[', r'\[').replace(']', r'\]')):
        run(tmp_path, 'bad', tiny_instruct, teacher, *args, '--max_iters=1')


@pytest.mark.parametrize('name, want, per_step', [
    # jongwooko/distillm scripts/gpt2/gkd/gkd_base.sh: --mixed-alpha 0.5, js_distance lam 0.9, 2 x 16 GPUs
    ('gkd_gpt2', dict(method='gkd', gkd_lambda=0.5, gkd_beta=0.1, divergence='jsd', learning_rate=5e-4, epochs=20,
                      init_from='out/sft_gpt2', teacher='out/sft_gpt2_xl', gen_temperature=1.0, gen_top_k=0,
                      gen_top_p=1.0, max_new_tokens=256, select_metric='rouge_l'), 32),
    # scripts/gpt2/distillm/train_0.1B_1.5B.sh: adaptive-sfkl, --skew-alpha 0.1, --init-threshold 0,
    # --loss-eps 0.1, --capacity 1000 per process on 16, 8 x 16 GPUs
    ('distillm_gpt2', dict(method='distillm', divergence='skew_forward_kl', skew_alpha=0.1, distillm_init_prob=0.0,
                           distillm_loss_eps=0.1, distillm_capacity=16000, learning_rate=5e-4, epochs=20,
                           init_from='out/sft_gpt2', teacher='out/sft_gpt2_xl', select_metric='rouge_l'), 128),
])
def test_gpt2_configs_follow_distillms_scripts(name, want, per_step):
    from conftest import ROOT
    cfg = configure(train.DEFAULTS, [os.path.join(ROOT, f'config/{name}.py')])
    assert {k: getattr(cfg, k) for k in want} == want
    assert cfg.batch_size * 8 * cfg.gradient_accumulation_steps == per_step  # on 8 GPUs


def test_gkd_sources_gold_teacher_or_student(tiny_instruct, teacher):
    """λ = 0: gold (None), or with gkd_seqkd the teacher's samples; λ = 1: the student's samples."""
    cfg = configure(train.DEFAULTS, SMALL + ['--method=gkd', '--gkd_lambda=0.0'])
    rt = Runtime()
    data = InstructSet(tiny_instruct, 'train')
    student = GPT(GPTConfig(block_size=32, vocab_size=257, n_layer=1, n_head=2, n_embd=32))
    teach = load_model(teacher)[0]
    ids, gen = list(range(4)), lambda: torch.Generator().manual_seed(3)
    assert onpolicy.gkd_responses(cfg, rt, student, teach, data, ids, gen(), gen()) == (None, False)
    cfg.gkd_seqkd = True
    teacher_rows = onpolicy.sample_responses(cfg, rt, teach, data, ids, gen())
    assert onpolicy.gkd_responses(cfg, rt, student, teach, data, ids, gen(), gen()) == (teacher_rows, False)
    cfg.gkd_lambda = 1.0
    student_rows = onpolicy.sample_responses(cfg, rt, student, data, ids, gen())
    assert onpolicy.gkd_responses(cfg, rt, student, teach, data, ids, gen(), gen()) == (student_rows, True)
    assert student_rows != teacher_rows and all(len(r) <= cfg.max_new_tokens for r in student_rows)
