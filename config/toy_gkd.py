# Toy GKD (arXiv 2306.13649): from the common init, each batch is the student's own samples with
# probability gkd_lambda = 0.5 (tau = 1, up to 20 new tokens, as toy_minillm.py samples), else the
# gold responses; the loss is the generalised JSD(beta = 0.5) between teacher and student on them,
# for the same 400 steps and batch 64 as the other toy students (toy_sft.py).
exec(open('config/toy_sft.py').read())
method = 'gkd'
teacher = 'out/toy_teacher'
out_dir = 'out/toy_gkd'
gkd_lambda = 0.5
gkd_beta = 0.5
divergence = 'jsd'
max_new_tokens = 20
