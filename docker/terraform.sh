#!/bin/sh
# The compose `terraform` service: apply terraform/ to the emulator and exit 0. The module
# is copied into the state volume so that state and provider plugins survive restarts;
# re-running is a no-op apply, or repairs what an emulator restart lost.
set -eu

work=/state/module
mkdir -p "$work" /state/plugins
cp /module/*.tf /module/pipeline.json "$work"/
cd "$work"
export TF_PLUGIN_CACHE_DIR=/state/plugins TF_IN_AUTOMATION=1

terraform init -input=false -no-color
terraform apply -input=false -auto-approve -no-color
echo "terraform: pipeline provisioned"
