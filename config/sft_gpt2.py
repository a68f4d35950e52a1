# The student's starting point: GPT-2 small (124M) fine-tuned on Dolly (MiniLLM §3.1:
# students are initialised from their own SFT before distillation).
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2.py
method = 'sft'
init_from = 'gpt2'
data_dir = 'data/dolly'
out_dir = 'out/sft_gpt2'
block_size = 512
batch_size = 8
learning_rate = 5e-5
lr_schedule = 'cosine'
min_lr = 5e-6
warmup_iters = 100
max_iters = 2000
weight_decay = 0.0
eval_interval = 200
eval_iters = 20
dropout = 0.1
