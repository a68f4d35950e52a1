# Word-level KD baseline (Kim & Rush, arXiv 1606.07947): (1 - kd_ratio) CE(gold) + kd_ratio * KL(p_t || q_t)
# on gold prefixes, GPT-2 XL teacher -> GPT-2 student.
#   torchrun --nproc_per_node=8 train.py config/kd_gpt2.py
exec(open('config/sft_gpt2.py').read())
method = 'kd'
teacher = 'out/sft_gpt2_xl'
out_dir = 'out/kd_gpt2'
kd_ratio = 0.5
divergence = 'forward_kl'
chunked_loss = 'auto'          # GPT-2's 50257-token vocabulary: never hold [N, V] student logits for backward
