# The teacher of the MiniLLM paper's GPT-2 experiments: GPT-2 XL (1.5B) fine-tuned on Dolly.
#   python data/dolly/prepare.py
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2_xl.py
method = 'sft'
init_from = 'gpt2-xl'          # Hugging Face hub name, or a local directory with config.json
data_dir = 'data/dolly'
out_dir = 'out/sft_gpt2_xl'
block_size = 512               # prompts <= 256 tokens + responses
batch_size = 4                 # per GPU; x 8 GPUs x 2 accumulation = 64 sequences per step
gradient_accumulation_steps = 2
learning_rate = 1e-5
lr_schedule = 'cosine'
min_lr = 1e-6
warmup_iters = 100
max_iters = 2000               # about 10 epochs of 12.4K examples at 64 per step
weight_decay = 0.0
eval_interval = 200
eval_iters = 20
dropout = 0.1
