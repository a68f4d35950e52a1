"""
What every step's checks share: calling the student's functions, comparing numbers, and saying
what went wrong in one line (course/check.py prints it; no traceback reaches the student).

A check is a function `check(m)` of the module (or namespace) `m` that holds the student's
functions. It returns a short note (or None) when it passes and raises `Failure` when it does not.
"""

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
