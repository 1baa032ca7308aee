#!/bin/sh
# Deploy a version, hand it to rollout-proxy as a release, and wait for the verdict.
#
#   SERVICE=shop VERSION=1.4.2 CANARY=http://10.0.0.7:8080 \
#   ROLLOUT_ADMIN_URL=http://proxy:9090 ROLLOUT_ADMIN_TOKEN=... examples/ci/release.sh
#
# Exit status: that of `rollout-proxy release wait`: 0 completed (the canary is stable now),
# 1 rolled back or aborted, 3 timed out, 2 error.
set -eu

: "${SERVICE:?name the service}"
: "${VERSION:?name the version}"
: "${CANARY:?name the upstream(s) the version runs on, space separated}"
ROLLOUT=${ROLLOUT:-rollout-proxy}
TIMEOUT=${TIMEOUT:-30m}
# STEPS_FILE: a YAML list of steps for this release (default: the service's configured steps)
# CHECKS_FILE: a YAML list of checks this change brings (docs/checks.md has blocks to paste)
# ROUTES: the routes the change touches, space separated: each judged on its own

# 1. Deploy (a placeholder: put your deploy step here, e.g. kubectl apply, ansible, ...).
${DEPLOY:-echo} "deploy $SERVICE $VERSION on $CANARY"

# 2. Start the release with the commit's metadata (the same version again is a no-op).
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
SUMMARY=${SUMMARY:-$(git log -1 --format=%s 2>/dev/null || echo "$VERSION")}
AUTHOR=${AUTHOR:-$(git log -1 --format=%an 2>/dev/null || echo "${USER:-ci}")}
# shellcheck disable=SC2086 # CANARY holds one URL per word
$ROLLOUT release start "$SERVICE" --version "$VERSION" --canary $CANARY \
    --commit "$COMMIT" --summary "$SUMMARY" --author "$AUTHOR" \
    ${CHANGE_URL:+--url "$CHANGE_URL"} ${STEPS_FILE:+--steps "$STEPS_FILE"} \
    ${CHECKS_FILE:+--checks "$CHECKS_FILE"} $(for r in ${ROUTES:-}; do printf -- '--route %s ' "$r"; done)

# 3. Follow it to its verdict.
set +e
$ROLLOUT release wait "$SERVICE" --version "$VERSION" --timeout "$TIMEOUT"
status=$?
set -e
exit $status
