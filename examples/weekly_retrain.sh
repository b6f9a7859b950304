#!/usr/bin/env bash
# Weekly retraining, one cycle per role: make-sft -> train -> eval -> promote if the gate passes
# -> drift check of the adapter that was in production before. Each cycle is one learnloop job
# (`learnloop cycle`); it exits non-zero when a stage failed, and its report lists every stage.
#
# crontab -e:
#   0 3 * * 1  LEARNLOOP_HOME=$HOME/.learnloop /path/to/examples/weekly_retrain.sh >> $HOME/.learnloop/weekly.log 2>&1
#
# Environment:
#   LEARNLOOP      the learnloop command (default: learnloop)
#   ROLES          roles to retrain (default: "coder fixer judge")
#   DAYS           curate runs of the last N days (default: 7)
#   MIN_REWARD     curate runs with at least this reward (default: 0.7)
#   PRESET         light | default | heavy (default: default)
#   TO_PRODUCTION  1 to promote to production when the gate passes (default: 0 = candidate only)
set -u -o pipefail

LEARNLOOP=${LEARNLOOP:-learnloop}
ROLES=${ROLES:-"coder fixer judge"}
DAYS=${DAYS:-7}
MIN_REWARD=${MIN_REWARD:-0.7}
PRESET=${PRESET:-default}
TO_PRODUCTION=${TO_PRODUCTION:-0}

status=0
for role in $ROLES; do
  echo "== $(date -u +%FT%TZ) cycle for role $role"
  args=(cycle --role "$role" --days "$DAYS" --min-reward "$MIN_REWARD" --preset "$PRESET")
  if [ "$TO_PRODUCTION" = "1" ]; then
    args+=(--to-production)
  fi
  # shellcheck disable=SC2086
  if ! $LEARNLOOP "${args[@]}"; then
    echo "!! cycle for role $role did not finish; see its report above" >&2
    status=1
  fi
done
exit $status
