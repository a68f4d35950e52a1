"""
Exported students against transformers: for each Hugging Face directory (scripts/convert_checkpoint.py
--export_hf), sample.py's greedy replies (--top_k=1, fp32, one prompt at a time) to the first prompts
of a data set's test split must be the text `transformers`' own greedy generation of that directory
gives. Writes the replies side by side as markdown; exits 1 if any reply differs.

    python scripts/compare_greedy.py --models=teacher=out/hf/teacher,kd=out/hf/kd \\
        --data_dir=data/chitchat_smollm2 --num_prompts=3 --max_new_tokens=48 --out=examples.md
"""
import contextlib
import io
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script

import torch  # noqa: E402

import sample  # noqa: E402
from configurator import UserError, configure, defaults_from, run  # noqa: E402
from dataset import InstructSet, load_meta  # noqa: E402
from evaluate import parse_pairs  # noqa: E402
from components.tokenizer import get_encoding  # noqa: E402

SEPARATOR = '-' * 40

# ----------------------------------------------------------------------------- config
models = ''                  # name=hf_dir pairs, comma-separated
data_dir = ''                # an instruction set (its test split's first prompts)
split = 'test'
num_prompts = 3
max_new_tokens = 48
out = ''                     # write the replies as markdown here ('' = print only)
DEFAULTS = defaults_from(globals())
# -----------------------------------------------------------------------------


def ours(path, cfg):
    """sample.py's printed texts (prompt + greedy reply), one per prompt: its main, as the command runs it."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sample.main([f'--init_from={path}', f'--data_dir={cfg.data_dir}', f'--split={cfg.split}',
                     f'--num_prompts={cfg.num_prompts}', '--top_k=1', '--batch_size=1',
                     f'--max_new_tokens={cfg.max_new_tokens}', '--device=cpu', '--dtype=float32'])
    return [t.lstrip('\n') for t in printed.getvalue().split(SEPARATOR + '\n')[:-1]]


def theirs(path, prompts, eot, enc, cfg):
    """transformers' greedy generation of the same directory, decoded the same way."""
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.max_new_tokens,
                                 do_sample=False, eos_token_id=eot, pad_token_id=eot)
        reply = [t for t in seq[0, len(p):].tolist() if t != eot]
        texts.append(enc.decode(p) + enc.decode(reply) + '\n')
    return texts


def turns(prompt):
    """A chat-template prompt as 'role: text' lines (ChatML's <|im_start|>role ... <|im_end|>)."""
    found = re.findall(r'<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>', prompt, flags=re.S)
    return [f"{role}: {text.strip()}" for role, text in found] or [prompt.strip()]


def main(argv):
    cfg = configure(DEFAULTS, argv)
    pairs = parse_pairs(cfg.models, 'models', lambda item: item)
    if not pairs or not cfg.data_dir:
        raise UserError("give --models=name=hf_dir,... and --data_dir=...")
    meta = load_meta(cfg.data_dir)
    enc, eot = get_encoding(meta['tokenizer']), meta['eot_token']
    data = InstructSet(cfg.data_dir, cfg.split)
    n = min(cfg.num_prompts, len(data))
    prompts = [enc.encode(data.rows[i]['prompt'], allowed_special='all') for i in range(n)]  # as sample.py reads them
    replies, differ = {}, []
    for name, path in pairs.items():
        a, b = ours(path, cfg), theirs(path, prompts, eot, enc, cfg)
        same = a == b
        print(f"{name}: sample.py {'==' if same else '!='} transformers greedy on {n} prompts")
        if not same:
            differ.append(name)
        replies[name] = [t[len(enc.decode(p)):].strip() for t, p in zip(a, prompts)]
    lines = [f"Greedy replies (sample.py --top_k=1, fp32) of the exported models to the first {n} {cfg.split} "
             f"prompts of {cfg.data_dir}; each equal to transformers' greedy generation of the same "
             f"directory: {'yes' if not differ else 'NO (' + ', '.join(differ) + ')'}.", '']
    for i in range(n):
        lines += [f"**Prompt {i + 1}** (reference: {data.rows[i]['response'].strip()!r})", '']
        lines += [f"> {t}" for t in turns(data.rows[i]['prompt'])] + ['']
        lines += ['| model | reply |', '|---|---|']
        lines += [f"| {name} | {r[i].replace('|', '/').replace(chr(10), ' ')} |" for name, r in replies.items()] + ['']
    text = '\n'.join(lines)
    print(text)
    if cfg.out:
        with open(cfg.out + '.tmp', 'w') as f:
            f.write(text + '\n')
        os.replace(cfg.out + '.tmp', cfg.out)
    if differ:
        raise SystemExit(f"compare_greedy: sample.py and transformers differ for {', '.join(differ)}")


if __name__ == '__main__':
    run(main)
