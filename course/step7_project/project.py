"""
Step 7, the final project: your own losses from steps 2 to 5 in the project's training loop
(train.py) on the toy task, against the project's KD and MiniLLM, over training seeds.

    python course/step7_project/project.py                 # 3 training seeds, the toy's own settings
    python course/step7_project/project.py --tiny          # a smoke run of the whole pipeline (seconds)
    python course/step7_project/project.py --solutions     # the project's functions in your place (teachers, CI)
    python course/check.py 7                               # check the report it wrote

    --seeds=N        training seeds 1337, 1338, ... (default 3; at least 2, for a spread)
    --reuse=DIR      take the teacher and the seeds' student inits from a quickstart.sh output
                     (default out/quickstart when it holds them), instead of training them here
    --out=DIR        where the runs and the report go (default out/course_project in the repository)

Everything runs in this one process: for the "yours" runs, train.py's calls into kl.py and
policy_gradient.py are pointed at the functions of your exercise files (and pointed back after),
so the training loop, models, data and optimiser are the project's and only the losses differ:

    KD       kl.forward_kl (the divergence of word-level KD)                           step 2
    MiniLLM  policy_gradient.token_rewards, returns, policy_loss (its clipped form      steps 3, 4, 5
             when you wrote step 3's extension), single_step_loss, importance_weights,
             length_normalized_returns (when you wrote step 4's extension)

Steps 2 to 5 must pass their checks first (a loss that fails them would only train badly). The
report (report.md, results.json) holds the test Rouge-L and valid answers of the four students
per seed and their mean ± std; `python course/check.py 7` checks it.
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COURSE = os.path.dirname(HERE)
ROOT = os.path.dirname(COURSE)
for _path in (ROOT, COURSE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

import check  # noqa: E402  (course/check.py)
import kl  # noqa: E402
import policy_gradient as pg  # noqa: E402
from grading import shown  # noqa: E402

RUNS = ("kd (project)", "kd (yours)", "minillm (project)", "minillm (yours)")
# test Rouge-L and valid answers (evaluate.py), and the run's last validation loss (its log.jsonl): the
# closest to the loss itself, so that the tiny run, whose students answer nothing yet, still compares
METRICS = (("rouge_l", "Rouge-L"), ("valid", "valid answers %"), ("val_loss", "validation loss"))

# the toy's own settings (quickstart.sh), and a tiny one that checks the plumbing in seconds
SETTINGS = {
    "default": dict(
        data=[], teacher=[], init=[], kd=[], minillm=[],
        evaluate=["--max_new_tokens=32", "--no_repeat_ngram_size=0", "--seeds=(1234,1235,1236)"]),
    "tiny": dict(
        data=["--n_train", "512", "--n_valid", "16", "--n_test", "16"],
        teacher=["--n_layer=1", "--n_head=1", "--n_embd=16", "--max_iters=10", "--eval_interval=10",
                 "--eval_iters=1", "--batch_size=16"],
        init=["--max_iters=10", "--eval_interval=10", "--eval_iters=1", "--batch_size=16"],
        kd=["--max_iters=4", "--eval_interval=4", "--eval_iters=1", "--eval_rouge_examples=8", "--batch_size=16"],
        minillm=["--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--eval_rouge_examples=8",
                 "--rollout_size=8", "--rollout_batch_size=8", "--batch_size=8", "--max_new_tokens=8",
                 "--ppo_epochs=1"],
        evaluate=["--max_new_tokens=8", "--no_repeat_ngram_size=0", "--seeds=(1234,)", "--max_examples=16"]),
}


class ProjectError(Exception):
    """What stops the project, in one line for the learner."""


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -----------------------------------------------------------------------------
# the learner's functions

def _project_functions(policy_loss=pg.policy_loss, length_normalized_returns=pg.length_normalized_returns):
    """The project's own functions under the learner's names (--solutions), bound now: plugged_in
    replaces the module's attributes, and these must not call the replacements."""
    return dict(forward_kl=kl.forward_kl, token_rewards=pg.token_rewards, returns=pg.returns,
                policy_loss=lambda logp, logp_old, adv, w, mask: policy_loss(logp, logp_old, adv, w, mask,
                                                                             clip_eps=None)[0],
                clipped_policy_loss=policy_loss, single_step_loss=pg.single_step_loss,
                importance_weights=pg.importance_weights,
                length_normalized_returns=lambda rewards, mask: length_normalized_returns(rewards, mask))


FROM_STEP = dict(forward_kl=2, token_rewards=3, returns=3, policy_loss=3, clipped_policy_loss=3, single_step_loss=4,
                 importance_weights=5, length_normalized_returns=4)
OPTIONAL = {"clipped_policy_loss": 3, "length_normalized_returns": 4}  # extensions: yours when they pass


def learner_functions(exercises, out=print):
    """{name: function} from the learner's exercise files, after their steps' checks pass; and
    {name: where it came from}. Raises ProjectError naming the first step that does not pass."""
    fns, where, lines = {}, {}, []
    for n in (2, 3, 4, 5):
        path = exercises[n]
        if not check.run_step(n, exercise=path, out=lines.append):
            other = f" --exercise {path}" if path != check.default_exercise(n) else ""
            raise ProjectError(f"step 7 uses your functions from steps 2 to 5, and step {n} does not pass yet: "
                               f"run python course/check.py {n}{other}")
        checks = check.load_checks(n)
        module = check.load_exercise(n, path, getattr(checks, "ALLOWED_IMPORTS", {}))
        extension_ok = n in OPTIONAL.values() and check.run_step(n, extension=True, exercise=path, out=lines.append)
        for name, step in FROM_STEP.items():
            if step != n:
                continue
            if name in OPTIONAL and not extension_ok:
                fns[name], where[name] = None, f"the project's (step {n}'s extension does not pass yet)"
                continue
            fns[name], where[name] = getattr(module, name), shown(path)
    out("your functions: " + ", ".join(f"{k} ({v})" for k, v in where.items()))
    return fns, where


@contextlib.contextmanager
def plugged_in(fns):
    """Point train.py's calls into kl.py and policy_gradient.py at `fns` for the duration."""
    saved = []

    def put(owner, name, value):
        if isinstance(owner, dict):
            saved.append((owner, name, owner[name]))
            owner[name] = value
        else:
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)

    project_policy_loss, project_length_norm = pg.policy_loss, pg.length_normalized_returns
    learner_policy, learner_clipped = fns["policy_loss"], fns["clipped_policy_loss"]
    learner_length_norm = fns["length_normalized_returns"]

    def policy_loss(logp, logp_old, advantages, weights, mask, clip_eps=0.2):
        if clip_eps is None:
            return learner_policy(logp, logp_old, advantages, weights, mask), logp.new_zeros(())
        if learner_clipped is None:
            return project_policy_loss(logp, logp_old, advantages, weights, mask, clip_eps=clip_eps)
        return learner_clipped(logp, logp_old, advantages, weights, mask, clip_eps=clip_eps)

    def length_normalized_returns(rewards, mask, gamma=1.0, include_current=False):
        if learner_length_norm is None or gamma != 1.0 or include_current:
            return project_length_norm(rewards, mask, gamma=gamma, include_current=include_current)
        return learner_length_norm(rewards, mask)

    put(kl.DIVERGENCES, "forward_kl", fns["forward_kl"])
    put(kl, "forward_kl", fns["forward_kl"])
    for name in ("token_rewards", "returns", "single_step_loss", "importance_weights"):
        put(pg, name, fns[name])
    put(pg, "policy_loss", policy_loss)
    put(pg, "length_normalized_returns", length_normalized_returns)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            if isinstance(owner, dict):
                owner[name] = value
            else:
                setattr(owner, name, value)


# -----------------------------------------------------------------------------
# the pipeline

def quiet_call(fn, argv, log_path):
    """fn(argv) with its output in log_path; a failure names the log."""
    import configurator
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            return fn(argv)
        except configurator.UserError as e:
            print(f"error: {e}")
            raise ProjectError(f"{argv[0] if argv else fn.__name__}: {e} (log: {shown(log_path)})") from None
        except SystemExit as e:
            raise ProjectError(f"a run exited with status {e.code}: see {shown(log_path)}") from None


def train(argv, log_path):
    import train as train_py
    return quiet_call(train_py.main, argv, log_path)


def has_checkpoint(run_dir):
    return os.path.isfile(os.path.join(run_dir, "best.pt"))


def evaluate(models, data_dir, flags, out_base, log_path):
    """{name: {metric: mean over the evaluation seeds}} of each model on the test prompts."""
    import evaluate as evaluate_py
    spec = ",".join(f"{name}={path}" for name, path in models.items())
    results = quiet_call(evaluate_py.main, [f"--models={spec}", f"--data_dir={data_dir}", "--split=test",
                                            f"--out={out_base}", "--device=cpu"] + flags, log_path)
    (per_model,) = results.values()
    return {name: dict(rouge_l=sum(r["rouge_l"]) / len(r["rouge_l"]),
                       valid=100 * sum(r["validity"]) / len(r["validity"])) for name, r in per_model.items()}


def last_val_loss(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        losses = [row["val_loss"] for row in map(json.loads, f) if "val_loss" in row]
    return losses[-1]


def mean_std(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def run_project(setting="default", seeds=3, solutions=False, out_dir="out/course_project", reuse=None,
                exercises=None, out=print):
    """Train and evaluate the four students per seed; write report.md and results.json. Returns the results."""
    out_dir, reuse = os.path.abspath(out_dir), reuse and os.path.abspath(reuse)
    exercises = {n: os.path.abspath(p) for n, p in (exercises or {}).items()}
    with contextlib.chdir(ROOT):  # train.py's configs read each other relative to the repository root
        return _run_project(setting, seeds, solutions, out_dir, reuse, exercises, out)


def _run_project(setting, seeds, solutions, out_dir, reuse, exercises, out):
    t_start = time.time()
    flags = SETTINGS[setting]
    seeds = list(range(1337, 1337 + seeds))
    exercises = exercises or {n: check.default_exercise(n) for n in (2, 3, 4, 5)}
    if solutions:
        fns, where = _project_functions(), {name: "the project's (--solutions)" for name in FROM_STEP}
    else:
        fns, where = learner_functions(exercises, out)
    torch.set_num_threads(1) if setting == "tiny" else None
    os.makedirs(out_dir, exist_ok=True)
    logs = os.path.join(out_dir, "logs")
    if setting == "tiny":  # a small copy of the toy task, in out_dir
        data_dir = os.path.join(out_dir, "toy_instruct_tiny")
        if not os.path.isfile(os.path.join(data_dir, "meta.json")):
            quiet_call(_prepare, flags["data"] + ["--out_dir", data_dir], os.path.join(logs, "data.log"))
    else:
        data_dir = os.path.join(ROOT, "data", "toy_instruct")
        if not os.path.isfile(os.path.join(data_dir, "meta.json")):
            out("data: the toy instruction task (python data/toy_instruct/prepare.py)")
            quiet_call(_prepare, ["--out_dir", data_dir], os.path.join(logs, "data.log"))
    if reuse is None and setting == "default" and has_checkpoint(os.path.join(ROOT, "out", "quickstart", "teacher")):
        reuse = os.path.join(ROOT, "out", "quickstart")
        out(f"reusing the teacher and the student inits of {shown(reuse)} (bash quickstart.sh made them)")
    teacher = os.path.join(reuse, "teacher") if reuse else os.path.join(out_dir, "teacher")
    if not has_checkpoint(teacher):
        if reuse:
            raise ProjectError(f"--reuse={reuse} holds no trained teacher ({teacher}/best.pt): run bash quickstart.sh")
        out(f"teacher: python train.py config/toy_teacher.py --out_dir={teacher}")
        train(["config/toy_teacher.py", f"--out_dir={teacher}", f"--data_dir={data_dir}", "--device=cpu",
               "--overwrite=True"]  # no finished teacher there: what an interrupted one left is replaced
              + flags["teacher"], os.path.join(logs, "teacher.log"))
    per_seed = {}
    for s in seeds:
        d = os.path.join(out_dir, f"seed{s}")
        init = os.path.join(reuse, f"seed{s}", "init") if reuse else ""
        if not has_checkpoint(init):
            init = os.path.join(d, "init")
            out(f"seed {s}: student init (config/toy_student_init.py)")
            train(["config/toy_student_init.py", f"--out_dir={init}", f"--data_dir={data_dir}", f"--seed={s}",
                   "--device=cpu", "--overwrite=True"] + flags["init"], os.path.join(logs, f"seed{s}_init.log"))
        common = [f"--init_from={init}", f"--teacher={teacher}", f"--data_dir={data_dir}", f"--seed={s}",
                  "--device=cpu"]
        models = {}
        for run in RUNS:
            method, whose = run.split(" ")
            name = f"{method}_{whose.strip('()')}"
            run_dir = os.path.join(d, name)
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: no log.jsonl appended to an old one
            t0 = time.time()
            argv = [os.path.join("config", f"toy_{method}.py"), f"--out_dir={run_dir}"] + common + flags[method]
            with plugged_in(fns) if whose == "(yours)" else contextlib.nullcontext():
                train(argv, os.path.join(logs, f"seed{s}_{name}.log"))
            out(f"seed {s}: {run} trained in {time.time() - t0:.0f} s")
            models[name] = run_dir
        t0 = time.time()
        per_seed[s] = evaluate(models, data_dir, flags["evaluate"], os.path.join(d, "results"),
                               os.path.join(logs, f"seed{s}_evaluate.log"))
        for name, run_dir in models.items():
            per_seed[s][name]["val_loss"] = last_val_loss(run_dir)
        out(f"seed {s}: evaluated in {time.time() - t0:.0f} s: " + ", ".join(
            f"{name} Rouge-L {r['rouge_l']:.1f}, valid {r['valid']:.1f}%, val loss {r['val_loss']:.4f}"
            for name, r in per_seed[s].items()))
    runs = {}
    for run in RUNS:
        method, whose = run.split(" ")
        name = f"{method}_{whose.strip('()')}"
        runs[run] = {metric: [per_seed[s][name][metric] for s in seeds] for metric, _ in METRICS}
    results = dict(setting=setting, solutions=solutions, seeds=seeds, teacher=teacher, data_dir=data_dir,
                   yours=where, runs=runs, seconds=round(time.time() - t_start, 1), torch=torch.__version__,
                   exercises={} if solutions else {os.path.relpath(p, ROOT): sha256(p) for p in exercises.values()})
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report = os.path.join(out_dir, "report.md")
    reading = read_reading(report) if os.path.isfile(report) else None
    with open(report, "w") as f:
        f.write(format_report(results, reading))
    out(f"wrote {shown(report)} and results.json in {results['seconds'] / 60:.1f} min; now write your reading in "
        f"it and run python course/check.py 7")
    return results


def _prepare(argv):
    from data.toy_instruct import prepare
    return prepare.main(argv)


# -----------------------------------------------------------------------------
# the report

READING_HEADING = "## Your reading"
READING_PROMPT = ("(Replace this paragraph with yours, a few sentences: is your MiniLLM the project's within the "
                  "seed spread, and your KD? Which method gives more valid answers, on every seed or only on "
                  "average? What would you change in the setting to make the comparison sharper?)")


DIGITS = dict(rouge_l=2, valid=2, val_loss=4)  # as the report prints them


def table_rows(results):
    """The table's rows as (run, [(mean, std) per metric], per-seed values per metric)."""
    rows = []
    for run in RUNS:
        stats = [mean_std(results["runs"][run][metric]) for metric, _ in METRICS]
        rows.append((run, stats, [results["runs"][run][metric] for metric, _ in METRICS]))
    return rows


def format_report(results, reading=None):
    seeds = results["seeds"]
    lines = [f"# Step 7: your losses in train.py, against the project's ({results['setting']} setting)", "",
             f"Toy task, test prompts; training seeds {', '.join(map(str, seeds))}; teacher {results['teacher']}; "
             f"{results['seconds'] / 60:.1f} min on this machine (torch {results['torch']}).", "",
             "Your functions: " + "; ".join(f"`{k}` {v}" for k, v in results["yours"].items()) + ".", "",
             "| run | " + " | ".join(f"{label} (mean ± std)" for _, label in METRICS) + " | "
             + " | ".join(f"{label} per seed" for _, label in METRICS) + " |",
             "|---|" + "---|" * (2 * len(METRICS))]
    for run, stats, values in table_rows(results):
        lines.append(f"| {run} | " + " | ".join(f"{m:.{DIGITS[k]}f} ± {s:.{DIGITS[k]}f}" for k, (m, s) in zip(
            (k for k, _ in METRICS), stats)) + " | " + " | ".join(", ".join(f"{v:.{DIGITS[k]}f}" for v in vs) for k, vs
                                                                  in zip((k for k, _ in METRICS), values)) + " |")
    lines += ["", "Mean and sample standard deviation over the training seeds; each seed's number is the mean over "
              "the evaluation's sampling seeds. `python course/check.py 7` checks this table against results.json "
              "and your MiniLLM and KD against the project's: within two seed standard deviations.", "",
              READING_HEADING, "", reading or READING_PROMPT, ""]
    return "\n".join(lines)


def read_reading(report):
    with open(report) as f:
        text = f.read()
    if READING_HEADING not in text:
        return None
    reading = text.split(READING_HEADING, 1)[1].strip()
    return None if not reading or reading == READING_PROMPT else reading


def main(argv=None, out=print):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--tiny", action="store_true", help="a smoke run of the whole pipeline, in seconds")
    ap.add_argument("--solutions", action="store_true", help="the project's functions in place of yours")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds (default 3; 2 with --tiny)")
    ap.add_argument("--reuse", default=None, help="a quickstart.sh output to take the teacher and inits from")
    ap.add_argument("--out", default=None, help="output folder (default out/course_project, out/course_project_tiny)")
    args = ap.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (2 if args.tiny else 3)
    if seeds < 2:
        ap.error(f"--seeds must be at least 2 (the check compares within the seeds' spread), got {seeds}")
    out_dir = args.out or os.path.join(ROOT, "out", "course_project_tiny" if args.tiny else "course_project")
    try:
        run_project("tiny" if args.tiny else "default", seeds, args.solutions, out_dir, args.reuse, out=out)
    except ProjectError as e:
        out(f"step 7: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
