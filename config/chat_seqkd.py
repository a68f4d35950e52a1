# SeqKD: SFT on the teacher's sampled replies, written first by
#   python sample.py --init_from=out/smollm2_chitchat/teacher --data_dir=data/chitchat_smollm2 \
#       --seqkd_out=out/smollm2_chitchat/seqkd_data --max_new_tokens=48
exec(open('config/chat_sft.py').read())
method = 'seqkd'
kd_ratio = 0.0
data_dir = 'out/smollm2_chitchat/seqkd_data'
out_dir = 'out/smollm2_chitchat/seqkd'
