# MiniLLM with the paper's defaults: single-step decomposition, teacher mix 0.2, length
# normalisation; L_PT off (no general corpus here; the conversations' own stream would make it SFT).
exec(open('config/chat_sft.py').read())
method = 'minillm'
pt_data_dir = ''
rollout_size = 32
rollout_batch_size = 16
ppo_epochs = 4
teacher_mix_alpha = 0.2
out_dir = 'out/smollm2_chitchat/minillm'
