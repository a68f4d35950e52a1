# Toy on-policy reverse KL (the "on-policy distillation" recipes): every batch is the student's own
# samples (gkd_lambda = 1) and the loss is the per-token reverse KL(q_t || p_t) over the vocabulary
# at each sampled prefix: MiniLLM's single-step term alone, with no long-term return, no teacher
# mixing and no importance weights (tests/test_onpolicy.py checks it equals
# policy_gradient.single_step_loss on the same samples).
exec(open('config/toy_gkd.py').read())
out_dir = 'out/toy_onpolicy_rkl'
gkd_lambda = 1.0
divergence = 'reverse_kl'
