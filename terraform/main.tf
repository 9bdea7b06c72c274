# pipeline.json holds every name and setting the pipeline depends on. The embedded stack
# (stack/settings.py, `make up`) reads the same file, and tests/test_drift.py compares what
# each side really declares, so local runs and real deployments cannot disagree silently.
locals {
  pipeline = jsondecode(file("${path.module}/pipeline.json"))

  endpoint    = var.endpoint == "" ? null : var.endpoint
  emulated    = var.endpoint != ""
  # Where the deployed functions call the emulator: from inside their own containers,
  # which is not where Terraform runs when it applies from the host.
  function_endpoint = var.function_endpoint == "" ? var.endpoint : var.function_endpoint

  # Keys under alias/aws/ are AWS-managed: their key policy already admits publishers.
  customer_managed_topic_key = !can(regex("^alias/aws/", var.topic_kms_key_id))
  region      = var.region == "" ? local.pipeline.region : var.region
  package_dir = var.package_dir == "" ? "${path.module}/../dist" : var.package_dir

  queues    = local.pipeline.queues
  ingester  = local.pipeline.functions.ingester
  processor = local.pipeline.functions.processor
  # The outbox relay is fed by a schedule, not a queue: its block stands beside `functions`.
  relay = local.pipeline.relay

  ingester_queue    = local.queues[local.ingester.source_queue]
  jobs_todo_queue   = local.queues[local.processor.source_queue]
  dead_letter_queue = local.queues[local.pipeline.dead_letter_queue]
  # Jobs with an ordering key: a FIFO queue, redriven to a FIFO dead-letter queue (SQS
  # refuses a standard one for a FIFO queue).
  jobs_todo_fifo_queue   = local.queues[local.processor.ordered_source_queue]
  dead_letter_fifo_name  = local.jobs_todo_fifo_queue.dead_letter_queue
  dead_letter_fifo_queue = local.queues[local.dead_letter_fifo_name]

  # Settings every function reads. Functions on an emulator need its endpoint; on AWS the
  # SDK finds the regional one itself.
  common_environment = merge(
    {
      DEAD_LETTER_QUEUE_URL   = aws_sqs_queue.dead_letter.url
      JOB_END_STATE_TOPIC_ARN = aws_sns_topic.job_end_state.arn
      JOBS_TABLE              = aws_dynamodb_table.jobs.name
    },
    local.emulated ? { AWS_ENDPOINT_URL = local.function_endpoint } : {},
    var.otlp_endpoint == "" ? {} : { OTEL_EXPORTER_OTLP_ENDPOINT = var.otlp_endpoint },
  )
}

# A function container's localhost is the container itself: functions given a loopback
# endpoint would call nothing. Terraform applied from the host against an emulator needs
# function_endpoint set to an address the containers can reach.
check "functions_can_reach_the_emulator" {
  assert {
    condition     = !local.emulated || !can(regex("^[a-z]+://(localhost|127\\.[0-9.]+|\\[::1\\])([:/]|$)", local.function_endpoint))
    error_message = "The functions would call ${local.function_endpoint}, their own container's loopback. Set function_endpoint to an address they can reach, for example http://localstack:4566 on the compose network."
  }
}
