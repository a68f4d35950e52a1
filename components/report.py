"""
Tables and plots of evaluate.py's results: the paper's Table 1 layout (MiniLLM arXiv 2306.08543,
Table 1: one row per model, one Rouge-L column per test set, mean ± std over sampling seeds),
one table of every metric per test set, written as <out>.md, <out>.json and <out>.png.
"""
import json
import math
import os

# Table 1's column titles for the test sets' usual names
SET_TITLES = dict(dolly='Dolly', self_inst='SelfInst', vicuna='Vicuna', sni='S-NI', unni='UnNI')


# ----------------------------------------------------------------------------- reporting
# (key, column title, scale, decimals)
COLUMNS = [('rouge_l', 'Rouge-L', 1, 1), ('validity', 'valid %', 100, 1), ('validity_single', 'valid 1-ans %', 100, 1),
           ('validity_multi', 'valid n-ans %', 100, 1), ('distinct_valid', 'distinct valid', 1, 2),
           ('dist4', 'Dist-4', 1, 3), ('length', 'length', 1, 1), ('teacher_nll', 'teacher NLL', 1, 3), ('ece', 'ECE', 1, 3)]


def summarize(values):
    """mean and (population) std over seeds of a per-seed list; a single value passes through."""
    if not isinstance(values, list):
        return dict(mean=values, std=None)
    vals = [v for v in values if v is not None]
    if not vals:
        return dict(mean=None, std=None)
    m = sum(vals) / len(vals)
    return dict(mean=m, std=math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals)) if len(vals) > 1 else None)


def format_stat(s, scale=1, dec=1):
    """'mean ± std' (or 'mean', or '–') of a summarize() dict."""
    if s['mean'] is None:
        return '–'
    return f"{s['mean'] * scale:.{dec}f}" + (f" ± {s['std'] * scale:.{dec}f}" if s['std'] is not None else '')


def table_rows(results, lengths):
    """(header, rows) of one test set's table; columns where no model has a value are dropped."""
    cols = []
    for key, title, scale, dec in COLUMNS:
        cols.append((title, [(summarize(r.get(key)), scale, dec) for r in results.values()]))
    for ell in lengths:
        vals = [r['exposure']['exaccerr'][ell - 1] if 'exposure' in r else None for r in results.values()]
        cols.append((f'ExAccErr@{ell} %', [(dict(mean=v, std=None), 1, 1) for v in vals]))
    cols = [(t, cells) for t, cells in cols if any(c[0]['mean'] is not None for c in cells)]
    header = ['model'] + [t for t, _ in cols]
    rows = [[name] + [format_stat(*cells[j]) for _, cells in cols] for j, name in enumerate(results)]
    return header, rows


def table1(results_by_set):
    """The paper's Table 1 layout: one row per model, one Rouge-L column per test set (mean ± std
    over seeds). Returns (header, rows, numbers) with numbers[model][set] = summarize(rouge_l)."""
    sets = list(results_by_set)
    names = list(dict.fromkeys(m for res in results_by_set.values() for m in res))
    numbers = {m: {s: summarize(results_by_set[s][m]['rouge_l']) for s in sets} for m in names}
    header = ['model'] + [SET_TITLES.get(s, s) + ' Rouge-L' for s in sets]
    return header, [[m] + [format_stat(numbers[m][s]) for s in sets] for m in names], numbers


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


def write_report(cfg, sets, specs, results, lengths):
    """<out>.md (Table 1, then each set's table), <out>.json (every number), <out>.png (per set
    <out>_<set>.png when there are several). `sets`: {name: (data dir, number of prompts)};
    `specs`: {model: path}; `results`: {set: {model: evaluate.evaluate_model's dict}}."""
    header, rows, numbers = table1(results)
    budget = (f"up to {cfg.max_new_tokens}" if cfg.max_new_tokens
              else f"the space left, at most {cfg.max_new_tokens_cap},")
    note = (f"{len(cfg.seeds)} sampling seeds {tuple(cfg.seeds)} (tau {cfg.temperature}, top-p {cfg.top_p}, "
            f"{budget} new tokens, no_repeat_ngram_size {cfg.no_repeat_ngram_size}); mean ± std over seeds. "
            f"Teacher: {cfg.teacher or 'none'}. ECE: {cfg.ece}.")
    parts = [note, '## Rouge-L (the paper\'s Table 1 layout)', markdown_table(header, rows)]
    for set_name, (path, n) in sets.items():
        parts += [f"## {SET_TITLES.get(set_name, set_name)}: {path} / {cfg.split}, {n} prompts",
                  markdown_table(*table_rows(results[set_name], lengths))]
    text = '\n\n'.join(parts) + '\n'
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    with open(cfg.out + '.md', 'w') as f:
        f.write(text)
    with open(cfg.out + '.json', 'w') as f:
        json.dump(dict(config=vars(cfg), table1=numbers,
                       test_sets={s: dict(data_dir=path, prompts=n,
                                          models={m: dict(path=specs[m], metrics=r) for m, r in results[s].items()})
                                  for s, (path, n) in sets.items()}), f, indent=1)
    pngs = {s: cfg.out + ('.png' if len(sets) == 1 else f'_{s}.png') for s in sets}
    for s, path in pngs.items():
        plot_results(results[s], path)
    print(f"wrote {cfg.out}.md, {cfg.out}.json, {', '.join(pngs.values())}")
