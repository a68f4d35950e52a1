# The SFT baseline of the paper's Table 1: the run of config/sft_gpt2.py with best.pt chosen by
# validation Rouge-L, as the LMOps minillm README selects its baselines (the same script,
# minillm/scripts/gpt2/sft/sft_base.sh, selected by validation loss is MiniLLM's initialisation).
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2_baseline.py
exec(open('config/sft_gpt2.py').read())
out_dir = 'out/sft_gpt2_baseline'
select_metric = 'rouge_l'
