# Toy word-level KD: (1 - r) CE(gold) + r KL(p_t || q_t), r = 0.5, from the common init.
exec(open('config/toy_sft.py').read())
method = 'kd'
teacher = 'out/toy_teacher'
out_dir = 'out/toy_kd'
kd_ratio = 0.5
