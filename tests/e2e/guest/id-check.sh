#!/bin/sh
# Runs inside the busybox guest for the id-* and audit-verify scenarios:
# says that the guest ran, then runs the network checks (net-check.sh with
# its `steps`) and the media checks (external-check.sh) when they are
# beside it on the e2e disk.
here=$(dirname "$0")
echo "E2E-ID-RUN=ok"
if [ -f "$here/steps" ]; then sh "$here/net-check.sh"; fi
if [ -f "$here/external-check.sh" ]; then sh "$here/external-check.sh"; fi
true
