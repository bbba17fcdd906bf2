#!/bin/sh
# pretrainflow-pull-data: the pull step of every deployment in prefect.yaml. Before a flow run,
# fetch the data versions that this image's *.dvc files name (data.dvc, and the unlabeled pool's
# .dvc file when there is one) from the DVC remote on the stack's MinIO.
#
# Reads DVC_REMOTE_URL (s3://BUCKET) and DVC_REMOTE_ENDPOINT (http://minio:9000) from the
# environment, and the credentials the way DVC's S3 client does (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY). The remote is written to .dvc/config.local, never to .dvc/config.
set -eu

: "${DVC_REMOTE_URL:?set DVC_REMOTE_URL, e.g. s3://pretrainflow-dvc (docker/compose.yaml sets it)}"
: "${DVC_REMOTE_ENDPOINT:?set DVC_REMOTE_ENDPOINT, e.g. http://minio:9000 (docker/compose.yaml sets it)}"

dvc remote add --local --force stack "$DVC_REMOTE_URL"
dvc remote modify --local stack endpointurl "$DVC_REMOTE_ENDPOINT"

found=0
for file in ./*.dvc; do
    [ -f "$file" ] || continue
    found=1
    if ! dvc pull --remote stack "$file"; then
        echo "pretrainflow-pull-data: cannot pull $file from $DVC_REMOTE_URL. Was it pushed?" \
             "On the machine that has the data: dvc add, dvc push, then rebuild this image" \
             "(docker compose build) so that its $file names the pushed version." >&2
        exit 1
    fi
done
if [ "$found" = 0 ]; then
    echo "pretrainflow-pull-data: no .dvc file in $(pwd); nothing to pull" >&2
fi
