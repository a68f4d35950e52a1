# A current pair with MiniLLM's recipe: the teacher Qwen2.5-7B-Instruct fine-tuned on Dolly in its
# own chat template. The reference has no Qwen2.5-7B SFT script; its Qwen2.5-1.5B and LLaMA-7B ones
# (minillm/scripts/qwen2.5/sft/sft_1.5B.sh, llama/sft/sft_7B.sh, microsoft/LMOps) are the recipe of
# config/sft_llama_13b.py: lr 1e-5, cosine, 32 sequences of <= 512 tokens per step, 10 epochs, bf16.
#   python data/dolly/prepare.py --tokenizer=Qwen/Qwen2.5-1.5B-Instruct --template=chat --out_dir=data/dolly_qwen2.5
#   torchrun --nproc_per_node=8 train.py config/sft_qwen2.5_7b.py
exec(open('config/sft_llama_13b.py').read())
init_from = 'Qwen/Qwen2.5-7B-Instruct'
data_dir = 'data/dolly_qwen2.5'
out_dir = 'out/sft_qwen2.5_7b'
