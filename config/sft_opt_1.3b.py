# The student's starting point for the OPT runs: OPT-1.3B fine-tuned on Dolly (MiniLLM §3.1:
# students start from their own SFT; best.pt by validation loss, as the reference selects it).
# Reference scripts minillm/scripts/opt/sft/sft_1.3B.sh and sft_2.7B.sh: lr 5e-5, 2 per GPU x 16
# GPUs = 32 per step, no gradient checkpointing; sft_6.7B.sh: lr 1e-5. Otherwise config/sft_opt_13b.py.
# The other students by overriding the model:
#   torchrun --nproc_per_node=8 train.py config/sft_opt_1.3b.py
#   torchrun --nproc_per_node=8 train.py config/sft_opt_1.3b.py --init_from=facebook/opt-2.7b --out_dir=out/sft_opt_2.7b
#   torchrun --nproc_per_node=8 train.py config/sft_opt_1.3b.py --init_from=facebook/opt-6.7b --out_dir=out/sft_opt_6.7b --learning_rate=1e-5
exec(open('config/sft_opt_13b.py').read())
init_from = 'facebook/opt-1.3b'
out_dir = 'out/sft_opt_1.3b'
learning_rate = 5e-5
