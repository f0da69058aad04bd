#!/bin/sh
# Start one scheduled iwp-annotate run: copy the suspended template RayJob into a new RayJob
# (generateName, suspend: false), unless a previous scheduled run has not finished yet; then
# delete finished scheduled runs beyond the newest $KEEP_FINISHED.
#
# Run by the CronJob iwp-annotate-nightly in a kubectl image; POSIX sh, kubectl, grep, cut
# and date only. tests/k8s/test_launcher.py runs it against a fake kubectl.
set -eu

NAMESPACE="${NAMESPACE:?NAMESPACE must be set (the CronJob sets it from the pod namespace)}"
SCHEDULE_NAME="${SCHEDULE_NAME:?SCHEDULE_NAME must be set}"
TEMPLATE_RAYJOB="${TEMPLATE_RAYJOB:-iwp-annotate-template}"
KEEP_FINISHED="${KEEP_FINISHED:-5}"
SELECTOR="iwp-annotate/schedule=${SCHEDULE_NAME}"
WORK="${TMPDIR:-/tmp}/launch-rayjob.$$"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT

# One line per scheduled run, oldest first: <name>=<status.jobDeploymentStatus>
list_runs() {
  kubectl -n "$NAMESPACE" get rayjobs -l "$SELECTOR" --sort-by=.metadata.creationTimestamp \
    -o jsonpath='{range .items[*]}{.metadata.name}={.status.jobDeploymentStatus}{"\n"}{end}'
}

list_runs > "$WORK/runs"
while IFS='=' read -r name status; do
  [ -n "$name" ] || continue
  case "$status" in
    Complete | Failed) ;;
    *)
      echo "iwp-annotate: scheduled run $name is still ${status:-New}; not starting another one."
      exit 0
      ;;
  esac
done < "$WORK/runs"

kubectl -n "$NAMESPACE" get rayjob "$TEMPLATE_RAYJOB" -o json > "$WORK/template.json"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# New metadata (drops name, uid, resourceVersion, finalizers, the template label), unsuspended.
kubectl patch --local -f "$WORK/template.json" --type=json -o json -p "[
  {\"op\": \"replace\", \"path\": \"/metadata\", \"value\": {
    \"generateName\": \"${SCHEDULE_NAME}-\",
    \"namespace\": \"${NAMESPACE}\",
    \"labels\": {
      \"app.kubernetes.io/name\": \"iwp-annotate\",
      \"app.kubernetes.io/part-of\": \"iwp-annotate\",
      \"iwp-annotate/schedule\": \"${SCHEDULE_NAME}\"},
    \"annotations\": {
      \"iwp-annotate/scheduled-at\": \"${now}\",
      \"iwp-annotate/template\": \"${TEMPLATE_RAYJOB}\"}}},
  {\"op\": \"replace\", \"path\": \"/spec/suspend\", \"value\": false}
]" > "$WORK/run.json"
created=$(kubectl -n "$NAMESPACE" create -f "$WORK/run.json" -o name)
echo "iwp-annotate: started $created from $TEMPLATE_RAYJOB at $now"

list_runs > "$WORK/runs"
finished=$(grep -E '=(Complete|Failed)$' "$WORK/runs" | cut -d= -f1 || true)
count=$(printf '%s\n' "$finished" | grep -c . || true)
for name in $finished; do
  [ "$count" -gt "$KEEP_FINISHED" ] || break
  echo "iwp-annotate: deleting finished run $name (keeping the newest $KEEP_FINISHED)"
  kubectl -n "$NAMESPACE" delete rayjob "$name" --wait=false
  count=$((count - 1))
done
