#!/bin/sh
# One-shot (compose service minio-init), safe to rerun at every `up`: creates the buckets for
# MLflow's artifacts and the DVC remote, and the pipeline's S3 user (S3_ACCESS_KEY), which may
# use those two buckets and nothing else. The root user stays in MinIO and this container.
set -eu

: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER in docker/.env}"
: "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD in docker/.env}"
: "${S3_ACCESS_KEY:?set S3_ACCESS_KEY in docker/.env}"
: "${S3_SECRET_KEY:?set S3_SECRET_KEY in docker/.env}"
: "${MLFLOW_BUCKET:?}" "${DVC_BUCKET:?}"

mc alias set stack http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "stack/$MLFLOW_BUCKET" "stack/$DVC_BUCKET"

policy=/tmp/pretrainflow-policy.json
cat > "$policy" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET", "arn:aws:s3:::$DVC_BUCKET"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                 "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET/*", "arn:aws:s3:::$DVC_BUCKET/*"]
    }
  ]
}
EOF
# Rerun-safe: detach and remove the policy (errors on the first run, hence `|| true`), create
# it anew, create the user or set its secret (`user add` does both), attach.
mc admin policy detach stack pretrainflow --user "$S3_ACCESS_KEY" >/dev/null 2>&1 || true
mc admin policy remove stack pretrainflow >/dev/null 2>&1 || true
mc admin policy create stack pretrainflow "$policy"
rm -f "$policy"
mc admin user add stack "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
mc admin policy attach stack pretrainflow --user "$S3_ACCESS_KEY"
echo "minio-init: buckets $MLFLOW_BUCKET and $DVC_BUCKET ready; S3 user $S3_ACCESS_KEY may use them"
