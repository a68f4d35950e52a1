# MiniLLM with the choices of the public reference code where it differs from the paper
# (microsoft/LMOps, minillm/scripts/gpt2/minillm/train_base_xl.sh and minillm/minillm/): returns include
# r_t, are discounted (gamma 0.95, the --gamma default), divided by the remaining length and whitened;
# the single-step term is unweighted; rewards doubled (--reward-scaling 0.5) and clipped at 100
# (--cliprange-reward 100); L_PT is half LM loss, half word-level KD (--kd-ratio 0.5).
exec(open('config/minillm_gpt2.py').read())
out_dir = 'out/minillm_gpt2_refcode'
returns_mode = 'reference'
gamma = 0.95
single_step_weighted = False
reward_scale = 0.5
reward_clip = 100.0
pt_kd_ratio = 0.5
