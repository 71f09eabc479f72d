#!/usr/bin/env bash
# Everything a CUDA machine can check in one command: the test-suite on CUDA, the autotuner for
# the paper's shapes, the goal figures (perf/goals.py: each with a met / not-met line), the op and
# model benchmarks, the kernel resource report; a short table printed last. At most ~8 minutes on
# an H100: every stage runs under `timeout` with its own budget (the benchmarks also stop starting
# new cases before theirs ends, and append their rows as they go, so a cut stage still leaves
# figures).
#
# From the checkout root, with torch and triton importable (no install, no network):
#
#   PYTHONPATH=. bash perf/gpu_check.sh
#   PYTHONPATH=. bash perf/gpu_check.sh --dry-run           # print the stages, run none (no GPU needed)
#
# Environment (all optional):
#   RESULTS_DIR      where this run's logs and results go (default perf/results/<date>-<gpu>)
#   OUT_DIR          also pack copies there: gpu_check.tar.gz (the results folder,
#                    perf/results/results.csv, the regenerated perf/results pages and
#                    kernels/tuned_configs.json; unpack it at a checkout root to take them over)
#                    and gpu_check_summary.txt
#   A2NET_COMMIT     the commit to record when the checkout has no .git
#   GPU_CHECK_SCALE  multiply every stage budget (e.g. 2)
#   PYTHON           the interpreter (default python3)
#
# Exit status: 0 when every stage passed, 1 otherwise (see the table), 2 without a CUDA device.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0       # tests/conftest.py only *defaults* it to 1
export PYTHONUNBUFFERED=1
unset A2NET_BACKEND             # the test fixtures and the benchmarks choose it themselves
PY=${PYTHON:-python3}
SCALE=${GPU_CHECK_SCALE:-1}
budget() { echo $(( $1 * SCALE )); }
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;  # the plumbing only: print each stage's command, run none (works without a GPU)
    "") ;;
    *) echo "usage: bash perf/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

if [ $DRY -eq 1 ]; then
    GPU="dry-run"
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to $PY (torch: $("$PY" -c 'import torch; print(torch.__version__)' 2>&1));" \
         "this script needs a CUDA GPU. On CPU use: python perf/bench_ops.py --device cpu" >&2
    exit 2
fi
[ $DRY -eq 1 ] || GPU=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
SLUG=$(echo "$GPU" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
RES="perf/results/$(date -u +%Y-%m-%d-%H%M)-$SLUG"
[ $DRY -eq 1 ] && RES="$(mktemp -d)/$(basename "$RES")"  # a dry run writes nothing into the checkout
RES=${RESULTS_DIR:-$RES}
mkdir -p "$RES"
SUMMARY="$RES/summary.txt"
: > "$SUMMARY"
STATUS=0
ROWS=()

{
    echo "date: $(date -u +%FT%TZ)"; echo "gpu: $GPU"; nvidia-smi 2>&1 | head -20
    "$PY" -c 'import torch, triton, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
    echo "commit: ${A2NET_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
} > "$RES/env.txt" 2>&1
cat "$RES/env.txt" | head -3

# stage NAME BUDGET_S LOG CMD...: run under timeout, record status and seconds
stage() {
    local name=$1 limit=$2 log=$3; shift 3
    echo; echo "=== $name (limit ${limit}s) -> $log"
    local t0=$SECONDS rc
    if [ $DRY -eq 1 ]; then
        echo "would run: $*" | tee "$log"; rc=0
    else
        timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    fi
    local dt=$(( SECONDS - t0 )) st=ok
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then st="TIMEOUT"; STATUS=1
    elif [ $rc -ne 0 ]; then st="FAIL($rc)"; STATUS=1; fi
    ROWS+=("$name|$st|$dt")
    return 0
}

# 1. The test-suite on CUDA. It needs the suite's device switch (A2NET_TEST_DEVICE, in
#    tests/helpers.py and the triton_backend fixture); A2NET_AUTOTUNE=0 keeps each kernel to its
#    default config (no search at every test shape; autotune.py checks the other configs). The
#    tests marked `network` (a wheel installed next to a package from the index) are left to CI:
#    a GPU machine may have no network.
if grep -q A2NET_TEST_DEVICE tests/helpers.py tests/conftest.py 2>/dev/null; then
    XDIST=$("$PY" -c 'import xdist' 2>/dev/null && echo "-n 8")  # the first run is bound by Triton compiling on the CPU
    stage "tests (cuda)" "$(budget 100)" "$RES/tests.log" \
        env A2NET_TEST_DEVICE=cuda A2NET_AUTOTUNE=0 \
        "$PY" -m pytest -q $XDIST -p no:cacheprovider -m "not network" --junitxml="$RES/tests.xml" tests
else
    echo "=== tests: SKIPPED: the suite has no A2NET_TEST_DEVICE switch, so on CUDA its kernel tests would" \
         "run on CPU tensors (see perf/README.md, 'The test-suite on a GPU')"
    ROWS+=("tests (cuda)|SKIPPED (no A2NET_TEST_DEVICE)|0"); STATUS=1
fi

# 2. Tune the paper's shapes; the table lands in kernels/tuned_configs.json (merged, other archs kept).
stage "autotune" "$(budget 40)" "$RES/autotune.log" \
    "$PY" perf/autotune.py --budget-s "$(budget 30)"
[ -f kernels/tuned_configs.json ] && cp kernels/tuned_configs.json "$RES/tuned_configs.json"

# 3. The goal figures (perf/goals.py): the fused op against the compiled reference at the paper's
#    shape; the fused forward against cuBLAS bmm and the unfused ops at 60x60; every kernel's time
#    at 60x60 for its roofline. The lines come in the summary.
stage "goals: paper shape" "$(budget 90)" "$RES/goals_paper.log" \
    "$PY" perf/bench_ops.py --device cuda --ops correlation_oac --batch 32 --hw 15 --channels 1024 \
    --dtypes tf32 bf16 --providers triton reference-compiled --passes fwd+bwd --warmup-ms 10 --rep-ms 40 \
    --no-peaks --csv "$RES/results.csv"
stage "goals: 60x60" "$(budget 45)" "$RES/goals_large.log" \
    "$PY" perf/bench_ops.py --device cuda --ops correlation_oac correlation_gemm --batch 8 --hw 60 --channels 1024 \
    --dtypes tf32 bf16 --providers triton triton-unfused cublas --passes fwd --warmup-ms 10 --rep-ms 40 \
    --no-peaks --csv "$RES/results.csv"
# (the kernel times with each kernel's tuned-table or default config, as perf/roofline.py models it)
stage "goals: kernel times" "$(budget 45)" "$RES/goals_kernels.log" \
    env A2NET_AUTOTUNE=0 "$PY" perf/goals.py --profile "$RES/kernel_times.json"

# 4. The ops: the paper's batch first, then growing maps; what the budget leaves out is listed.
stage "bench_ops" "$(budget 45)" "$RES/bench_ops.log" \
    "$PY" perf/bench_ops.py --device cuda --batch 32 8 --budget-s "$(budget 30)" --warmup-ms 10 --rep-ms 40 \
    --csv "$RES/results.csv"

# 5. A training step of the model.
stage "bench_model" "$(budget 40)" "$RES/bench_model.log" \
    "$PY" perf/bench_model.py --device cuda --budget-s "$(budget 25)" --warmup-ms 50 --rep-ms 200 \
    --csv "$RES/results.csv"

# 6. Static report (tiling, registers, spills, shared memory) of every kernel config.
stage "kernel_report" "$(budget 45)" "$RES/kernel_report.log" \
    "$PY" perf/kernel_report.py --json "$RES/kernel_report.json"

# 7. The goal lines, from this run's rows and kernel times (no GPU work: always runs to the end).
stage "goals" "$(budget 30)" "$RES/goals.log" \
    "$PY" perf/goals.py --csv "$RES/results.csv" --kernels "$RES/kernel_times.json"

# 8. This run's rows into the committed CSV, then the README tables and plots.
if [ $DRY -eq 0 ] && [ -s "$RES/results.csv" ]; then
    "$PY" - "$RES/results.csv" <<'EOF'
import sys
from perf import _harness as H
rows = H.read_rows(sys.argv[1])
H.append_rows(H.DEFAULT_CSV, rows)
print(f"{len(rows)} rows appended to {H.DEFAULT_CSV}")
EOF
    stage "plot_results" "$(budget 30)" "$RES/plot_results.log" "$PY" perf/plot_results.py
fi

# 9. The short table, last.
"$PY" - "$RES" "${ROWS[@]}" > "$SUMMARY" <<'EOF'
import csv, math, re, sys
from pathlib import Path
res, stages = Path(sys.argv[1]), [s.split("|") for s in sys.argv[2:]]

def detail(name):
    log = res / {"tests (cuda)": "tests.log", "autotune": "autotune.log", "bench_ops": "bench_ops.log",
                 "bench_model": "bench_model.log", "kernel_report": "kernel_report.log",
                 "plot_results": "plot_results.log", "goals: paper shape": "goals_paper.log",
                 "goals: 60x60": "goals_large.log", "goals: kernel times": "goals_kernels.log",
                 "goals": "goals.log"}.get(name, "none")
    text = log.read_text(errors="replace") if log.exists() else ""
    if name.startswith("tests"):  # "N passed, M failed in Xs", with or without ==== around it
        m = re.findall(r"^[= ]*(\d+ (?:passed|failed|errors?)\b.*? in [\d.]+s.*?)[= ]*$", text, re.M)
        return m[-1] if m else "no pytest summary"
    if name == "autotune":
        m = re.findall(r"wrote (\d+) entries", text)
        bad = len(re.findall(r"rejected", text))
        return (f"{m[-1]} entries written" if m else "no table written") + (f", {bad} configs rejected" if bad else "")
    if name == "bench_ops":
        n = len(re.findall(r"^\S+ \S+ (tf32|bf16|fp32)$", text, re.M))
        mism = re.findall(r"(\d+) rows MISMATCH", text)
        skipped = re.findall(r"skipped \((\d+)\)", text)
        return f"{n} cases" + (f", {skipped[-1]} skipped" if skipped else "") + (f", {mism[-1]} MISMATCH rows" if mism else "")
    if name == "bench_model":
        lines = [l for l in text.splitlines() if "pairs/s)" in l]
        return "; ".join(re.sub(r"\s+", " ", l.strip()) for l in lines[:4]) or "no step measured"
    if name == "kernel_report":
        return (text.strip().splitlines() or ["no output"])[-1][:100]
    if name == "goals":
        m = re.findall(r"^goals: (\d+ of \d+ met)", text, re.M)
        return m[-1] if m else "no goal lines"
    if name == "goals: kernel times":
        m = re.findall(r"^goals: (\d+ kernel timings)", text, re.M)
        return m[-1] if m else "no kernel timings"
    if name.startswith("goals: "):
        mism = re.findall(r"(\d+) rows MISMATCH", text)
        n = len(re.findall(r"^\S+ \S+ (tf32|bf16|fp32)$", text, re.M))
        return f"{n} cases" + (f", {mism[-1]} MISMATCH rows" if mism else "")
    return ""

rows = [[n, st, f"{dt}s", detail(n)] for n, st, dt in stages]
widths = [max(len(str(r[i])) for r in rows + [["stage", "status", "time", "detail"]]) for i in range(4)]
fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
print(fmt(["stage", "status", "time", "detail"]))
print(fmt(["-" * w for w in widths]))
for r in rows:
    print(fmt(r))
ops_log = res / "bench_ops.log"
if ops_log.exists():
    text = ops_log.read_text(errors="replace")
    if "summary (geometric mean over shapes):" in text:
        part = text.split("summary (geometric mean over shapes):", 1)[1].strip().splitlines()
        keep = [l for l in part[:2]] + [l for l in part[2:] if " fwd+bwd " in l and " do_bench " in l]
        print("\nbench_ops, fwd+bwd, geomean provider / triton:")
        print("\n".join(keep))
goals_log = res / "goals.log"
if goals_log.exists():
    lines = [l for l in goals_log.read_text(errors="replace").splitlines() if l.startswith("goal")]
    print("\ngoals (perf/goals.py):")
    print("\n".join(lines) or "no goal lines")
print(f"\nresults: {res}/ (logs, results.csv, tuned_configs.json, kernel_report.json, kernel_times.json); perf/results/README.md regenerated")
EOF
if [ -n "${OUT_DIR:-}" ]; then
    mkdir -p "$OUT_DIR"
    cp "$SUMMARY" "$OUT_DIR/gpu_check_summary.txt"
    tar czf "$OUT_DIR/gpu_check.tar.gz" "$RES" perf/results/results.csv perf/results/README.md \
        perf/results/*.png perf/results/*.md kernels/tuned_configs.json 2>/dev/null
    echo "packed: $OUT_DIR/gpu_check.tar.gz, $OUT_DIR/gpu_check_summary.txt" >> "$SUMMARY"
fi
echo
echo "=== gpu_check summary ($GPU)"
cat "$SUMMARY"
exit $STATUS
