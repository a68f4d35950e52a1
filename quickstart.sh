#!/usr/bin/env bash
# The whole pipeline of the MiniLLM paper's comparison on the embedded toy task, on CPU:
# data -> teacher -> common student init -> SFT, KD, ATKD, SeqKD, GKD, DistiLLM, MiniLLM (+ ablations) -> evaluation.
#   bash quickstart.sh             # one training seed (about 12 minutes on 2 CPU cores)
#   bash quickstart.sh --seeds=3   # 3 training seeds of every student: mean ± std across them (about 30 minutes)
#   bash quickstart.sh --fast      # a smoke test of every step into out/quickstart_fast/ (4-6 minutes on a loaded
#                                  # 2-core machine; its numbers are not results; --fast --seeds=2 works too)
#   --teacher_seed=S               # train the teacher with --seed=S (default 1337), into out/quickstart_teacherS
# The teacher trains once. For each training seed s (1337, 1338, ...; 1337 = train.py's default) the
# common init, every student and SeqKD's teacher sampling run with --seed=s into $OUT/seed<s>/, and
# evaluate.py writes $OUT/seed<s>/results.md; toy/seeds_table.py writes $OUT/results.md and .png,
# mean ± std across the training seeds. The teacher trains alone on all cores; the students are
# small, so they train two at a time, one thread each (JOBS=1 runs them one after the other).
# Each line of output names its job.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
JOBS=${JOBS:-2}
FAST=0; N_SEEDS=1; TEACHER_SEED=1337
for arg in "$@"; do
  case $arg in
    --fast) FAST=1 ;;
    --seeds=*) N_SEEDS=${arg#--seeds=} ;;
    --teacher_seed=*) TEACHER_SEED=${arg#--teacher_seed=} ;;
    *) echo "quickstart: unknown argument '$arg': use --fast, --seeds=N, --teacher_seed=S" >&2; exit 2 ;;
  esac
done
if ! [[ $N_SEEDS =~ ^[1-9][0-9]*$ && $TEACHER_SEED =~ ^[0-9]+$ ]]; then
  echo "quickstart: --seeds takes a number of training seeds >= 1, --teacher_seed a seed (got '$N_SEEDS', '$TEACHER_SEED')" >&2
  exit 2
fi
SEEDS=$(seq 1337 $((1336 + N_SEEDS)))
if (( FAST )); then
  # a few steps, smaller rollouts and evaluation examples: checks the plumbing, not the numbers
  STUDENT_FAST=(--max_iters=20 --eval_interval=10 --rollout_size=128 --eval_rouge_examples=64)
  TEACHER_FAST=(--max_iters=150 --eval_interval=150)
  EVAL_FAST=(--max_examples=64 --seeds='(1234,)')
  SEQKD_FAST=(--seqkd_max_train=2000)
  OUT=out/quickstart_fast
else
  STUDENT_FAST=(); TEACHER_FAST=(); EVAL_FAST=(); SEQKD_FAST=(); OUT=out/quickstart
fi
(( TEACHER_SEED == 1337 )) || OUT=${OUT}_teacher$TEACHER_SEED
mkdir -p "$OUT"
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }
# job NAME CMD...: run CMD with its output prefixed by [NAME]; with JOBS > 1 in the background,
# starting when fewer than JOBS jobs run. A failed job leaves $OUT/.failed_NAME for wait_jobs.
job() {
  local name=$1; shift
  if (( JOBS > 1 )); then
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
    (OMP_NUM_THREADS=1 "$@" 2>&1 | sed -u "s/^/[$name] /" || { touch "$OUT/.failed_${name// /_}"; exit 1; }) &
  else
    "$@" 2>&1 | sed -u "s/^/[$name] /"
  fi
}
wait_jobs() {
  wait
  local failed; failed=$(cd "$OUT" && ls .failed_* 2>/dev/null | sed 's/^.failed_//' | tr '\n' ' ' || true)
  if [[ -n "$failed" ]]; then echo "quickstart: failed: $failed(see the lines they printed above)" >&2; exit 1; fi
}
rm -f "$OUT"/.failed_*
rm -rf "$OUT"/teacher $(for s in $SEEDS; do echo "$OUT/seed$s"; done)  # fresh runs: no log.jsonl appended to an old one

step "data: the toy instruction task (byte-level)"
[[ -f data/toy_instruct/meta.json ]] || $PY data/toy_instruct/prepare.py

step "teacher (seed $TEACHER_SEED)"
$PY train.py config/toy_teacher.py --out_dir=$OUT/teacher --seed=$TEACHER_SEED "${TEACHER_FAST[@]}"
step "student init, seeds" $SEEDS "(SFT, the starting point shared by that seed's students; $JOBS at a time)"
for s in $SEEDS; do
  job "init $s" $PY train.py config/toy_student_init.py --out_dir=$OUT/seed$s/init --seed=$s "${STUDENT_FAST[@]}"
done
wait_jobs

seqkd() {  # SeqKD: the teacher's sampled responses (sampled with seed s) become the training targets
  local s=$1 d=$OUT/seed$1; shift
  $PY sample.py --init_from=$OUT/teacher --data_dir=data/toy_instruct --seqkd_out=$d/toy_instruct_seqkd \
    --max_new_tokens=20 --seed=$s "${SEQKD_FAST[@]}"
  $PY train.py config/toy_seqkd.py --out_dir=$d/seqkd --data_dir=$d/toy_instruct_seqkd "$@"
}
step "students: SFT, SeqKD, KD, ATKD, GKD, DistiLLM, MiniLLM and its ablations, seeds" $SEEDS "($JOBS at a time)"
for s in $SEEDS; do
  d=$OUT/seed$s
  common=(--init_from=$d/init --teacher=$OUT/teacher --seed=$s "${STUDENT_FAST[@]}")
  job "sft $s"     $PY train.py config/toy_sft.py     --out_dir=$d/sft     "${common[@]}"
  job "seqkd $s"   seqkd $s "${common[@]}"
  job "kd $s"      $PY train.py config/toy_kd.py      --out_dir=$d/kd      "${common[@]}"
  job "atkd $s"    $PY train.py config/toy_atkd.py    --out_dir=$d/atkd    "${common[@]}"
  job "gkd $s"     $PY train.py config/toy_gkd.py     --out_dir=$d/gkd     "${common[@]}"
  job "distillm $s" $PY train.py config/toy_distillm.py --out_dir=$d/distillm "${common[@]}"
  job "minillm $s" $PY train.py config/toy_minillm.py --out_dir=$d/minillm "${common[@]}"
  minillm=($PY train.py config/toy_minillm.py "${common[@]}")
  job "minillm-no-single-step $s" "${minillm[@]}" --out_dir=$d/minillm_no_single --single_step=False
  job "minillm-no-teacher-mix $s" "${minillm[@]}" --out_dir=$d/minillm_no_mix --teacher_mix_alpha=0.0
  job "minillm-no-length-norm $s" "${minillm[@]}" --out_dir=$d/minillm_no_norm --length_norm=False
done
wait_jobs

evaluate_seed() {  # every model of training seed $1 on the held-out test prompts
  local d=$OUT/seed$1 models
  models="teacher=$OUT/teacher,init=$d/init,sft=$d/sft,kd=$d/kd,atkd=$d/atkd,seqkd=$d/seqkd"
  models="$models,gkd=$d/gkd,distillm=$d/distillm"
  models="$models,minillm=$d/minillm,minillm-no-single-step=$d/minillm_no_single"
  models="$models,minillm-no-teacher-mix=$d/minillm_no_mix,minillm-no-length-norm=$d/minillm_no_norm"
  # the toy's own protocol: answers of a few tokens, 3 seeds, no n-gram ban (evaluate.py defaults to the paper's)
  $PY evaluate.py --models=$models --teacher=$OUT/teacher --data_dir=data/toy_instruct --split=test \
    --max_new_tokens=32 --no_repeat_ngram_size=0 --seeds='(1234,1235,1236)' --out=$d/results "${EVAL_FAST[@]}"
}
step "evaluation on the held-out test prompts, seeds" $SEEDS "($JOBS at a time)"
for s in $SEEDS; do job "evaluate $s" evaluate_seed $s; done
wait_jobs

step "mean ± std across training seeds" $SEEDS
$PY toy/seeds_table.py --runs=$(for s in $SEEDS; do printf '%s,' "$OUT/seed$s/results.json"; done) --out=$OUT/results
step "done: $OUT/results.md and $OUT/results.png (each seed: $OUT/seed<s>/results.md)"
