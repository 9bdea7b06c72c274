# One provider for both worlds: with `endpoint` empty every call goes to real AWS with the
# caller's credentials; with it set, every service the pipeline uses goes to the emulator.
provider "aws" {
  region = local.region

  skip_credentials_validation = local.emulated
  skip_requesting_account_id  = local.emulated
  skip_metadata_api_check     = local.emulated

  # One entry per service any resource or data source here calls (tests/test_terraform.py
  # derives that set from the resource types), plus sts and kms, which the provider or a
  # customer-managed topic key may call.
  endpoints {
    cloudwatchlogs = local.endpoint
    dynamodb       = local.endpoint
    eventbridge    = local.endpoint
    iam            = local.endpoint
    kms            = local.endpoint
    lambda         = local.endpoint
    sns            = local.endpoint
    sqs            = local.endpoint
    sts            = local.endpoint
  }

  default_tags {
    tags = merge({ project = "job-pipeline" }, var.tags)
  }
}
