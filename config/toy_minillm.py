# Toy MiniLLM: sequence-level reverse KL by policy gradient from the common init, with all three
# stabilisers of the paper. L_PT is off: the toy has no general corpus, and the toy's own LM
# stream holds the gold answers, which would make MiniLLM part SFT.
method = 'minillm'
init_from = 'out/toy_student_init'
teacher = 'out/toy_teacher'
data_dir = 'data/toy_instruct'
pt_data_dir = ''                # no L_PT on the toy: the student sees no gold answers at all
out_dir = 'out/toy_minillm'
rollout_size = 256
rollout_batch_size = 256
ppo_epochs = 4
max_new_tokens = 20
teacher_mix_alpha = 0.2
batch_size = 64
pt_batch_size = 16
pt_weight = 1.0
learning_rate = 1e-3
lr_schedule = 'constant'
warmup_iters = 0
max_iters = 400
weight_decay = 0.0
eval_interval = 50             # best.pt: the best validation Rouge-L of 8 candidates, as toy_sft.py
eval_iters = 8
eval_rouge_examples = 500      # all 500 validation prompts: one sample each, ±2 points of noise
log_interval = 20
device = 'cpu'
