"""Cloud tooling: the training image, the Vertex AI job spec and staging data to Cloud Storage.

- `Dockerfile`, `cloudbuild.yaml`: the training image (CPU or GPU), built by
  Cloud Build from the repository root.
- `job_spec.yaml`: the template of a `gcloud ai custom-jobs create --config` file.
- `stage.py`: `python -m cloud.stage` copies gqn-datasets shards between a
  folder, a bucket and the public release, verified and resumable.

`cloud_train.sh` at the repository root ties them together; docs/cloud.md
is the guide.
"""
