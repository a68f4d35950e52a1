# MiniLLM at scale: a real 13B-class student, Qwen2.5-14B-Instruct (48 layers, d = 5120, 8 KV
# heads), distilled from Qwen2.5-32B-Instruct (64 layers) with FSDP2, both as released (already
# instruction-tuned: no SFT stage), with the recipe of config/minillm_qwen2.5.py on 8 GPUs of 80 GB:
#   python data/dolly/prepare.py --tokenizer=Qwen/Qwen2.5-14B-Instruct --template=chat --out_dir=data/dolly_qwen2.5
# (every Qwen2.5 model has the same tokenizer: the data of config/minillm_qwen2.5.py serve as they are)
#   torchrun --nproc_per_node=8 train.py config/minillm_13b_fsdp.py
# or on 8 nodes of 8, the same 64 sequences per step as 1 per GPU:
#   torchrun --nnodes=8 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD:29500 train.py \
#       config/minillm_13b_fsdp.py --batch_size=1 --pt_batch_size=1 --gradient_accumulation_steps=1 --rollout_batch_size=1
# At start rank 0 prints the per-GPU memory estimate (memory.py) for the world size it runs on and
# the run stops if it exceeds gpu_memory_gb: it fits from 8 GPUs up (python scripts/memory_table.py). Only rank 0
# reads the checkpoints, into CPU RAM (~30 GB and ~66 GB in bf16); every GPU receives its shards
# only. Afterwards:
#   python scripts/convert_checkpoint.py --consolidate out/minillm_qwen2.5_14b
#   python scripts/convert_checkpoint.py --export_hf out/minillm_qwen2.5_14b out/minillm_qwen2.5_14b_hf
exec(open('config/minillm_qwen2.5.py').read())
init_from = 'Qwen/Qwen2.5-14B-Instruct'
teacher = 'Qwen/Qwen2.5-32B-Instruct'
out_dir = 'out/minillm_qwen2.5_14b'
batch_size = 2                     # per GPU x 4 accumulation x 8 GPUs = 64 per step
pt_batch_size = 2
gradient_accumulation_steps = 4
