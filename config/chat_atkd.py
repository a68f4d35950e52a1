# ATKD (arXiv 2402.11890) as its repository trains it: pure (kd_ratio 1), uncertainty-weighted
# target- and diversity-oriented KD (hard share 50%, lambda 0.2), against chat_kd_pure.py.
exec(open('config/chat_kd_pure.py').read())
atkd = True
out_dir = 'out/smollm2_chitchat/atkd'
