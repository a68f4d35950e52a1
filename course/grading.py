"""
What every step's checks share: calling the student's functions, comparing numbers, and saying
what went wrong in one line (course/check.py prints it; no traceback reaches the student).

A check is a function `check(m)` of the module (or namespace) `m` that holds the student's
functions. It returns a short note (or None) when it passes and raises `Failure` when it does not.
"""

import math
import os
import traceback

import torch


class Failure(Exception):
    """A check did not pass; the message is what the student reads."""


class NotImplementedYet(Failure):
    """The student has not written this function yet (its body still raises NotImplementedError)."""

    def __init__(self, name):
        super().__init__(f"function {name} is not implemented yet")
        self.name = name


def shown(path):
    """A path as the student typed it: relative to the working directory when inside it."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _innermost_frame_in(tb, path):
    """The deepest traceback entry that lies in the student's file (or None)."""
    found = None
    if path is None:
        return None
    for frame in traceback.extract_tb(tb):
        if os.path.abspath(frame.filename) == path:
            found = frame
    return found


def call(m, name, *args, **kwargs):
    """m.name(*args, **kwargs), with the student's errors turned into one-line Failures."""
    fn = getattr(m, name, None)
    path = getattr(m, "__file__", None)
    path = os.path.abspath(path) if path else None
    if fn is None or not callable(fn):
        raise Failure(f"function {name} is missing from {shown(path) if path else 'the exercise'}")
    check_written_here(m, name, fn)
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        frame = _innermost_frame_in(e.__traceback__, path)
        raise NotImplementedYet(frame.name if frame is not None else name) from None
    except Failure:
        raise
    except Exception as e:  # the student's bug: say where, not a traceback
        frame = _innermost_frame_in(e.__traceback__, path)
        where = f" ({shown(frame.filename)} line {frame.lineno}, in {frame.name})" if frame else ""
        raise Failure(f"{name} raised {type(e).__name__}: {e}{where}") from None


def tensor(what, value, shape=None):
    """`value` as a tensor (a Python number is accepted for a scalar), of the given shape."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=torch.float64)
    if not isinstance(value, torch.Tensor):
        raise Failure(f"{what}: expected a tensor, got {type(value).__name__}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise Failure(f"{what}: got shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value


def _fmt(x):
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def expect_close(what, got, expected, atol=1e-6, rtol=1e-5):
    """Fail with the first entry where |got − expected| > atol + rtol·|expected| (inf must match inf)."""
    expected = tensor(what + " (expected)", expected)
    got = tensor(what, got, expected.shape)
    if got.dtype == torch.bool or expected.dtype == torch.bool:
        return expect_equal(what, got, expected)
    g, e = got.detach().double(), expected.detach().double()
    same_inf = torch.isinf(g) & torch.isinf(e) & (torch.sign(g) == torch.sign(e))
    ok = same_inf | ((g - e).abs() <= atol + rtol * e.abs())
    ok &= ~(torch.isnan(g) & ~torch.isnan(e))
    ok |= torch.isnan(g) & torch.isnan(e)
    if bool(ok.all()):
        return
    flat = int((~ok).flatten().nonzero()[0])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), g.shape)) if g.dim() else ()
    at = f" at index {list(index)}" if index else ""
    raise Failure(f"{what}{at}: got {_fmt(g[index].item())}, expected {_fmt(e[index].item())}"
                  f" ({int((~ok).sum())} of {ok.numel()} entries differ)")


def expect_equal(what, got, expected):
    """Exact equality of two tensors of the same shape (booleans, integers)."""
    expected = tensor(what + " (expected)", expected)
    got = tensor(what, got, expected.shape)
    ok = got == expected
    if bool(ok.all()):
        return
    flat = int((~ok).flatten().nonzero()[0])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), got.shape)) if got.dim() else ()
    raise Failure(f"{what} at index {list(index)}: got {got[index].item()}, expected {expected[index].item()}")


def expect_true(condition, message):
    if not condition:
        raise Failure(message)


def grad_of(fn, *leaves):
    """Gradients of the scalar fn(*leaves) w.r.t. fresh float64 copies of the leaves."""
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    out = fn(*leaves)
    out = tensor("the returned loss", out, ())
    if not out.requires_grad:
        raise Failure("the returned value carries no gradient: compute it from the inputs with torch "
                      "operations (no .detach(), .item() or numpy)")
    grads = torch.autograd.grad(out, leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


# -----------------------------------------------------------------------------
# what a wrong solution must not get past: hints, gradients, garbage on padding, no autograd, no imports

def hint_for(got, candidates, atol=1e-6, rtol=1e-5):
    """The message of the first (alternative, message) whose alternative `got` equals: a common mistake
    recognised by its numbers (e.g. the reverse KL where the forward one was asked for); '' if none."""
    got = got.detach().double() if isinstance(got, torch.Tensor) else torch.tensor(float(got), dtype=torch.float64)
    for alternative, message in candidates:
        alt = alternative() if callable(alternative) else alternative
        alt = torch.as_tensor(alt).detach().double()
        if alt.shape != got.shape or not bool(torch.isfinite(alt).any()):
            continue
        both_inf = torch.isinf(got) & torch.isinf(alt) & (torch.sign(got) == torch.sign(alt))
        close = both_inf | ((got - alt).abs() <= atol + rtol * alt.abs())
        if bool(close.all()):
            return message
    return ""


def expect_close_hinted(what, got, expected, hints=(), atol=1e-6, rtol=1e-5):
    """expect_close, and when it fails, the hint of a recognised mistake appended to the message."""
    try:
        expect_close(what, got, expected, atol=atol, rtol=rtol)
    except Failure as e:
        found = hint_for(tensor(what, got), hints, atol=atol, rtol=rtol) if hints else ""
        raise Failure(f"{e}; {found}" if found else str(e)) from None


NAN_GRADIENT_HINT = ("NaN gradient: clean ±inf before the arithmetic (torch.where on the inputs, e.g. "
                     "log q where q > 0 else 0), then select with torch.where; a torch.where after the "
                     "arithmetic still sends 0 · nan = nan back through the branch it did not pick")


def value_and_grads(what, fn, *leaves, weights=None):
    """(value, [∂(Σ weights · value)/∂ leaf]) of fn(*leaves) on fresh copies of the leaves (a leaf given
    as None stays out). The learner's value must carry a gradient: a detached one fails here."""
    copies = [None if x is None else x.detach().clone().requires_grad_() for x in leaves]
    value = fn(*copies)
    value = tensor(what, value)
    if not value.requires_grad:
        raise Failure(f"{what} carries no gradient: compute it from the inputs with torch operations "
                      "(no .detach(), .item(), numpy, or torch.no_grad())")
    total = (value * weights).sum() if weights is not None else value.sum()
    used = [x for x in copies if x is not None]
    grads = torch.autograd.grad(total, used, allow_unused=True)
    return value, [torch.zeros_like(x) if g is None else g for x, g in zip(used, grads)]


def expect_same_gradient(what, got_grad, want_grad, atol=1e-9, rtol=1e-7, hints=()):
    """The learner's gradient against the project's, with the mistakes a gradient shows named."""
    got_grad, want_grad = got_grad.detach().double(), want_grad.detach().double()
    finite_want = torch.isfinite(want_grad)
    if bool(torch.isnan(got_grad[finite_want]).any()):
        index = [int(i) for i in (torch.isnan(got_grad) & finite_want).nonzero()[0]]
        raise Failure(f"{what} at index {index}: got nan, expected {want_grad[tuple(index)].item():.6g}; "
                      + NAN_GRADIENT_HINT)
    scale = want_grad[finite_want].abs().max().item() if bool(finite_want.any()) else 0.0
    if scale > 0 and bool((got_grad.abs() <= 1e-9 * scale).all()):
        raise Failure(f"{what}: got 0 everywhere (to rounding), expected up to {scale:.6g} in size; "
                      "the value is right but no gradient reaches the student's logits: something on the "
                      "student's side is detached (.detach(), .item(), torch.no_grad())")
    expect_close_hinted(what, got_grad, want_grad, hints, atol=atol, rtol=rtol)


_AUTOGRAD_ENTRY_POINTS = [(torch.autograd, "grad"), (torch.autograd, "backward"), (torch.Tensor, "backward")]
for _name in ("grad", "vjp", "jacrev", "jacfwd", "grad_and_value", "hessian"):
    if hasattr(torch.func, _name):
        _AUTOGRAD_ENTRY_POINTS.append((torch.func, _name))
for _name in ("vjp", "jacobian", "jvp", "hessian", "vhp", "hvp"):
    _AUTOGRAD_ENTRY_POINTS.append((torch.autograd.functional, _name))


class no_autograd:
    """Run a closed-form function with autograd switched off and its entry points refusing to run:
    `with no_autograd("reverse_kl_grad"): ...` fails with a Failure that says which one it called."""

    def __init__(self, name):
        self.name, self.saved = name, []

    def _refuse(self, owner, attr):
        def refused(*args, **kwargs):
            raise Failure(f"{self.name} calls {owner.__name__}.{attr}: it must be the closed form, computed "
                          "directly from the logits (no autograd)")
        return refused

    def __enter__(self):
        self.grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        for owner, attr in _AUTOGRAD_ENTRY_POINTS:
            self.saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, self._refuse(owner, attr))
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self.saved):
            setattr(owner, attr, original)
        self.saved = []
        torch.set_grad_enabled(self.grad_mode)
        return False


def garbage_on_padding(x, mask, seed=0):
    """x with its padding (where mask is False) filled with +inf, −inf, nan and ±1e30 in turn: a
    masked input's padding can hold anything, and the result must not depend on it."""
    fill = torch.tensor([math.inf, -math.inf, math.nan, 1e30, -1e30], dtype=x.dtype)
    noise = fill[torch.arange(x.numel()).add(seed) % len(fill)].reshape(x.shape)
    return torch.where(mask, x, noise)


# -----------------------------------------------------------------------------
# the learner's file, loaded with the project's answers out of reach

COURSE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(COURSE)


def project_module_names():
    """Top-level names of the project's own modules and packages (and the course's): what an
    exercise file may not import, beyond the names a step allows."""
    names = {"course"}
    for folder in (ROOT, COURSE):
        for entry in os.listdir(folder):
            path = os.path.join(folder, entry)
            if entry.endswith(".py"):
                names.add(entry[:-3])
            elif os.path.isdir(path) and not entry.startswith((".", "_")) and any(
                    f.endswith(".py") for f in os.listdir(path)):
                names.add(entry)
    return names


def _proxy(module, allowed, step):
    """A stand-in for a project module that holds only the names the step allows."""
    import types
    proxy = types.ModuleType(module.__name__, f"the project's {module.__name__}, as step {step}'s exercise sees it")
    for name in allowed:
        setattr(proxy, name, getattr(module, name))

    def __getattr__(name):
        raise AttributeError(f"{module.__name__}.{name} is not available in step {step}'s exercise: "
                             "write it yourself (the checks compare yours with the project's)")
    proxy.__getattr__ = __getattr__
    return proxy


def guarded_import(step, allowed):
    """An __import__ for the learner's file: the project's modules are out of reach, except the names
    `allowed` ({module: {names}}) lets through, e.g. step 4 may use step 3's policy_gradient.returns."""
    import builtins
    real = builtins.__import__
    project = project_module_names()

    def guarded(name, globals=None, locals=None, fromlist=(), level=0):
        if level or name.split(".")[0] not in project:
            return real(name, globals, locals, fromlist, level)
        if name not in allowed:
            what = ", ".join(f"{m}.{n}" for m in sorted(allowed) for n in sorted(allowed[m]))
            raise ImportError(f"step {step}'s exercise may not import the project's module {name}: write the "
                              f"functions yourself" + (f" (you may use {what})" if what else ""))
        for wanted in fromlist or ():
            if wanted not in allowed[name]:
                raise ImportError(f"{name}.{wanted} is the answer, not a tool, in step {step}: write it "
                                  f"yourself (from {name} you may use {', '.join(sorted(allowed[name]))})")
        module = real(name, globals, locals, ("__name__",), level)  # the module itself, even for a.b
        proxy = _proxy(module, allowed[name], step)
        if fromlist or "." not in name:
            return proxy
        raise ImportError(f"import {name} in step {step}: write `from {name.rsplit('.', 1)[0]} import "
                          f"{name.rsplit('.', 1)[1]}` instead")
    return guarded


def load_learner_file(path, name, step, allowed=None):
    """Import the learner's file as module `name`, with guarded_import as its __import__."""
    import builtins
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__builtins__ = dict(vars(builtins), __import__=guarded_import(step, allowed or {}))
    module.__course_exercise__ = os.path.abspath(path)
    spec.loader.exec_module(module)
    return module


def check_written_here(m, name, fn):
    """A learner's function must be defined in the learner's file, not taken from elsewhere."""
    path = getattr(m, "__course_exercise__", None)
    code = getattr(fn, "__code__", None)
    if path is None or code is None:
        return
    if os.path.abspath(code.co_filename) != path:
        where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', name)}"
        raise Failure(f"{name} in {shown(path)} is {where} from {shown(code.co_filename)}: write it in "
                      "your file (the checks compare yours with the project's)")
