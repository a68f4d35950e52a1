# ATKD (arXiv 2402.11890) on word-level KD: uncertainty-weighted TKD/DKD, k = 50%, lambda = 0.2.
#   torchrun --nproc_per_node=8 train.py config/atkd_gpt2.py
exec(open('config/kd_gpt2.py').read())
out_dir = 'out/atkd_gpt2'
atkd = True
atkd_hard_fraction = 0.5    # the paper's k: the share of most-uncertain tokens taught as hard
atkd_lambda = 0.2
kd_ratio = 1.0                 # ATKD replaces the KD objective; set < 1 to keep some gold CE
