# Toy SeqKD: SFT on teacher-sampled responses, made first by
#   python sample.py --init_from=out/toy_teacher --data_dir=data/toy_instruct --seqkd_out=data/toy_instruct_seqkd --max_new_tokens=20
exec(open('config/toy_sft.py').read())
method = 'seqkd'
data_dir = 'data/toy_instruct_seqkd'
out_dir = 'out/toy_seqkd'
kd_ratio = 0.0
