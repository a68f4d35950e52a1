# MiniLLM (arXiv 2306.08543 §2), the paper's setting: GPT-2 XL teacher -> GPT-2 student initialised
# from its SFT, with the hyper-parameters of LMOps minillm/scripts/gpt2/minillm/train_base_xl.sh
# (with the defaults of minillm/arguments.py and the AdamW settings fixed in minillm/minillm/trainer.py),
# and the paper's formulation: returns R^Norm_{t+1}, the single-step term weighted by w_t, L_PT the
# plain LM loss on the corpus. config/minillm_gpt2_refcode.py switches to the reference code's choices.
#   python data/dolly/prepare.py && python data/openwebtext/prepare.py
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2_xl.py   # teacher
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2.py      # student init
#   torchrun --nproc_per_node=8 train.py config/minillm_gpt2.py
method = 'minillm'
init_from = 'out/sft_gpt2'     # its best.pt: selected by validation loss
teacher = 'out/sft_gpt2_xl'    # its best.pt: selected by validation Rouge-L
data_dir = 'data/dolly'
pt_data_dir = 'data/openwebtext'  # --lm-data-dir: OpenWebText in 512-token chunks
out_dir = 'out/minillm_gpt2'
block_size = 512               # --max-length 512, --max-prompt-length 256
# rollouts: --num-rollouts 256 per phase, --ppo-epochs 4, pure sampling (--top-k 0 --top-p 1.0 --temperature 1.0)
rollout_size = 256
rollout_batch_size = 32        # prompts generated at once per GPU (reference --chunk-size 16): speed only
ppo_epochs = 4
max_new_tokens = 256           # max-length - max-prompt-length
gen_temperature = 1.0
gen_top_k = 0
gen_top_p = 1.0
teacher_mix_alpha = 0.2        # --teacher-mixed-alpha 0.2
single_step = True             # --single-step-reg
length_norm = True             # --length-norm
clip_eps = 0.2                 # --cliprange (default 0.2)
pt_weight = 1.0                # --lm-coef (default 1)
pt_kd_ratio = 0.0              # the paper's L_PT = LM loss (the reference's --kd-ratio 0.5: minillm_gpt2_refcode.py)
# a step trains on 256 rollouts and 256 L_PT sequences of 512 tokens (reference: --batch-size 16 per GPU
# x 16 GPUs, for both): here 8 per GPU x 8 GPUs x 4 accumulation, so 4 steps per rollout phase, one
# per policy epoch; on other GPU counts keep batch_size x GPUs x accumulation = 256
batch_size = 8
pt_batch_size = 8
gradient_accumulation_steps = 4
learning_rate = 5e-6           # --lr 5e-6 (--lr-min 5e-6)
lr_schedule = 'constant'       # scheduler constant_trm: constant after --warmup-iters 100
warmup_iters = 100
epochs = 10                    # --epochs 10 passes over the prompts: 10 x int(n_train x 4 / 256) steps
max_iters = 5000               # --total-iters 5000, a cap: 10 epochs of 12.4K prompts end first (10 x 193 = 1,930)
beta1 = 0.9                    # trainer.py: AdamW betas (0.9, 0.95), eps 1e-8
beta2 = 0.95
weight_decay = 1e-6            # trainer.py: weight_decay 1e-6
grad_clip = 1.0                # --clip-grad (default 1.0)
dropout = 0.0                  # PPOModel keeps the student in eval mode; and q_old = q_theta at theta = theta_old
seed = 10                      # --seed 10
eval_interval = 100            # --eval-interval 100: validation Rouge-L of sampled responses
eval_iters = 32
eval_rouge_examples = 1000     # --dev-num 1000: the whole validation split
select_metric = 'rouge_l'      # README of LMOps minillm: MiniLLM checkpoints are selected by Rouge-L
