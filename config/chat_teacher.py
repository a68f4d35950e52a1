# The teacher: SmolLM2-135M-Instruct as released, fine-tuned briefly on the training conversations
# (the paper fine-tunes its teachers on the task first), so that its replies are in the human style
# the references are written in. best.pt by validation loss.
exec(open('config/chat_smollm2.py').read())
method = 'sft'
init_from = 'smollm2'
teacher = ''
out_dir = 'out/smollm2_chitchat/teacher'
learning_rate = 5e-5
max_iters = 200
eval_interval = 50
eval_rouge_examples = 0
