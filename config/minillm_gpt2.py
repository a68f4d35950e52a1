# MiniLLM (arXiv 2306.08543 §2): GPT-2 XL teacher -> GPT-2 student initialised from its SFT.
# Defaults of the public reference scripts for the GPT-2 family, with the paper's formulation
# of the returns (config/minillm_gpt2_refcode.py switches to the reference code's).
#   python data/dolly/prepare.py && python data/openwebtext/prepare.py
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2_xl.py   # teacher
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2.py      # student init
#   torchrun --nproc_per_node=8 train.py config/minillm_gpt2.py
method = 'minillm'
init_from = 'out/sft_gpt2'
teacher = 'out/sft_gpt2_xl'
data_dir = 'data/dolly'
pt_data_dir = 'data/openwebtext'
out_dir = 'out/minillm_gpt2'
block_size = 512
# rollouts: 256 prompts per phase, pure sampling, up to 256 new tokens, 4 policy epochs
rollout_size = 256
rollout_batch_size = 32        # per GPU: 256 / 8 GPUs
ppo_epochs = 4
max_new_tokens = 256
gen_temperature = 1.0
gen_top_k = 0
gen_top_p = 1.0
teacher_mix_alpha = 0.2
single_step = True
length_norm = True
clip_eps = 0.2
pt_weight = 1.0
pt_kd_ratio = 0.5              # L_PT = half LM loss, half word-level KD (reference code)
pt_batch_size = 8
batch_size = 8                 # per GPU x 8 GPUs = 64 rollouts per step, 16 steps per phase
# optimizer: lr 5e-6 constant after 100 warm-up steps, AdamW (0.9, 0.95), 5,000 steps
learning_rate = 5e-6
lr_schedule = 'constant'
warmup_iters = 100
max_iters = 5000
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.0
grad_clip = 1.0
dropout = 0.0                  # q_old and q_theta must agree at theta = theta_old
eval_interval = 100
eval_iters = 20
