# DistiLLM (arXiv 2402.03898): skew forward KL (alpha 0.1), adaptive off-policy schedule, replay buffer.
exec(open('config/chat_sft.py').read())
method = 'distillm'
divergence = 'skew_forward_kl'
skew_alpha = 0.1
distillm_capacity = 1000
out_dir = 'out/smollm2_chitchat/distillm'
