# The teacher of the MiniLLM paper's GPT-2 experiments: GPT-2 XL (1.5B) fine-tuned on Dolly, as
# LMOps minillm/scripts/gpt2/sft/sft_xlarge.sh: the recipe of config/sft_gpt2.py with lr 5e-5 and
# 10 epochs; best.pt by validation Rouge-L (the README of LMOps minillm selects the teacher with the
# baselines).
#   python data/dolly/prepare.py
#   torchrun --nproc_per_node=8 train.py config/sft_gpt2_xl.py
exec(open('config/sft_gpt2.py').read())
init_from = 'gpt2-xl'          # Hugging Face hub name, or a local directory with config.json
out_dir = 'out/sft_gpt2_xl'
learning_rate = 5e-5           # --lr 0.00005
epochs = 10                    # --epochs 10: 10 x int(n_train / 32) steps (12.4K examples: 3,870)
seed = 10                      # --seed 10 (--seed-order 10)
rollout_batch_size = 16        # Rouge-L generation per GPU: the KV cache of 16 x 512 tokens is 5 GB in fp32
select_metric = 'rouge_l'
