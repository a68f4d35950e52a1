"""Step 7 checks: the final project's report (course/step7_project/project.py writes it): its table is
its numbers, the numbers are sane, the functions were yours, and your KD and MiniLLM land where the
project's do, within the spread of the training seeds."""

import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
from types import SimpleNamespace

from grading import Failure, shown

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import project  # noqa: E402  (course/step7_project/project.py)

TITLE = "the final project: your losses in train.py, against the project's KD and MiniLLM"
EXTENSION_TITLE = ""
DEFAULT_SUBMISSION = os.path.join(project.ROOT, "out", "course_project")  # project.py's; --exercise: another
SPREAD = 2.0        # your mean may differ from the project's by this many seed standard deviations ...
FLOOR = {"rouge_l": 1.0, "valid": 1.0}  # ... or by this much (points), whichever is larger
MIN_READING_WORDS = 25


def load_submission(path):
    """The report folder: results.json and report.md, or a Failure that says how to make them."""
    results, report = os.path.join(path, "results.json"), os.path.join(path, "report.md")
    if not os.path.isfile(results) or not os.path.isfile(report):
        raise Failure(f"no report in {shown(path)} yet: run python course/step7_project/project.py (the page "
                      "course/step7_project/README.md says how long it takes), then python course/check.py 7")
    try:
        with open(results) as f:
            data = json.load(f)
    except ValueError as e:
        raise Failure(f"{shown(results)} is not JSON ({e}): run project.py again") from None
    with open(report) as f:
        text = f.read()
    return SimpleNamespace(path=path, results=data, report=text, is_solution=False)


def solution():
    """The project's own functions in the learner's place, on the tiny setting (seconds): the plumbing
    end to end, and the two sides must agree exactly (same code, same seeds, one thread)."""
    out_dir = tempfile.mkdtemp(prefix="course_step7_")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            project.run_project("tiny", 2, solutions=True, out_dir=out_dir)
        submission = load_submission(out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    submission.is_solution = True
    return submission


def _runs(m):
    runs = m.results.get("runs")
    if not isinstance(runs, dict) or set(runs) != set(project.RUNS):
        raise Failure(f"results.json must hold the runs {', '.join(project.RUNS)}: run project.py again")
    return runs


def check_table(m):
    """report.md's table is results.json's numbers: per seed, mean and standard deviation"""
    runs = _runs(m)
    rows = {}
    for line in m.report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in project.RUNS:
            rows[cells[0]] = cells[1:]
    for run in project.RUNS:
        if run not in rows:
            raise Failure(f"report.md has no table row for {run}: keep the table project.py wrote")
        k = len(project.METRICS)
        if len(rows[run]) != 2 * k:
            raise Failure(f"report.md's row {run} has {len(rows[run])} numbers' cells, expected {2 * k}")
        for i, (metric, label) in enumerate(project.METRICS):
            values = runs[run][metric]
            digits = project.DIGITS[metric]
            mean, std = project.mean_std(values)
            want_summary = f"{mean:.{digits}f} ± {std:.{digits}f}"
            want_seeds = ", ".join(f"{v:.{digits}f}" for v in values)
            if rows[run][i] != want_summary:
                raise Failure(f"report.md, {run}, {label}: the table says {rows[run][i]}, results.json gives "
                              f"{want_summary} (mean ± sample std over the seeds)")
            if rows[run][k + i] != want_seeds:
                raise Failure(f"report.md, {run}, {label} per seed: the table says {rows[run][k + i]}, "
                              f"results.json gives {want_seeds}")


def check_sane(m):
    """the numbers are sane: one per seed (2 or more), finite, percentages in [0, 100], losses > 0"""
    runs, seeds = _runs(m), m.results.get("seeds", [])
    if len(seeds) < 2:
        raise Failure(f"the report has {len(seeds)} training seed(s): the comparison needs a spread, run "
                      "project.py with --seeds=3 (the default)")
    for run in project.RUNS:
        for metric, label in project.METRICS:
            values = runs[run].get(metric)
            if not isinstance(values, list) or len(values) != len(seeds):
                raise Failure(f"{run}, {label}: expected one number per seed ({len(seeds)}), got {values!r}")
            bad = [v for v in values if not isinstance(v, (int, float)) or not math.isfinite(v)]
            if bad:
                raise Failure(f"{run}, {label}: {bad[0]!r} is not a finite number (a loss that gave nan trains "
                              "nothing: check your functions on padding and masked tokens)")
            low, high = (0.0, 100.0) if metric != "val_loss" else (1e-9, math.inf)
            out = [v for v in values if not low <= v <= high]
            if out:
                raise Failure(f"{run}, {label}: {out[0]} is outside [{low:g}, {high:g}]")


def check_yours(m):
    """the "yours" runs used your exercise files, as they are now, on the toy's own setting"""
    r = m.results
    if m.is_solution:
        return "the project's functions in the learner's place (--solutions), tiny setting"
    if r.get("solutions"):
        raise Failure("this report was made with --solutions (the project's functions in your place): run "
                      "python course/step7_project/project.py without it")
    if r.get("setting") != "default":
        raise Failure(f"this report is from the {r.get('setting')!r} setting, a smoke test of the plumbing: run "
                      "project.py without --tiny for the report")
    files = {p: os.path.join(project.ROOT, p) for p in r.get("exercises", {})}  # paths relative to the repository
    changed = [p for p, digest in r.get("exercises", {}).items()
               if os.path.isfile(files[p]) and project.sha256(files[p]) != digest]
    if changed:
        raise Failure(f"{changed[0]} changed since the report was made: run project.py again")
    mine = [name for name, where in r.get("yours", {}).items() if not where.startswith("the project's")]
    missing = [n for n in ("forward_kl", "token_rewards", "returns", "policy_loss", "single_step_loss",
                           "importance_weights") if n not in mine]
    if missing:
        raise Failure(f"the report's {missing[0]} is not from your exercise file: run project.py again")
    return f"your functions: {', '.join(mine)}"


def check_within_spread(m):
    """your KD and MiniLLM equal the project's within the seed spread (two seed standard deviations)"""
    runs, lines = _runs(m), []
    for method in ("kd", "minillm"):
        project_run, yours_run = runs[f"{method} (project)"], runs[f"{method} (yours)"]
        for metric, label in project.METRICS:
            p_mean, p_std = project.mean_std(project_run[metric])
            y_mean, y_std = project.mean_std(yours_run[metric])
            if m.is_solution:  # the same functions, seeds and thread: the very same numbers
                if project_run[metric] != yours_run[metric]:
                    raise Failure(f"{method}, {label}: with the project's functions in both runs the numbers must "
                                  f"be identical, got {yours_run[metric]} against {project_run[metric]}")
                continue
            if metric not in FLOOR:
                continue
            allowed = max(SPREAD * max(p_std, y_std), FLOOR[metric])
            if abs(y_mean - p_mean) > allowed:
                raise Failure(f"{method}, {label}: yours {y_mean:.2f} ± {y_std:.2f}, the project's {p_mean:.2f} ± "
                              f"{p_std:.2f}: {abs(y_mean - p_mean):.2f} apart, more than {allowed:.2f} (two seed "
                              "standard deviations); your functions pass steps 2-5, so look for what differs in "
                              "training: dtype (float32 there), shapes, the clip, padding")
            lines.append(f"{method} {label}: yours {y_mean:.2f} ± {y_std:.2f}, project's {p_mean:.2f} ± {p_std:.2f}")
    return "\n".join(lines) or "identical numbers in both runs (the project's functions on both sides)"


def check_reading(m):
    """your reading of the table, in the report (a few sentences)"""
    if m.is_solution:
        return None
    reading = project.read_reading(os.path.join(m.path, "report.md"))
    words = len(re.findall(r"\w+", reading or ""))
    if words < MIN_READING_WORDS:
        raise Failure(f"write your reading under '{project.READING_HEADING}' in {shown(os.path.join(m.path, 'report.md'))}"
                      f" ({words} words so far, at least {MIN_READING_WORDS}): what the table says, and what it "
                      "does not")
    return None


CHECKS = [check_table, check_sane, check_yours, check_within_spread, check_reading]
EXTENSION = []
