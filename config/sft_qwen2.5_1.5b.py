# The student's starting point for the Qwen2.5 pair: Qwen2.5-1.5B-Instruct fine-tuned on Dolly in
# the chat template (best.pt by validation loss); reference script minillm/scripts/qwen2.5/sft/sft_1.5B.sh:
# lr 1e-5, 1 per GPU x 2 accumulation x 16 GPUs = 32 per step, as config/sft_qwen2.5_7b.py.
#   torchrun --nproc_per_node=8 train.py config/sft_qwen2.5_1.5b.py
exec(open('config/sft_qwen2.5_7b.py').read())
init_from = 'Qwen/Qwen2.5-1.5B-Instruct'
out_dir = 'out/sft_qwen2.5_1.5b'
