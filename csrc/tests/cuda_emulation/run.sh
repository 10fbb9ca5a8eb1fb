#!/usr/bin/env bash
# Runs the CUDA kernels of csrc/cuda/ on the CPU and compares them with the CPU ops.
#   csrc/tests/cuda_emulation/run.sh [--sanitize none|thread|address] [--quick] [OP ...]
#   csrc/tests/cuda_emulation/run.sh --count [--count-out DIR] [OP ...]   (traffic counters)
# (make emulate: every mode and the mutation test; make emulate-quick: CI's set.)
# OP: rpe_gather window_patchify mask_substitute masked_patch_loss window_attention, and
# emulator (cuda_emu.h's own checks); default: all. One std::thread per CUDA thread (cuda_emu.h), the .cu rewritten
# only where C++ cannot say the same (emulate_cu.py), each kernel file compared with
# its CPU op by check_<op>.cpp: forward and backward, every dtype, odd shapes.
#   --sanitize thread   ThreadSanitizer: races between the threads of a block (or two
#                       blocks), misused barriers (compute-sanitizer's racecheck)
#   --sanitize address  AddressSanitizer + UBSan: out-of-bounds global and shared
#                       accesses, misaligned vector loads (memcheck)
#   --quick             the CI set (small shapes, every code path)
#   --case TEXT         only the cases whose name holds TEXT (repeatable; --list shows them)
#   --list              list the cases
#   --count             traffic counters, a model (count.h): a counting build (no
#                       sanitizer) runs the quick cases and the model cases, writes
#                       each case's launches as JSON under --count-out, then sums
#                       them up (count_report.py): global bytes, 32-byte sectors per
#                       warp request, shared-memory bank conflicts, barriers, mma,
#                       cp.async
#   --count-out DIR     where (default $TMPDIR/lomar_emulation_counts; emptied first)
#   --all               with --count: every case, not only the quick and model ones
#   --planted           the counters' own test (planted_test.py): inefficiencies
#                       planted in copies of the kernel files must move the figure
#                       they should (a few minutes)
# Exit status: 0 all passed; 1 a mismatch, sanitizer report or emulation error; 2 bad
# arguments; 3 the build failed. Builds go to $LOMAR_EMU_WORK (default
# $TMPDIR/lomar_cuda_emulation) and are reused.
# Other knobs: MAX_JOBS (parallel compiles, default 2), PYTHON (an interpreter with
# torch; default .venv/bin/python, else python3), LOMAR_EMU_ARCH (80: the emulated
# card's limits, sm_80 being the tighter), LOMAR_EMU_CUDA_DIR (read the .cu files from
# there) and LOMAR_EMU_OUT (build there): the mutation test.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
all_ops=(emulator rpe_gather window_patchify mask_substitute masked_patch_loss window_attention)

usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
sanitize=none quick=() ops=() cases=() list=() count=0 count_out= all=0 planted=0
while (($#)); do
  case $1 in
    --sanitize) sanitize=${2:-}; shift 2 ;;
    --sanitize=*) sanitize=${1#*=}; shift ;;
    --quick) quick=(--quick); shift ;;
    --case) cases+=("${2:-}"); shift 2 ;;
    --list) list=(--list); shift ;;
    --count) count=1; shift ;;
    --count-out) count_out=${2:-}; shift 2 ;;
    --count-out=*) count_out=${1#*=}; shift ;;
    --all) all=1; shift ;;
    --planted) planted=1; shift ;;
    -h|--help) usage 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; usage 2 >&2 ;;
    *) ops+=("$1"); shift ;;
  esac
done
case $sanitize in none|thread|address) ;; *)
  echo "run.sh: --sanitize must be none, thread or address, got '$sanitize'" >&2; exit 2 ;;
esac
((${#ops[@]})) || ops=("${all_ops[@]}")
for op in "${ops[@]}"; do
  [[ " ${all_ops[*]} " == *" $op "* ]] || {
    echo "run.sh: unknown op '$op'; the ops are: ${all_ops[*]}" >&2; exit 2; }
done
python=${PYTHON:-}
[[ -n $python ]] || { [[ -x $root/.venv/bin/python ]] && python=$root/.venv/bin/python || python=python3; }
if ((planted)); then
  PYTHON=$python exec "$python" "$here/planted_test.py"
fi
mode=$sanitize
if ((count)); then
  [[ $sanitize == none ]] || { echo "run.sh: --count is its own build; drop --sanitize" >&2; exit 2; }
  mode=count
  ((all)) || quick=(--quick)
  count_out=${count_out:-${TMPDIR:-/tmp}/lomar_emulation_counts}
  mkdir -p "$count_out"
  count_out=$(cd "$count_out" && pwd)
  ((${#list[@]})) || for op in "${ops[@]}"; do rm -rf "${count_out:?}/$op"; done
  export LOMAR_EMU_COUNT_OUT=$count_out
fi

torch_dir=$("$python" -c "import torch, os; print(os.path.dirname(torch.__file__))")
cuda_dir=${LOMAR_EMU_CUDA_DIR:-$root/csrc/cuda}
# One build folder per torch and compiler (their headers are not tracked as dependencies).
key=$( { echo "$torch_dir"; "$python" -c "import torch; print(torch.__version__)"; "${CXX:-g++}" --version | head -1; } | cksum | cut -d' ' -f1)
work=${LOMAR_EMU_WORK:-${TMPDIR:-/tmp}/lomar_cuda_emulation}/$key
out=$work/$mode
[[ $cuda_dir == "$root/csrc/cuda" ]] || out=$work/$(echo "$cuda_dir" | cksum | cut -d' ' -f1)-$mode
out=${LOMAR_EMU_OUT:-$out}
pch=$work/${mode/count/thread}/pch  # mutants share the mode's precompiled headers (count: thread's)

targets=()
for op in "${ops[@]}"; do targets+=("$out/check_$op"); done
make --no-print-directory -f "$here/emulation.mk" -j"${MAX_JOBS:-2}" ROOT="$root" \
  CUDA_DIR="$cuda_dir" OUT="$out" REF="$work/ref" PCH="$pch" MODE="$mode" \
  TORCH="$torch_dir" PYTHON="$python" "${targets[@]}" || { echo "run.sh: the build failed" >&2; exit 3; }

# Any report ends the process with a non-zero status.
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 history_size=3 ${TSAN_OPTIONS:-}"
export ASAN_OPTIONS="detect_leaks=0 halt_on_error=1 ${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 ${UBSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1

status=0 summary=()
label="sanitize=$sanitize"
((count)) && label="counting (a model, no GPU)"
for op in "${ops[@]}"; do
  echo "== $op ($label${quick:+, quick})"
  start=$SECONDS
  if "$out/check_$op" "${quick[@]}" "${list[@]}" "${cases[@]}"; then result=passed
  else result="FAILED (exit $?)"; status=1; fi
  summary+=("$(printf '%-18s %-16s %4ds' "$op" "$result" $((SECONDS - start)))")
done
echo "== cuda emulation, $label${quick:+ (quick)}:"
printf '  %s\n' "${summary[@]}"
if ((count)) && ((${#list[@]} == 0)); then
  echo "== traffic counters (emulation counts: a model, not GPU measurements), JSON under $count_out"
  "$python" "$here/count_report.py" "$count_out" --ops "${ops[@]}" || status=1
fi
exit $status
