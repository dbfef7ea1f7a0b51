# Sourced by the evaluation scripts (start_ab_eval.sh, cfg_ablation_eval.sh).
# test_set SET: the HR folder of $SHARED/test/SET, or with LIMIT=N a folder under $RESULTS linking its first N images.
test_set() {
  local HR=$SHARED/test/$1/HR
  [ -z "${LIMIT:-}" ] && { echo "$HR"; return; }
  local DATA=$RESULTS/data-$1-$LIMIT; mkdir -p "$DATA"
  ls "$HR" | sort | head -n "$LIMIT" | while read F; do ln -sf "$(realpath "$HR/$F")" "$DATA/$F"; done
  echo "$DATA"
}
