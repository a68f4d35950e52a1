# Pure word-level KD (kd_ratio 1, no CE), the baseline ATKD's repository compares against.
exec(open('config/chat_kd.py').read())
kd_ratio = 1.0
out_dir = 'out/smollm2_chitchat/kd_pure'
