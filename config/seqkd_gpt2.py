# SeqKD baseline as LMOps minillm/scripts/gpt2/seqkd/seqkd_base.sh: the teacher's sampled responses
# (tau 1, top-k 0, top-p 1, up to 256 new tokens: scripts/gpt2/tools/generate_data_seqkd.sh) as
# targets, plus word-level KD with --kd-ratio 0.5 (the public scripts' SeqKD; kd_ratio = 0 is SFT on
# teacher samples alone, Kim & Rush's SeqKD); the recipe of config/sft_gpt2.py; best.pt by
# validation Rouge-L against the gold references. Make the data first:
#   python sample.py --init_from=out/sft_gpt2_xl --data_dir=data/dolly --seqkd_out=data/dolly_seqkd --max_new_tokens=256
#   torchrun --nproc_per_node=8 train.py config/seqkd_gpt2.py
exec(open('config/sft_gpt2.py').read())
method = 'seqkd'
teacher = 'out/sft_gpt2_xl'
data_dir = 'data/dolly_seqkd'
out_dir = 'out/seqkd_gpt2'
kd_ratio = 0.5                 # --kd-ratio 0.5
chunked_loss = 'auto'
select_metric = 'rouge_l'
