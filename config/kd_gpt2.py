# Word-level KD baseline (Kim & Rush, arXiv 1606.07947): (1 - kd_ratio) CE(gold) + kd_ratio * KL(p_t || q_t)
# on gold prefixes, GPT-2 XL teacher -> GPT-2 student, as LMOps minillm/scripts/gpt2/kd/kd_base.sh:
# the recipe of config/sft_gpt2.py (lr 5e-4, 20 epochs, from pre-trained GPT-2, not from its SFT)
# with --kd-ratio 0.5; best.pt by validation Rouge-L.
#   torchrun --nproc_per_node=8 train.py config/kd_gpt2.py
exec(open('config/sft_gpt2.py').read())
method = 'kd'
teacher = 'out/sft_gpt2_xl'    # its best.pt
out_dir = 'out/kd_gpt2'
kd_ratio = 0.5                 # --kd-ratio 0.5
divergence = 'forward_kl'      # the reference's soft cross-entropy -sum p log q: KL(p||q) + H(p), same gradient
chunked_loss = 'auto'          # GPT-2's 50257-token vocabulary: never hold [N, V] student logits for backward
select_metric = 'rouge_l'      # README of LMOps minillm: baselines are selected by Rouge-L
