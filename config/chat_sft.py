# SFT from the common init, the same budget as the distilled students.
exec(open('config/chat_smollm2.py').read())
method = 'sft'
init_from = 'out/smollm2_chitchat/student_init'
out_dir = 'out/smollm2_chitchat/sft'
