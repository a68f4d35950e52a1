#!/usr/bin/env bash
# The whole pipeline of the MiniLLM paper's comparison on the embedded toy task, on CPU:
# data -> teacher -> common student init -> SFT, KD, ATKD, SeqKD, MiniLLM (+ ablations) -> evaluation.
#   bash quickstart.sh          # the full run (about 12 minutes on 2 CPU cores)
#   bash quickstart.sh --fast   # a smoke run of every step (about 2 minutes)
# The teacher trains alone on all cores; the students are small, so they train two at a time,
# one thread each (JOBS=1 runs them one after the other). Each line of output names its job.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
JOBS=${JOBS:-2}
FAST=()
if [[ "${1:-}" == "--fast" ]]; then
  # a few steps, smaller rollouts and evaluation examples: checks the plumbing, not the numbers
  FAST=(--max_iters=20 --eval_interval=20 --rollout_size=128)
  TEACHER_FAST=(--max_iters=150 --eval_interval=150)
  EVAL_FAST=(--max_examples=64 --seeds='(1234,)')
  SEQKD_FAST=(--seqkd_max_train=2000)
  OUT=out/quickstart_fast
else
  TEACHER_FAST=(); EVAL_FAST=(); SEQKD_FAST=(); OUT=out/quickstart
fi
mkdir -p "$OUT"
step() { echo; echo "=== [$(date +%H:%M:%S)] $*"; }
# job NAME CMD...: run CMD with its output prefixed by [NAME]; with JOBS > 1 in the background,
# starting when fewer than JOBS jobs run. A failed job leaves $OUT/.failed_NAME for wait_jobs.
job() {
  local name=$1; shift
  if (( JOBS > 1 )); then
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n || true; done
    (OMP_NUM_THREADS=1 "$@" 2>&1 | sed -u "s/^/[$name] /" || { touch "$OUT/.failed_$name"; exit 1; }) &
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

step "data: the toy instruction task (byte-level)"
[[ -f data/toy_instruct/meta.json ]] || $PY data/toy_instruct/prepare.py

step "teacher"
$PY train.py config/toy_teacher.py --out_dir=$OUT/teacher "${TEACHER_FAST[@]}"
step "student init (SFT, the starting point shared by every student)"
$PY train.py config/toy_student_init.py --out_dir=$OUT/init "${FAST[@]}"

common=(--init_from=$OUT/init --teacher=$OUT/teacher "${FAST[@]}")
seqkd() {  # SeqKD: the teacher's sampled responses become the training targets
  $PY sample.py --init_from=$OUT/teacher --data_dir=data/toy_instruct --seqkd_out=$OUT/toy_instruct_seqkd --max_new_tokens=20 "${SEQKD_FAST[@]}"
  $PY train.py config/toy_seqkd.py --out_dir=$OUT/seqkd --data_dir=$OUT/toy_instruct_seqkd "${common[@]}"
}
step "students: SFT, SeqKD, KD, ATKD, MiniLLM and its ablations ($JOBS at a time)"
job sft     $PY train.py config/toy_sft.py     --out_dir=$OUT/sft     "${common[@]}"
job seqkd   seqkd
job kd      $PY train.py config/toy_kd.py      --out_dir=$OUT/kd      "${common[@]}"
job atkd    $PY train.py config/toy_atkd.py    --out_dir=$OUT/atkd    "${common[@]}"
job minillm $PY train.py config/toy_minillm.py --out_dir=$OUT/minillm "${common[@]}"
job minillm-no-single-step $PY train.py config/toy_minillm.py --out_dir=$OUT/minillm_no_single --single_step=False "${common[@]}"
job minillm-no-teacher-mix $PY train.py config/toy_minillm.py --out_dir=$OUT/minillm_no_mix --teacher_mix_alpha=0.0 "${common[@]}"
job minillm-no-length-norm $PY train.py config/toy_minillm.py --out_dir=$OUT/minillm_no_norm --length_norm=False "${common[@]}"
wait_jobs

step "evaluation on the held-out test prompts"
models="teacher=$OUT/teacher,init=$OUT/init,sft=$OUT/sft,kd=$OUT/kd,atkd=$OUT/atkd,seqkd=$OUT/seqkd"
models="$models,minillm=$OUT/minillm,minillm-no-single-step=$OUT/minillm_no_single"
models="$models,minillm-no-teacher-mix=$OUT/minillm_no_mix,minillm-no-length-norm=$OUT/minillm_no_norm"
# the toy's own protocol: answers of a few tokens, 3 seeds, no n-gram ban (evaluate.py defaults to the paper's)
$PY evaluate.py --models=$models --teacher=$OUT/teacher --data_dir=data/toy_instruct --split=test \
  --max_new_tokens=32 --no_repeat_ngram_size=0 --seeds='(1234,1235,1236)' --out=$OUT/results "${EVAL_FAST[@]}"
step "done: $OUT/results.md and $OUT/results.png"
