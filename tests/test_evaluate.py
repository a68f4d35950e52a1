"""Metrics of evaluate.py on hand-made cases, the model metrics against explicit per-row
computations (and an exact enumeration for ExAccErr's expectation), and main end to end."""
import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import evaluate as ev
import kl
from components.checkpoint import atomic_save, checkpoint_payload, load_model
from configurator import UserError
from dataset import InstructSet, left_pad
from model import GPT, GPTConfig
from components.tokenizer import get_encoding

EOT = 256


def tiny_gpt(seed, vocab=257, block_size=64, scale=1.0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab, n_layer=1, n_head=2, n_embd=16))
    if scale != 1.0:  # peakier, more different distributions than the 0.02 init gives
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)
    return model.eval()


EXAMPLES = [  # toy-task prompts (data/toy_instruct/task.py format) with their answers
    ("Q: what is 12+30?\nA:", " 42", ["42"]),
    ("Q: a letter between a and e\nA:", " c", ["b", "c", "d"]),
    ("Q: reverse abc\nA:", " cba", ["cba"]),
    ("Q: a multiple of 5 between 11 and 29\nA:", " 15", ["15", "20", "25"]),
    ("Q: uppercase dog\nA:", " DOG", ["DOG"]),
]


def write_instruct_dir(path, examples=EXAMPLES, split='test', vocab=257):
    """A tiny instruction set in dataset.py's format, byte tokens + eot."""
    path.mkdir(parents=True, exist_ok=True)
    (path / 'meta.json').write_text(json.dumps(dict(kind='instruct', dtype='uint16', tokenizer='byte',
                                                    vocab_size=vocab, eot_token=EOT)))
    tokens, index = [], []
    with open(path / f'{split}.jsonl', 'w') as f:
        for prompt, response, refs in examples:
            p, r = list(prompt.encode()), list(response.encode()) + [EOT]
            index.append((len(tokens), len(p), len(r)))
            tokens += p + r
            f.write(json.dumps(dict(prompt=prompt, response=response, references=refs)) + '\n')
    np.array(tokens, dtype=np.uint16).tofile(path / f'{split}.tokens.bin')
    np.save(path / f'{split}.idx.npy', np.array(index, dtype=np.int64).reshape(-1, 3))
    return str(path)


# ----------------------------------------------------------------------------- text metrics
def test_rouge_l_hand_cases():
    assert ev.rouge_l("the cat sat on the mat", ["the cat sat on the mat"]) == 100.0
    assert ev.rouge_l("red blue", ["green yellow"]) == 0.0
    assert ev.rouge_l("", ["anything"]) == 0.0
    # stems: cats -> cat, running/runs -> run; LCS(the cat were run, the cat run quickli) = 3 of 4 each
    assert ev.rouge_l("the cats were running", ["the cat runs quickly"]) == pytest.approx(75.0)
    # LCS 2, P = 2/3, R = 2/4, F = 2PR / (P + R) = 4/7
    assert ev.rouge_l("the cat sat", ["the cat runs quickly"]) == pytest.approx(400 / 7)
    assert ev.rouge_l("the cat sat", ["dog", "the cat runs quickly", "sat"]) == pytest.approx(400 / 7)
    assert ev.rouge_l("Cats!", ["cat"]) == 100.0   # lowercased, punctuation dropped, stemmed


def test_dist_n_hand_case():
    # 4-grams: (a b c d), (b c d e) | (a b c d) -> 2 distinct of 3
    assert ev.dist_n(["a b c d e", "a  b c d"], 4) == pytest.approx(2 / 3)
    # bigrams over token lists: (1,2) (2,1) (1,2) | (3,3) -> 3 distinct of 4
    assert ev.dist_n([[1, 2, 1, 2], [3, 3]], 2) == pytest.approx(3 / 4)
    assert ev.dist_n(["42", "a b"], 4) is None


def test_mean_length_hand_case():
    # prompts of 2 (left-padded), eot = 9: responses [5, 6, 9] -> 2, [7, 7, 7] (no eot) -> 3, [9, 4, 4] -> 0
    seq = torch.tensor([[1, 2, 5, 6, 9], [0, 3, 7, 7, 7], [1, 1, 9, 4, 4]])
    batch = dict(seq=seq, prompt_mask=torch.ones(3, 2, dtype=torch.long))
    assert ev.mean_length([batch], 9) == pytest.approx(5 / 3)
    assert ev.mean_length([batch, dict(batch, seq=seq[:1])], 9) == pytest.approx(7 / 4)


def test_ece_hand_case():
    # bin 9: conf .95 .95, acc 1/2 -> |0.5 - 0.95| * 2; bin 1: |0 - 0.15| * 1; bin 5: |1 - 0.565| * 2
    conf = [0.95, 0.95, 0.15, 0.55, 0.58]
    correct = [1, 0, 0, 1, 1]
    assert ev.expected_calibration_error(conf, correct) == pytest.approx((0.9 + 0.15 + 0.87) / 5)
    assert ev.expected_calibration_error([0.25] * 4, [1, 0, 0, 0]) == pytest.approx(0.0)
    assert ev.expected_calibration_error([1.0, 0.0], [1, 0]) == pytest.approx(0.0)  # both ends binned
    with pytest.raises(ValueError):
        ev.expected_calibration_error([], [])


def test_answer_validity_hand_case():
    task = SimpleNamespace(reference_answers=lambda p: {'one': ['1'], 'many': ['a', 'b', 'c']}[p],
                           is_valid=lambda p, a: a.strip() in {'one': ['1'], 'many': ['a', 'b', 'c']}[p])
    prompts = ['one', 'many', 'many']
    seeds = [[' 1', 'a', 'x'], ['2', ' a', 'b'], ['1', 'b', 'c']]
    out = ev.answer_validity(task, prompts, seeds)
    assert out['validity'] == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert out['validity_single'] == pytest.approx([1.0, 0.0, 1.0])
    assert out['validity_multi'] == pytest.approx([0.5, 1.0, 1.0])
    assert out['distinct_valid'] == pytest.approx((2 + 2) / 2)   # {a, b} and {b, c}


# ----------------------------------------------------------------------------- model metrics
class TableModel(nn.Module):
    """Logits at each position = table[input token]: a model whose logits the test controls."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.config = SimpleNamespace(block_size=64)

    def forward(self, idx, attention_mask=None, head_fn=None):
        hidden = self.table[idx]
        return head_fn(hidden, torch.eye(hidden.shape[-1])) if head_fn else hidden


def test_token_calibration_with_controlled_logits(tmp_path):
    data = InstructSet(write_instruct_dir(tmp_path / 'd'), 'test')
    torch.manual_seed(0)
    table = torch.randn(257, 257) * 3
    expect_conf, expect_hit = [], []
    for i in range(len(data)):
        p, r = data.prompt(i), data.response(i)
        seq = p + r
        for k, gold in enumerate(r):
            probs = table[seq[len(p) - 1 + k]].softmax(-1)
            expect_conf.append(probs.max().item())
            expect_hit.append(int(probs.argmax()) == gold)
    # ECE by an explicit loop over bins
    n, ece = len(expect_conf), 0.0
    for b in range(10):
        members = [j for j, c in enumerate(expect_conf) if min(int(c * 10), 9) == b]
        if members:
            acc = sum(expect_hit[j] for j in members) / len(members)
            conf = sum(expect_conf[j] for j in members) / len(members)
            ece += abs(acc - conf) * len(members) / n
    got = ev.token_calibration(TableModel(table), data, list(range(len(data))), batch_size=2)
    assert got['ece'] == pytest.approx(ece, abs=1e-6)
    assert got['accuracy'] == pytest.approx(sum(expect_hit) / n)
    assert got['confidence'] == pytest.approx(sum(expect_conf) / n, abs=1e-6)
    # certain and always right on row 0 (its scored transitions ': '-> ' ' -> '4' -> '2' -> eot) -> ECE 0
    p, r = data.prompt(0), data.response(0)
    perfect = torch.full((257, 257), -1e4)
    for k, gold in enumerate(r):
        perfect[(p + r)[len(p) - 1 + k], gold] = 0.0
    got = ev.token_calibration(TableModel(perfect), data, [0])
    assert got['accuracy'] == 1.0 and got['ece'] == pytest.approx(0.0, abs=1e-6)


def hand_rollouts():
    """Two batches of left-padded prompts + responses with eot mid-way and junk after it."""
    batches = []
    for prompts, resps in [([[5, 6, 7], [9]], [[1, 2, EOT, 44, 45], [3, 4, 5, 6, 7]]),
                           ([[8, 8], [70, 71, 72, 73]], [[EOT, 1, 1], [11, EOT, 200]])]:
        idx, pmask = left_pad(prompts, EOT)
        seq = torch.cat([idx, torch.tensor(resps)], 1)
        batches.append(dict(ids=None, seq=seq, prompt_mask=pmask, prompts=prompts, resps=resps))
    return batches


def explicit_scores(student, teacher, batches):
    """Per row, unpadded: teacher NLL terms of the response tokens up to eot, and KL(p||q) of the
    next-token distributions after each response token before the eot (after the last token when the
    row has none): the reference's ExAccErr positions."""
    nll, kl_rows = [], []
    for b in batches:
        for p, r in zip(b['prompts'], b['resps']):
            r = r[:r.index(EOT) + 1] if EOT in r else r
            seq = torch.tensor([p + r])
            zp, zq = teacher(seq)[0], student(seq)[0]
            nll += (-torch.log_softmax(zp[len(p) - 1:-1], -1)[torch.arange(len(r)), torch.tensor(r)]).tolist()
            after = slice(len(p), len(p) + len(r) - (1 if r[-1] == EOT else 0))
            kl_rows.append(kl.forward_kl(zq[after], zp[after]).tolist())
    return nll, kl_rows


def test_teacher_nll_and_position_kl_match_explicit_computation():
    student, teacher = tiny_gpt(0, scale=20), tiny_gpt(1, scale=20)
    batches = hand_rollouts()
    nll, kl_rows = explicit_scores(student, teacher, batches)
    assert [len(row) for row in kl_rows] == [2, 5, 0, 1]
    assert ev.teacher_nll(teacher, batches, EOT) == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    stats = ev.rollout_stats(student, teacher, batches, EOT, length=6)
    L = 6
    kl_sum = [sum(row[t] for row in kl_rows if t < len(row)) for t in range(L)]
    assert stats['rows'] == 4 and stats['tokens'] == len(nll) == 3 + 5 + 1 + 2
    assert stats['kl_sum'].tolist() == pytest.approx(kl_sum, rel=1e-4, abs=1e-7)
    R = ev.accumulated_kl(stats)
    assert R[-1].item() == pytest.approx(sum(map(sum, kl_rows)) / 4, rel=1e-4)


def test_exaccerr_index_on_a_hand_case():
    """TableModel's next-token distribution depends on the last token only, so the KL after a
    response token y is K[y]. Rows (prompt | response): [5, 6 | 1, 2, eot, 44] and [9 | 3, 4] (no eot):
    R(1) = (K[1] + K[3]) / 2, R(2) = R(1) + (K[2] + K[4]) / 2, R(3) = R(2) (the first row has ended,
    the second has no third token). The first prediction (after the prompt's last token: K[6], K[9])
    and the one after eot (K[eot]) are not counted: the reference's index."""
    torch.manual_seed(3)
    tq, tp = torch.randn(257, 257) * 2, torch.randn(257, 257) * 2
    K = kl.forward_kl(tq, tp).double().tolist()
    idx, pmask = left_pad([[5, 6], [9]], EOT)
    seq = torch.cat([idx, torch.tensor([[1, 2, EOT, 44], [3, 4, EOT, EOT]])], 1)
    stats = ev.rollout_stats(TableModel(tq), TableModel(tp), [dict(seq=seq, prompt_mask=pmask)], EOT, 4)
    assert stats['kl_sum'].tolist() == pytest.approx([K[1] + K[3], K[2] + K[4], 0.0, 0.0], rel=1e-6)
    seq2 = torch.cat([idx, torch.tensor([[1, 2, EOT], [3, 4, 7]])], 1)   # no eot: the last token counts
    stats = ev.rollout_stats(TableModel(tq), TableModel(tp), [dict(seq=seq2, prompt_mask=pmask)], EOT, 3)
    assert stats['kl_sum'].tolist() == pytest.approx([K[1] + K[3], K[2] + K[4], K[7]], rel=1e-6)
    assert ev.accumulated_kl(stats).tolist() == pytest.approx(
        [(K[1] + K[3]) / 2, (K[1] + K[3] + K[2] + K[4]) / 2, (K[1] + K[3] + K[2] + K[4] + K[7]) / 2], rel=1e-6)


def test_exaccerr_equals_the_reference_scripts_rule():
    """LMOps minillm/evaluate_exposure_bias.py on the padded buffer: logits[:, Tp:], mask = the token
    at that position is not eos (eos pads), err = KL(p || q) * mask, cumsum over positions, mean over
    rows; computed here literally on generated batches."""
    V, eot = 6, 5     # a small vocabulary, so that rows end at different lengths
    data = SimpleNamespace(eot=eot, prompt_batch=lambda ids: left_pad([[i % 5] * (1 + i % 3) for i in ids], eot))
    student, teacher = tiny_gpt(0, vocab=V, scale=3), tiny_gpt(1, vocab=V, scale=3)
    rollouts = ev.sample_rollouts(student, data, list(range(24)), seed=7, max_new_tokens=6, batch_size=10)
    ends = [int((r == eot).nonzero()[0]) if (r == eot).any() else 6
            for b in rollouts for r in b['seq'][:, b['prompt_mask'].shape[1]:]]
    assert {0, 2, 6} <= set(ends)     # ended at once, mid-way, never
    errs = []
    for b in rollouts:
        Tp = b['prompt_mask'].shape[1]
        amask = torch.cat([b['prompt_mask'], torch.ones_like(b['seq'][:, Tp:])], 1)
        with torch.no_grad():
            zq, zp = student(b['seq'], attention_mask=amask)[:, Tp:], teacher(b['seq'], attention_mask=amask)[:, Tp:]
        err = kl.forward_kl(zq, zp) * (b['seq'][:, Tp:] != eot)
        errs.append(torch.nn.functional.pad(err, (0, 6 - err.shape[1])).cumsum(1))
    reference = torch.cat(errs).double().mean(0)
    ours = ev.accumulated_kl(ev.rollout_stats(student, teacher, rollouts, eot, 6))
    assert ours.tolist() == pytest.approx(reference.tolist(), rel=1e-4)


def test_exaccerr_zero_for_identical_samplers():
    data = SimpleNamespace(eot=EOT, prompt_batch=lambda ids: left_pad([[65 + i % 7] * (1 + i % 3) for i in ids], EOT))
    student, teacher = tiny_gpt(0, scale=20), tiny_gpt(1, scale=20)
    ids = list(range(12))
    t_roll = ev.sample_rollouts(teacher, data, ids, seed=7, max_new_tokens=6, batch_size=5)
    twin_roll = ev.sample_rollouts(copy.deepcopy(teacher), data, ids, seed=7, max_new_tokens=6, batch_size=5)
    own_roll = ev.sample_rollouts(student, data, ids, seed=7, max_new_tokens=6, batch_size=5)
    t_stats = ev.rollout_stats(student, teacher, t_roll, EOT, 6)
    assert ev.cache_teacher_logits(teacher, t_roll, EOT) and 'teacher_logits' in t_roll[0]
    cached = ev.rollout_stats(student, teacher, t_roll, EOT, 6)   # now reads the cached logits
    assert torch.equal(cached['kl_sum'], t_stats['kl_sum']) and cached['nll_sum'] == t_stats['nll_sum']
    assert not ev.cache_teacher_logits(teacher, own_roll, EOT, max_bytes=1000)
    twin = ev.exposure_bias(ev.rollout_stats(student, teacher, twin_roll, EOT, 6), t_stats)
    assert twin['R'] == twin['eps'] and twin['exaccerr'] == [0.0] * 6
    own = ev.exposure_bias(ev.rollout_stats(student, teacher, own_roll, EOT, 6), t_stats)
    assert abs(own['exaccerr'][-1]) > 1.0     # the student's own prefixes differ from the teacher's
    assert ev.exaccerr(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.0])) == [100.0, None]


def test_accumulated_kl_matches_exact_expectation_by_enumeration():
    """R(l) = E_y sum_{t<=l} [y_1..y_t hold no eot] KL(p || q)(x, y_1..y_t) by enumerating all
    (y1, y2) of a 4-token vocabulary (eot = 3) against 3000 samples."""
    V, eot, N = 4, 3, 3000
    student = tiny_gpt(2, vocab=V, block_size=8, scale=60)
    teacher = tiny_gpt(3, vocab=V, block_size=8, scale=60)
    x = [1, 0]
    data = SimpleNamespace(eot=eot, prompt_batch=lambda ids: left_pad([x] * len(ids), eot))

    def step(prefix):   # (q(. | prefix), KL(p || q) after prefix)
        z_q, z_p = student(torch.tensor([prefix]))[0, -1], teacher(torch.tensor([prefix]))[0, -1]
        return z_q.softmax(-1), kl.forward_kl(z_q, z_p).item()
    with torch.no_grad():
        q1, _ = step(x)
        prob, f1, f2 = {}, {}, {}
        for y1 in range(V):
            q2, k1 = step(x + [y1])
            for y2 in range(V):
                k2 = step(x + [y1, y2])[1]
                prob[y1, y2] = (q1[y1] * q2[y2]).item()
                f1[y1, y2] = 0.0 if y1 == eot else k1
                f2[y1, y2] = f1[y1, y2] + (0.0 if eot in (y1, y2) else k2)
    rollouts = ev.sample_rollouts(student, data, list(range(N)), seed=0, max_new_tokens=2, batch_size=1000)
    R = ev.accumulated_kl(ev.rollout_stats(student, teacher, rollouts, eot, 2))
    for ell, f in ((1, f1), (2, f2)):
        exact = sum(prob[k] * f[k] for k in prob)
        sd = math.sqrt(sum(prob[k] * (f[k] - exact) ** 2 for k in prob))
        assert sd > 0.05 * exact                     # the check below is not trivially tight
        assert abs(R[ell - 1].item() - exact) < 4 * sd / math.sqrt(N)


# ----------------------------------------------------------------------------- end to end
def save_model(model, path):
    atomic_save(checkpoint_payload(model, 'byte'), str(path / 'ckpt.pt'))
    return str(path)


def test_main_end_to_end(tmp_path, capsys):
    data_dir = write_instruct_dir(tmp_path / 'toy_instruct')   # the name switches on the toy metrics
    a = save_model(tiny_gpt(0), tmp_path / 'a')
    t = save_model(tiny_gpt(1), tmp_path / 't')
    out = str(tmp_path / 'res' / 'results')
    results = ev.main([f'--models=student={a},teacher={t}', f'--teacher={t}', f'--data_dir={data_dir}',
                       '--seeds=(1234, 1235)', '--max_new_tokens=5', '--batch_size=3', '--device=cpu',
                       '--exaccerr_lengths=(2, 4)', f'--out={out}'])['toy_instruct']
    md = open(out + '.md').read()
    raw = json.load(open(out + '.json'))['test_sets']['toy_instruct']
    assert (tmp_path / 'res' / 'results.png').stat().st_size > 0
    assert '| student |' in md and '| teacher |' in md and 'ExAccErr@4 %' in md and 'valid %' in md
    assert set(raw['models']) == {'student', 'teacher'} and raw['prompts'] == len(EXAMPLES)
    m = raw['models']['student']['metrics']
    assert len(m['rouge_l']) == 2 and len(m['validity']) == 2 and len(m['teacher_nll']) == 2
    assert len(m['exposure']['exaccerr']) == 5 and 0.0 <= m['ece'] <= 1.0
    assert 'exposure' not in results['teacher']     # KL(p||p) = 0: ExAccErr undefined
    # the teacher's row reuses the teacher samples of eps; sampling afresh with the same seeds agrees
    data = InstructSet(data_dir, 'test')
    indices = sorted(range(len(data)), key=lambda i: int(data.index[i][1]))
    fresh = ev.evaluate_model(load_model(t)[0], data, indices, get_encoding('byte'), seeds=[1234, 1235],
                              max_new_tokens=5, batch_size=3, no_repeat_ngram_size=6)
    assert fresh['rouge_l'] == results['teacher']['rouge_l'] and fresh['ece'] == results['teacher']['ece']
    assert '| student |' in capsys.readouterr().out


def test_default_max_new_tokens_is_the_space_left_capped_at_256(monkeypatch):
    assert ev.new_token_budget(512, 200) == 256                  # GPT-2: 512 - prompt >= 256 for prompts <= 256
    assert ev.new_token_budget(512, 256) == 256 and ev.new_token_budget(512, 300) == 212
    assert ev.new_token_budget(1024, 10) == 256 and ev.new_token_budget(64, 48) == 16
    assert ev.new_token_budget(64, 70) == 0 and ev.new_token_budget(512, 200, max_new_tokens=32) == 32
    asked = []

    class Recorder:   # generate's arguments, per batch: the budget follows each batch's padded width
        config = SimpleNamespace(block_size=40)

    def generate(model, idx, n, **kw):
        asked.append((idx.shape[1], n, kw['no_repeat_ngram_size']))
        return idx
    monkeypatch.setattr(ev, 'generate', generate)
    data = SimpleNamespace(eot=EOT, prompt_batch=lambda ids: left_pad([[1] * (5 + 10 * i) for i in ids], EOT))
    ev.sample_rollouts(Recorder(), data, [0, 1, 2, 3], seed=0, batch_size=2, cap=20, no_repeat_ngram_size=6)
    ev.sample_rollouts(Recorder(), data, [0, 1, 2, 3], seed=0, batch_size=2, cap=20, context=30)
    assert asked == [(15, 20, 6), (35, 5, 6), (15, 15, 0), (35, 0, 0)]


def test_label_calibration_hand_case(tmp_path):
    """q(label | x) = prod of TableModel's next-byte probabilities along the label, normalised over
    'yes' / 'no'; confidence = the larger, correct = it is the gold label."""
    examples = [("Q: is 3 odd?\nA:", "yes", ["yes"]), ("Q: is 4 odd?\nA:", "no", ["no"]),
                ("Q: is 9 odd?\nA:", "yes", ["yes"]), ("Q: is 8 odd?", "no", ["no"])]
    data = InstructSet(write_instruct_dir(tmp_path / 'cls', examples), 'test')
    torch.manual_seed(1)
    table = torch.randn(257, 257) * 2
    logp = table.log_softmax(-1)

    def label_logp(prompt, label):
        seq = list(prompt.encode()) + list(label.encode())
        return sum(logp[seq[len(prompt) - 1 + k], b].item() for k, b in enumerate(label.encode()))
    conf, hit = [], []
    for prompt, gold, _ in examples:
        p = torch.tensor([label_logp(prompt, 'no'), label_logp(prompt, 'yes')]).softmax(0)  # sorted labels
        conf.append(p.max().item())
        hit.append(['no', 'yes'][int(p.argmax())] == gold)
    got = ev.label_calibration(TableModel(table), data, [0, 1, 2, 3], get_encoding('byte'), batch_size=3)
    assert got['ece'] == pytest.approx(ev.expected_calibration_error(conf, hit), abs=1e-6)
    assert 0 < sum(hit) < 4                        # both right and wrong answers occur
    assert got['accuracy'] == pytest.approx(sum(hit) / 4) and got['confidence'] == pytest.approx(sum(conf) / 4)
    with pytest.raises(UserError, match='not among the labels'):
        ev.label_calibration(TableModel(table), data, [0, 1], get_encoding('byte'), labels=['yes', 'maybe'])


def test_table1_over_two_test_sets_equals_the_json(tmp_path):
    dolly = write_instruct_dir(tmp_path / 'd1', EXAMPLES[:3])
    sni = write_instruct_dir(tmp_path / 'd2', EXAMPLES[2:])
    a, b = save_model(tiny_gpt(0), tmp_path / 'a'), save_model(tiny_gpt(5, scale=5), tmp_path / 'b')
    out = str(tmp_path / 'res' / 'r')
    ev.main([f'--models=sft={a},minillm={b}', f'--test_sets=dolly={dolly},sni={sni}', '--seeds=(3, 4)',
             '--batch_size=2', '--device=cpu', f'--out={out}'])
    md, raw = open(out + '.md').read(), json.load(open(out + '.json'))
    lines = [row for row in md.split('## Rouge-L')[1].split('## ')[0].splitlines() if row.startswith('|')]
    assert lines[0] == '| model | Dolly Rouge-L | S-NI Rouge-L |'
    assert [row.split(' | ')[0] for row in lines[2:]] == ['| sft', '| minillm']
    assert any(v['mean'] > 0 for row in raw['table1'].values() for v in row.values())
    for row in lines[2:]:
        name, *cells = [c.strip() for c in row.strip('| ').split('|')]
        for cell, set_name in zip(cells, ('dolly', 'sni')):
            per_seed = raw['test_sets'][set_name]['models'][name]['metrics']['rouge_l']
            mean = sum(per_seed) / 2
            std = math.sqrt(sum((v - mean) ** 2 for v in per_seed) / 2)
            assert raw['table1'][name][set_name] == pytest.approx(dict(mean=mean, std=std))
            assert cell == f"{mean:.1f} ± {std:.1f}"
    assert '## Dolly: ' in md and '## S-NI: ' in md and raw['test_sets']['sni']['prompts'] == 3
    assert (tmp_path / 'res' / 'r_dolly.png').exists() and (tmp_path / 'res' / 'r_sni.png').exists()
    config = raw['config']
    assert config['seeds'] == [3, 4] and config['no_repeat_ngram_size'] == 6 and config['max_new_tokens'] == 0


def test_main_errors(tmp_path):
    data_dir = write_instruct_dir(tmp_path / 'plain')
    a = save_model(tiny_gpt(0), tmp_path / 'a')
    small = save_model(tiny_gpt(0, vocab=200), tmp_path / 'small')   # fewer rows than tokens
    base = [f'--data_dir={data_dir}', '--device=cpu', f'--out={tmp_path}/r']
    with pytest.raises(UserError, match='no checkpoint'):
        ev.main([f'--models=x={tmp_path}/missing'] + base)
    with pytest.raises(UserError, match='200 embedding rows'):
        ev.main([f'--models=x={small}'] + base)
    with pytest.raises(UserError, match='twice'):
        ev.main([f'--models=x={a},x={a}'] + base)
    write_instruct_dir(tmp_path / 'empty', examples=[])
    # one stray token: numpy cannot memmap a 0-byte file (dataset.py then raises a bare ValueError)
    np.array([EOT], dtype=np.uint16).tofile(tmp_path / 'empty' / 'test.tokens.bin')
    with pytest.raises(UserError, match='empty'):
        ev.main([f'--models=x={a}', f'--data_dir={tmp_path}/empty', '--device=cpu'])
    write_instruct_dir(tmp_path / 'other', vocab=258)
    with pytest.raises(UserError, match='different tokenizers'):
        ev.main([f'--models=x={a}', f'--test_sets=p={data_dir},o={tmp_path}/other', '--device=cpu'])
    with pytest.raises(UserError, match='ece token or label'):
        ev.main([f'--models=x={a}', '--ece=bins'] + base)
