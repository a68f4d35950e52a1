# MiniLLM (arXiv 2306.08543 §2) on a current pair: Qwen2.5-7B-Instruct -> Qwen2.5-1.5B-Instruct,
# both after their SFT on Dolly in the chat template (config/sft_qwen2.5_7b.py, sft_qwen2.5_1.5b.py).
# One tokenizer, two embedding sizes (152064 and 151936 rows): the losses compare distributions
# over the shared real vocabulary.
#   python data/openwebtext/prepare.py --tokenizer=Qwen/Qwen2.5-1.5B-Instruct --max_docs=1000000 --out_dir=data/openwebtext_qwen2.5
#   torchrun --nproc_per_node=8 train.py config/minillm_qwen2.5.py
# Reference script minillm/scripts/qwen2.5/minillm/train_1.5B_7B.sh (microsoft/LMOps): the LLaMA
# recipe (config/minillm_llama.py: cosine to 0 over 5000 steps, 64 rollouts per phase and per step).
exec(open('config/minillm_llama.py').read())
init_from = 'out/sft_qwen2.5_1.5b'
teacher = 'out/sft_qwen2.5_7b'
data_dir = 'data/dolly_qwen2.5'
pt_data_dir = 'data/openwebtext_qwen2.5'
out_dir = 'out/minillm_qwen2.5_1.5b'
