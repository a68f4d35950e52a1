"""
nanoGPT-style configuration: a script declares its defaults as plain globals, then

    python train.py config/toy_sft.py --batch_size=32 --learning_rate=3e-4

runs each config file (plain Python assigning those names) and then each --key=value, in order.
Unlike nanoGPT, an unknown key or a value of the wrong type is an error, not a silent new global,
and the result is returned as a namespace rather than written into the caller's globals.

Also home of `UserError` and `run`: every entry point turns bad input into one line on stderr
and a non-zero exit, with no traceback.
"""
import ast
import difflib
import os
import sys
from types import SimpleNamespace

CONFIG_TYPES = (int, float, bool, str, tuple, list, type(None))


class UserError(Exception):
    """Bad input from the person running a command; `run` prints it as one line."""


def defaults_from(namespace):
    """The config globals of a script: public names bound to plain values."""
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and isinstance(v, CONFIG_TYPES) and not callable(v)}


def _check(key, value, defaults, where):
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ''
        raise UserError(f"unknown config key '{key}' in {where}{hint}")
    default = defaults[key]
    if default is None or value is None:
        return value
    if isinstance(default, bool) != isinstance(value, bool):
        raise UserError(f"config key '{key}' in {where} must be a bool (True/False), got {value!r}")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(default)(value)
    if not isinstance(value, type(default)):
        raise UserError(f"config key '{key}' in {where} must be {type(default).__name__}, "
                        f"got {type(value).__name__} {value!r}")
    return value


def configure(defaults, argv):
    """Apply config files and --key=value overrides (in argv order) to a copy of `defaults`."""
    cfg = dict(defaults)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise UserError(f"config file {arg} not found (configs live in config/)")
            scope = dict(cfg)
            with open(arg) as f:
                code = compile(f.read(), arg, 'exec')
            exec(code, scope)
            for key, value in scope.items():
                if key.startswith('_') or key == '__builtins__' or not isinstance(value, CONFIG_TYPES):
                    continue  # imports, helper functions
                if key in cfg and value is cfg[key]:
                    continue
                cfg[key] = _check(key, value, defaults, arg)
        else:
            if '=' not in arg:
                raise UserError(f"override {arg} must look like --key=value")
            key, text = arg[2:].split('=', 1)
            try:
                value = ast.literal_eval(text)
            except (SyntaxError, ValueError):
                value = text  # a bare string such as --method=kd
            if isinstance(defaults.get(key), str) and not isinstance(value, str):
                value = text  # --out_dir=123 is still a path
            cfg[key] = _check(key, value, defaults, f'--{key}')
    return SimpleNamespace(**cfg)


def run(main):
    """Call main(sys.argv[1:]); a UserError becomes one line on stderr and exit status 2."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
