# The common starting point of every toy student: a much smaller GPT (0.04M parameters, 2 layers,
# 32 wide) trained by SFT, as the paper initialises students from SFT before distillation.
# 1000 steps: 30.7, 15.0, 31.8% valid answers at tau = 1 for --seed=1337, 1338, 1339 (teacher: 93.1%),
# the capacity gap distillation is for; still learning fast at step 1000, so the seed moves it.
method = 'sft'
data_dir = 'data/toy_instruct'
out_dir = 'out/toy_student_init'
n_layer = 2
n_head = 2
n_embd = 32
tie_embeddings = False
init = 'pytorch'
block_size = 64
batch_size = 64
learning_rate = 3e-3
min_lr = 1e-3
warmup_iters = 20
max_iters = 1000
weight_decay = 0.0
eval_interval = 100             # best.pt by validation loss (SFT), as the reference selects its SFT init
eval_iters = 8
log_interval = 100
device = 'cpu'
