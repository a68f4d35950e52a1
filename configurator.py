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
import traceback
from types import SimpleNamespace

CONFIG_TYPES = (int, float, bool, str, tuple, list, type(None))


class UserError(Exception):
    """Bad input from the person running a command; `run` prints it as one line."""


def defaults_from(namespace):
    """The config globals of a script: public lower-case names bound to plain values (upper-case
    names are the script's constants, its own or imported, never settings)."""
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and not k.isupper() and isinstance(v, CONFIG_TYPES) and not callable(v)}


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
            run_config_file(arg, scope)
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
    cfg = SimpleNamespace(**cfg)
    check_values(cfg)
    return cfg


def run_config_file(path, scope):
    """exec a config file in `scope`; a syntax error or an exception it raises is one line naming the
    file and line."""
    try:
        with open(path) as f:
            code = compile(f.read(), path, 'exec')
    except SyntaxError as e:
        raise UserError(f"{path}, line {e.lineno}: syntax error: {e.msg}") from None
    try:
        exec(code, scope)
    except Exception as e:
        lines = [fr.lineno for fr in traceback.extract_tb(e.__traceback__) if fr.filename == path]
        where = f", line {lines[-1]}" if lines else ''
        raise UserError(f"{path}{where}: {type(e).__name__}: {e}") from None


# What each config key may hold, by name, for whichever entry point (train.py, sample.py, evaluate.py)
# declares it: checked once, before any work, so that a bad value is one line rather than a traceback
# (or a silent surprise) minutes later.
POSITIVE = ('batch_size', 'eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps', 'block_size',
            'n_layer', 'n_head', 'n_embd', 'rollout_size', 'rollout_batch_size', 'ppo_epochs', 'pt_batch_size',
            'loss_chunk_size', 'distillm_capacity', 'num_prompts', 'num_samples', 'max_new_tokens_cap',
            'kd_temperature', 'clip_eps', 'dist_timeout')
NON_NEGATIVE = ('max_iters', 'epochs', 'warmup_iters', 'lr_decay_iters', 'eval_rouge_interval', 'eval_rouge_examples',
                'n_kv_head', 'intermediate_size', 'max_examples', 'seqkd_max_train', 'gen_top_k', 'top_k',
                'no_repeat_ngram_size', 'max_new_tokens', 'learning_rate', 'min_lr', 'weight_decay', 'grad_clip',
                'reward_scale', 'reward_clip', 'pt_weight', 'gpu_memory_gb', 'peak_flops', 'teacher_logits_cache_gb',
                'temperature', 'gen_temperature', 'atkd_lambda', 'skew_alpha')
UNIT = ('kd_ratio', 'pt_kd_ratio', 'teacher_mix_alpha', 'gamma')  # [0, 1]
BELOW_ONE = ('dropout', 'beta1', 'beta2')                         # [0, 1)
PROBABILITY_MASS = ('top_p', 'gen_top_p')                         # (0, 1]
DTYPES = ('float32', 'bfloat16', 'float16')


def check_values(cfg):
    """One UserError for the first config value outside its range (POSITIVE, ...) or a dtype name that is
    none of DTYPES. The device is checked by each entry point before it is used (check_device): a
    config for another machine may still be built and inspected here."""
    have = vars(cfg)
    for keys, ok, what in ((POSITIVE, lambda v: v > 0, '> 0'), (NON_NEGATIVE, lambda v: v >= 0, '>= 0'),
                           (UNIT, lambda v: 0 <= v <= 1, 'in [0, 1]'), (BELOW_ONE, lambda v: 0 <= v < 1, 'in [0, 1)'),
                           (PROBABILITY_MASS, lambda v: 0 < v <= 1, 'in (0, 1]')):
        for key in keys:
            value = have.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
                raise UserError(f"{key} must be {what} (got {value})")
    if 'dtype' in have and have['dtype'] not in DTYPES:
        raise UserError(f"unknown dtype '{have['dtype']}': pick {', '.join(DTYPES)}")


def check_device(device, dtype='float32'):
    """A device that exists here, and a dtype it computes in: float16 needs CUDA (on CPU it would
    train in float32 with no word); bfloat16 on CUDA needs a GPU that has it (CPU: autocast)."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device '{device}': use cpu, cuda, cuda:N or mps") from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise UserError(f"device '{device}' asked for but this machine has no CUDA GPU (or torch was built "
                            f"without CUDA): use --device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        if dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
            raise UserError("this GPU has no bfloat16: use --dtype=float16 or float32")
    elif dev.type == 'mps' and not torch.backends.mps.is_available():
        raise UserError(f"device '{device}' asked for but MPS is not available here: use --device=cpu")
    elif dev.type not in ('cpu', 'cuda', 'mps'):
        raise UserError(f"unknown device '{device}': use cpu, cuda, cuda:N or mps")
    if dtype == 'float16' and dev.type == 'cpu':
        raise UserError("dtype='float16' needs CUDA (on a CPU it would compute in float32, with no grad scaler): "
                        "on a CPU use dtype='bfloat16' or 'float32'")


def run(main):
    """Call main(sys.argv[1:]); a UserError becomes one line on stderr and exit status 2."""
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
