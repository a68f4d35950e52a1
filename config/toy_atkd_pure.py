# Toy ATKD as its repository (WHU-ZQH/ATKD) trains it: pure (kd_ratio 1), against toy_kd_pure.py.
# (toy_atkd.py is ATKD on the MiniLLM protocol's KD, kd_ratio 0.5, which the reference never does.)
exec(open('config/toy_kd_pure.py').read())
out_dir = 'out/toy_atkd_pure'
atkd = True
