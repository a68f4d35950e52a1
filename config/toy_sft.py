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
eval_interval = 50             # 8 candidates for best.pt (the reference selects every 100 of its thousands of steps)
eval_iters = 8
eval_rouge_examples = 500      # kd / seqkd / atkd select by Rouge-L on all 500 validation prompts (sft: val loss)
log_interval = 50
device = 'cpu'
