# MiniLLM (arXiv 2306.08543 §2) on the paper's LLaMA pair: LLaMA-13B teacher -> LLaMA-7B student,
# both after their SFT on Dolly (config/sft_llama_13b.py, config/sft_llama_7b.py).
#   python data/openwebtext/prepare.py --tokenizer=huggyllama/llama-7b --max_docs=1000000 --out_dir=data/openwebtext_llama
#   torchrun --nproc_per_node=8 train.py config/minillm_llama.py
# Reference script minillm/scripts/llama/minillm/train_7B_13B.sh (microsoft/LMOps): the OPT recipe
# (config/minillm_opt.py: 64 rollouts per phase, 64 sequences per step) with a cosine schedule to
# 0 over the 5000 steps after the 100 warm-up steps (--scheduler-name cosine_trm) and the step as
# 8 per GPU x 2 accumulation x 4 data-parallel groups (here 4 per GPU x 2 accumulation x 8 GPUs).
exec(open('config/minillm_opt.py').read())
init_from = 'out/sft_llama_7b'
teacher = 'out/sft_llama_13b'
data_dir = 'data/dolly_llama'
pt_data_dir = 'data/openwebtext_llama'
out_dir = 'out/minillm_llama_7b'
batch_size = 4
pt_batch_size = 4
gradient_accumulation_steps = 2
lr_schedule = 'cosine'
min_lr = 0.0
