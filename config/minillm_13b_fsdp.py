# MiniLLM at scale: a 13B-class student (model.PRESETS['gpt-13b']: 40 layers, d = 5120) distilled
# from a larger teacher with FSDP2, e.g. 8 nodes x 8 GPUs of 80 GB:
#   torchrun --nnodes=8 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD:29500 \
#       train.py config/minillm_13b_fsdp.py
# At start rank 0 prints the per-GPU memory estimate (memory.py) for the world size it runs on and
# the run stops if it exceeds gpu_memory_gb: with this teacher it fits from 8 GPUs up (python memory.py).
# Student and teacher are run directories of this codebase (GPT-2 architecture and tokenizer), e.g.
# the student's SFT stage from scratch with this same file:
#   torchrun ... train.py config/minillm_13b_fsdp.py --method=sft --init_from=scratch --out_dir=out/sft_13b
# Only rank 0 reads them, into CPU RAM (~4 bytes per parameter for the student, then the teacher);
# every GPU receives its shards only. Afterwards, for sample.py / evaluate.py:
#   python checkpoint.py --consolidate out/minillm_13b
from model import PRESETS

method = 'minillm'
parallel = 'fsdp'
dtype = 'bfloat16'                 # FSDP2 all-gathers bf16 weights, keeps fp32 shards, reduces grads in fp32
fsdp_activation_checkpointing = True
gpu_memory_gb = 80.0
init_from = 'out/sft_13b'
teacher = 'out/sft_30b'            # e.g. 60 layers, d = 6656 (memory.TABLE_MODELS['30B'])
n_layer, n_head, n_embd, _ = PRESETS['gpt-13b']  # used by init_from='scratch' only
data_dir = 'data/dolly'
pt_data_dir = 'data/openwebtext'
out_dir = 'out/minillm_13b'
block_size = 512                   # prompt <= 256 + response <= 256 tokens
# per GPU: the global batch grows with the world size (x 64 GPUs: 128 rollouts per step)
batch_size = 2
rollout_size = 512                 # global, split over the ranks: 8 prompts per GPU on 64 GPUs
rollout_batch_size = 8
ppo_epochs = 4
max_new_tokens = 256
teacher_mix_alpha = 0.2
pt_batch_size = 2
pt_kd_ratio = 0.5
learning_rate = 5e-6
lr_schedule = 'constant'
warmup_iters = 100
max_iters = 5000
weight_decay = 0.0
grad_clip = 1.0
dropout = 0.0
eval_interval = 100
eval_iters = 20
