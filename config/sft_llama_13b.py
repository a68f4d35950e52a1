# The teacher of the MiniLLM paper's LLaMA runs (arXiv 2306.08543 §3.1, Table 1): LLaMA-13B
# fine-tuned on Dolly. Reference script minillm/scripts/llama/sft/sft_13B.sh (microsoft/LMOps):
# the OPT-13B recipe (config/sft_opt_13b.py: lr 1e-5, 32 sequences per step as 2 per GPU x 4
# accumulation x 4 data-parallel groups, 10 epochs), no dropout (LLaMA has none). LLaMA-1 weights
# are licence-gated: huggyllama/llama-13b is a Hugging Face conversion, or pass a local directory.
#   python data/dolly/prepare.py --tokenizer=huggyllama/llama-13b --out_dir=data/dolly_llama
#   torchrun --nproc_per_node=8 train.py config/sft_llama_13b.py
exec(open('config/sft_opt_13b.py').read())
init_from = 'huggyllama/llama-13b'
data_dir = 'data/dolly_llama'
out_dir = 'out/sft_llama_13b'
dropout = 0.0
