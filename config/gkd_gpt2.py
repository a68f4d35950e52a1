# GKD (arXiv 2306.13649), GPT-2 XL teacher -> GPT-2 student, with the settings of the GKD baseline
# in DistiLLM's public scripts (jongwooko/distillm scripts/gpt2/gkd/gkd_base.sh): from the SFT init,
# on-policy batches with probability 0.5 (--mixed-alpha 0.5), JSD whose mixture is 0.1 p + 0.9 q
# (js_distance, lam 0.9: beta = 0.1 here), the divergence alone (--kd-ratio 1.0), lr 5e-4 cosine,
# 20 epochs, batch 2 x 16 GPUs, student samples at tau 1 / top-k 0 / top-p 1. That script trains on a
# random batch of a replay buffer its fresh samples were just added to; here on the fresh samples
# themselves, as the GKD paper. On-policy reverse KL: --gkd_lambda=1 --divergence=reverse_kl.
#   torchrun --nproc_per_node=8 train.py config/gkd_gpt2.py
exec(open('config/sft_gpt2.py').read())
method = 'gkd'
init_from = 'out/sft_gpt2'     # its best.pt (by validation loss)
teacher = 'out/sft_gpt2_xl'
out_dir = 'out/gkd_gpt2'
gkd_lambda = 0.5
gkd_beta = 0.1
divergence = 'jsd'
select_metric = 'rouge_l'
