# The common starting point of every student: 6 of the teacher's 30 blocks, chosen by block
# influence on the training data (prune.py; ShortGPT arXiv 2403.03853), then SFT (best.pt by
# validation loss), as the paper initialises its students from SFT before distillation.
exec(open('config/chat_smollm2.py').read())
method = 'sft'
init_from = 'out/smollm2_chitchat/teacher'
teacher = ''
student_layers = 6
student_layer_selection = 'importance'
out_dir = 'out/smollm2_chitchat/student_init'
learning_rate = 3e-4
max_iters = 300
eval_interval = 50
eval_rouge_examples = 0
