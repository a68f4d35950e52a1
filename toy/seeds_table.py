"""
Mean ± std ACROSS TRAINING SEEDS of evaluate.py's results: one results.json per training seed
(the same models, test sets and sampling seeds; each model trained again with its own --seed), as
`bash quickstart.sh --seeds=N` writes them.

    python toy/seeds_table.py --runs=out/quickstart/seed1337/results.json,out/quickstart/seed1338/results.json \\
        --out=out/quickstart/results

A run's value of a metric is its mean over the sampling seeds (ExAccErr, ECE and distinct valid:
the run's one pooled value). The table gives the mean of those per-run values and their sample
standard deviation (n - 1) across the runs: the spread a re-run with other training seeds
shows, which the spread over sampling seeds of one run does not. A model whose path is the same
in every run (the quickstart's teacher, trained once) has no spread across training seeds: its
row gives that one model's mean ± std over sampling seeds and is marked as trained once.

The comparisons (`compare`, pairs 'a>b'): the paired difference a - b per training seed (a and b
start from that seed's common init), its mean ± std, and in how many seeds a is above b. A claim
'a above b' holds across seeds when it holds in every seed.

Writes <out>.md (the table across seeds, the comparisons, then each seed's values), <out>.json
and <out>.png (bars: mean, error bars: std across training seeds, dots: each seed).
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

from configurator import UserError, configure, defaults_from, run  # noqa: E402
from components.report import COLUMNS, SET_TITLES, markdown_table, summarize  # noqa: E402

# ----------------------------------------------------------------------------- config
runs = ''                    # comma-separated results.json paths, one per training seed
out = 'out/quickstart/results'  # writes <out>.md, .json, .png
compare = ('minillm>kd,minillm>sft,minillm>seqkd,kd>sft,seqkd>sft,atkd>kd,gkd>kd,distillm>kd,minillm>gkd,'
           'minillm>distillm,minillm>minillm-no-single-step,minillm>minillm-no-teacher-mix,'
           'minillm>minillm-no-length-norm')  # pairs a>b; names absent from the runs are skipped
exaccerr_lengths = (4, 8, 16)
DEFAULTS = defaults_from(globals())
# -----------------------------------------------------------------------------



def compared_columns(lengths):
    """The comparisons' columns (metric key, title, scale, decimals): ExAccErr at the longest length shown."""
    cols = [('rouge_l', 'Rouge-L', 1, 1), ('validity', 'valid %', 100, 1), ('teacher_nll', 'teacher NLL', 1, 3)]
    return cols + [(f'exaccerr@{max(lengths)}', f'ExAccErr@{max(lengths)} %', 1, 1)] if lengths else cols


def run_value(metrics, key):
    """One training run's value of `key`: the mean over its sampling seeds of a per-seed list, the
    value itself for a pooled metric; 'exaccerr@l' = ExAccErr(l). None when absent."""
    if key.startswith('exaccerr@'):
        curve = metrics.get('exposure', {}).get('exaccerr', [])
        ell = int(key.split('@')[1])
        return curve[ell - 1] if 0 < ell <= len(curve) else None
    return summarize(metrics.get(key))['mean']


def mean_std(values):
    """dict(mean, std, n): mean and sample std (n - 1) of the values that are not None; std None for one value."""
    vals = [v for v in values if v is not None]
    if not vals:
        return dict(mean=None, std=None, n=0)
    m = sum(vals) / len(vals)
    std = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return dict(mean=m, std=std, n=len(vals))


def cell(stat, scale, dec, mark=''):
    if stat['mean'] is None:
        return '–'
    text = f"{stat['mean'] * scale:.{dec}f}"
    return text + (f" ± {stat['std'] * scale:.{dec}f}" if stat['std'] is not None else '') + mark


def load_runs(paths):
    """[(path, results.json dict)], checked to be runs of one evaluation: the same test sets, models
    and sampling seeds."""
    if not paths:
        raise UserError("no runs: set --runs=out/quickstart/seed1337/results.json,... (one per training seed)")
    loaded = []
    for p in paths:
        if not os.path.isfile(p):
            raise UserError(f"{p} not found: run evaluate.py (or bash quickstart.sh --seeds=N) first")
        with open(p) as f:
            loaded.append((p, json.load(f)))
    first = loaded[0][1]
    def shape(r):
        return {s: list(v['models']) for s, v in r['test_sets'].items()}, list(r['config']['seeds'])
    for p, r in loaded[1:]:
        if shape(r) != shape(first):
            raise UserError(f"{p} has other test sets, models or sampling seeds than {loaded[0][0]}: "
                            "the runs must come from the same evaluate.py command")
    return loaded


def keys_of(lengths):
    return list(COLUMNS) + [(f'exaccerr@{ell}', f'ExAccErr@{ell} %', 1, 1) for ell in lengths]


def aggregate(results, lengths):
    """{set: {model: {key: dict(mean, std, n, per_run, once)}}} over the runs' results.json dicts.
    once: the model's path is the same in every run (trained once); then mean/std are its sampling-seed
    mean and population std, as evaluate.py reports them."""
    table = {}
    for s, info in results[0]['test_sets'].items():
        table[s] = {}
        for m in info['models']:
            entries = [r['test_sets'][s]['models'][m] for r in results]
            once = len(results) > 1 and len({e['path'] for e in entries}) == 1
            row = {}
            for key, *_ in keys_of(lengths):
                per_run = [run_value(e['metrics'], key) for e in entries]
                if once:
                    raw = entries[0]['metrics'].get(key)
                    stat = dict(summarize(raw) if not key.startswith('exaccerr@') else dict(mean=per_run[0], std=None),
                                n=1)
                else:
                    stat = mean_std(per_run)
                row[key] = dict(stat, per_run=per_run, once=once)
            table[s][m] = row
    return table


def comparisons(table_set, pairs, columns):
    """[(pair, {key: dict(mean, std, n, wins)})]: per-run differences a - b; wins = runs with a > b
    (for ExAccErr, teacher NLL: runs with a < b, lower being better)."""
    out = []
    for a, b in pairs:
        if a not in table_set or b not in table_set:
            continue
        row = {}
        for key, *_ in columns:
            ra, rb = table_set[a][key]['per_run'], table_set[b][key]['per_run']
            diffs = [x - y for x, y in zip(ra, rb) if x is not None and y is not None]
            lower_better = key.startswith('exaccerr') or key == 'teacher_nll'
            wins = sum((d < 0) if lower_better else (d > 0) for d in diffs)
            row[key] = dict(mean_std(diffs), wins=wins)
        out.append((f'{a} > {b}', row))
    return out


def parse_pairs(spec):
    pairs = []
    for item in [s.strip() for s in spec.split(',') if s.strip()]:
        if item.count('>') != 1:
            raise UserError(f"compare entry '{item}' must look like a>b (model names from the runs)")
        pairs.append(tuple(x.strip() for x in item.split('>')))
    return pairs


def markdown(cfg, results, table, comps, lengths, n_runs):
    seeds = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in cfg.runs_list]  # e.g. seed1337
    ev = results[0]['config']
    parts = [f"{n_runs} training seed{'s' * (n_runs > 1)} ({', '.join(seeds)}); each evaluated with "
             f"{len(ev['seeds'])} sampling seed{'s' * (len(ev['seeds']) > 1)} {tuple(ev['seeds'])}. Each seed's value "
             "is its mean over the sampling seeds; the table gives mean ± sample std (n - 1) across training seeds "
             + ("(trained once: one model, ± over sampling seeds)." if n_runs > 1 else
                "(one training seed: no spread across training seeds; its spread over sampling seeds is in "
                f"{seeds[0]}/results.md).")]
    for s in table:
        rows_by_model = table[s]
        cols = [(k, t, sc, d) for k, t, sc, d in keys_of(lengths)
                if any(rows_by_model[m][k]['mean'] is not None for m in rows_by_model)]
        header = ['model'] + [t for _, t, _, _ in cols]
        rows = [[m + (' (trained once)' if r[cols[0][0]]['once'] else '')]
                + [cell(r[k], sc, d) for k, _, sc, d in cols] for m, r in rows_by_model.items()]
        parts += [f"## {SET_TITLES.get(s, s)}: mean ± std across training seeds", markdown_table(header, rows)]
        if comps.get(s):
            columns = compared_columns(lengths)
            header = ['claim'] + [f"{t} a − b (seeds where a is better)" for _, t, _, _ in columns]
            rows = [[name] + [cell(row[k], sc, d) + f" ({row[k]['wins']}/{row[k]['n']})" if row[k]['n'] else '–'
                              for k, _, sc, d in columns] for name, row in comps[s]]
            parts += ["## Paired differences per training seed (a and b share that seed's init)",
                      markdown_table(header, rows)]
        header = ['model'] + [f"{t}, {lab}" for _, t, _, _ in cols[:2] for lab in seeds]
        rows = [[m] + ['–' if v is None else f"{v * sc:.{d}f}" for k, _, sc, d in cols[:2] for v in r[k]['per_run']]
                for m, r in rows_by_model.items()]
        parts += ["## Each training seed (mean over sampling seeds)", markdown_table(header, rows)]
    return '\n\n'.join(parts) + '\n', seeds


def plot(table_set, comps, seeds, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(table_set)
    bars = [(k, t, sc) for k, t, sc, _ in COLUMNS if k in ('rouge_l', 'validity', 'validity_multi')
            and any(table_set[m][k]['mean'] is not None for m in names)]
    fig, axes = plt.subplots(1, 3 if comps else 2, figsize=(19 if comps else 13, 4.4))
    ax, width = axes[0], 0.8 / max(len(bars), 1)
    for j, (key, title, scale) in enumerate(bars):
        xs = [i + j * width for i in range(len(names))]
        stats = [table_set[m][key] for m in names]
        ax.bar(xs, [(s['mean'] or 0) * scale for s in stats], width, label=title, capsize=3,
               yerr=[0 if s['once'] or s['std'] is None else s['std'] * scale for s in stats])
        for x, s in zip(xs, stats):
            if not s['once']:
                ax.plot([x] * len(s['per_run']), [(v or 0) * scale for v in s['per_run']], 'k.', ms=3)
    ax.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(names))], names, rotation=25, ha='right')
    ax.set_title(f'mean ± std across {len(seeds)} training seeds (dots: each seed)')
    ax.set_ylabel('%')
    ax.legend()
    ax = axes[1]
    ax.set_prop_cycle(color=plt.get_cmap('tab20').colors[::2] + plt.get_cmap('tab20').colors[1::2])  # 20 distinct
    for m in names:
        if table_set[m]['rouge_l']['once']:
            continue
        ells = [ell for ell in range(1, 65) if f'exaccerr@{ell}' in table_set[m]]
        if not ells:
            continue
        mean = [table_set[m][f'exaccerr@{ell}']['mean'] for ell in ells]
        std = [table_set[m][f'exaccerr@{ell}']['std'] or 0 for ell in ells]
        line, = ax.plot(ells, [float('nan') if v is None else v for v in mean], label=m)
        ax.fill_between(ells, [float('nan') if v is None else v - e for v, e in zip(mean, std)],
                        [float('nan') if v is None else v + e for v, e in zip(mean, std)],
                        color=line.get_color(), alpha=0.15)
    ax.axhline(0, color='gray', lw=0.5)
    ax.set_xlabel('generation length l')
    ax.set_ylabel('ExAccErr(l) %')
    ax.set_title('exposure bias (MiniLLM §3.3), mean ± std across seeds')
    ax.legend(fontsize=7)
    if comps:  # the paired differences: what a claim 'a above b' rests on
        ax = axes[2]
        diffs = [[(x - y) * 100 for x, y in zip(table_set[a]['validity']['per_run'], table_set[b]['validity']['per_run'])
                  if x is not None and y is not None] for a, b in comps]
        ax.barh(range(len(comps)), [sum(d) / len(d) if d else 0 for d in diffs], color='lightgray')
        for i, d in enumerate(diffs):
            ax.plot(d, [i] * len(d), 'k.', ms=5)
        ax.axvline(0, color='gray', lw=0.5)
        ax.set_yticks(range(len(comps)), [f'{a} − {b}' for a, b in comps], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel('valid % difference, same init (bar: mean, dots: each seed)')
        ax.set_title('paired differences per training seed')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    cfg = configure(DEFAULTS, argv)
    cfg.runs_list = [p.strip() for p in cfg.runs.split(',') if p.strip()]
    loaded = load_runs(cfg.runs_list)
    results = [r for _, r in loaded]
    pairs = parse_pairs(cfg.compare)
    horizon = max(len(m['metrics'].get('exposure', {}).get('exaccerr', []))
                  for s in results[0]['test_sets'].values() for m in s['models'].values())
    lengths = sorted(set(cfg.exaccerr_lengths) | set(range(1, horizon + 1)))  # the plot's whole curve
    table = aggregate(results, lengths)
    shown = [ell for ell in cfg.exaccerr_lengths if ell <= horizon]
    comps = {s: comparisons(table[s], pairs, compared_columns(shown)) for s in table}
    text, seeds = markdown(cfg, results, table, comps, shown, len(results))
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    with open(cfg.out + '.md', 'w') as f:
        f.write(text)
    with open(cfg.out + '.json', 'w') as f:
        json.dump(dict(runs=cfg.runs_list, seeds=seeds, table=table,
                       comparisons={s: dict(c) for s, c in comps.items()}), f, indent=1)
    pngs = {s: cfg.out + ('.png' if len(table) == 1 else f'_{s}.png') for s in table}
    for s, path in pngs.items():
        plot(table[s], [p for p in pairs if p[0] in table[s] and p[1] in table[s]], seeds, path)
    print(f"wrote {cfg.out}.md, {cfg.out}.json, {', '.join(pngs.values())}")
    return table, comps


if __name__ == '__main__':
    run(main)
