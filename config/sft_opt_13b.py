# The teacher of the MiniLLM paper's OPT runs (arXiv 2306.08543 §3.1, Table 1): OPT-13B fine-tuned
# on Dolly, with the hyper-parameters of the reference script minillm/scripts/opt/sft/sft_13B.sh
# (microsoft/LMOps, with the defaults of minillm/arguments.py and finetune.py): lr 1e-5, cosine to
# 1e-7, no warm-up, weight decay 0.01, AdamW's default betas, clip 1, 10 epochs, 32 sequences of
# <= 512 tokens per step (there 2 per GPU x 4 accumulation x 4 data-parallel groups of 16 V100s in
# tensor parallel 4; here 4 per GPU x 8 GPUs), gradient checkpointing, OPT's own dropout 0.1.
#   python data/dolly/prepare.py --tokenizer=facebook/opt-13b --out_dir=data/dolly_opt
#   torchrun --nproc_per_node=8 train.py config/sft_opt_13b.py
method = 'sft'
init_from = 'facebook/opt-13b'     # Hugging Face hub name (downloaded on first use) or a local directory
data_dir = 'data/dolly_opt'
out_dir = 'out/sft_opt_13b'
parallel = 'fsdp'
dtype = 'bfloat16'
fsdp_activation_checkpointing = True
gpu_memory_gb = 80.0
block_size = 512                   # --max-length 512; prompts over 256 tokens are dropped at prepare time
batch_size = 4                     # per GPU x 8 GPUs = 32 per step; on other GPU counts keep 32
gradient_accumulation_steps = 1
max_iters = 3870                   # --epochs 10: 10 x int(n_train / 32) steps for 12.4K examples
learning_rate = 1e-5
lr_schedule = 'cosine'
min_lr = 1e-7                      # --lr-min (default)
warmup_iters = 0
weight_decay = 1e-2
beta1 = 0.9                        # finetune.py sets no betas: AdamW's defaults
beta2 = 0.999
grad_clip = 1.0
dropout = 0.1                      # OPT's config.json dropout, trained in train mode
seed = 10
eval_interval = 400                # about once per epoch
eval_iters = 32
