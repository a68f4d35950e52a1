"""
Check a course step: run its checks against your exercise file and say what passed.

    python course/check.py 3                 # step 3's checks on course/step3_*/exercise.py
    python course/check.py 3 --extension     # the step's extension exercise
    python course/check.py all               # every step, in order
    python course/check.py 3 --exercise ~/alice/exercise.py     # someone else's file (teachers)
    python course/check.py --solutions all   # every check against the project's own functions (CI)
    python course/check.py all --json        # the grades, points per check, as JSON for a gradebook
    python course/check.py 7                 # the final project's report (course/step7_project/project.py)

The expected numbers come from the project's own code (kl.py, policy_gradient.py, toy/), so the
exercises follow the code. Exit status 0 when every check passed, 1 when one failed, 2 on bad usage.
"""

import argparse
import glob
import json
import importlib.util
import os
import sys
import time
import traceback

COURSE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(COURSE)
for path in (ROOT, COURSE):  # the project's flat modules, and grading.py
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

from grading import Failure, NotImplementedYet, load_learner_file, shown  # noqa: E402

STEPS = (1, 2, 3, 4, 5, 6, 7)


def step_dir(n):
    found = sorted(glob.glob(os.path.join(COURSE, f"step{n}_*")))
    if not found:
        raise SystemExit(f"course/step{n}_* is missing")
    return found[0]


def default_exercise(n):
    return os.path.join(step_dir(n), "exercise.py")


def load_file(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_checks(n):
    return load_file(os.path.join(step_dir(n), "checks.py"), f"course_step{n}_checks")


def load_exercise(n, path, allowed=None):
    """The student's module, or a Failure that says in one line why it does not import. The project's
    modules are out of its reach but for the names `allowed` ({module: {names}}, the step's
    ALLOWED_IMPORTS): importing the answer from kl.py or policy_gradient.py fails here."""
    if not os.path.isfile(path):
        raise Failure(f"{path} does not exist")
    try:
        return load_learner_file(path, f"course_step{n}_exercise", n, allowed)
    except SyntaxError as e:
        raise Failure(f"{shown(path)} does not import: SyntaxError line {e.lineno}: {e.msg}") from None
    except Exception as e:
        raise Failure(f"{shown(path)} does not import: {type(e).__name__}: {e}") from None


def title_of(check):
    return (check.__doc__ or check.__name__).strip().splitlines()[0]


def points_of(checks_module, check):
    """A check's points in the gradebook: the step's POINTS[name], else 1."""
    return getattr(checks_module, "POINTS", {}).get(check.__name__, 1)


def run_checks(n, checks, module, label, out=print, grades=None, points=lambda check: 1):
    """Run checks in order, stop at the first failure; returns True when all passed. `grades`, a
    list, receives one entry per check (result, points, message) for --json."""
    passed = 0

    def grade(check, result, message=""):
        if grades is not None:
            grades.append(dict(check=check.__name__, title=title_of(check), result=result, message=message,
                               points=points(check) if result == "pass" else 0, max_points=points(check)))
    for i, check in enumerate(checks):
        t0 = time.perf_counter()
        try:
            note = check(module)
        except NotImplementedYet as e:
            out(f"  todo  {title_of(check)}")
            out(f"step {n}: function {e.name} is not implemented yet")
            grade(check, "todo", f"function {e.name} is not implemented yet")
            for later in checks[i + 1:]:
                grade(later, "not run")
            return False
        except Exception as e:
            if not isinstance(e, Failure):  # the check tripped over something: say where, in one line
                frame = traceback.extract_tb(e.__traceback__)[-1]
                e = f"the check stopped: {type(e).__name__}: {e} ({shown(frame.filename)} line {frame.lineno})"
            out(f"  FAIL  {title_of(check)}")
            out(f"        {e}")
            out(f"step {n}{label}: {passed} of {len(checks)} checks passed; fix the failure above and run it again")
            grade(check, "fail", str(e))
            for later in checks[i + 1:]:
                grade(later, "not run")
            return False
        passed += 1
        seconds = time.perf_counter() - t0
        out(f"  pass  {title_of(check)}" + (f"  ({seconds:.1f} s)" if seconds >= 1 else ""))
        for line in (note or "").splitlines():
            out(f"        {line}")
        grade(check, "pass", note or "")
    out(f"step {n}{label}: {len(checks)} of {len(checks)} checks passed")
    return True


def load_module(n, checks, path):
    """What the step's checks take: the learner's exercise file, or (step 7) the report folder."""
    if hasattr(checks, "load_submission"):
        return checks.load_submission(path)
    return load_exercise(n, path, getattr(checks, "ALLOWED_IMPORTS", {}))


def run_step(n, solutions=False, extension=False, exercise=None, out=print, grades=None):
    """Check one step; True when every check passed. `grades` (a list) receives the step's gradebook
    entry: its checks' results and points (python course/check.py N --json)."""
    torch.manual_seed(0)
    checks = load_checks(n)
    groups = [("", checks.CHECKS), (" extension", checks.EXTENSION)] if solutions else (
        [(" extension", checks.EXTENSION)] if extension else [("", checks.CHECKS)])
    groups = [(label, group) for label, group in groups if group]
    entry = dict(step=n, title=checks.TITLE, extension=bool(extension), checks=[])
    if grades is not None:
        grades.append(entry)

    def finish(ok):
        entry.update(passed=ok, points=sum(c["points"] for c in entry["checks"]),
                     max_points=sum(points_of(checks, c) for _, group in groups for c in group))
        return ok
    if solutions:
        module, where = checks.solution(), "the project's own functions"
    else:
        path = exercise or getattr(checks, "DEFAULT_SUBMISSION", None) or default_exercise(n)
        where = entry["exercise"] = shown(path)
        try:
            module = load_module(n, checks, path)
        except Failure as e:
            out(f"step {n}: {e}")
            entry["message"] = str(e)
            return finish(False)
    out(f"step {n}: {checks.TITLE} ({where})")
    ok = True
    for label, group in groups:
        if label and solutions:
            out(f"step {n} extension: {checks.EXTENSION_TITLE}")
        ok = run_checks(n, group, module, label, out, entry["checks"], lambda c: points_of(checks, c)) and ok
    if ok and not solutions and not extension and checks.EXTENSION:
        out(f"next: the extension, python course/check.py {n} --extension")
    return finish(ok)


def main(argv=None, out=print):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("step", help="a step number (1-7) or 'all'")
    ap.add_argument("--extension", action="store_true", help="check the step's extension exercise")
    ap.add_argument("--solutions", action="store_true",
                    help="teachers and CI: run every check (and extension) against the project's own functions")
    ap.add_argument("--exercise", help="check this file instead of course/stepN_*/exercise.py (one step; step 7: "
                    "a report folder instead of out/course_project)")
    ap.add_argument("--json", action="store_true", help="print the grades (points per check) as JSON, for a gradebook")
    args = ap.parse_args(argv)
    if args.step == "all":
        steps = STEPS
    elif args.step.isdigit() and int(args.step) in STEPS:
        steps = (int(args.step),)
    else:
        ap.error(f"step must be one of {', '.join(map(str, STEPS))} or 'all', got {args.step!r}")
    if args.exercise and len(steps) != 1:
        ap.error("--exercise checks one file: give one step number with it")
    if args.exercise and args.solutions:
        ap.error("--solutions checks the project's own functions: leave out --exercise")
    if args.extension and len(steps) == 1 and not load_checks(steps[0]).EXTENSION:
        ap.error(f"step {steps[0]} has no extension")
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and the check stays on one core
    results, grades, text = [], [], out
    if args.json:  # the gradebook alone on stdout
        out = lambda line: None  # noqa: E731
    for n in steps:
        if args.extension and not load_checks(n).EXTENSION:
            continue
        results.append(run_step(n, args.solutions, args.extension, args.exercise, out, grades))
        if len(steps) > 1:
            out("")
    if len(steps) > 1:
        out(f"{sum(results)} of {len(results)} steps passed")
    if args.json:
        text(json.dumps(dict(steps=grades, points=sum(g["points"] for g in grades),
                             max_points=sum(g["max_points"] for g in grades)), indent=1, ensure_ascii=False))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
