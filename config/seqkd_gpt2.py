# SeqKD baseline: SFT on teacher-sampled responses. Make the data first:
#   python sample.py --init_from=out/sft_gpt2_xl --data_dir=data/dolly --seqkd_out=data/dolly_seqkd --max_new_tokens=256
#   torchrun --nproc_per_node=8 train.py config/seqkd_gpt2.py
# The public MiniLLM scripts also add word-level KD to SeqKD: set kd_ratio = 0.5 and a teacher.
exec(open('config/sft_gpt2.py').read())
method = 'seqkd'
data_dir = 'data/dolly_seqkd'
out_dir = 'out/seqkd_gpt2'
kd_ratio = 0.0
