# DistiLLM (arXiv 2402.03898), GPT-2 XL teacher -> GPT-2 (0.1B) student, as jongwooko/distillm
# scripts/gpt2/distillm/train_0.1B_1.5B.sh: from the SFT init (config/sft_gpt2.py), skew forward KL
# alone (--type adaptive-sfkl, --skew-alpha 0.1, --kd-ratio 1.0), lr 5e-4 cosine, 20 epochs, student
# samples at tau 1 / top-k 0 / top-p 1, --init-threshold 0, --loss-eps 0.1, --capacity 1000.
# Not here: the script's L_PT term (--lm-data-dir OpenWebText, lm_coef 1; train.py adds L_PT to minillm only).
# The 0.3B / 0.7B students' scripts use skew reverse KL: --divergence=skew_reverse_kl.
#   torchrun --nproc_per_node=8 train.py config/distillm_gpt2.py
exec(open('config/sft_gpt2.py').read())
method = 'distillm'
init_from = 'out/sft_gpt2'     # its best.pt (by validation loss), the reference's results/gpt2/train/init
teacher = 'out/sft_gpt2_xl'
out_dir = 'out/distillm_gpt2'
batch_size = 16                # x 8 GPUs = 128 per step: the reference's --batch-size 8 x 16 GPUs
divergence = 'skew_forward_kl'
skew_alpha = 0.1
distillm_init_prob = 0.0       # --init-threshold 0.0
distillm_loss_eps = 0.1        # --loss-eps 0.1
distillm_capacity = 16000      # --capacity 1000 on each of the reference's 16 processes (here one global buffer)
eval_interval = 96             # once per epoch (int(12.4K / 128)): the SGO probability adapts per epoch, as there
select_metric = 'rouge_l'
