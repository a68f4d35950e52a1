"""
Generate from a checkpoint of ours, a Hugging Face checkpoint or a GGUF file (components/gguf.py).

    python sample.py --init_from=out/toy_teacher --start="Q: add 38 and 45\\nA:"
    python sample.py --init_from=out/toy_teacher --data_dir=data/toy_instruct --num_prompts=5
    python sample.py --init_from=gpt2 --start=FILE:prompts.txt --max_new_tokens=64
    python sample.py --init_from=smollm2 --top_k=1 --start='<|im_start|>user\\nHi!<|im_end|>\\n<|im_start|>assistant\\n'

SeqKD data (Kim & Rush 2016; the SeqKD baseline of MiniLLM §3.1): replace every response of an
instruction set by one the teacher samples (tau = 1) and write it as a new data directory:

    python sample.py --init_from=out/toy_teacher --data_dir=data/toy_instruct \\
        --seqkd_out=data/toy_instruct_seqkd
"""
import json
import os
import shutil

import numpy as np
import torch

from components.checkpoint import load_model
from components.precision import autocast, enable_tf32, keep_freed_memory
from components.rundir import check_writable
from configurator import UserError, check_device, configure, defaults_from, run
from dataset import InstructSet, left_pad, load_meta, split_responses
from sampling import generate
from components.progress import GenerationProgress
from components.tokenizer import get_encoding

# ----------------------------------------------------------------------------- config
init_from = 'out/toy_teacher'  # run dir / ckpt.pt / HF GPT-2 dir or name
start = ''                     # a prompt, or FILE:path with one prompt per line ('\n' escapes allowed)
data_dir = ''                  # or take prompts from this instruction set
split = 'test'
num_prompts = 4                # prompts taken from data_dir
num_samples = 1                # samples per prompt
max_new_tokens = 64
temperature = 1.0
top_k = 0
top_p = 1.0
batch_size = 256
seed = 1337
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'float32'              # 'bfloat16' autocasts the forward passes (CUDA or CPU); float16: CUDA only
seqkd_out = ''                 # write a SeqKD copy of data_dir with teacher-sampled responses
seqkd_max_train = 0            # > 0: only the first N training prompts (quick runs); 0 = all
DEFAULTS = defaults_from(globals())
# -----------------------------------------------------------------------------


@torch.no_grad()
def sample_responses(model, prompts, eot, cfg, generator, desc='sampling'):
    """Token lists of one sampled response per prompt (ending with eot when one was emitted);
    a progress bar on a terminal."""
    out, bar = [], GenerationProgress(len(prompts), desc)
    for s in range(0, len(prompts), cfg.batch_size):
        idx, mask = left_pad(prompts[s:s + cfg.batch_size], eot)
        gen = generate(model, idx.to(cfg.device), cfg.max_new_tokens, temperature=cfg.temperature,
                             top_k=cfg.top_k or None, top_p=cfg.top_p, eos_id=eot,
                             attention_mask=mask.to(cfg.device), generator=generator)
        out += split_responses(gen.cpu(), idx.shape[1], eot)
        bar.update(len(out) - s, sum(map(len, out[s:])))
    bar.close()
    return out


def write_seqkd(model, cfg, enc):
    """Every split of data_dir with its responses replaced by teacher samples; prompts and
    references are kept, so evaluation against the gold answers is unchanged."""
    meta = load_meta(cfg.data_dir)
    tmp = cfg.seqkd_out.rstrip('/') + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    eot, dtype = meta['eot_token'], np.dtype(meta['dtype'])
    for split in ('train', 'valid', 'test'):
        data = InstructSet(cfg.data_dir, split)
        n = min(len(data), cfg.seqkd_max_train) if split == 'train' and cfg.seqkd_max_train > 0 else len(data)
        prompts = [data.prompt(i) for i in range(n)]
        responses = sample_responses(model, prompts, eot, cfg, gen, desc=f"seqkd {split}")
        index, tokens, off = [], [], 0
        with open(os.path.join(tmp, f'{split}.jsonl'), 'w') as f:
            for i, (p, r) in enumerate(zip(prompts, responses)):
                if not r or r[-1] != eot:
                    r = r + [eot]  # a response cut by max_new_tokens still ends the example
                row = dict(data.rows[i], response=enc.decode(r[:-1]), gold_response=data.rows[i]['response'])
                f.write(json.dumps(row) + '\n')
                index.append((off, len(p), len(r)))
                tokens += p + r
                off += len(p) + len(r)
        np.array(tokens, dtype=dtype).tofile(os.path.join(tmp, f'{split}.tokens.bin'))
        np.save(os.path.join(tmp, f'{split}.idx.npy'), np.array(index, dtype=np.int64))
        print(f"seqkd {split}: {len(prompts)} teacher responses, {off:,} tokens")
    with open(os.path.join(tmp, 'meta.json'), 'w') as f:
        json.dump(dict(meta, seqkd_teacher=cfg.init_from, seqkd_source=cfg.data_dir), f, indent=1)
    shutil.rmtree(cfg.seqkd_out, ignore_errors=True)
    os.replace(tmp, cfg.seqkd_out)
    print(f"wrote {cfg.seqkd_out}")


def read_prompts(cfg, enc):
    if cfg.start.startswith('FILE:'):
        path = cfg.start[5:]
        if not os.path.exists(path):
            raise UserError(f"prompt file {path} not found")
        with open(path) as f:
            texts = [line.rstrip('\n').replace('\\n', '\n') for line in f if line.strip()]
    elif cfg.start:
        texts = [cfg.start.replace('\\n', '\n')]
    elif cfg.data_dir:
        data = InstructSet(cfg.data_dir, cfg.split)
        texts = [data.rows[i]['prompt'] for i in range(min(cfg.num_prompts, len(data)))]
    else:
        raise UserError("nothing to sample from: give --start='...', --start=FILE:path or --data_dir=...")
    if not texts:
        raise UserError("the prompt set is empty")
    return texts


def main(argv):
    cfg = configure(DEFAULTS, argv)
    check_device(cfg.device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    enable_tf32(cfg.device)  # a checkpoint's fp32 weights: TF32 matmuls on CUDA
    keep_freed_memory(cfg.device)
    expect = load_meta(cfg.data_dir) if cfg.data_dir else None
    model, tok = load_model(cfg.init_from, cfg.device, expect_vocab=expect and expect['vocab_size'],
                            expect_tokenizer=expect and expect['tokenizer'])
    model.eval()
    enc = get_encoding(tok or (expect['tokenizer'] if expect else 'gpt2'))  # an HF dir without tokenizer files: the data's
    with autocast(cfg.device, cfg.dtype):
        return sample_or_write(model, tok, expect, enc, cfg)


def sample_or_write(model, tok, expect, enc, cfg):
    if cfg.seqkd_out:
        if not cfg.data_dir:
            raise UserError("--seqkd_out needs --data_dir, the instruction set whose prompts the teacher answers")
        check_writable(os.path.dirname(os.path.abspath(cfg.seqkd_out.rstrip('/'))), cfg.seqkd_out)
        try:
            return write_seqkd(model, cfg, enc)
        except OSError as e:
            shutil.rmtree(cfg.seqkd_out.rstrip('/') + '.tmp', ignore_errors=True)
            raise UserError(f"could not write {e.filename or cfg.seqkd_out} ({e.strerror or e}): "
                            f"{cfg.seqkd_out} is as it was; free space and run again") from None
    texts = read_prompts(cfg, enc)
    prompts = [enc.encode(t, allowed_special='all') for t in texts for _ in range(cfg.num_samples)]
    longest = max(len(p) for p in prompts)
    if longest >= model.config.block_size:
        raise UserError(f"a prompt has {longest} tokens but block_size is {model.config.block_size}: shorten it")
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    responses = sample_responses(model, prompts, enc.eot_token, cfg, gen)
    for p, r in zip(prompts, responses):
        text = enc.decode([t for t in r if t != enc.eot_token])
        print(enc.decode(p) + text + "\n" + "-" * 40)


if __name__ == '__main__':
    run(main)
