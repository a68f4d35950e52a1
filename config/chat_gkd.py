# GKD (arXiv 2306.13649): the student's own samples with probability 0.5, JSD(0.5).
exec(open('config/chat_sft.py').read())
method = 'gkd'
gkd_lambda = 0.5
gkd_beta = 0.5
divergence = 'jsd'
out_dir = 'out/smollm2_chitchat/gkd'
