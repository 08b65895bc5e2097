#!/bin/sh
# Trains on Vertex AI: builds the training image with Cloud Build (or takes
# --image, or runs our sdist on a prebuilt TensorFlow image with --prebuilt),
# then submits a custom job whose pools are filled in from cloud/job_spec.yaml.
# `sh cloud_train.sh --help` explains every flag; docs/cloud.md is the guide.
set -eu

usage() {
	cat <<'EOF'
Usage: sh cloud_train.sh [FLAGS] [-- TRAINER FLAGS]

Builds the training image (cloud/Dockerfile) with Cloud Build, pushes it to
Artifact Registry as REGION-docker.pkg.dev/PROJECT/REPOSITORY/tiered-gqn:TAG
and submits a Vertex AI custom job that runs `python -m MODULE TRAINER FLAGS`
on every replica, e.g.

  sh cloud_train.sh --project my-project --region us-central1 --bucket my-bucket \
      --module trainer.train_gqn --replicas 4 --accelerator NVIDIA_L4 \
      -- --dataset shepard_metzler_5_parts --max_steps 200000

Settings (a flag, else the environment variable named in brackets):
  --project ID          Google Cloud project [PROJECT] (required)
  --region REGION       Vertex AI and Artifact Registry region, e.g. us-central1
                        [REGION] (required)
  --bucket NAME         Cloud Storage bucket of the run's outputs,
                        gs://NAME/runs/DISPLAY_NAME [BUCKET] (required)
  --repository REPO     Artifact Registry Docker repository [REPOSITORY]
                        (default tiered-gqn)

Job:
  --module MODULE       the Python module every replica runs (default
                        trainer.train_gqn)
  --replicas N          machines: 1 chief (pool 0) and N-1 workers (pool 1);
                        default 1
  --accelerator TYPE    GPU type per machine, e.g. NVIDIA_L4, NVIDIA_TESLA_A100,
                        or none for CPU only (default none)
  --accelerator_count N GPUs per machine (default 1)
  --machine_type TYPE   machine of the chief and workers (default: the one that
                        fits the GPUs: NVIDIA_L4 x1 g2-standard-8, x2
                        g2-standard-24, x4 g2-standard-48, x8 g2-standard-96;
                        NVIDIA_TESLA_A100 xN a2-highgpu-Ng; NVIDIA_A100_80GB xN
                        a2-ultragpu-Ng; NVIDIA_TESLA_T4 or NVIDIA_TESLA_V100 x1
                        n1-standard-8; no GPU n1-standard-8)
  --reduction_server N  N Reduction Server replicas (pool 2, Google's prebuilt
                        reductionserver image) for the workers' NCCL all-reduce;
                        needs GPUs and --replicas 2 or more (default 0: none)
  --reduction_server_machine_type TYPE
                        machine of the reduction servers (default n1-highcpu-16)
  --display_name NAME   the job's name (default MODULE's last part and the UTC
                        time, e.g. train_gqn-20261202-153000)
  --service_account SA  service account the job runs as (default: Vertex AI's)

Image:
  --image URI           run this image instead of building one
  --tag TAG             tag of the image built (default VARIANT-UTC time)
  --variant cpu|gpu     image variant (default gpu with an accelerator, else cpu)
  --prebuilt            no image of ours: build our sdist (python setup.py sdist),
                        copy it to gs://BUCKET/runs/DISPLAY_NAME/code/ and run it
                        on a prebuilt TensorFlow training image
  --executor_image URI  the prebuilt image for --prebuilt (default Vertex AI's
                        newest TensorFlow one, 2.17: tf-gpu.2-17.py310 or
                        tf-cpu.2-17.py310)

Everything after -- goes to MODULE unchanged. DRY_RUN=1 prints every command
(and the job spec) instead of running it. --help prints this.
EOF
}

die() {
	printf 'cloud_train.sh: error: %s\n' "$*" >&2
	exit 2
}

# One shell word, quoted when it needs to be.
quote() {
	case $1 in
	'') printf "''" ;;
	*[!A-Za-z0-9_./:=@%+,-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
	*) printf '%s' "$1" ;;
	esac
}

show() {
	printf '+'
	for word in "$@"; do
		printf ' '
		quote "$word"
	done
	printf '\n'
}

# Prints a command; runs it unless DRY_RUN=1 (then stdout has it, else stderr).
run() {
	if [ "$DRY_RUN" = 1 ]; then
		show "$@"
	else
		show "$@" >&2
		"$@"
	fi
}

# A YAML flow list of double-quoted strings: ["a", "b"].
yaml_list() {
	list='['
	separator=''
	for word in "$@"; do
		escaped=$(printf '%s' "$word" | sed 's/\\/\\\\/g; s/"/\\"/g')
		list="$list$separator\"$escaped\""
		separator=', '
	done
	printf '%s]' "$list"
}

# cloud/job_spec.yaml with the blocks named in $1 kept, the others dropped,
# comments dropped and each @NAME@ replaced by $SPEC_NAME.
render_spec() {
	awk -v keep=" $1 " '
		/^[ \t]*# begin / { depth++; skip[depth] = index(keep, " " $3 " ") == 0; next }
		/^[ \t]*# end / { depth--; next }
		{ for (i = 1; i <= depth; i++) if (skip[i]) next }
		/^[ \t]*#/ { next }
		{
			line = $0; out = ""
			while (match(line, /@[A-Z_]+@/)) {
				name = "SPEC_" substr(line, RSTART + 1, RLENGTH - 2)
				if (!(name in ENVIRON)) { missing = name; exit 1 }
				out = out substr(line, 1, RSTART - 1) ENVIRON[name]
				line = substr(line, RSTART + RLENGTH)
			}
			print out line
		}
		END { if (missing != "") { print "no value for " missing > "/dev/stderr"; exit 1 } }
	' "$ROOT/cloud/job_spec.yaml"
}

is_count() {
	case $1 in
	'' | *[!0-9]* | 0?*) return 1 ;;
	*) return 0 ;;
	esac
}

# The machine type that carries $2 GPUs of type $1.
default_machine() {
	case $1:$2 in
	none:*) echo n1-standard-8 ;;
	NVIDIA_L4:1) echo g2-standard-8 ;;
	NVIDIA_L4:2) echo g2-standard-24 ;;
	NVIDIA_L4:4) echo g2-standard-48 ;;
	NVIDIA_L4:8) echo g2-standard-96 ;;
	NVIDIA_TESLA_A100:1 | NVIDIA_TESLA_A100:2 | NVIDIA_TESLA_A100:4 | NVIDIA_TESLA_A100:8) echo "a2-highgpu-${2}g" ;;
	NVIDIA_TESLA_A100:16) echo a2-megagpu-16g ;;
	NVIDIA_A100_80GB:1 | NVIDIA_A100_80GB:2 | NVIDIA_A100_80GB:4 | NVIDIA_A100_80GB:8) echo "a2-ultragpu-${2}g" ;;
	NVIDIA_TESLA_T4:1 | NVIDIA_TESLA_V100:1) echo n1-standard-8 ;;
	*) return 1 ;;
	esac
}

ROOT=$(cd "$(dirname "$0")" && pwd)
DRY_RUN=${DRY_RUN:-0}
PROJECT=${PROJECT:-}
REGION=${REGION:-}
BUCKET=${BUCKET:-}
REPOSITORY=${REPOSITORY:-tiered-gqn}
MODULE=trainer.train_gqn
REPLICAS=1
ACCELERATOR=none
ACCELERATOR_COUNT=1
MACHINE_TYPE=
REDUCTION_SERVERS=0
REDUCTION_SERVER_MACHINE_TYPE=n1-highcpu-16
DISPLAY_NAME=
SERVICE_ACCOUNT=
IMAGE=
TAG=
VARIANT=
PREBUILT=0
EXECUTOR_IMAGE=

set_flag() {
	case $1 in
	--project) PROJECT=$2 ;;
	--region) REGION=$2 ;;
	--bucket) BUCKET=$2 ;;
	--repository) REPOSITORY=$2 ;;
	--module) MODULE=$2 ;;
	--replicas) REPLICAS=$2 ;;
	--accelerator) ACCELERATOR=$2 ;;
	--accelerator_count) ACCELERATOR_COUNT=$2 ;;
	--machine_type) MACHINE_TYPE=$2 ;;
	--reduction_server) REDUCTION_SERVERS=$2 ;;
	--reduction_server_machine_type) REDUCTION_SERVER_MACHINE_TYPE=$2 ;;
	--display_name) DISPLAY_NAME=$2 ;;
	--service_account) SERVICE_ACCOUNT=$2 ;;
	--image) IMAGE=$2 ;;
	--tag) TAG=$2 ;;
	--variant) VARIANT=$2 ;;
	--executor_image) EXECUTOR_IMAGE=$2 ;;
	*) die "unknown flag $1 (see --help)" ;;
	esac
}

while [ $# -gt 0 ]; do
	case $1 in
	--) shift; break ;;
	-h | --help) usage; exit 0 ;;
	--prebuilt) PREBUILT=1 ;;
	--prebuilt=*) die "--prebuilt takes no value" ;;
	--*=*) set_flag "${1%%=*}" "${1#*=}" ;;
	--*)
		[ $# -ge 2 ] || die "$1 needs a value (see --help)"
		set_flag "$1" "$2"
		shift
		;;
	*) die "unexpected argument '$1': flags start with --, the trainer's go after --" ;;
	esac
	shift
done

# === Checks ===
missing=
[ -n "$PROJECT" ] || missing="$missing, --project (or PROJECT)"
[ -n "$REGION" ] || missing="$missing, --region (or REGION)"
[ -n "$BUCKET" ] || missing="$missing, --bucket (or BUCKET)"
[ -z "$missing" ] || die "missing ${missing#, }"
BUCKET=${BUCKET#gs://}
BUCKET=${BUCKET%/}
case $BUCKET in
*/* | '') die "--bucket $BUCKET: expected a bucket name (the job writes to gs://BUCKET/runs/)" ;;
esac
case $DRY_RUN in 0 | 1) ;; *) die "DRY_RUN must be 0 or 1, got '$DRY_RUN'" ;; esac
case $MODULE in
'' | .* | *. | *[!A-Za-z0-9_.]* | [0-9]*) die "--module '$MODULE' is not a Python module name (e.g. trainer.train_gqn)" ;;
esac
if ! is_count "$REPLICAS" || [ "$REPLICAS" -lt 1 ]; then
	die "--replicas must be a whole number of at least 1, got '$REPLICAS'"
fi
if ! is_count "$ACCELERATOR_COUNT" || [ "$ACCELERATOR_COUNT" -lt 1 ]; then
	die "--accelerator_count must be a whole number of at least 1, got '$ACCELERATOR_COUNT'"
fi
is_count "$REDUCTION_SERVERS" || die "--reduction_server must be a whole number (0: none), got '$REDUCTION_SERVERS'"
case $ACCELERATOR in '' | none | NONE) ACCELERATOR=none ;; esac
if [ -z "$MACHINE_TYPE" ]; then
	MACHINE_TYPE=$(default_machine "$ACCELERATOR" "$ACCELERATOR_COUNT") ||
		die "no default machine for --accelerator $ACCELERATOR with --accelerator_count $ACCELERATOR_COUNT: give --machine_type"
fi
if [ -z "$VARIANT" ]; then
	VARIANT=gpu
	[ "$ACCELERATOR" != none ] || VARIANT=cpu
fi
case $VARIANT in cpu | gpu) ;; *) die "--variant must be cpu or gpu, got '$VARIANT'" ;; esac
if [ "$VARIANT" = cpu ] && [ "$ACCELERATOR" != none ]; then
	die "--variant cpu cannot use --accelerator $ACCELERATOR: give --variant gpu (or no --variant)"
fi
if [ "$REDUCTION_SERVERS" -gt 0 ]; then
	[ "$REPLICAS" -ge 2 ] || die "--reduction_server needs --replicas 2 or more: it reduces between machines"
	[ "$ACCELERATOR" != none ] || die "--reduction_server needs GPUs (--accelerator): it is an NCCL transport"
fi
if [ "$PREBUILT" = 1 ] && [ -n "$IMAGE" ]; then
	die "--prebuilt runs Vertex AI's image with our sdist: it cannot be combined with --image"
fi
for word in "$@"; do
	case $word in *'
'*) die "trainer flag '$word' holds a newline" ;; esac
done

# === Names ===
STAMP=$(date -u +%Y%m%d-%H%M%S)
[ -n "$DISPLAY_NAME" ] || DISPLAY_NAME="${MODULE##*.}-$STAMP"
case $DISPLAY_NAME in *[!A-Za-z0-9_.-]*) die "--display_name '$DISPLAY_NAME': use letters, digits, '_', '.' and '-'" ;; esac
OUTPUT_DIR="gs://$BUCKET/runs/$DISPLAY_NAME"
REDUCTION_FLAG=0
[ "$REDUCTION_SERVERS" -eq 0 ] || REDUCTION_FLAG=1
if [ -z "$TAG" ]; then
	TAG="$VARIANT-$STAMP"
	[ "$REDUCTION_FLAG" = 0 ] || TAG="$VARIANT-rs-$STAMP"
fi

cd "$ROOT"
CONFIG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tiered-gqn-job.XXXXXX")
CONFIG="$CONFIG_DIR/job_spec.yaml"
trap 'rm -rf "$CONFIG_DIR"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

blocks=
[ "$ACCELERATOR" = none ] || blocks="$blocks accelerator"
[ "$REPLICAS" -eq 1 ] || blocks="$blocks workers"
[ "$REDUCTION_SERVERS" -eq 0 ] || blocks="$blocks reduction_server"

# === Image or package ===
if [ "$PREBUILT" = 1 ]; then
	[ -n "$EXECUTOR_IMAGE" ] || EXECUTOR_IMAGE="us-docker.pkg.dev/vertex-ai/training/tf-$VARIANT.2-17.py310:latest"
	PYTHON=${PYTHON:-python3}
	FULLNAME=$("$PYTHON" setup.py --fullname 2>/dev/null) ||
		die "'$PYTHON setup.py --fullname' failed in $ROOT (--prebuilt needs setuptools: pip install setuptools)"
	SDIST="dist/$FULLNAME.tar.gz"
	PACKAGE_URI="$OUTPUT_DIR/code/$FULLNAME.tar.gz"
	run "$PYTHON" setup.py sdist
	[ "$DRY_RUN" = 1 ] || [ -f "$SDIST" ] || die "python setup.py sdist did not write $SDIST"
	run gcloud storage cp --project="$PROJECT" "$SDIST" "$PACKAGE_URI"
	echo "note: $EXECUTOR_IMAGE carries the TensorFlow it was built with (2.17 for Vertex AI's newest prebuilt training images);"
	echo "note: tiered_gqn needs tensorflow>=2.18 (developed on 2.21), so pip installs a newer TensorFlow when the job installs the"
	echo "note: package, which may not fit the image's CUDA libraries: the image of cloud/Dockerfile (no --prebuilt) is the supported path."
	blocks="$blocks python_package"
else
	if [ -z "$IMAGE" ]; then
		IMAGE="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/tiered-gqn:$TAG"
		run gcloud builds submit --project="$PROJECT" --config=cloud/cloudbuild.yaml \
			--ignore-file=cloud/.gcloudignore \
			--substitutions="_IMAGE=$IMAGE,_VARIANT=$VARIANT,_REDUCTION_SERVER=$REDUCTION_FLAG" .
	elif [ "$REDUCTION_FLAG" = 1 ]; then
		echo "note: --reduction_server needs the NCCL plugin in $IMAGE (cloud/Dockerfile with REDUCTION_SERVER=1)."
	fi
	blocks="$blocks container"
	PACKAGE_URI=
fi

# === Job ===
SPEC_OUTPUT_DIR=$OUTPUT_DIR
SPEC_MACHINE_TYPE=$MACHINE_TYPE
SPEC_ACCELERATOR_TYPE=$ACCELERATOR
SPEC_ACCELERATOR_COUNT=$ACCELERATOR_COUNT
SPEC_WORKER_COUNT=$((REPLICAS - 1))
SPEC_IMAGE=$IMAGE
SPEC_CONTAINER_ARGS=$(yaml_list "$MODULE" "$@")
SPEC_EXECUTOR_IMAGE=$EXECUTOR_IMAGE
SPEC_PACKAGE_URI=$PACKAGE_URI
SPEC_MODULE=$MODULE
SPEC_MODULE_ARGS=$(yaml_list "$@")
SPEC_REDUCTION_SERVER_MACHINE_TYPE=$REDUCTION_SERVER_MACHINE_TYPE
SPEC_REDUCTION_SERVER_COUNT=$REDUCTION_SERVERS
export SPEC_OUTPUT_DIR SPEC_MACHINE_TYPE SPEC_ACCELERATOR_TYPE SPEC_ACCELERATOR_COUNT \
	SPEC_WORKER_COUNT SPEC_IMAGE SPEC_CONTAINER_ARGS SPEC_EXECUTOR_IMAGE SPEC_PACKAGE_URI \
	SPEC_MODULE SPEC_MODULE_ARGS SPEC_REDUCTION_SERVER_MACHINE_TYPE SPEC_REDUCTION_SERVER_COUNT
render_spec "$blocks" >"$CONFIG" || die "cannot fill in cloud/job_spec.yaml"

echo "Job spec ($CONFIG, from cloud/job_spec.yaml):"
sed 's/^/  /' "$CONFIG"
set -- gcloud ai custom-jobs create --project="$PROJECT" --region="$REGION" \
	--display-name="$DISPLAY_NAME" --config="$CONFIG" --format='value(name)'
[ -z "$SERVICE_ACCOUNT" ] || set -- "$@" --service-account="$SERVICE_ACCOUNT"
if [ "$DRY_RUN" = 1 ]; then
	show "$@"
	JOB="JOB_NAME"
	echo "DRY_RUN=1: nothing was run; JOB_NAME below stands for the name gcloud prints."
	echo "Job $DISPLAY_NAME"
else
	JOB=$(run "$@")
	[ -n "$JOB" ] || die "gcloud ai custom-jobs create printed no job name"
	echo "Submitted $DISPLAY_NAME: $JOB"
fi
echo "Outputs:     $OUTPUT_DIR (AIP_MODEL_DIR $OUTPUT_DIR/model, AIP_CHECKPOINT_DIR $OUTPUT_DIR/checkpoints)"
echo "Logs:        gcloud ai custom-jobs stream-logs $JOB --project=$PROJECT --region=$REGION"
echo "State:       gcloud ai custom-jobs describe $JOB --project=$PROJECT --region=$REGION"
echo "TensorBoard: tensorboard --logdir $OUTPUT_DIR/logs"
