# Toy ATKD: the KD of toy_kd.py with ATKD's uncertainty-weighted TKD/DKD (k = 50%, lambda = 0.2).
exec(open('config/toy_kd.py').read())
out_dir = 'out/toy_atkd'
atkd = True
