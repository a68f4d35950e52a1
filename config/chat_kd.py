# Word-level KD as the MiniLLM protocol's baseline: (1 - r) CE + r KL(p || q), r = 0.5.
exec(open('config/chat_sft.py').read())
method = 'kd'
kd_ratio = 0.5
out_dir = 'out/smollm2_chitchat/kd'
