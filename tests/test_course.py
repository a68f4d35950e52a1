"""
The course (course/): every check passes on the project's own functions (the teacher's switch), the
blank exercise files fail each step with one clear line and a non-zero exit (no traceback), and a
wrong answer is reported with the first wrong number against the expected one.
"""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "course"))

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
    assert text.endswith("6 of 6 steps passed")
    n_checks = sum(len(check.load_checks(n).CHECKS) + len(check.load_checks(n).EXTENSION) for n in check.STEPS)
    assert text.count("  pass  ") == n_checks >= 30


@pytest.mark.parametrize("step", check.STEPS)
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
    assert proc.stdout.rstrip().endswith("0 of 6 steps passed")
    for step in check.STEPS:
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
    for argv in (["7"], ["all", "--exercise", "x.py"], ["3", "--solutions", "--exercise", "x.py"]):
        with pytest.raises(SystemExit) as e:
            run(argv)
        assert e.value.code == 2
