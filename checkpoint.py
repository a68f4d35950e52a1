"""
Checkpoints: one `ckpt.pt` per run directory, written atomically (temp file + rename) so a crash
never leaves half a checkpoint, and loaders that turn every mismatch into one clear message.

A checkpoint holds the model weights, its GPTConfig, the tokenizer it was trained with, and, for
`init_from='resume'`, the optimizer, iteration, RNG and data-sampler states.
"""
import os
from dataclasses import asdict

import torch

from configurator import UserError
from model import GPT, GPTConfig

CKPT_NAME = 'ckpt.pt'


def atomic_save(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ckpt_path(where):
    return os.path.join(where, CKPT_NAME) if os.path.isdir(where) else where


def load_checkpoint(where):
    path = ckpt_path(where)
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}: train one first (python train.py <config>) "
                        f"or point to the right out_dir")
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # truncated or not a torch file
        raise UserError(f"checkpoint {path} is unreadable ({type(e).__name__}): delete it and retrain") from None


def model_state(model):
    """State dict without any wrapper prefixes (torch.compile's `_orig_mod.`, DDP's `module.`)."""
    sd = model.state_dict()
    for prefix in ('_orig_mod.', 'module.'):
        sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}
    return sd


def checkpoint_payload(model, tokenizer, **extra):
    return dict(model=model_state(model), model_args=asdict(model.config), tokenizer=tokenizer, **extra)


def load_model(spec, device='cpu', expect_vocab=None, expect_tokenizer=None, dropout=None):
    """A GPT from a run directory / ckpt.pt of ours, or a Hugging Face GPT-2 (directory with
    config.json, or a hub name such as 'gpt2-xl'). Returns (model, tokenizer_name)."""
    hf_dir = os.path.isdir(spec) and os.path.exists(os.path.join(spec, 'config.json'))
    if hf_dir or spec in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'):
        model, tok = GPT.from_pretrained(spec), 'gpt2'
    else:
        ckpt = load_checkpoint(spec)
        args = dict(ckpt['model_args'])
        if dropout is not None:
            args['dropout'] = dropout
        model = GPT(GPTConfig(**args))
        try:
            model.load_state_dict(ckpt['model'])
        except RuntimeError as e:
            raise UserError(f"checkpoint {ckpt_path(spec)} does not match its own model_args: "
                            f"{str(e).splitlines()[0]}") from None
        tok = ckpt.get('tokenizer')
    if expect_tokenizer is not None and tok is not None and tok != expect_tokenizer:
        raise UserError(f"{spec} uses the '{tok}' tokenizer but the data uses '{expect_tokenizer}': "
                        f"teacher, student and data must share one tokenizer")
    if expect_vocab is not None and model.config.vocab_size != expect_vocab:
        raise UserError(f"{spec} has vocab_size {model.config.vocab_size} but the data/other model has "
                        f"{expect_vocab}: they must share one tokenizer")
    return model.to(device), tok
