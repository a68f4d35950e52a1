# MiniLLM (arXiv 2306.08543 §2) on the paper's OPT pair: OPT-13B teacher -> OPT-1.3B student, both
# after their SFT on Dolly (config/sft_opt_13b.py, config/sft_opt_1.3b.py); the 2.7B and 6.7B
# students by overriding the student:
#   torchrun --nproc_per_node=8 train.py config/minillm_opt.py
#   torchrun --nproc_per_node=8 train.py config/minillm_opt.py --init_from=out/sft_opt_2.7b --out_dir=out/minillm_opt_2.7b
#   torchrun --nproc_per_node=8 train.py config/minillm_opt.py --init_from=out/sft_opt_6.7b --out_dir=out/minillm_opt_6.7b
# Hyper-parameters of the reference scripts minillm/scripts/opt/minillm/train_{1.3B,2.7B,6.7B}_13B.sh
# (microsoft/LMOps, trainer defaults in minillm/minillm/trainer.py): lr 5e-6 constant after 100
# warm-up steps, 5000 steps, AdamW (0.9, 0.95) with weight decay 1e-6, 4 PPO epochs, clip 0.2,
# teacher mixing 0.2, the length-normalised single-step term, sampling at tau 1 (no top-k/p),
# prompts <= 256 and sequences <= 512 tokens, a bf16 teacher (there fp16), gradient checkpointing.
# Rollouts: --num-rollouts 256 is split over the 16 GPUs (16 each), but tensor parallel 4 makes
# each group of 4 GPUs share its prompts, so a phase has 64 distinct rollouts and a step 64
# sequences (16 per data-parallel group; 6.7B: 4 x 4 accumulation): one step per PPO epoch.
# The returns and L_PT follow the paper (L_PT the plain LM loss); the reference code's choices are
# the overrides of config/minillm_gpt2_refcode.py (returns_mode, gamma, single_step_weighted,
# pt_kd_ratio 0.5, reward_scale 0.5, reward_clip 100). The reference's L_PT corpus is the RoBERTa
# pre-training data; here OpenWebText in OPT's tokenizer:
#   python data/openwebtext/prepare.py --tokenizer=facebook/opt-1.3b --max_docs=1000000 --out_dir=data/openwebtext_opt
method = 'minillm'
init_from = 'out/sft_opt_1.3b'
teacher = 'out/sft_opt_13b'
data_dir = 'data/dolly_opt'
pt_data_dir = 'data/openwebtext_opt'
out_dir = 'out/minillm_opt_1.3b'
parallel = 'fsdp'
dtype = 'bfloat16'
fsdp_activation_checkpointing = True
gpu_memory_gb = 80.0
block_size = 512
rollout_size = 64                  # global: 8 prompts per GPU on 8 GPUs
rollout_batch_size = 8
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
pt_kd_ratio = 0.0
batch_size = 8                     # per GPU x 8 GPUs = 64 rollouts (and 64 L_PT sequences) per step
pt_batch_size = 8
gradient_accumulation_steps = 1
learning_rate = 5e-6
lr_schedule = 'constant'
warmup_iters = 100
max_iters = 5000                   # --total-iters 5000 (ends before --epochs 10)
beta1 = 0.9
beta2 = 0.95
weight_decay = 1e-6
grad_clip = 1.0
dropout = 0.0                      # the reference samples and trains the policy in eval mode
seed = 10
eval_interval = 100
eval_iters = 32
