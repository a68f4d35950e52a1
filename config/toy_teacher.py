# The toy teacher: a ~0.9M-parameter byte-level GPT trained by SFT on the embedded toy task.
#   python data/toy_instruct/prepare.py && python train.py config/toy_teacher.py
# An untied head and PyTorch's default init: from GPT-2's N(0, 0.02) init this model learns the
# task about twice as slowly (model.py, GPT.init_weights).
method = 'sft'
data_dir = 'data/toy_instruct'
out_dir = 'out/toy_teacher'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
tie_embeddings = False
init = 'pytorch'
batch_size = 64
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 100
max_iters = 1500
weight_decay = 0.01
eval_interval = 500
eval_iters = 8
log_interval = 100
device = 'cpu'
