"""
Evaluation of students against their teacher (MiniLLM, arXiv 2306.08543 §3), by default with the
protocol of the MiniLLM reference code (LMOps minillm/: scripts/gpt2/eval/run_eval.sh,
eval_main_*.sh, evaluate_main.py, arguments.py):

    sampling    tau = 1, top-k 0, top-p 1, no_repeat_ngram_size = 6 (arguments.py's default), one
                pass per seed 10, 20, 30, 40, 50 (run_eval.sh); responses up to the space left in
                the context, at most 256 new tokens (evaluate_main.py samples max_length - prompt
                tokens with max_length 512 and prompts padded to 256)
    Rouge-L     F-measure with stemming, max over references, x100 (rouge_metric.py), averaged over
                prompts; mean ± std over the seeds
    Dist-4      distinct 4-grams / all 4-grams over the sampled responses (whitespace words)
    length      mean sampled response length in tokens (eot not counted)
    teacher NLL mean per-token -log p(y_t | y_<t, x) of the student's own samples (eot included)
    ECE         ece='token' (default): next-token calibration on the gold responses, teacher-forced:
                at every gold response position (eot included) confidence = max_v q(v | y_<t, x),
                correct = [that argmax is the gold token]; all tokens of all prompts pooled, 10
                equal-width bins. NOT the paper's measure: its calibration result (§3.3) is zero-shot
                classification (SST-2, BoolQ; LLaMA students) with the ECE of the label words'
                probabilities, which ece='label' computes on a set whose gold responses are labels.
    ExAccErr(l) exposure bias (§3.3, after Arora et al., 2022) with the reference's index
                (evaluate_exposure_bias.py): R(l) = sum_{t=1..l} E_{y~q}[KL(p || q)] of the
                next-token distributions after each of the first l response tokens y_1..y_l (the
                first prediction, from the prompt alone, is not counted; the one after a row's eot
                neither), eps(l) the same on teacher samples, ExAccErr(l) = (R - eps) / eps x 100%
    validity    toy task only: fraction of sampled answers that are correct, and the number of
                distinct correct answers a multi-answer prompt gets across the seeds

    python evaluate.py --models=sft=out/sft_gpt2,kd=out/kd_gpt2,minillm=out/minillm_gpt2 \\
        --teacher=out/sft_gpt2_xl --test_sets=dolly,self_inst,vicuna,sni,unni

writes <out>.md (the paper's Table 1 layout: one row per model, one Rouge-L column per test set,
mean ± std over seeds; then every metric per test set), <out>.json (every number) and <out>.png.
Models are evaluated one at a time on the same prompts with the same sampling seeds. The toy
metrics switch on for a data directory named toy_instruct* (data/toy_instruct/task.py supplies
the checker); quickstart.sh passes the toy's own flags (short answers, 3 seeds, no n-gram ban).
"""
import functools
import importlib
import os
import time
from contextlib import nullcontext

import torch

import kl
from components.checkpoint import check_model_spec, load_model
from components.rundir import check_writable
from configurator import UserError, check_device, configure, defaults_from, run
from dataset import InstructSet, split_responses
from sampling import generate
from components.precision import autocast, enable_tf32, keep_freed_memory
from components.progress import GenerationProgress
from components.report import format_stat, summarize, write_report
from components.tokenizer import get_encoding
from components.validation import rollout_texts, rouge_l  # noqa: F401  (rouge_l: evaluate.rouge_l for callers)

# ----------------------------------------------------------------------------- config
models = 'sft=out/toy_sft'   # name=path pairs, comma-separated (run dirs, ckpt.pt, HF GPT-2)
teacher = ''                 # for teacher NLL and ExAccErr; '' = skip both
test_sets = ''               # 'dolly,self_inst,vicuna,sni,unni' (each data/<name>) or name=dir pairs; '' = data_dir
data_dir = 'data/toy_instruct'
split = 'test'
max_examples = 0             # the first N prompts of each test set; 0 = all (as the reference)
seeds = (10, 20, 30, 40, 50)  # one sampling pass per seed, identical for every model (run_eval.sh)
max_new_tokens = 0           # 0 = the space left in the context (block_size - prompt), at most max_new_tokens_cap
max_new_tokens_cap = 256
no_repeat_ngram_size = 6     # the reference's generation argument; 0 = off
temperature = 1.0            # pure sampling, as the paper evaluates
top_p = 1.0
ece = 'token'                # 'token': gold-response tokens | 'label': label-word probabilities (the paper's)
ece_labels = ''              # ece='label': comma-separated label words; '' = rows' 'labels' / distinct gold responses
batch_size = 256             # prompts per batch; scoring holds 2 x batch x new tokens x vocab floats
exaccerr_lengths = (4, 8, 16)  # the table's ExAccErr(l) columns; the .json has the whole curve
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'float32'            # 'bfloat16' autocasts the forward passes (CUDA or CPU; float16: CUDA only); metrics stay fp32
out = 'out/results'          # writes out/results.md, .json, .png
DEFAULTS = defaults_from(globals())
# -----------------------------------------------------------------------------


# ----------------------------------------------------------------------------- text metrics
def dist_n(texts, n=4):
    """Dist-n (Li et al., 2016, 'A diversity-promoting objective'): distinct n-grams / all n-grams,
    pooled over all `texts`. A str is split into whitespace-separated words; a list of tokens is
    used as it is. None when no text has n tokens (e.g. one-word toy answers)."""
    grams = []
    for text in texts:
        toks = text.split() if isinstance(text, str) else list(text)
        grams += [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def expected_calibration_error(confidences, correct, n_bins=10):
    """ECE (Guo et al., 2017): sum_b |acc_b - conf_b| * n_b / n over `n_bins`
    equal-width bins [b/n_bins, (b+1)/n_bins) (confidence 1 goes in the last bin)."""
    conf = torch.as_tensor(confidences, dtype=torch.float64).flatten()
    acc = torch.as_tensor(correct).flatten().to(torch.float64)
    if conf.numel() == 0 or conf.shape != acc.shape:
        raise ValueError(f"need equally many confidences and correctness flags, got {conf.numel()} and {acc.numel()}")
    bins = (conf * n_bins).long().clamp(0, n_bins - 1)
    # |acc_b - conf_b| * n_b = |sum of acc in b - sum of conf in b|
    gap = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, acc - conf)
    return float(gap.abs().sum() / conf.numel())


def answer_validity(task, prompts, answers_by_seed):
    """Toy task: `answers_by_seed[s][j]` is the answer sampled for `prompts[j]` in pass s.
    Per pass: the fraction of valid answers overall, on one-answer prompts and on many-answer
    prompts (more than one reference answer); and, over the passes, the mean number of distinct
    valid answers per many-answer prompt (at most the number of passes)."""
    multi = [len(task.reference_answers(p)) > 1 for p in prompts]
    out = dict(validity=[], validity_single=[], validity_multi=[])
    distinct = [set() for _ in prompts]
    for answers in answers_by_seed:
        ok = [task.is_valid(p, a) for p, a in zip(prompts, answers)]
        for j, (good, a) in enumerate(zip(ok, answers)):
            if good:
                distinct[j].add(a.strip())
        out['validity'].append(_mean(ok))
        out['validity_single'].append(_mean([g for g, m in zip(ok, multi) if not m]))
        out['validity_multi'].append(_mean([g for g, m in zip(ok, multi) if m]))
    out['distinct_valid'] = _mean([len(d) for d, m in zip(distinct, multi) if m])
    return out


def _mean(values):
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- model metrics
def _logits_at(model, seq, attention_mask, rows, cols, ctx):
    """fp32 logits [N, V] at positions (rows, cols) only: lm_head runs on those hidden states,
    so a GPT-2 vocabulary never needs [B, T, V] logits."""
    def head_fn(hidden, weight):
        return (hidden[rows, cols] @ weight.t()).float()
    with ctx:
        return model(seq, attention_mask=attention_mask, head_fn=head_fn)


def _calibration(conf, hit, n_bins):
    return dict(ece=expected_calibration_error(conf, hit, n_bins), accuracy=hit.double().mean().item(),
                confidence=conf.double().mean().item())


@torch.no_grad()
def token_calibration(model, data, indices, batch_size=64, device='cpu', n_bins=10, ctx=nullcontext()):
    """ece='token': next-token calibration on gold responses, teacher-forced: at every response
    position (eot included) confidence = max_v q(v | y_<t, x), correct = [argmax = gold token],
    all positions of all prompts pooled (Guo et al., 2017's ECE over tokens; not MiniLLM §3.3's
    measure, see label_calibration). Returns ECE, accuracy and mean confidence."""
    confs, hits = [], []
    for s in range(0, len(indices), batch_size):
        x, y = data.sft_batch(indices[s:s + batch_size], model.config.block_size)
        rows, cols = (y != -1).nonzero(as_tuple=True)
        logits = _logits_at(model, x.to(device), None, rows.to(device), cols.to(device), ctx)
        conf, pred = logits.softmax(-1).max(-1)
        confs.append(conf.cpu())
        hits.append((pred.cpu() == y[rows, cols]))
    return _calibration(torch.cat(confs), torch.cat(hits), n_bins)


@torch.no_grad()
def label_calibration(model, data, indices, enc, labels=None, batch_size=64, device='cpu', n_bins=10,
                      ctx=nullcontext()):
    """ece='label', MiniLLM §3.3 'Calibration' (zero-shot SST-2 / BoolQ, 'the probability of the label
    words'): per prompt x, q(l | x) = prod_t q(l_t | x, l_<t) of each label word l (its tokens as a
    response, no eot), normalised over the labels; confidence = the largest, correct = [it is the
    gold response]; ECE over prompts. `labels`: the label words; None = each row's 'labels', else
    the distinct gold responses of data[indices] (a classification set has a handful)."""
    rows = [data.rows[i] for i in indices]
    if labels is None and not all(r.get('labels') for r in rows):
        labels = sorted({r['response'].strip() for r in rows})
        if len(labels) > 50:
            raise UserError(f"ece='label' needs a classification set: {len(labels)} distinct gold responses; "
                            f"use ece='token' or set ece_labels")
    choices = [list(labels or r['labels']) for r in rows]
    gold = [c.index(r['response'].strip()) if r['response'].strip() in c else -1 for r, c in zip(rows, choices)]
    if min(gold) < 0:
        raise UserError(f"ece='label': a gold response is not among the labels {choices[gold.index(-1)]}")
    pairs = [(j, enc.encode_ordinary(lab)) for j, c in enumerate(choices) for lab in c]
    scores = torch.zeros(len(pairs), dtype=torch.float64)
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        x, y = data.sft_batch([indices[j] for j, _ in chunk], model.config.block_size, [t for _, t in chunk])
        r, c = (y != -1).nonzero(as_tuple=True)
        logp = torch.log_softmax(_logits_at(model, x.to(device), None, r.to(device), c.to(device), ctx), -1)
        scores.index_add_(0, r + s, logp.gather(1, y[r, c].to(device)[:, None])[:, 0].double().cpu())
    conf, hit, k = [], [], 0
    for c, g in zip(choices, gold):
        p = scores[k:k + len(c)].softmax(0)
        conf.append(p.max().item())
        hit.append(int(p.argmax()) == g)
        k += len(c)
    return _calibration(torch.tensor(conf), torch.tensor(hit), n_bins)


def new_token_budget(block_size, prompt_len, max_new_tokens=0, cap=256):
    """How many tokens to sample after a (left-padded) prompt batch of width `prompt_len`:
    `max_new_tokens` when > 0, else the reference's rule: the space left in the context,
    block_size - prompt_len, at most `cap` (evaluate_main.py: max_length 512 - 256 padded prompt
    tokens = 256 for GPT-2; here 512 - prompt >= 256 whenever the prompt has <= 256 tokens)."""
    return max_new_tokens if max_new_tokens > 0 else max(min(block_size - prompt_len, cap), 0)


@torch.no_grad()
def sample_rollouts(model, data, indices, seed, max_new_tokens=0, batch_size=256, device='cpu',
                    temperature=1.0, top_p=1.0, ctx=nullcontext(), cap=256, no_repeat_ngram_size=0, context=None):
    """Responses sampled from `model` for data[indices], batch by batch with one generator seeded
    by `seed` (two models with equal weights give equal samples), new_token_budget(context or the
    model's block_size, ...) tokens per batch. Returns a list of batches dict(ids, seq = prompt
    (left-padded) + response tokens [B, Tp + n] on the CPU, prompt_mask)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    rollouts = []
    bar = GenerationProgress(len(indices), f"seed {seed}")  # on a terminal only
    for s in range(0, len(indices), batch_size):
        ids = indices[s:s + batch_size]
        idx, pmask = data.prompt_batch(ids)
        n = new_token_budget(context or model.config.block_size, idx.shape[1], max_new_tokens, cap)
        with ctx:
            seq = generate(model, idx.to(device), n, temperature=temperature, top_p=top_p, eos_id=data.eot,
                                 attention_mask=pmask.to(device), generator=gen,
                                 no_repeat_ngram_size=no_repeat_ngram_size)
        rollouts.append(dict(ids=ids, seq=seq.cpu(), prompt_mask=pmask))
        bar.update(len(ids), sum(map(len, split_responses(rollouts[-1]['seq'], idx.shape[1], data.eot))))
    bar.close()
    return rollouts


def mean_length(rollouts, eot):
    """Mean sampled response length in tokens, the eot that ends a response not counted."""
    lengths = [len(r) - (len(r) > 0 and r[-1] == eot) for b in rollouts
               for r in split_responses(b['seq'], b['prompt_mask'].shape[1], eot)]
    return sum(lengths) / max(len(lengths), 1)


def _scored_positions(batch, eot, device):
    """A rollout batch on `device`: (seq, attention mask, response tokens [B, n], rows, cols, Tp) where
    (rows, cols) run over c = 0..n with no eot among the row's first c response tokens: the logits at
    seq[rows, Tp - 1 + cols] give the distribution of response token c + 1 (1-based) after c of them."""
    seq, pmask = batch['seq'].to(device), batch['prompt_mask'].to(device)
    Tp = pmask.shape[1]
    amask = torch.cat([pmask, torch.ones_like(seq[:, Tp:])], 1)
    tokens = seq[:, Tp:]
    ended = (tokens == eot).long().cumsum(1) > 0
    before_eot = torch.cat([torch.ones_like(ended[:, :1]), ~ended], 1)   # [B, n + 1]
    rows, cols = before_eot.nonzero(as_tuple=True)
    return seq, amask, tokens, rows, cols, Tp


@torch.no_grad()
def cache_teacher_logits(teacher, rollouts, eot, device='cpu', ctx=nullcontext(), max_bytes=512 << 20):
    """Keep the teacher's logits at the scored positions of its own samples (b['teacher_logits'],
    on the CPU), which every student's ExAccErr needs again, when all of them fit in `max_bytes`.
    Returns whether they were cached."""
    n = sum(int(_scored_positions(b, eot, 'cpu')[3].numel()) for b in rollouts)
    if n * teacher.config.vocab_size * 4 > max_bytes:
        return False
    for b in rollouts:
        seq, amask, _, rows, cols, Tp = _scored_positions(b, eot, device)
        b['teacher_logits'] = _logits_at(teacher, seq, amask, rows, Tp - 1 + cols, ctx).cpu()
    return True


@torch.no_grad()
def rollout_stats(student, teacher, rollouts, eot, length, device='cpu', ctx=nullcontext()):
    """Sums over sampled responses, for the teacher NLL and ExAccErr:
    kl_sum [length]: at index l - 1 the sum over rows of KL(p || q) (kl.forward_kl) of the next-token
    distributions after the row's first l response tokens, for rows whose first l tokens hold no eot
    (the reference's index, evaluate_exposure_bias.py: logits from the position of y_1 on, masked
    where that token is eot or after it); rows; nll_sum: sum of -log p(y_t | y_<t, x) over response
    tokens incl. eot; tokens. `length` >= the longest response; `student=None` skips the KL."""
    kl_sum = torch.zeros(length, dtype=torch.float64)
    nll_sum, n_tokens, n_rows = 0.0, 0, 0
    for b in rollouts:
        seq, amask, tokens, rows, cols, Tp = _scored_positions(b, eot, device)
        if 'teacher_logits' in b:
            z_p = b['teacher_logits'].to(device)
        else:
            z_p = _logits_at(teacher, seq, amask, rows, Tp - 1 + cols, ctx)
        scored = cols < tokens.shape[1]           # a response token follows: the teacher NLL's positions
        target = tokens[rows[scored], cols[scored]]
        nll_sum += -torch.log_softmax(z_p[scored], -1).gather(1, target[:, None]).sum().item()
        n_tokens += target.numel()
        n_rows += seq.shape[0]
        if student is not None:
            if seq.shape[1] > student.config.block_size:
                raise UserError(f"a student with block_size {student.config.block_size} cannot score sequences "
                                f"of {seq.shape[1]} tokens: set --max_new_tokens to fit it")
            after = cols >= 1                     # after y_1 .. y_l: the reference's ExAccErr positions
            z_q = _logits_at(student, seq, amask, rows[after], Tp - 1 + cols[after], ctx)
            kl_sum.index_add_(0, (cols[after] - 1).cpu(), kl.forward_kl(z_q, z_p[after]).double().cpu())
    return dict(kl_sum=kl_sum, rows=n_rows, nll_sum=nll_sum, tokens=n_tokens)


def merge_stats(stats):
    return dict(kl_sum=sum(s['kl_sum'] for s in stats), rows=sum(s['rows'] for s in stats),
                nll_sum=sum(s['nll_sum'] for s in stats), tokens=sum(s['tokens'] for s in stats))


def teacher_nll(teacher, rollouts, eot, device='cpu', ctx=nullcontext()):
    """Mean per-token NLL under the teacher of sampled responses, -sum log p(y_t|y_<t,x) / #tokens,
    pooled over all response tokens (including the eot of each row that emitted one)."""
    s = rollout_stats(None, teacher, rollouts, eot, 1, device, ctx)
    return s['nll_sum'] / max(s['tokens'], 1)


def accumulated_kl(stats):
    """MiniLLM §3.3: R(l) = sum_{t<=l} E_y KL(p || q) after the first t response tokens, l = 1..L.
    A response that ended before contributes 0 there (it is averaged in, not excluded, as the
    reference averages its masked rows), so the curve flattens once all rows ended."""
    return (stats['kl_sum'] / max(stats['rows'], 1)).cumsum(0)


def exaccerr(R, eps):
    """MiniLLM §3.3, ExAccErr(l) = (R(l) - eps(l)) / eps(l) x 100%: the excess accumulated error
    R on the student's own prefixes over eps on the teacher's. None where eps(l) = 0."""
    return [None if e <= 0 else (r - e) / e * 100.0 for r, e in zip(R.tolist(), eps.tolist())]


def exposure_bias(student_stats, teacher_stats):
    """ExAccErr curve from rollout_stats on the student's samples (R) and on the teacher's (eps),
    both scored by the same (student, teacher) pair."""
    R, eps = accumulated_kl(student_stats), accumulated_kl(teacher_stats)
    return dict(R=R.tolist(), eps=eps.tolist(), exaccerr=exaccerr(R, eps))


# ----------------------------------------------------------------------------- one model
@torch.no_grad()
def evaluate_model(model, data, indices, enc, teacher=None, task=None, seeds=(10, 20, 30, 40, 50), batch_size=256,
                   device='cpu', teacher_rollouts=None, ctx=nullcontext(), ece='token', ece_labels=None, **gen):
    """Every metric of one model on data[indices]; `gen`: sample_rollouts' max_new_tokens, cap,
    temperature, top_p, no_repeat_ngram_size. Keys holding a list have one value per seed:
    rouge_l, dist4, length, (teacher) teacher_nll, (task) validity, validity_single, validity_multi.
    Single values: ece, accuracy, confidence, (task) distinct_valid; with a teacher, 'exposure'
    holds the R / eps / ExAccErr curves for l = 1..L, pooled over all seeds (not for the teacher
    itself). `teacher_rollouts` (one sample_rollouts list per seed, sampled with `seeds`) saves
    re-sampling the teacher for every model."""
    model.eval()
    prompts = [data.rows[i]['prompt'] for i in indices]
    refs = [data.rows[i].get('references') or [data.rows[i]['response']] for i in indices]
    # the teacher's own row: its samples are teacher_rollouts, and KL(p||p) = 0 leaves ExAccErr undefined
    is_teacher = teacher is not None and model is teacher
    context = min(model.config.block_size, teacher.config.block_size) if teacher is not None else None
    horizon = gen.get('max_new_tokens') or gen.get('cap', 256)
    res = dict(rouge_l=[], dist4=[])
    answers_by_seed, own_stats = [], []
    for k, s in enumerate(seeds):
        if is_teacher and teacher_rollouts is not None:
            rollouts = teacher_rollouts[k]
        else:
            rollouts = sample_rollouts(model, data, indices, s, batch_size=batch_size, device=device, ctx=ctx,
                                       context=context, **gen)
        texts = rollout_texts(rollouts, enc, data.eot)
        answers_by_seed.append(texts)
        res['rouge_l'].append(_mean(rouge_l(t, r) for t, r in zip(texts, refs)))
        res['dist4'].append(dist_n(texts, 4))
        res.setdefault('length', []).append(mean_length(rollouts, data.eot))
        if teacher is not None:
            st = rollout_stats(None if is_teacher else model, teacher, rollouts, data.eot, horizon, device, ctx)
            res.setdefault('teacher_nll', []).append(st['nll_sum'] / max(st['tokens'], 1))
            own_stats.append(st)
    if task is not None:
        res.update(answer_validity(task, prompts, answers_by_seed))
    if ece == 'label':
        res.update(label_calibration(model, data, indices, enc, ece_labels, batch_size, device, ctx=ctx))
    else:
        res.update(token_calibration(model, data, indices, batch_size, device, ctx=ctx))
    if teacher is not None and not is_teacher:
        if teacher_rollouts is None:
            teacher_rollouts = [sample_rollouts(teacher, data, indices, s, batch_size=batch_size, device=device,
                                                ctx=ctx, **gen) for s in seeds]
        teacher_stats = [rollout_stats(model, teacher, r, data.eot, horizon, device, ctx) for r in teacher_rollouts]
        res['exposure'] = exposure_bias(merge_stats(own_stats), merge_stats(teacher_stats))
    return res


# ----------------------------------------------------------------------------- main
def parse_pairs(spec, what, default_path):
    """'a=path,b' -> {a: path, b: default_path(b)}; a bare path stands for its last component."""
    pairs = {}
    for item in [s.strip() for s in spec.split(',') if s.strip()]:
        name, path = (item.split('=', 1) if '=' in item
                      else (os.path.basename(os.path.normpath(item)), default_path(item)))
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise UserError(f"{what} entry '{item}' must look like name=path")
        if name in pairs:
            raise UserError(f"{what[:-1]} name '{name}' appears twice in {what}")
        pairs[name] = path
    return pairs


def parse_models(spec):
    """'a=path,b=path' (or bare paths, named by their last component) -> {name: path}."""
    pairs = parse_pairs(spec, 'models', lambda item: item)
    if not pairs:
        raise UserError("no models to evaluate: set --models='name=out/run_dir,...'")
    return pairs


def parse_test_sets(spec, data_dir):
    """'dolly,sni=path,...' -> {name: data dir}: a bare name is data/<name>; '' is data_dir alone."""
    if not spec.strip():
        return {os.path.basename(os.path.normpath(data_dir)): data_dir}
    return parse_pairs(spec, 'test_sets', lambda item: item if os.sep in item else os.path.join('data', item))


def toy_task(data_dir):
    """The toy task's checker when `data_dir` is named toy_instruct*, else None."""
    if not os.path.basename(os.path.normpath(data_dir)).startswith('toy_instruct'):
        return None
    return importlib.import_module('data.toy_instruct.task')


def load_test_sets(cfg):
    """{name: (data, indices, task, data dir)}, every set sharing one tokenizer; indices sorted shortest
    prompt first (less left padding per batch; the same order for every model)."""
    sets = {}
    for name, path in parse_test_sets(cfg.test_sets, cfg.data_dir).items():
        data = InstructSet(path, cfg.split)
        n = len(data) if cfg.max_examples <= 0 else min(len(data), cfg.max_examples)
        sets[name] = (data, sorted(range(n), key=lambda i: int(data.index[i][1])), toy_task(path), path)
    metas = {(d.meta['tokenizer'], d.meta['vocab_size']) for d, *_ in sets.values()}
    if len(metas) > 1:
        raise UserError(f"the test sets use different tokenizers {sorted(metas)}: prepare them with one --tokenizer")
    return sets


def main(argv):
    cfg = configure(DEFAULTS, argv)
    check_device(cfg.device, cfg.dtype)
    cfg.seeds = list(cfg.seeds)
    if not cfg.seeds or cfg.max_new_tokens < 0 or cfg.max_new_tokens_cap < 1 or cfg.batch_size < 1:
        raise UserError("seeds must be non-empty, max_new_tokens >= 0 (0 = the space left), "
                        "max_new_tokens_cap and batch_size >= 1")
    if cfg.dtype not in ('float32', 'bfloat16', 'float16') or cfg.ece not in ('token', 'label'):
        raise UserError(f"dtype must be float32, bfloat16 or float16 (got '{cfg.dtype}'), ece token or label "
                        f"(got '{cfg.ece}')")
    specs = parse_models(cfg.models)
    for spec in [*specs.values(), cfg.teacher] if cfg.teacher else specs.values():
        check_model_spec(spec)  # a wrong path fails now, not after the teacher's sampling
    check_writable(os.path.dirname(os.path.abspath(cfg.out)), f"{cfg.out}.md / .json / .png")
    sets = load_test_sets(cfg)
    meta = next(iter(sets.values()))[0].meta
    enc = get_encoding(meta['tokenizer'])
    horizon = cfg.max_new_tokens or cfg.max_new_tokens_cap
    lengths = [ell for ell in cfg.exaccerr_lengths if 1 <= ell <= horizon]
    gen = dict(max_new_tokens=cfg.max_new_tokens, cap=cfg.max_new_tokens_cap, temperature=cfg.temperature,
               top_p=cfg.top_p, no_repeat_ngram_size=cfg.no_repeat_ngram_size)
    labels = [s.strip() for s in cfg.ece_labels.split(',') if s.strip()] or None
    enable_tf32(cfg.device)  # fp32 checkpoints and the fp32 parts of bf16 ones: TF32 matmuls on CUDA
    keep_freed_memory(cfg.device)
    ctx = autocast(cfg.device, cfg.dtype)  # CUDA or CPU (bfloat16; float16 on CPU is refused by configure)
    load = functools.partial(load_model, device=cfg.device, expect_vocab=meta['vocab_size'],
                             expect_tokenizer=meta['tokenizer'])
    t_model, t_rollouts = None, {}
    if cfg.teacher:
        t_model = load(cfg.teacher)[0].eval()
        for set_name, (data, indices, _, _) in sets.items():
            t0 = time.time()
            t_rollouts[set_name] = [sample_rollouts(t_model, data, indices, s, batch_size=cfg.batch_size,
                                                    device=cfg.device, ctx=ctx, **gen) for s in cfg.seeds]
            cached = cache_teacher_logits(t_model, [b for r in t_rollouts[set_name] for b in r], data.eot,
                                          cfg.device, ctx)
            print(f"teacher {cfg.teacher}: sampled {len(indices)} {set_name} prompts x {len(cfg.seeds)} seeds in "
                  f"{time.time() - t0:.1f}s" + (", cached its logits on them" if cached else ''))
    results = {set_name: {} for set_name in sets}
    for name, path in specs.items():
        same_as_teacher = cfg.teacher and os.path.normpath(path) == os.path.normpath(cfg.teacher)
        model = t_model if same_as_teacher else load(path)[0]
        for set_name, (data, indices, task, _) in sets.items():
            t0 = time.time()
            print(f"evaluating {name} ({path}) on {len(indices)} {set_name} prompts x {len(cfg.seeds)} seeds ...",
                  flush=True)
            r = results[set_name][name] = evaluate_model(
                model, data, indices, enc, teacher=t_model, task=task, seeds=cfg.seeds, batch_size=cfg.batch_size,
                device=cfg.device, teacher_rollouts=t_rollouts.get(set_name), ctx=ctx, ece=cfg.ece,
                ece_labels=labels, **gen)
            print(f"  {name} / {set_name}: Rouge-L {format_stat(summarize(r['rouge_l']), 1, 2)}, ECE {r['ece']:.3f}"
                  + (f", valid {100 * summarize(r['validity'])['mean']:.1f}%" if task else '')
                  + (f", teacher NLL {summarize(r['teacher_nll'])['mean']:.3f}" if t_model is not None else '')
                  + f" ({time.time() - t0:.1f}s)", flush=True)
        del model
    try:
        write_report(cfg, {s: (path, len(ix)) for s, (_, ix, _, path) in sets.items()}, specs, results, lengths)
    except OSError as e:
        raise UserError(f"could not write {e.filename or cfg.out} ({e.strerror or e}): the results are printed "
                        f"above; free space and run again") from None
    return results


if __name__ == '__main__':
    run(main)
