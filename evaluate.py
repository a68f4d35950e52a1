"""
Evaluation of students against their teacher (MiniLLM, arXiv 2306.08543 §3):

    Rouge-L     F-measure with stemming, max over references, x100, on responses sampled with
                tau = 1, top-p = 1; averaged over seeds
    Dist-4      distinct 4-grams / all 4-grams over the sampled responses (whitespace words)
    teacher NLL mean per-token -log p(y_t | y_<t, x) of the student's own samples (eot included)
    ECE         token-level calibration on gold responses (10 equal-width confidence bins)
    ExAccErr(l) exposure bias: accumulated KL(p_t||q_t) on the student's own prefixes relative
                to the same sum on teacher-sampled prefixes
    validity    toy task only: fraction of sampled answers that are correct, and the number of
                distinct correct answers a multi-answer prompt gets across the seeds

    python evaluate.py --models='sft=out/toy_sft,kd=out/toy_kd,minillm=out/toy_minillm' \\
        --teacher=out/toy_teacher --data_dir=data/toy_instruct

writes <out>.md (one row per model, mean ± std over seeds), <out>.json (every number) and
<out>.png. Models are evaluated one at a time on the same prompts with the same sampling seeds.
The toy-task metrics switch on when the data directory's name starts with 'toy_instruct'
(data/toy_instruct/task.py then supplies the answer checker).
"""
import functools
import importlib
import json
import math
import os
import time
from contextlib import nullcontext

import torch

import kl
from checkpoint import load_model
from configurator import UserError, configure, defaults_from, run
from dataset import InstructSet, split_responses
from tokenizer import get_encoding

# ----------------------------------------------------------------------------- config
models = 'sft=out/toy_sft'   # name=path pairs, comma-separated (run dirs, ckpt.pt, HF GPT-2)
teacher = ''                 # for teacher NLL and ExAccErr; '' = skip both
data_dir = 'data/toy_instruct'
split = 'test'
max_examples = 500           # the first N prompts of the split
num_seeds = 3                # sampling passes per model (the paper averages 5)
seed = 1234                  # pass s samples with seed + s, identically for every model
max_new_tokens = 32
temperature = 1.0            # pure sampling, as the paper evaluates
top_p = 1.0
batch_size = 256             # prompts per batch; scoring holds 2 x batch x max_new_tokens x vocab floats
exaccerr_lengths = (4, 8, 16)  # the table's ExAccErr(l) columns; the .json has the whole curve
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'float32'            # 'bfloat16' autocasts the forward passes on CUDA; metrics stay fp32
out = 'out/results'          # writes out/results.md, .json, .png
DEFAULTS = defaults_from(globals())
# -----------------------------------------------------------------------------


# ----------------------------------------------------------------------------- text metrics
@functools.lru_cache(maxsize=None)
def _rouge_scorer():
    from rouge_score import rouge_scorer, tokenizers

    class CachedTokenizer(tokenizers.Tokenizer):
        """rouge-score's own tokenizer (lowercase, alphanumeric words, Porter stems), memoised:
        the same references are scored against every sample of every model."""
        def __init__(self):
            self._cached = functools.lru_cache(maxsize=1 << 17)(tokenizers.DefaultTokenizer(use_stemmer=True).tokenize)

        def tokenize(self, text):
            return self._cached(text)

    return rouge_scorer.RougeScorer(['rougeL'], tokenizer=CachedTokenizer())


def rouge_l(prediction, references):
    """Rouge-L (Lin, 2004): F = 2PR / (P + R) with P = LCS/|pred|, R = LCS/|ref|
    over stemmed words (the rouge-score package); max over `references`, x100. 0 when empty."""
    if isinstance(references, str):
        references = [references]
    if not prediction.strip() or not references:
        return 0.0
    scorer = _rouge_scorer()
    return 100.0 * max(scorer.score(ref, prediction)['rougeL'].fmeasure for ref in references)


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


def response_mask(tokens, eot):
    """[B, n] True at each response position up to and including the row's first eot."""
    is_eot = (tokens == eot).long()
    return (is_eot.cumsum(1) - is_eot) == 0


@torch.no_grad()
def token_calibration(model, data, indices, batch_size=64, device='cpu', n_bins=10, ctx=nullcontext()):
    """Token-level calibration on gold responses (MiniLLM §3.3): at every response
    position (eot included) confidence = max_v q(v | y_<t, x), correct = [argmax = gold token].
    Returns ECE, accuracy and mean confidence."""
    confs, hits = [], []
    for s in range(0, len(indices), batch_size):
        x, y = data.sft_batch(indices[s:s + batch_size], model.config.block_size)
        rows, cols = (y != -1).nonzero(as_tuple=True)
        logits = _logits_at(model, x.to(device), None, rows.to(device), cols.to(device), ctx)
        conf, pred = logits.softmax(-1).max(-1)
        confs.append(conf.cpu())
        hits.append((pred.cpu() == y[rows, cols]))
    conf, hit = torch.cat(confs), torch.cat(hits)
    return dict(ece=expected_calibration_error(conf, hit, n_bins), accuracy=hit.double().mean().item(),
                confidence=conf.double().mean().item())


@torch.no_grad()
def sample_rollouts(model, data, indices, seed, max_new_tokens, batch_size=256, device='cpu',
                    temperature=1.0, top_p=1.0, ctx=nullcontext()):
    """Responses sampled from `model` for data[indices], batch by batch with one generator seeded
    by `seed`: two models with equal weights give equal samples. Returns a list of batches
    dict(ids, seq = prompt (left-padded) + response tokens [B, Tp + n] on the CPU, prompt_mask)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    rollouts = []
    for s in range(0, len(indices), batch_size):
        ids = indices[s:s + batch_size]
        idx, pmask = data.prompt_batch(ids)
        with ctx:
            seq = model.generate(idx.to(device), max_new_tokens, temperature=temperature, top_p=top_p,
                                 eos_id=data.eot, attention_mask=pmask.to(device), generator=gen)
        rollouts.append(dict(ids=ids, seq=seq.cpu(), prompt_mask=pmask))
    return rollouts


def rollout_texts(rollouts, enc, eot):
    """Decoded responses, in rollout order, without their eot."""
    texts = []
    for b in rollouts:
        for r in split_responses(b['seq'], b['prompt_mask'].shape[1], eot):
            texts.append(enc.decode([t for t in r if t != eot and t < enc.n_vocab]))
    return texts


def _scored_positions(batch, eot, device):
    """A rollout batch on `device`: (seq, attention mask, response tokens, rows, cols, Tp) where
    (rows, cols) are the response positions up to each row's eot; seq[rows, Tp - 1 + cols] predicts them."""
    seq, pmask = batch['seq'].to(device), batch['prompt_mask'].to(device)
    Tp = pmask.shape[1]
    amask = torch.cat([pmask, torch.ones_like(seq[:, Tp:])], 1)
    tokens = seq[:, Tp:]
    rows, cols = response_mask(tokens, eot).nonzero(as_tuple=True)
    return seq, amask, tokens, rows, cols, Tp


@torch.no_grad()
def cache_teacher_logits(teacher, rollouts, eot, device='cpu', ctx=nullcontext(), max_bytes=512 << 20):
    """Keep the teacher's logits at the response positions of its own samples (b['teacher_logits'],
    on the CPU), which every student's ExAccErr needs again, when all of them fit in `max_bytes`.
    Returns whether they were cached."""
    n = sum(int(response_mask(b['seq'][:, b['prompt_mask'].shape[1]:], eot).sum()) for b in rollouts)
    if n * teacher.config.vocab_size * 4 > max_bytes:
        return False
    for b in rollouts:
        seq, amask, _, rows, cols, Tp = _scored_positions(b, eot, device)
        b['teacher_logits'] = _logits_at(teacher, seq, amask, rows, Tp - 1 + cols, ctx).cpu()
    return True


@torch.no_grad()
def rollout_stats(student, teacher, rollouts, eot, length, device='cpu', ctx=nullcontext()):
    """Sums over sampled responses, for the teacher NLL and ExAccErr:
    kl_sum [length]: sum over rows of KL(p_t || q_t) at response position t (kl.forward_kl;
    0 once a row has emitted its eot), rows, nll_sum: sum of -log p(y_t | y_<t, x) over response
    tokens incl. eot, and tokens. `student=None` skips the KL."""
    kl_sum = torch.zeros(length, dtype=torch.float64)
    nll_sum, n_tokens, n_rows = 0.0, 0, 0
    for b in rollouts:
        seq, amask, tokens, rows, cols, Tp = _scored_positions(b, eot, device)
        if 'teacher_logits' in b:
            z_p = b['teacher_logits'].to(device)
        else:
            z_p = _logits_at(teacher, seq, amask, rows, Tp - 1 + cols, ctx)
        nll_sum += -torch.log_softmax(z_p, -1).gather(1, tokens[rows, cols][:, None]).sum().item()
        n_tokens += rows.numel()
        n_rows += seq.shape[0]
        if student is not None:
            z_q = _logits_at(student, seq, amask, rows, Tp - 1 + cols, ctx)
            kl_sum.index_add_(0, cols.cpu(), kl.forward_kl(z_q, z_p).double().cpu())
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
    """MiniLLM §3.3: sum_{t<=l} E_y KL(p_t || q_t) for l = 1..L. A response that ended before t
    contributes 0 there (it is averaged in, not excluded), so the curve is E_y of the KL summed
    over each response's own first min(l, |y|) positions, and flattens once all rows ended."""
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
def evaluate_model(model, data, indices, enc, teacher=None, task=None, seeds=(0, 1, 2), max_new_tokens=32,
                   batch_size=256, device='cpu', temperature=1.0, top_p=1.0, teacher_rollouts=None,
                   ctx=nullcontext()):
    """Every metric of one model on data[indices]. Keys holding a list have one value per seed:
    rouge_l, dist4, (teacher) teacher_nll, (task) validity, validity_single, validity_multi.
    Single values: ece, accuracy, confidence, (task) distinct_valid; with a teacher, 'exposure'
    holds the R / eps / ExAccErr curves for l = 1..max_new_tokens, pooled over all seeds (not for
    the teacher itself). `teacher_rollouts` (one sample_rollouts list per seed, sampled with `seeds`)
    saves re-sampling the teacher for every model."""
    model.eval()
    prompts = [data.rows[i]['prompt'] for i in indices]
    refs = [data.rows[i].get('references') or [data.rows[i]['response']] for i in indices]
    # the teacher's own row: its samples are teacher_rollouts, and KL(p||p) = 0 leaves ExAccErr undefined
    is_teacher = teacher is not None and model is teacher
    res = dict(rouge_l=[], dist4=[])
    answers_by_seed, own_stats = [], []
    for k, s in enumerate(seeds):
        if is_teacher and teacher_rollouts is not None:
            rollouts = teacher_rollouts[k]
        else:
            rollouts = sample_rollouts(model, data, indices, s, max_new_tokens, batch_size, device, temperature,
                                       top_p, ctx)
        texts = rollout_texts(rollouts, enc, data.eot)
        answers_by_seed.append(texts)
        res['rouge_l'].append(_mean(rouge_l(t, r) for t, r in zip(texts, refs)))
        res['dist4'].append(dist_n(texts, 4))
        if teacher is not None:
            st = rollout_stats(None if is_teacher else model, teacher, rollouts, data.eot, max_new_tokens, device, ctx)
            res.setdefault('teacher_nll', []).append(st['nll_sum'] / max(st['tokens'], 1))
            own_stats.append(st)
    if task is not None:
        res.update(answer_validity(task, prompts, answers_by_seed))
    res.update(token_calibration(model, data, indices, batch_size, device, ctx=ctx))
    if teacher is not None and not is_teacher:
        if teacher_rollouts is None:
            teacher_rollouts = [sample_rollouts(teacher, data, indices, s, max_new_tokens, batch_size, device,
                                                temperature, top_p, ctx) for s in seeds]
        teacher_stats = [rollout_stats(model, teacher, r, data.eot, max_new_tokens, device, ctx)
                         for r in teacher_rollouts]
        res['exposure'] = exposure_bias(merge_stats(own_stats), merge_stats(teacher_stats))
    return res


# ----------------------------------------------------------------------------- reporting
# (key, column title, scale, decimals)
COLUMNS = [('rouge_l', 'Rouge-L', 1, 1), ('validity', 'valid %', 100, 1), ('validity_single', 'valid 1-ans %', 100, 1),
           ('validity_multi', 'valid n-ans %', 100, 1), ('distinct_valid', 'distinct valid', 1, 2),
           ('dist4', 'Dist-4', 1, 3), ('teacher_nll', 'teacher NLL', 1, 3), ('ece', 'ECE', 1, 3)]


def summarize(values):
    """mean and (population) std over seeds of a per-seed list; a single value passes through."""
    if not isinstance(values, list):
        return dict(mean=values, std=None)
    vals = [v for v in values if v is not None]
    if not vals:
        return dict(mean=None, std=None)
    m = sum(vals) / len(vals)
    return dict(mean=m, std=math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)) if len(vals) > 1 else None)


def table_rows(results, lengths):
    """(header, rows) of the Markdown table; columns where no model has a value are dropped."""
    cols = []
    for key, title, scale, dec in COLUMNS:
        cols.append((title, [(summarize(r.get(key)), scale, dec) for r in results.values()]))
    for ell in lengths:
        vals = [r['exposure']['exaccerr'][ell - 1] if 'exposure' in r else None for r in results.values()]
        cols.append((f'ExAccErr@{ell} %', [(dict(mean=v, std=None), 1, 1) for v in vals]))
    cols = [(t, cells) for t, cells in cols if any(c[0]['mean'] is not None for c in cells)]

    def fmt(cell):
        s, scale, dec = cell
        if s['mean'] is None:
            return '–'
        text = f"{s['mean'] * scale:.{dec}f}"
        return text + (f" ± {s['std'] * scale:.{dec}f}" if s['std'] is not None else '')
    header = ['model'] + [t for t, _ in cols]
    rows = [[name] + [fmt(cells[j]) for _, cells in cols] for j, name in enumerate(results)]
    return header, rows


def markdown_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] * len(header)) + '|']
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])


def plot_results(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(results)
    bars = [(k, t, sc) for k, t, sc, _ in COLUMNS if k in ('rouge_l', 'validity', 'validity_multi')
            and any(summarize(r.get(k))['mean'] is not None for r in results.values())]
    curves = {n: r['exposure']['exaccerr'] for n, r in results.items()
              if 'exposure' in r and any(v is not None for v in r['exposure']['exaccerr'])}
    fig, axes = plt.subplots(1, 2 if curves else 1, figsize=(12 if curves else 6, 4), squeeze=False)
    ax, width = axes[0][0], 0.8 / max(len(bars), 1)
    for j, (key, title, scale) in enumerate(bars):
        stats = [summarize(results[n].get(key)) for n in names]
        ax.bar([i + j * width for i in range(len(names))], [(s['mean'] or 0) * scale for s in stats], width,
               yerr=[(s['std'] or 0) * scale for s in stats], label=title, capsize=3)
    ax.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(names))], names, rotation=20)
    ax.set_title('sampled responses (mean ± std over seeds)')
    ax.set_ylabel('Rouge-L, %')
    ax.legend()
    if curves:
        ax = axes[0][1]
        for n, c in curves.items():
            ax.plot(range(1, len(c) + 1), [float('nan') if v is None else v for v in c], label=n)
        ax.axhline(0, color='gray', lw=0.5)
        ax.set_xlabel('generation length l')
        ax.set_ylabel('ExAccErr(l) %')
        ax.set_title('exposure bias (MiniLLM §3.3)')
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_models(spec):
    """'a=path,b=path' (or bare paths, named by their last component) -> {name: path}."""
    pairs = {}
    for item in [s.strip() for s in spec.split(',') if s.strip()]:
        name, path = item.split('=', 1) if '=' in item else (os.path.basename(os.path.normpath(item)), item)
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise UserError(f"models entry '{item}' must look like name=path")
        if name in pairs:
            raise UserError(f"model name '{name}' appears twice in models")
        pairs[name] = path
    if not pairs:
        raise UserError("no models to evaluate: set --models='name=out/run_dir,...'")
    return pairs


def toy_task(data_dir):
    """The toy task's checker when `data_dir` is named toy_instruct*, else None."""
    if not os.path.basename(os.path.normpath(data_dir)).startswith('toy_instruct'):
        return None
    return importlib.import_module('data.toy_instruct.task')


def main(argv):
    cfg = configure(DEFAULTS, argv)
    if cfg.num_seeds < 1 or cfg.max_examples < 1 or cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise UserError("num_seeds, max_examples, max_new_tokens and batch_size must all be >= 1")
    if cfg.dtype not in ('float32', 'bfloat16', 'float16'):
        raise UserError(f"dtype must be float32, bfloat16 or float16, got '{cfg.dtype}'")
    specs = parse_models(cfg.models)
    data = InstructSet(cfg.data_dir, cfg.split)
    meta, task = data.meta, toy_task(cfg.data_dir)
    enc = get_encoding(meta['tokenizer'])
    # shortest prompts first: less left padding per batch; the same order for every model
    indices = sorted(range(min(len(data), cfg.max_examples)), key=lambda i: int(data.index[i][1]))
    seeds = [cfg.seed + s for s in range(cfg.num_seeds)]
    lengths = [ell for ell in cfg.exaccerr_lengths if 1 <= ell <= cfg.max_new_tokens]
    ctx = (torch.autocast('cuda', dtype=getattr(torch, cfg.dtype))
           if cfg.device.startswith('cuda') and cfg.dtype != 'float32' else nullcontext())
    load = functools.partial(load_model, device=cfg.device, expect_vocab=meta['vocab_size'],
                             expect_tokenizer=meta['tokenizer'])
    t_model = t_rollouts = None
    if cfg.teacher:
        t_model = load(cfg.teacher)[0].eval()
        t0 = time.time()
        t_rollouts = [sample_rollouts(t_model, data, indices, s, cfg.max_new_tokens, cfg.batch_size, cfg.device,
                                      cfg.temperature, cfg.top_p, ctx) for s in seeds]
        cached = cache_teacher_logits(t_model, [b for r in t_rollouts for b in r], data.eot, cfg.device, ctx)
        print(f"teacher {cfg.teacher}: sampled {len(indices)} x {len(seeds)} responses in {time.time() - t0:.1f}s"
              + (", cached its logits on them" if cached else ''))
    results, paths = {}, {}
    for name, path in specs.items():
        t0 = time.time()
        print(f"evaluating {name} ({path}) on {len(indices)} {cfg.split} prompts x {len(seeds)} seeds ...", flush=True)
        same_as_teacher = cfg.teacher and os.path.normpath(path) == os.path.normpath(cfg.teacher)
        model = t_model if same_as_teacher else load(path)[0]
        results[name] = evaluate_model(model, data, indices, enc, teacher=t_model, task=task, seeds=seeds,
                                       max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                       device=cfg.device, temperature=cfg.temperature, top_p=cfg.top_p,
                                       teacher_rollouts=t_rollouts, ctx=ctx)
        paths[name] = path
        r = results[name]
        print(f"  {name}: Rouge-L {summarize(r['rouge_l'])['mean']:.2f}, ECE {r['ece']:.3f}"
              + (f", valid {100 * summarize(r['validity'])['mean']:.1f}%" if task else '')
              + (f", teacher NLL {summarize(r['teacher_nll'])['mean']:.3f}" if t_model is not None else '')
              + f" ({time.time() - t0:.1f}s)", flush=True)
        del model
    header, rows = table_rows(results, lengths)
    table = markdown_table(header, rows)
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    note = (f"{cfg.data_dir} / {cfg.split}: {len(indices)} prompts, {len(seeds)} sampling seeds "
            f"(tau {cfg.temperature}, top-p {cfg.top_p}, up to {cfg.max_new_tokens} new tokens); "
            f"mean ± std over seeds. Teacher: {cfg.teacher or 'none'}.")
    with open(cfg.out + '.md', 'w') as f:
        f.write(f"{note}\n\n{table}\n")
    with open(cfg.out + '.json', 'w') as f:
        json.dump(dict(config=vars(cfg), models={n: dict(path=paths[n], metrics=r) for n, r in results.items()}),
                  f, indent=1)
    plot_results(results, cfg.out + '.png')
    print(f"wrote {cfg.out}.md, {cfg.out}.json, {cfg.out}.png")
    return results


if __name__ == '__main__':
    run(main)
