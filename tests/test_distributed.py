"""
DDP and FSDP2 on CPU (gloo). One `torchrun --nproc_per_node=2` launch runs this file as a worker
(see `worker` below): inside the same two ranks it trains every case of CASES with train.main and
measures the shards; the tests then compare the logged losses with single-process runs that see
the same global batch (per-rank batch B x 2 ranks = batch 2B in one process).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

if __name__ == '__main__':  # a torchrun worker: make the repo importable as the tests' conftest does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train
from components.parallel import Runtime, global_mean, setup_distributed, wrap
from components.checkpoint import atomic_save, build_models, checkpoint_payload, consolidate, load_model, load_trainer_state
from configurator import UserError
from dataset import load_meta
from model import GPT, GPTConfig
from supervised import supervised_loss

B = 4  # sequences per rank per step
COMMON = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--eval_interval=100', '--eval_iters=1',
          '--log_interval=1', '--warmup_iters=0', '--lr_schedule=constant', '--device=cpu', '--dtype=float32']
# Rollouts are greedy so that they do not depend on how prompts are split over ranks (sampling
# draws from each rank's own generator); rollout_size 16 = 2 minibatches of 8 per PPO epoch.
CASES = {
    'sft': ['--method=sft', '--max_iters=3'],                          # scratch: built on rank 0, broadcast
    'kd': ['--method=kd', '--max_iters=3', '--init_from={student}'],   # a checkpoint, loaded after sharding
    'minillm': ['--method=minillm', '--rollout_size=16', '--ppo_epochs=2', '--max_new_tokens=6',
                '--gen_temperature=0.0', '--max_iters=6', '--init_from={student}'],
    # a llama-family student from a Hugging Face directory (GQA, RoPE, SwiGLU, RMSNorm, untied head;
    # 264 embedding rows) and teacher (300 rows), both padded around the data's 257 tokens
    'llamakd': ['--method=kd', '--max_iters=3', '--init_from={llama_student}', '--teacher={llama_teacher}'],
    'llamaminillm': ['--method=minillm', '--rollout_size=16', '--ppo_epochs=2', '--max_new_tokens=6',
                     '--gen_temperature=0.0', '--max_iters=6', '--init_from={llama_student}',
                     '--teacher={llama_teacher}'],
    # a student of 1 of the llama teacher's 2 blocks, chosen by block influence (prune.py): rank 0
    # builds it under FSDP, every rank under DDP, and all pick the same block
    'llamaprune': ['--method=kd', '--max_iters=3', '--init_from={llama_teacher}', '--teacher={llama_teacher}',
                   '--student_layers=1', '--student_layer_selection=importance'],
    # GKD (λ = 0.5: on-policy and gold steps, the coin from the shared data generator) and DistiLLM
    # (φ = 1: fresh and replayed student samples, the buffer gathered over ranks); greedy as above
    'gkd': ['--method=gkd', '--gen_temperature=0.0', '--max_new_tokens=6', '--max_iters=4', '--init_from={student}'],
    'distillm': ['--method=distillm', '--distillm_init_prob=1.0', '--distillm_capacity=16', '--gen_temperature=0.0',
                 '--max_new_tokens=6', '--max_iters=4', '--init_from={student}'],
    # reference mode: advantages whitened over each PPO minibatch of both ranks' rows (padded buffer)
    'refminillm': ['--method=minillm', '--returns_mode=reference', '--gamma=0.95', '--single_step_weighted=False',
                   '--reward_scale=0.5', '--reward_clip=100.0', '--rollout_size=16', '--ppo_epochs=2',
                   '--max_new_tokens=6', '--gen_temperature=0.0', '--max_iters=6', '--init_from={student}'],
}


def case_args(name, paths, single=False):
    """train.py flags of a case; `single`: one process with the global batch of the 2 ranks."""
    batch = [f'--batch_size={2 * B}', '--pt_batch_size=4'] if single else [f'--batch_size={B}', '--pt_batch_size=2']
    return (COMMON + [f"--data_dir={paths['data']}", f"--teacher={paths['teacher']}", f"--pt_data_dir={paths['data']}"]
            + [a.format(**paths) for a in CASES[name]] + batch)


def losses(out_dir, key='loss'):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [r[key] for r in map(json.loads, f) if key in r]


# ----------------------------------------------------------------------------- the torchrun worker
SAMPLED = ['--gen_temperature=1.0', '--dropout=0.1']  # sampled rollouts, dropout: each rank's own RNG streams


def sigterm_worker(paths):
    """Preemption under FSDP: only rank 1 gets SIGTERM, during step 2 (test_cluster.hold_at_iteration);
    rank 0 learns of it by the all-reduce, both save dcp/ at iter 3 and exit 75."""
    import datetime
    import torch.distributed as dist
    from test_cluster import hold_at_iteration
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=120))
    if dist.get_rank() == 1:
        hold_at_iteration(2, paths['sigterm_marker'])
    try:
        train.main(case_args('minillm', paths) + [f"--out_dir={paths['out']}/fsdpsigterm_minillm", '--parallel=fsdp', *SAMPLED])
    finally:
        dist.barrier()
        dist.destroy_process_group()


def worker(paths):
    """Runs on both ranks; every train.main call reuses the one process group."""
    import datetime
    import torch.distributed as dist
    if 'sigterm_marker' in paths:
        return sigterm_worker(paths)
    dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=120))
    rank, out, report = dist.get_rank(), paths['out'], {}

    def run(name, *args):  # name = '<variant>_<case>'
        train.main(case_args(name.split('_')[-1], paths) + [f'--out_dir={out}/{name}', *args])
        dist.barrier()  # rank 0 may still be writing ckpt.pt when the next run (a resume) starts
    for parallel in ('ddp', 'fsdp'):
        for name in CASES:
            ac = ['--fsdp_activation_checkpointing=True'] if (parallel, name) == ('fsdp', 'kd') else []
            run(f'{parallel}_{name}', f'--parallel={parallel}', *ac)
    # sampled rollouts and dropout (each rank's own RNG streams): 6 steps, and 3 + 3 resumed from
    # FSDP's dcp/ or DDP's ckpt.pt; step 3 is in the middle of a rollout phase (4 steps per phase)
    for parallel in ('ddp', 'fsdp'):
        sampled = [f'--parallel={parallel}', *SAMPLED]
        run(f'{parallel}full_minillm', *sampled)
        run(f'{parallel}half_minillm', *sampled, '--max_iters=3')
        run(f'{parallel}half_minillm', *sampled, '--init_from=resume')
    run('fsdpsigterm_minillm', '--parallel=fsdp', *SAMPLED, '--init_from=resume')  # stopped at iter 3 by SIGTERM
    # the llama student with dropout: 4 steps, and 2 + 2 resumed from FSDP's dcp/
    run('fsdpllamafull_llamakd', '--parallel=fsdp', '--dropout=0.1', '--max_iters=4')
    run('fsdpllamahalf_llamakd', '--parallel=fsdp', '--dropout=0.1', '--max_iters=2')
    run('fsdpllamahalf_llamakd', '--parallel=fsdp', '--dropout=0.1', '--max_iters=4', '--init_from=resume')
    run('bf16_minillm', '--parallel=fsdp', '--dtype=bfloat16', '--max_iters=2')
    report['generation'] = generation_over_ranks()
    # the real generation settings (tau 1, top-p 1) with models whose rows end at scattered steps:
    # validation Rouge-L (kd, DDP and FSDP), MiniLLM rollouts with teacher mixing, GKD samples (FSDP)
    sampled = ['--gen_temperature=1.0', '--max_new_tokens=20', f"--init_from={paths['eos_student']}",
               f"--teacher={paths['eos_teacher']}", '--max_iters=1', '--eval_interval=1', '--eval_rouge_examples=12']
    for parallel in ('ddp', 'fsdp'):
        run(f'{parallel}rouge_kd', f'--parallel={parallel}', *sampled)
    run('fsdpsampled_minillm', '--parallel=fsdp', *sampled, '--rollout_size=8', '--rollout_batch_size=2', '--ppo_epochs=1')
    run('fsdpsampled_gkd', '--parallel=fsdp', *sampled, '--gkd_lambda=1.0')
    try:
        run('offload_kd', '--parallel=fsdp', '--fsdp_cpu_offload=True')
    except UserError as e:
        report['offload_error'] = str(e)
    report['atkd_losses'] = atkd_losses_over_ranks(paths)
    # what each rank holds after build_models + wrap under FSDP
    cfg = train.configure(train.DEFAULTS, case_args('kd', paths) + ['--parallel=fsdp', '--fsdp_activation_checkpointing=True'])
    setup_distributed(cfg)
    meta = load_meta(paths['data'])
    student, teacher, _, weights = build_models(cfg, meta, torch.float32)
    report['built_on_meta'] = all(p.is_meta for p in student.parameters())
    wrap(cfg, student, teacher, weights, torch.float32)
    report['blocks'] = sorted({type(block).__name__ for block in student.transformer.h})
    reference, _ = load_model(paths['student'])
    report['local_numel'] = sum(p.to_local().numel() for p in student.parameters())
    report['teacher_local_numel'] = sum(p.to_local().numel() for p in teacher.parameters())
    report['numel'] = sum(p.numel() for p in reference.parameters())
    full = {k: v.full_tensor() for k, v in student.state_dict().items()}  # collective: every rank
    report['max_weight_diff'] = max((full[k] - v).abs().max().item() for k, v in reference.state_dict().items())
    reports = [None, None]
    dist.all_gather_object(reports, report)
    if rank == 0:
        with open(os.path.join(out, 'report.json'), 'w') as f:
            json.dump(reports, f)
    dist.barrier()  # as train.main does: a rank that tears gloo down first can abort the other (seen on CPU)
    dist.destroy_process_group()


def generation_over_ranks():
    """sampling.generate under FSDP at tau 1, top-p 1, with and without teacher mixing, on ranks that
    disagree on everything a step count depends on: rank 0 has 3 prompts of width 6 and a budget of
    20 tokens, rank 1 has 5 prompts of width 11 and a budget of 12, and the rows (eos_prone_gpt) end
    at scattered steps. Each rank's tokens must equal one process's generate of the same rows with
    the same generator, and both ranks must run the same number of forwards."""
    import copy
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from components.parallel import decoding_agreement
    from sampling import generate
    rank = dist.get_rank()
    student, teacher = eos_prone_gpt(5), eos_prone_gpt(6)
    idx = torch.randint(0, 256, (3 + 2 * rank, 6 + 5 * rank), generator=torch.Generator().manual_seed(rank))
    budget = 20 - 8 * rank
    sharded = [copy.deepcopy(m) for m in (student, teacher)]
    for m in sharded:
        for block in m.transformer.h:
            fully_shard(block)
        fully_shard(m)
    forwards = [0]
    sharded[0].register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    out = {}
    for alpha in (0.0, 0.2):
        def sample(s, t, **kw):
            return generate(s, idx, budget, temperature=1.0, top_p=1.0, eos_id=256, mix_model=t, mix_alpha=alpha,
                            generator=torch.Generator().manual_seed(10 + rank), **kw)
        ref, got = sample(student, teacher), sample(*sharded, all_done=decoding_agreement('cpu', rank))
        ends = [(row == 256).nonzero()[0].item() if (row == 256).any() else -1 for row in ref[:, idx.shape[1]:]]
        out[str(alpha)] = dict(equal=torch.equal(ref, got), ends=ends, forwards=forwards[0])
        forwards[0] = 0
    # a rank that never arrives (here rank 1 skips the step) is an error naming the step, not a hang
    import datetime
    impatient = dist.new_group(backend='gloo', timeout=datetime.timedelta(seconds=2))
    if rank == 0:
        try:
            decoding_agreement('cpu', rank, impatient)(False, 7)
        except UserError as e:
            out['timeout'] = str(e)
    return out


def atkd_losses_over_ranks(paths):
    """Per-sequence ATKD (+ CE) on 8 sequences: (the two ranks' rescaled losses averaged, as DDP averages
    gradients, with the 4 shortest responses on rank 0 and the 4 longest on rank 1, so the ranks hold
    different numbers of tokens; the one-process loss of all 8)."""
    import torch.distributed as dist
    from dataset import InstructSet
    cfg = train.configure(train.DEFAULTS, case_args('kd', paths) + ['--atkd=True', '--chunked_loss=False'])
    data = InstructSet(paths['data'], 'train')
    rt, cfg.rank, cfg.world_size = Runtime(chunked=False, eot=data.eot), dist.get_rank(), 2
    student, teacher = load_model(paths['student'])[0], load_model(paths['teacher'])[0]
    by_length = sorted(range(len(data)), key=lambda i: (len(data.rows[i]['response']), i))
    ids = by_length[:4] + by_length[-4:]

    def loss(cfg, ids):
        x, y, seg = data.packed_sft_batch(ids, cfg.block_size)
        with torch.no_grad():
            return global_mean(cfg, supervised_loss(cfg, rt, student, teacher, x, y, 0.5, seg), (y != -1).sum())
    mine = loss(cfg, ids[4 * cfg.rank:4 * cfg.rank + 4])
    dist.all_reduce(mine)
    cfg.world_size = 1
    return mine.item() / 2, loss(cfg, ids).item()


# ----------------------------------------------------------------------------- fixtures
def random_checkpoint(path, seed, **shape):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=32, vocab_size=257, **shape))
    atomic_save(checkpoint_payload(model, 'byte'), os.path.join(path, 'ckpt.pt'))
    return path


def eos_prone_gpt(seed, eos=256, **shape):
    """A random GPT whose eos logit is about 4.5 above the rest (P(eos) ~ 1/4 per step at tau 1):
    sampled rows end at scattered steps, as a trained model's do."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=32, vocab_size=257, **(shape or dict(n_layer=2, n_head=2, n_embd=32))))
    with torch.no_grad():
        b = torch.randn(model.config.n_embd)
        b /= b.norm()
        model.transformer.ln_f.weight.mul_(0.1)
        model.transformer.ln_f.bias.copy_(b)
        model.lm_head.weight[eos] = 4.5 * b
    return model


def eos_prone_checkpoint(path, seed):
    atomic_save(checkpoint_payload(eos_prone_gpt(seed), 'byte'), os.path.join(path, 'ckpt.pt'))
    return path


def hf_llama(path, seed, rows):
    """A tiny random Llama checkpoint written by transformers (the test reference)."""
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64, vocab_size=rows)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope='module')
def runs(tiny_instruct, tmp_path_factory):
    """The torchrun launch (2 ranks) and, alongside, the single-process references. Returns (paths, reports)."""
    root = tmp_path_factory.mktemp('dist')
    paths = dict(data=tiny_instruct, out=str(root),
                 teacher=random_checkpoint(str(root / 'teacher'), 1, n_layer=2, n_head=2, n_embd=32),
                 student=random_checkpoint(str(root / 'student'), 2, n_layer=2, n_head=2, n_embd=32),
                 llama_student=hf_llama(str(root / 'llama_student'), 3, rows=264),
                 llama_teacher=hf_llama(str(root / 'llama_teacher'), 4, rows=300),
                 eos_student=eos_prone_checkpoint(str(root / 'eos_student'), 5),
                 eos_teacher=eos_prone_checkpoint(str(root / 'eos_teacher'), 6))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    # --standalone: torchrun binds a free port itself (picking one here and passing it on would race
    # with anything else that binds a port before torchrun does)
    launch = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', os.path.abspath(__file__)]
    # first the preempted FSDP run (SIGTERM to rank 1 only), which the main launch resumes
    marker = str(root / 'rank1_held')
    with open(root / 'sigterm.log', 'w+') as log:
        proc = subprocess.Popen(launch + [json.dumps(dict(paths, sigterm_marker=marker))], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=str(root))
        try:
            while not os.path.exists(marker):
                assert proc.poll() is None, open(root / 'sigterm.log').read()[-8000:]
                time.sleep(0.05)
            with open(marker) as f:
                os.kill(int(f.read()), signal.SIGTERM)
            paths['sigterm_rc'] = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    paths['sigterm_iter'] = load_trainer_state(str(root / 'fsdpsigterm_minillm'))['iter_num']
    cmd = launch + [json.dumps(paths)]
    with open(root / 'torchrun.log', 'w+') as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(root))
        try:
            for name in CASES:  # meanwhile, the single-process references
                train.main(case_args(name, paths, single=True) + [f'--out_dir={root}/single_{name}'])
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        assert rc == 0, log.read()[-8000:]
    with open(root / 'report.json') as f:
        return paths, json.load(f)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize('name', list(CASES))
def test_ddp_and_fsdp_reproduce_the_single_process_run(runs, name):
    paths, _ = runs
    single = losses(f"{paths['out']}/single_{name}")
    assert len(single) == int(next(a for a in CASES[name] if a.startswith('--max_iters')).split('=')[1])
    for parallel in ('ddp', 'fsdp'):
        out = f"{paths['out']}/{parallel}_{name}"
        assert losses(out) == pytest.approx(single, rel=1e-4), parallel
        assert losses(out, 'val_loss') == pytest.approx(losses(f"{paths['out']}/single_{name}", 'val_loss'), rel=1e-4)


def test_gkd_and_distillm_cases_used_every_source(runs):
    paths, _ = runs
    assert set(losses(f"{paths['out']}/single_gkd", 'on_policy')) == {0.0, 1.0}
    fresh, replay = (losses(f"{paths['out']}/single_distillm", k) for k in ('fresh', 'replay'))
    assert fresh[:2] == [1.0, 1.0] and 1.0 in replay  # the 16-row buffer fills in 2 global batches of 8


@pytest.mark.parametrize('parallel', ['ddp', 'fsdp'])
def test_resume_continues_exactly(runs, parallel):
    paths, _ = runs
    full, resumed = losses(f"{paths['out']}/{parallel}full_minillm"), losses(f"{paths['out']}/{parallel}half_minillm")
    assert len(resumed) == len(full) == 6
    assert resumed == full  # bit for bit: weights, AdamW state, rollout buffer and queue, every rank's RNGs
    written = sorted(os.listdir(f"{paths['out']}/{parallel}half_minillm"))
    assert written == (['best.pt', 'ckpt.pt', 'log.jsonl'] if parallel == 'ddp' else ['dcp', 'dcp_best', 'log.jsonl'])


def test_sigterm_to_one_fsdp_rank_saves_on_every_rank_and_resumes_exactly(runs):
    """Rank 1 alone was signalled during step 2 of 6: the all-reduced flag stopped both ranks after
    that step, dcp/ holds iter 3 (every rank's shards), each rank exited 75, and the resumed run's
    losses are those of the run that was never stopped."""
    paths, _ = runs
    with open(f"{paths['out']}/sigterm.log") as f:
        log = f.read()
    assert paths['sigterm_rc'] != 0 and 'exitcode  : 75' in log, log[-8000:]
    assert f"iter 3: SIGTERM received, the last state is in {paths['out']}/fsdpsigterm_minillm/dcp" in log  # rank 0's line
    assert paths['sigterm_iter'] == 3
    full, resumed = (losses(f"{paths['out']}/fsdp{v}_minillm") for v in ('full', 'sigterm'))
    assert len(resumed) == 6 and resumed == full


def test_consolidated_fsdp_checkpoint_matches_the_single_process_weights(runs):
    paths, _ = runs
    sharded, _ = load_model(f"{paths['out']}/fsdp_minillm")  # the run dir as it is: its best, from dcp_best/
    path = consolidate(f"{paths['out']}/fsdp_minillm")
    model, tok = load_model(path)  # what sample.py and evaluate.py call
    assert torch.load(f"{paths['out']}/fsdp_minillm/best.pt", weights_only=True)['best']['iter'] == 6  # = the last
    assert all(torch.equal(a, b) for a, b in zip(sharded.state_dict().values(), model.state_dict().values()))
    single, _ = load_model(f"{paths['out']}/single_minillm")
    assert tok == 'byte' and torch.load(path, weights_only=True)['iter_num'] == 6
    assert model.transformer.wte.weight is model.lm_head.weight
    for (k, a), b in zip(model.state_dict().items(), single.state_dict().values()):
        # atol 5e-6: after 6 AdamW steps (lr 1e-3) fp32 reduction-order noise in near-zero gradients reaches ~1e-6
        assert torch.allclose(a, b, rtol=1e-4, atol=5e-6), k


def test_fsdp_resume_of_a_llama_student_continues_exactly(runs):
    paths, _ = runs
    full, resumed = (losses(f"{paths['out']}/fsdpllama{v}_llamakd") for v in ('full', 'half'))
    assert len(full) == 4 and resumed == full  # bit for bit, dropout RNGs included


def test_consolidation_and_export_of_an_fsdp_llama_run(runs, tmp_path):
    from conftest import ROOT
    transformers = pytest.importorskip('transformers')
    paths, _ = runs
    run_dir = f"{paths['out']}/fsdp_llamakd"
    model, tok = load_model(consolidate(run_dir))
    single, _ = load_model(f"{paths['out']}/single_llamakd")
    assert tok == 'byte' and (model.config.vocab_size, model.config.tokenizer_vocab, model.config.kv_heads) == (264, 257, 2)
    for (k, a), b in zip(model.state_dict().items(), single.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), k
    out = str(tmp_path / 'hf')
    r = subprocess.run([sys.executable, 'scripts/convert_checkpoint.py', '--export_hf', run_dir, out], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    sharded, _ = load_model(run_dir)  # what the export read: the run's shards, in one process
    assert theirs.config.model_type == 'llama' and theirs.config.num_key_value_heads == 2
    idx = torch.randint(0, 257, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(idx).logits[..., :257] - sharded.eval()(idx)).abs().max().item() < 1e-5


def test_each_fsdp_rank_holds_half_the_weights_loaded_from_rank0(runs):
    _, reports = runs
    numel = reports[0]['numel']
    assert sum(r['local_numel'] for r in reports) == numel
    assert sum(r['teacher_local_numel'] for r in reports) == numel  # teacher: same shape, sharded too
    for r in reports:
        assert r['built_on_meta']
        assert abs(r['local_numel'] / numel - 0.5) < 0.01
        assert r['max_weight_diff'] == 0.0  # the broadcast shards are exactly the checkpoint's weights


def test_activation_checkpointing_bf16_and_offload_under_fsdp(runs):
    paths, reports = runs
    assert reports[0]['blocks'] == ['FSDPCheckpointWrapper']  # fsdp_kd ran with it and matched the single process
    bf16, fp32 = losses(f"{paths['out']}/bf16_minillm"), losses(f"{paths['out']}/fsdp_minillm")[:2]
    assert bf16 == pytest.approx(fp32, rel=2e-2)  # rollouts with a bf16 KV cache under FSDP mixed precision
    assert 'fsdp_cpu_offload needs CUDA' in reports[0]['offload_error']


def test_atkd_per_sequence_loss_is_the_same_for_world_sizes_1_and_2(runs):
    _, reports = runs
    for r in reports:
        two_ranks, one_process = r['atkd_losses']
        assert two_ranks == pytest.approx(one_process, rel=1e-6)


if __name__ == '__main__':
    worker(json.loads(sys.argv[1]))


def test_fsdp_generation_runs_one_step_count_on_every_rank_and_samples_as_one_process(runs):
    """The ranks' rows end at different steps and their prompt widths and budgets differ; they still
    run the same number of forwards (the longest rank's), each drawing the tokens one process draws."""
    _, reports = runs
    for alpha in ('0.0', '0.2'):
        ranks = [r['generation'][alpha] for r in reports]
        steps = [20 - 8 * rank if -1 in r['ends'] else max(r['ends']) + 1 for rank, r in enumerate(ranks)]
        assert steps[0] != steps[1] and len({e for r in ranks for e in r['ends']}) >= 3, (alpha, ranks)
        assert all(r['equal'] for r in ranks), alpha
        assert ranks[0]['forwards'] == ranks[1]['forwards'] == max(steps), (alpha, ranks, steps)
    assert reports[0]['generation']['timeout'].startswith("rank 0: the ranks did not agree at decoding step 7 (")
    assert reports[0]['generation']['timeout'].endswith("): another rank failed or hangs, see its output")


def test_training_generates_at_tau_1_under_ddp_and_fsdp(runs):
    """Validation Rouge-L, MiniLLM rollouts and GKD samples at tau 1 with rows ending at scattered
    steps finish under both wrappings; DDP and FSDP measure the same Rouge-L (same weights, seeds)."""
    paths, _ = runs
    rouge = {p: losses(f"{paths['out']}/{p}rouge_kd", 'rouge_l') for p in ('ddp', 'fsdp')}
    assert len(rouge['ddp']) == 2 and rouge['fsdp'] == pytest.approx(rouge['ddp'], abs=1e-6)
    assert len(losses(f"{paths['out']}/fsdpsampled_minillm")) == 1
    assert losses(f"{paths['out']}/fsdpsampled_gkd", 'on_policy') == [1.0]
