# The toy teacher: a ~0.8M-parameter byte-level GPT trained by SFT on the embedded toy task.
#   python data/toy_instruct/prepare.py && python train.py config/toy_teacher.py
method = 'sft'
data_dir = 'data/toy_instruct'
out_dir = 'out/toy_teacher'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 64
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 50
max_iters = 1500
weight_decay = 0.0
eval_interval = 250
eval_iters = 8
log_interval = 50
device = 'cpu'
