#!/usr/bin/env bash
# Run every stage of `make test`, even after one fails, then report them all: one CI run shows
# whether pytest, nbval, the build, the site check and the Colab run pass. Exit 1 if any failed.
# Usage: bash scripts/run_stages.sh STAGE [STAGE ...]   (each STAGE is a make target)
# STAGE_MAKE overrides the make command (the tests point it at a scratch Makefile).
set -uo pipefail
cd "$(dirname "$0")/.."
read -r -a make_cmd <<<"${STAGE_MAKE:-make --no-print-directory}"
declare -A result seconds
failed=()
for stage in "$@"; do
  if [ "$stage" = site-check ] && [ "${result[build-check]:-}" = FAILED ]; then
    result[$stage]="not run (build-check failed: no site to check)"; seconds[$stage]=0
    failed+=("$stage"); continue
  fi
  printf '\n===== make %s =====\n' "$stage"
  start=$SECONDS
  if "${make_cmd[@]}" "$stage"; then result[$stage]=passed; else result[$stage]=FAILED; failed+=("$stage"); fi
  seconds[$stage]=$((SECONDS - start))
done
printf '\n===== make test: summary =====\n'
for stage in "$@"; do printf '  %-13s %-8s %5d s\n' "$stage" "${result[$stage]}" "${seconds[$stage]}"; done
if ((${#failed[@]})); then
  printf 'make test: FAILED — %d of %d stages: %s\n' "${#failed[@]}" "$#" "${failed[*]}"
  exit 1
fi
printf 'make test: all %d stages passed\n' "$#"
