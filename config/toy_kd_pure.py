# Toy pure KD (kd_ratio 1: the divergence alone, no CE), the baseline ATKD's repository compares against.
exec(open('config/toy_kd.py').read())
out_dir = 'out/toy_kd_pure'
kd_ratio = 1.0
