# The students' starting point: GPT-2 small (124M) fine-tuned on Dolly (MiniLLM §3.1: students are
# initialised from their own SFT before distillation), as LMOps minillm/scripts/gpt2/sft/sft_base.sh
# (with the defaults of minillm/arguments.py and minillm/finetune.py). best.pt is chosen by validation
# loss, as the reference selects this initialisation; the same run selected by validation Rouge-L is
# the SFT baseline of the paper's Table 1: config/sft_gpt2_baseline.py.
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2.py
method = 'sft'
init_from = 'gpt2'
data_dir = 'data/dolly'
out_dir = 'out/sft_gpt2'
block_size = 512               # --max-length 512; prompts over 256 tokens are dropped (--max-prompt-length 256)
batch_size = 4                 # per GPU: x 8 GPUs = 32 per step, the reference's --batch-size 2 x 16 GPUs;
gradient_accumulation_steps = 1  # on other GPU counts keep batch_size x GPUs x accumulation = 32
epochs = 20                    # --epochs 20: 20 x int(n_train / 32) steps (12.4K examples: 20 x 387 = 7,740)
max_iters = 0                  # no cap: the epochs decide
learning_rate = 5e-4           # --lr 0.0005
lr_schedule = 'cosine'         # --lr-decay-style cosine (CosineAnnealingLR over every step)
min_lr = 1e-7                  # --lr-min (default 1e-7)
warmup_iters = 0               # --warmup-iters 0
weight_decay = 1e-2            # --weight-decay 1e-2
beta1 = 0.9                    # AdamW's defaults: finetune.py sets no betas
beta2 = 0.999
grad_clip = 1.0                # --clip-grad 1.0
dropout = 0.1                  # GPT-2's own 0.1, trained in train mode
seed = 10                      # --seed 10
eval_interval = 400            # about once per epoch (387 steps at 12.4K): --eval-interval -1 = every epoch
eval_iters = 32                # val loss on 32 x 32 = 1,024 validation draws (the reference: all 1,000)
eval_rouge_examples = 1000     # --dev-num 1000: Rouge-L on the whole validation split (--eval-gen)
max_new_tokens = 256           # Rouge-L responses: up to max-length 512 - max-prompt-length 256 new tokens
rollout_batch_size = 32        # prompts generated at once per GPU for Rouge-L (speed only)
select_metric = 'val_loss'     # README of LMOps minillm: the initial checkpoints are selected by validation loss
