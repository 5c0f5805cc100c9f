# Sourced by test.sh and fuzz.sh: runtime options for a QTRAIN_SANITIZE / QTRAIN_FUZZ build.
#   protect_shadow_gap=0  LibTorch's CUDA runtime maps memory where ASan would reserve its gap
#   detect_leaks=1        leaks fail the run (LeakSanitizer), as crashes do
#   halt_on_error / no recovery: the first report ends the process with a non-zero exit
export ASAN_OPTIONS="${ASAN_OPTIONS:-protect_shadow_gap=0:detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lsan_suppressions.txt:print_suppressions=0}"
