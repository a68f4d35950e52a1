# Toy DistiLLM (arXiv 2402.03898): skew forward KL(alpha = 0.1) from the common init, with the
# reference's adaptive off-policy schedule at its defaults: the probability of student-generated
# outputs starts at 0 and grows by 0.1 at each validation (every 50 steps here) whose loss rose by
# 0.1 since the last rise; replay buffer of 1000 rows. Same 400 steps and batch 64 as toy_sft.py.
exec(open('config/toy_sft.py').read())
method = 'distillm'
teacher = 'out/toy_teacher'
out_dir = 'out/toy_distillm'
divergence = 'skew_forward_kl'
skew_alpha = 0.1
distillm_init_prob = 0.0
distillm_loss_eps = 0.1
distillm_capacity = 1000
max_new_tokens = 20
