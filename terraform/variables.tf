variable "endpoint" {
  type        = string
  description = "Emulator endpoint (for example http://localstack:4566). Empty deploys to real AWS."
  default     = ""
}

variable "function_endpoint" {
  type        = string
  description = "Emulator endpoint the deployed functions call, when it differs from `endpoint` (Terraform applied from the host with endpoint http://localhost:4566 while the functions run in containers on the compose network: http://localstack:4566). Empty means the same as `endpoint`. Ignored on real AWS."
  default     = ""

  validation {
    condition     = var.function_endpoint == "" || can(regex("^https?://[^/]+", var.function_endpoint))
    error_message = "function_endpoint must be empty or an http(s):// URL, for example http://localstack:4566."
  }
}

variable "end_state_queue" {
  type        = bool
  description = "Create the SQS queue named by demo_subscriber_queue in pipeline.json, subscribed to job-end-state-topic with raw delivery, so every end state can be read back (compose sets it; `make compose-smoke` reads it)."
  default     = false
}

variable "region" {
  type        = string
  description = "AWS region. Empty uses the region in pipeline.json."
  default     = ""
}

variable "lambda_architecture" {
  type        = string
  description = "Instruction set of the built bootstrap binaries: x86_64 or arm64. Must match the build (LAMBDA_ARCH in .env)."
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture must be x86_64 or arm64."
  }
}

variable "package_dir" {
  type        = string
  description = "Directory holding ingester.zip, processor.zip and relay.zip (each a `bootstrap` binary). Empty means ../dist beside this module."
  default     = ""
}

variable "otlp_endpoint" {
  type        = string
  description = "OTLP/HTTP endpoint the functions export traces and metrics to (for example http://otel-collector:4318). Empty disables export."
  default     = ""
}

variable "subscribers" {
  type = list(object({
    protocol             = string
    endpoint             = string
    raw_message_delivery = optional(bool, false)
    filter_policy        = optional(string)
  }))
  description = "Subscribers of job-end-state-topic: protocol email, https or sqs, and its endpoint. A filter_policy (JSON) may select on the `status` and `job_type` message attributes."
  default     = []

  validation {
    condition     = alltrue([for s in var.subscribers : contains(["email", "https", "sqs"], s.protocol)])
    error_message = "Each subscriber's protocol must be email, https or sqs."
  }
}

variable "log_retention_days" {
  type        = number
  description = "How long the functions' CloudWatch log groups keep logs, in days."
  default     = 14
}

variable "topic_kms_key_id" {
  type        = string
  description = "KMS key (id, ARN or alias) encrypting job-end-state-topic at rest."
  default     = "alias/aws/sns"
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource."
  default     = {}
}

variable "fault_injection" {
  type        = bool
  description = "Let jobs ask the processor to fail their first attempts (a `fault` object in the job), for demos and fault tests. Keep false in real accounts."
  default     = false
}
