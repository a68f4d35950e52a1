# MiniLLM with the choices of the public reference code where it differs from the paper
# (microsoft/LMOps, minillm/): returns include r_t, are discounted (gamma 0.95), divided by the remaining
# length and whitened; the single-step term is unweighted; rewards doubled and clipped at 100.
exec(open('config/minillm_gpt2.py').read())
out_dir = 'out/minillm_gpt2_refcode'
returns_mode = 'reference'
gamma = 0.95
single_step_weighted = False
reward_scale = 0.5
reward_clip = 100.0
