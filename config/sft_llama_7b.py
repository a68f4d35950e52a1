# The student's starting point for the LLaMA runs: LLaMA-7B fine-tuned on Dolly (best.pt by
# validation loss). Reference script minillm/scripts/llama/sft/sft_7B.sh: lr 1e-5, 32 sequences
# per step (1 per GPU x 2 accumulation x 16 GPUs), gradient checkpointing: as config/sft_llama_13b.py.
#   torchrun --nproc_per_node=8 train.py config/sft_llama_7b.py
exec(open('config/sft_llama_13b.py').read())
init_from = 'huggyllama/llama-7b'
out_dir = 'out/sft_llama_7b'
