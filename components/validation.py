"""
Which checkpoint a training run keeps as best.pt, and the validation Rouge-L it is chosen by.

The MiniLLM protocol (the LMOps minillm README and trainers): the baselines (KD, SeqKD) and
MiniLLM are selected by validation Rouge-L of sampled responses (MiniLLM evaluates every 100
steps; here GKD and DistiLLM too, whose public code measures Rouge-L at each evaluation), the SFT
initialisation of the students by validation loss. train.py measures the loss at every
`eval_interval` and Rouge-L at every `eval_rouge_interval` on a fixed validation subset;
checkpoint.py says where best.pt and the last state (ckpt.pt, for resume) live.
"""
import functools

import torch

from components.parallel import unwrap
from dataset import split_responses
from sampling import generate

SELECT_METRICS = ('rouge_l', 'val_loss')


def rouge_subset(cfg, data):
    """The validation prompts Rouge-L is measured on: the first eval_rouge_examples, cut to a
    multiple of world_size (FSDP ranks generate in lockstep, so each rank gets the same number),
    shortest prompts first (less left padding). Empty for pretrain (no prompts) or when off."""
    if cfg.method == 'pretrain':
        return []
    n = min(cfg.eval_rouge_examples, len(data)) // cfg.world_size * cfg.world_size
    return sorted(range(n), key=lambda i: int(data.index[i][1]))


def selection_metric(cfg, rouge_ids):
    """cfg.select_metric, with 'auto' = rouge_l for kd / seqkd / minillm and the methods compared with
    them, gkd / distillm (when Rouge-L is measured), val_loss for sft / pretrain."""
    if cfg.select_metric != 'auto':
        return cfg.select_metric
    return 'rouge_l' if cfg.method in ('kd', 'seqkd', 'minillm', 'gkd', 'distillm') and rouge_ids else 'val_loss'


def improves(metric, value, best):
    """True when `value` of `metric` beats the `best` record so far (dict(metric, value, iter) or None):
    higher Rouge-L, lower loss; a tie keeps the earlier checkpoint."""
    if value is None:
        return False
    if best is None:
        return True
    return value > best['value'] if metric == 'rouge_l' else value < best['value']


@torch.no_grad()
def validation_rouge_l(cfg, rt, model, data, enc, ids):
    """(mean Rouge-L over this rank's prompts, their count): evaluate.rouge_l (max over references,
    x100) of one response per validation prompt, sampled at tau = 1, top-p = 1 as evaluate.py and
    the reference's in-training validation do, with a generator seeded the same at every
    evaluation. This rank answers every world_size-th prompt of `ids`; train.py averages the ranks.
    `rt`: parallel.Runtime (autocast, the ranks' agreement to stop decoding)."""
    model.eval()
    mine = ids[cfg.rank::cfg.world_size]
    gen, total = torch.Generator(device=cfg.device).manual_seed(1234 + cfg.rank), 0.0
    for s in range(0, len(mine), cfg.rollout_batch_size):
        batch = mine[s:s + cfg.rollout_batch_size]
        idx, mask = data.prompt_batch(batch)
        with rt.ctx:
            seq = generate(unwrap(model), idx.to(cfg.device), cfg.max_new_tokens, temperature=1.0, top_p=1.0,
                           eos_id=data.eot, attention_mask=mask.to(cfg.device), generator=gen, all_done=rt.all_done)
        texts = rollout_texts([dict(seq=seq.cpu(), prompt_mask=mask)], enc, data.eot)
        total += sum(rouge_l(t, data.rows[i].get('references') or [data.rows[i]['response']])
                     for t, i in zip(texts, batch))
    model.train()
    return total / len(mine), len(mine)


@functools.lru_cache(maxsize=None)
def _rouge_scorer():
    from rouge_score import rouge_scorer, tokenizers

    class CachedTokenizer(tokenizers.Tokenizer):
        """rouge-score's own tokenizer (lowercase, alphanumeric words, Porter stems), memoised:
        the same references are scored against every sample of every model."""
        def __init__(self):
            self._cached = functools.lru_cache(maxsize=1 << 17)(tokenizers.DefaultTokenizer(use_stemmer=True).tokenize)

        def tokenize(self, text):
            return self._cached(text)

    return rouge_scorer.RougeScorer(['rougeL'], tokenizer=CachedTokenizer())


def rouge_l(prediction, references):
    """Rouge-L (Lin, 2004): F = 2PR / (P + R) with P = LCS/|pred|, R = LCS/|ref|
    over stemmed words (the rouge-score package); max over `references`, x100. 0 when empty."""
    if isinstance(references, str):
        references = [references]
    if not prediction.strip() or not references:
        return 0.0
    scorer = _rouge_scorer()
    return 100.0 * max(scorer.score(ref, prediction)['rougeL'].fmeasure for ref in references)


def rollout_texts(rollouts, enc, eot):
    """Decoded responses, in rollout order, without their eot."""
    texts = []
    for b in rollouts:
        for r in split_responses(b['seq'], b['prompt_mask'].shape[1], eot):
            texts.append(enc.decode([t for t in r if t != eot and t < enc.n_vocab]))
    return texts
