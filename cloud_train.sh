#!/bin/sh
# Trains on Vertex AI. Not implemented yet: multi-machine training arrives with
# the cloud issue. Train on one machine with: python -m trainer.train_gqn
echo "cloud_train.sh: Vertex AI training is not implemented yet; run python -m trainer.train_gqn locally." >&2
exit 2
