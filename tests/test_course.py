"""
The course (course/): every check passes on the project's own functions (the teacher's switch), the
blank exercise files fail each step with one clear line and a non-zero exit (no traceback), and a
wrong answer is reported with the first wrong number against the expected one.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "course"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # course_learner.py

import check  # noqa: E402  (course/check.py)

# the first function of each exercise file, and of its extension
FIRST = {1: ("mixture_log_prob", "reverse_kl_score_function_loss"), 2: ("forward_kl", "skew_forward_kl"),
         3: ("exact_reverse_kl", "clipped_policy_loss"), 4: ("single_step_loss", "length_normalized_returns"),
         5: ("teacher_mix_log_probs", "sequence_importance_weights"),
         6: ("teacher_uncertainty", "per_sequence_atkd_loss")}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(argv):
    lines = []
    code = check.main(argv, out=lines.append)
    return code, "\n".join(lines)


def test_solutions_pass_every_check():
    code, text = run(["--solutions", "all"])
    assert code == 0, text
    assert "FAIL" not in text and "todo" not in text
    assert text.endswith("7 of 7 steps passed")
    n_checks = sum(len(check.load_checks(n).CHECKS) + len(check.load_checks(n).EXTENSION) for n in check.STEPS)
    assert text.count("  pass  ") == n_checks >= 30


EXERCISE_STEPS = tuple(FIRST)  # steps 1-6; step 7 checks a report (below)


@pytest.mark.parametrize("step", EXERCISE_STEPS)
def test_blank_exercise_fails_with_a_clear_message(step):
    for argv, name in (([str(step)], FIRST[step][0]), ([str(step), "--extension"], FIRST[step][1])):
        code, text = run(argv)
        assert code == 1
        assert text.splitlines()[-1] == f"step {step}: function {name} is not implemented yet"
        assert "Traceback" not in text


def test_blank_exercise_end_to_end():
    """The real command: exit status 1 and one line, nothing on stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "course/check.py", "all"], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == ""
    report_made = os.path.isfile(os.path.join(ROOT, "out", "course_project", "results.json"))
    assert proc.stdout.rstrip().endswith(f"{int(report_made and 'step 7: 5 of 5' in proc.stdout)} of 7 steps passed")
    if not report_made:
        assert "step 7: no report in out/course_project yet: run python course/step7_project/project.py" in proc.stdout
    for step in EXERCISE_STEPS:
        assert f"step {step}: function {FIRST[step][0]} is not implemented yet" in proc.stdout


def _wrong(step, **replace):
    """The project's functions for `step` with some replaced by wrong ones; the checker's output."""
    checks = check.load_checks(step)
    module = checks.solution()
    for name, fn in replace.items():
        setattr(module, name, fn)
    lines = []
    ok = check.run_checks(step, checks.CHECKS, module, "", out=lines.append)
    return ok, "\n".join(lines)


def test_wrong_answers_show_the_first_wrong_number():
    import torch.nn.functional as F

    import kl
    import policy_gradient as pg

    def naive_forward_kl(s, t, temperature=1.0):  # no 0·log 0 = 0: nan on a masked vocabulary
        log_q, log_p = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    def no_mean_correction(s, t):  # reverse KL's gradient without the − KL term
        log_q, log_p = F.log_softmax(s, -1), F.log_softmax(t, -1)
        return log_q.exp() * (log_q - log_p)

    cases = [  # (step, wrong functions, where the failure must point)
        (1, dict(forward_kl_loss=lambda t, s, n, g: s.log_prob(t.sample(n, g)).mean()), "forward_kl_loss"),
        (2, dict(forward_kl=naive_forward_kl), "got nan, expected"),
        (2, dict(reverse_kl_grad=no_mean_correction), "reverse_kl_grad against autograd"),
        (3, dict(returns=lambda r, mask, gamma=1.0, include_current=False: pg.returns(r, mask, gamma, True)),
         "returns(gamma=1.0, include_current=False)"),
        # the current step counted twice: R_t beside the single-step term
        (4, dict(decomposed_loss=lambda lp, lt, mask, s, t: pg.single_step_loss(s, t, mask) + pg.policy_loss(
            lp, lp.detach(), pg.returns(pg.token_rewards(lt, lp.detach(), mask), mask, include_current=True),
            torch.ones_like(lp), mask, clip_eps=None)[0]), "decomposed_loss"),
        (5, dict(importance_weights=lambda lo, lm, mask, clip=None: pg.importance_weights(lm, lo, mask, clip)),
         "importance_weights(clip=None)"),
        # TKD kept on the easy tokens
        (6, dict(atkd_loss_from_split=lambda tkd, dkd, easy, valid, lam=0.2: lam * kl.masked_mean(
            tkd + dkd, easy & valid) + (1 - lam) * kl.masked_mean(tkd + dkd, valid & ~easy)),
         "atkd_loss_from_split (2 easy, 3 hard"),
    ]
    for step, replace, where in cases:
        ok, text = _wrong(step, **replace)
        assert not ok, (step, text)
        fail = text.splitlines()[-2]
        assert where in fail and " got " in fail and "expected" in fail, (step, text)
        assert text.splitlines()[-1].startswith(f"step {step}: ") and "checks passed" in text.splitlines()[-1]


def test_exercise_errors_are_one_line(tmp_path):
    broken = tmp_path / "exercise.py"
    broken.write_text("def forward_kl(student_logits, teacher_logits, temperature=1.0)\n    return 0\n")
    code, text = run(["2", "--exercise", str(broken)])
    assert code == 1 and "does not import: SyntaxError line 1" in text and "Traceback" not in text

    raising = tmp_path / "raising.py"
    raising.write_text("import torch\n\n"
                       "def mixture_log_prob(x, means, log_stds, logits):\n"
                       "    return x @ means\n")
    code, text = run(["1", "--exercise", str(raising)])
    assert code == 1 and "Traceback" not in text
    assert "mixture_log_prob raised RuntimeError" in text and f"{raising} line 4, in mixture_log_prob" in text

    missing = tmp_path / "missing.py"
    missing.write_text("")
    code, text = run(["6", "--exercise", str(missing)])
    assert code == 1 and "function teacher_uncertainty is missing from" in text


def test_bad_usage_exits_2():
    for argv in (["8"], ["all", "--exercise", "x.py"], ["3", "--solutions", "--exercise", "x.py"], ["7", "--extension"]):
        with pytest.raises(SystemExit) as e:
            run(argv)
        assert e.value.code == 2


# -----------------------------------------------------------------------------
# wrong solutions that once passed every check of their step (issue 26): each must now fail its
# step, with a message that says what is wrong

def _log_probs(s, t, temperature=1.0):
    import torch.nn.functional as F
    return F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)


def _reverse_kl_q_detached(s, t, temperature=1.0):  # right value, zero gradient
    log_q, log_p = _log_probs(s, t, temperature)
    q = log_q.exp().detach()
    return (q * torch.where(q > 0, log_q - log_p, torch.zeros_like(log_q))).sum(-1)


def _jsd_detached(s, t, beta=0.5, temperature=1.0):
    import kl
    return kl.jsd(s, t, beta=beta, temperature=temperature).detach()


def _reverse_kl_where_after(s, t, temperature=1.0):  # nan gradient where a token is masked for both
    log_q, log_p = _log_probs(s, t, temperature)
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(-1)


def _jsd_naive(s, t, beta=0.5, temperature=1.0):  # nan on a masked vocabulary
    log_q, log_p = _log_probs(s, t, temperature)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    return (beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1))


def _returns_unmasked(rewards, mask, gamma=1.0, include_current=False):  # sums the padding's rewards too
    out, running = [], torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        future = running
        running = rewards[:, t] + gamma * running
        out.append(running if include_current else future)
    return torch.where(mask, torch.stack(out[::-1], 1), torch.zeros_like(rewards))


def _mixture_log_prob_no_grad(x, means, log_stds, logits):
    from toy import mode_seeking_2d as ms
    with torch.no_grad():
        return ms.GaussianMixture2D(means, log_stds, logits, covariance="diag").log_prob(x)


def _reverse_kl_grad_autograd(s, t):
    import kl
    z = s.detach().clone().requires_grad_()
    with torch.enable_grad():
        return torch.autograd.grad(kl.reverse_kl(z, t).sum(), z)[0]


def _forward_kl_tau2(s, t, temperature=1.0):
    import kl
    return kl.forward_kl(s, t, temperature=temperature) * temperature ** 2


def _importance_weights_reciprocal(logp_old, logp_mix, mask, clip=None):
    import policy_gradient as pg
    return pg.importance_weights(logp_mix, logp_old, mask, clip)


WRONG = [  # (step, the wrong functions, what the failure must say)
    (2, dict(reverse_kl=_reverse_kl_q_detached), "no gradient reaches the student's logits"),
    (2, dict(jsd=_jsd_detached), "carries no gradient"),
    (2, dict(reverse_kl=_reverse_kl_where_after), "NaN gradient: clean ±inf before the arithmetic"),
    (2, dict(jsd=_jsd_naive), "jsd(beta=0.5) with logits -inf"),
    (2, dict(reverse_kl_grad=_reverse_kl_grad_autograd), "calls torch.autograd.grad: it must be the closed form"),
    (2, dict(forward_kl=lambda s, t, temperature=1.0: __import__("kl").reverse_kl(s, t, temperature)),
     "your value is the reverse KL"),
    (2, dict(forward_kl=_forward_kl_tau2), "exactly τ² = 4 too large"),
    (3, dict(returns=_returns_unmasked), "your returns add the rewards on padding"),
    (1, dict(mixture_log_prob=_mixture_log_prob_no_grad), "mixture_log_prob carries no gradient"),
    (5, dict(importance_weights=_importance_weights_reciprocal), "the reciprocal ratio"),
]


@pytest.mark.parametrize("step, replace, says", WRONG, ids=[f"step{c[0]}-{c[2][:24]}" for c in WRONG])
def test_wrong_solutions_fail_with_what_is_wrong(step, replace, says):
    ok, text = _wrong(step, **replace)
    assert not ok, text
    assert says in text.splitlines()[-2], text
    assert "Traceback" not in text and "the check stopped" not in text


def test_wrong_solutions_fail_their_step_through_the_checker():
    """The nan and τ² messages name the first wrong number; the returns example is the issue's."""
    _, text = _wrong(2, jsd=_jsd_naive)
    assert "got nan, expected 0.226" in text and "0 · log 0 = 0" in text
    _, text = _wrong(3, returns=_returns_unmasked)
    assert "[−1, −1, −1, −5, −5] with 3 real tokens" in text and "got -13, expected -3" in text


def _exercise(tmp_path, step, body):
    path = tmp_path / f"step{step}.py"
    path.write_text(body)
    return run([str(step), "--exercise", str(path)])


def test_importing_the_answer_fails(tmp_path):
    code, text = _exercise(tmp_path, 2, "from kl import forward_kl\n")
    assert code == 1 and "may not import the project's module kl: write the functions yourself" in text
    code, text = _exercise(tmp_path, 3, "import policy_gradient\n")
    assert code == 1 and "may not import the project's module policy_gradient" in text
    code, text = _exercise(tmp_path, 3, "from toy.sequence_world import exact_reverse_kl\n")
    assert code == 1 and "may not import the project's module toy.sequence_world" in text
    # step 4 may use step 3's pieces, not its own answer
    code, text = _exercise(tmp_path, 4, "from policy_gradient import returns, single_step_loss\n")
    assert code == 1 and "policy_gradient.single_step_loss is the answer, not a tool, in step 4" in text
    code, text = _exercise(tmp_path, 4, "import policy_gradient\n\ndef single_step_loss(s, t, mask, weights=None):\n"
                                        "    return policy_gradient.single_step_loss(s, t, mask, weights)\n")
    assert code == 1 and "policy_gradient.single_step_loss is not available in step 4's exercise" in text
    # around the import hook: the function itself is the project's
    code, text = _exercise(tmp_path, 2, "import importlib\nforward_kl = importlib.import_module('kl').forward_kl\n")
    assert code == 1 and "forward_kl in" in text and "is kl.forward_kl from" in text and "write it in your file" in text
    assert "Traceback" not in text


def test_allowed_imports_still_work(tmp_path):
    """Step 4's exercise may build on step 3's pieces from the project (its page says so)."""
    body = ("import torch\nfrom kl import reverse_kl, masked_mean\nfrom policy_gradient import token_rewards, returns, "
            "policy_loss\n\n"
            "def single_step_loss(student_logits, teacher_logits, mask, weights=None):\n"
            "    value = reverse_kl(student_logits, teacher_logits.detach())\n"
            "    if weights is not None:\n"
            "        value = value * torch.where(mask, weights.detach(), torch.zeros_like(weights))\n"
            "    return masked_mean(value, mask)\n\n"
            "def decomposed_loss(logp, logp_teacher, mask, student_logits, teacher_logits):\n"
            "    logp_old = logp.detach()\n"
            "    adv = returns(token_rewards(logp_teacher, logp_old, mask), mask, include_current=False)\n"
            "    return single_step_loss(student_logits, teacher_logits, mask) + policy_loss(\n"
            "        logp, logp_old, adv, torch.ones_like(adv), mask, clip_eps=None)[0]\n")
    code, text = _exercise(tmp_path, 4, body)
    assert code == 0, text
    assert text.splitlines()[-2] == "step 4: 4 of 4 checks passed"


# -----------------------------------------------------------------------------
# a learner's own solutions (tests/course_learner.py): they pass steps 2-5 with the import guard on,
# and step 7 plugs them into train.py

def _learner_files(tmp_path):
    from course_learner import SOLUTIONS
    files = {}
    for n, source in SOLUTIONS.items():
        files[n] = tmp_path / f"learner_step{n}.py"
        files[n].write_text(source)
    return files


def test_a_learners_own_solutions_pass(tmp_path):
    files = _learner_files(tmp_path)
    for n, path in files.items():
        argv_list = [[str(n), "--exercise", str(path)]] + ([[str(n), "--extension", "--exercise", str(path)]]
                                                           if n in (3, 4) else [])
        for argv in argv_list:
            code, text = run(argv)
            assert code == 0, text


def _project():
    sys.path.insert(0, os.path.join(ROOT, "course", "step7_project"))
    import project
    return project


def test_step7_plugs_the_learners_functions_into_train(tmp_path, monkeypatch):
    """The tiny setting end to end with a learner's files: every function of theirs is called by
    train.py, and the report's table passes its checks (all but the setting's: tiny is a smoke test)."""
    import collections
    project = _project()
    files, calls = _learner_files(tmp_path), collections.Counter()
    learner_functions = project.learner_functions

    def counted(exercises, out=print):
        fns, where = learner_functions(exercises, out)
        assert all(where[name].endswith(f"learner_step{project.FROM_STEP[name]}.py") for name in fns), where

        def wrap(name, fn):
            def called(*args, **kwargs):
                calls[name] += 1
                return fn(*args, **kwargs)
            return called
        return {name: wrap(name, fn) for name, fn in fns.items()}, where
    monkeypatch.setattr(project, "learner_functions", counted)
    out_dir = tmp_path / "project"
    results = project.run_project("tiny", 2, out_dir=str(out_dir), exercises={n: str(p) for n, p in files.items()},
                                  out=lambda line: None)
    # the clip is on in toy_minillm.py (so policy_loss is the clipped one) and length_norm too (its returns inside)
    for name in ("forward_kl", "token_rewards", "clipped_policy_loss", "single_step_loss", "importance_weights",
                 "length_normalized_returns"):
        assert calls[name] > 0, (name, calls)
    assert results["setting"] == "tiny" and not results["solutions"] and len(results["exercises"]) == 4
    code, text = run(["7", "--exercise", str(out_dir)])
    assert code == 1
    assert "  pass  report.md's table is results.json's numbers" in text
    assert "  pass  the numbers are sane" in text
    assert "this report is from the 'tiny' setting, a smoke test of the plumbing" in text


def _fake_report(tmp_path, yours_minillm=None, **changes):
    """A report folder as project.py writes it, from made-up numbers (no training)."""
    project = _project()
    runs = {run: dict(rouge_l=[40.0, 42.0, 44.0], valid=[30.0, 33.0, 36.0], val_loss=[1.1, 1.0, 1.2])
            for run in project.RUNS}
    if yours_minillm:
        runs["minillm (yours)"] = yours_minillm
    files = _learner_files(tmp_path)
    results = dict(setting="default", solutions=False, seeds=[1337, 1338, 1339], teacher="out/quickstart/teacher",
                   data_dir="data/toy_instruct", runs=runs, seconds=60.0, torch=torch.__version__,
                   yours={name: f"course/step{step}_x/exercise.py" for name, step in project.FROM_STEP.items()},
                   exercises={os.path.relpath(str(p), ROOT): project.sha256(str(p)) for p in files.values()})
    results.update(changes)
    reading = ("My MiniLLM lands on the project's on every metric, within one seed standard deviation; MiniLLM gives "
               "more valid answers than KD on average and on each seed, though three seeds are few.")
    d = tmp_path / "report"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(results))
    (d / "report.md").write_text(project.format_report(results, reading))
    return d


def test_step7_checks_a_report(tmp_path):
    code, text = run(["7", "--exercise", str(_fake_report(tmp_path))])
    assert code == 0, text
    assert "minillm Rouge-L: yours 42.00 ± 2.00, project's 42.00 ± 2.00" in text


@pytest.mark.parametrize("case, says", [
    ("far", "minillm, Rouge-L: yours 52.00 ± 2.00, the project's 42.00 ± 2.00: 10.00 apart, more than 4.00"),
    ("edited", "report.md, kd (yours), Rouge-L: the table says 45.00 ± 2.00, results.json gives 42.00 ± 2.00"),
    ("solutions", "this report was made with --solutions"),
    ("nan", "minillm (yours), Rouge-L: nan is not a finite number"),
    ("one seed", "the report has 1 training seed(s)"),
    ("no reading", "write your reading under '## Your reading'"),
    ("changed", "changed since the report was made: run project.py again"),
])
def test_step7_a_wrong_report_fails(tmp_path, case, says):
    minillm = dict(far=dict(rouge_l=[50.0, 52.0, 54.0], valid=[30.0, 33.0, 36.0], val_loss=[1.1, 1.0, 1.2]),
                   nan=dict(rouge_l=[math.nan, 52.0, 54.0], valid=[30.0, 33.0, 36.0], val_loss=[1.1, 1.0, 1.2]))
    changes = dict(solutions=dict(solutions=True), changed=dict(
        exercises={"course/step2_divergences/exercise.py": "0" * 64}))
    d = _fake_report(tmp_path, minillm.get(case), **changes.get(case, {}))
    if case == "edited":
        text = (d / "report.md").read_text().replace("| kd (yours) | 42.00 ± 2.00", "| kd (yours) | 45.00 ± 2.00")
        (d / "report.md").write_text(text)
    if case == "one seed":
        results = json.loads((d / "results.json").read_text())
        results["seeds"] = [1337]
        (d / "results.json").write_text(json.dumps(results))
    if case == "no reading":
        text = (d / "report.md").read_text()
        (d / "report.md").write_text(text.split("## Your reading")[0] + "## Your reading\n\nFine.\n")
    code, text = run(["7", "--exercise", str(d)])
    assert code == 1 and says in text, text
    assert "Traceback" not in text and "the check stopped" not in text


def test_step7_needs_steps_2_to_5(tmp_path):
    project = _project()
    with pytest.raises(project.ProjectError, match="step 2 does not pass yet: run python course/check.py 2"):
        project.run_project("tiny", 2, out_dir=str(tmp_path / "p"), out=lambda line: None)


def test_json_grades():
    code, text = run(["2", "--json"])
    grades = json.loads(text)
    assert code == 1 and grades["points"] == 0 and grades["max_points"] == len(check.load_checks(2).CHECKS)
    (step,) = grades["steps"]
    assert step["checks"][0]["result"] == "todo" and {c["result"] for c in step["checks"][1:]} == {"not run"}
    code, text = run(["--solutions", "3", "--json"])
    grades = json.loads(text)
    assert code == 0 and grades["points"] == grades["max_points"] == 8
    assert [c["result"] for c in grades["steps"][0]["checks"]] == ["pass"] * 8
