# Toy SFT student: continue the common init on gold responses for the same budget as the others.
method = 'sft'
init_from = 'out/toy_student_init'
data_dir = 'data/toy_instruct'
out_dir = 'out/toy_sft'
batch_size = 64
learning_rate = 1e-3
lr_schedule = 'constant'
warmup_iters = 0
max_iters = 400
weight_decay = 0.0
eval_interval = 400
eval_iters = 8
log_interval = 50
device = 'cpu'
