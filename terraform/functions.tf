# The functions are `bootstrap` binaries on provided.al2023. The ingester and the
# processor are fed by SQS with partial batch responses, so one bad record never sends its
# whole batch back to the queue; the outbox relay is run by a schedule (events.tf).

resource "aws_lambda_function" "ingester" {
  #checkov:skip=CKV_AWS_116:An SQS-triggered function has no asynchronous invocations to dead-letter; it dead-letters rejected jobs itself, and its queue redrives to the DLQ.
  #checkov:skip=CKV_AWS_117:The function calls only AWS public endpoints; a VPC would add NAT cost and cold-start time for nothing.
  #checkov:skip=CKV_AWS_173:The environment holds only queue URLs and a topic ARN, no secrets; AWS encrypts it at rest with its own key.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile the deployer owns; enable it per account.
  #checkov:skip=CKV_AWS_115:Concurrency is bounded by the event source mapping's maximum_concurrency instead, which does not starve other functions of the account's pool.
  function_name    = "ingester"
  description      = "Validates job events, forwards them to jobs-todo, dead-letters the rejected"
  role             = aws_iam_role.ingester.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = "${local.package_dir}/ingester.zip"
  source_code_hash = filebase64sha256("${local.package_dir}/ingester.zip")
  timeout          = local.ingester.timeout_seconds
  memory_size      = local.ingester.memory_mb

  environment {
    variables = merge(local.ingester.environment, local.common_environment, {
      INGESTER_QUEUE_URL       = aws_sqs_queue.ingester.url
      JOBS_TODO_QUEUE_URL      = aws_sqs_queue.jobs_todo.url
      JOBS_TODO_FIFO_QUEUE_URL = aws_sqs_queue.jobs_todo_fifo.url
      MAX_RECEIVE_COUNT        = tostring(local.ingester_queue.max_receive_count)
    })
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.ingester.name
  }

  tracing_config {
    mode = "PassThrough"
  }
}

resource "aws_lambda_function" "processor" {
  #checkov:skip=CKV_AWS_116:An SQS-triggered function has no asynchronous invocations to dead-letter; it dead-letters failed jobs itself, and its queue redrives to the DLQ.
  #checkov:skip=CKV_AWS_117:The function calls only AWS public endpoints; a VPC would add NAT cost and cold-start time for nothing.
  #checkov:skip=CKV_AWS_173:The environment holds only queue URLs and a topic ARN, no secrets; AWS encrypts it at rest with its own key.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile the deployer owns; enable it per account.
  #checkov:skip=CKV_AWS_115:Concurrency is bounded by the event source mapping's maximum_concurrency instead, which does not starve other functions of the account's pool.
  function_name    = "processor"
  description      = "Executes jobs from jobs-todo and announces their end state"
  role             = aws_iam_role.processor.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = "${local.package_dir}/processor.zip"
  source_code_hash = filebase64sha256("${local.package_dir}/processor.zip")
  timeout          = local.processor.timeout_seconds
  memory_size      = local.processor.memory_mb

  environment {
    variables = merge(local.processor.environment, local.common_environment, {
      JOBS_TODO_QUEUE_URL      = aws_sqs_queue.jobs_todo.url
      JOBS_TODO_FIFO_QUEUE_URL = aws_sqs_queue.jobs_todo_fifo.url
    }, var.fault_injection ? { FAULT_INJECTION = "true" } : {})
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.processor.name
  }

  tracing_config {
    mode = "PassThrough"
  }
}

# Announces the ends that their own delivery recorded but could not announce (found
# through the table's sparse outbox index), so none waits for a redelivery that may never
# come.
resource "aws_lambda_function" "relay" {
  #checkov:skip=CKV_AWS_116:Its only invocations are the schedule's; a failed run is redone by the next one, and a scheduled event in the jobs' DLQ would be no job to redrive.
  #checkov:skip=CKV_AWS_117:The function calls only AWS public endpoints; a VPC would add NAT cost and cold-start time for nothing.
  #checkov:skip=CKV_AWS_173:The environment holds only a queue URL, a topic ARN and table and index names, no secrets; AWS encrypts it at rest with its own key.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile the deployer owns; enable it per account.
  #checkov:skip=CKV_AWS_115:One scheduled run at a time; reserving concurrency for it would take from the account's pool for nothing.
  function_name    = "relay"
  description      = "Announces recorded ends that are still unannounced, from the job state table's outbox index"
  role             = aws_iam_role.relay.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = "${local.package_dir}/relay.zip"
  source_code_hash = filebase64sha256("${local.package_dir}/relay.zip")
  timeout          = local.relay.timeout_seconds
  memory_size      = local.relay.memory_mb

  environment {
    variables = merge(local.relay.environment, local.common_environment, {
      OUTBOX_INDEX = local.pipeline.outbox_index
    })
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.relay.name
  }

  tracing_config {
    mode = "PassThrough"
  }
}

resource "aws_cloudwatch_log_group" "ingester" {
  #checkov:skip=CKV_AWS_158:Logs carry job ids and error codes, not secrets; CloudWatch encrypts them at rest by default.
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable; a year of demo logs is cost without use.
  name              = "/aws/lambda/ingester"
  retention_in_days = var.log_retention_days
}

resource "aws_cloudwatch_log_group" "processor" {
  #checkov:skip=CKV_AWS_158:Logs carry job ids and error codes, not secrets; CloudWatch encrypts them at rest by default.
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable; a year of demo logs is cost without use.
  name              = "/aws/lambda/processor"
  retention_in_days = var.log_retention_days
}

resource "aws_cloudwatch_log_group" "relay" {
  #checkov:skip=CKV_AWS_158:Logs carry job ids and error codes, not secrets; CloudWatch encrypts them at rest by default.
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable; a year of demo logs is cost without use.
  name              = "/aws/lambda/relay"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_event_source_mapping" "ingester" {
  event_source_arn                   = aws_sqs_queue.ingester.arn
  function_name                      = aws_lambda_function.ingester.arn
  batch_size                         = local.ingester.batch_size
  maximum_batching_window_in_seconds = local.ingester.maximum_batching_window_seconds
  function_response_types            = ["ReportBatchItemFailures"]
  enabled                            = true

  scaling_config {
    maximum_concurrency = local.ingester.maximum_concurrency
  }
}

resource "aws_lambda_event_source_mapping" "processor" {
  event_source_arn                   = aws_sqs_queue.jobs_todo.arn
  function_name                      = aws_lambda_function.processor.arn
  batch_size                         = local.processor.batch_size
  maximum_batching_window_in_seconds = local.processor.maximum_batching_window_seconds
  function_response_types            = ["ReportBatchItemFailures"]
  enabled                            = true

  scaling_config {
    maximum_concurrency = local.processor.maximum_concurrency
  }
}

# The same function on the FIFO queue of jobs with an ordering key. Lambda takes no
# batching window here. One record per batch: a group's records in one batch would share
# one invocation's time, and each waiting behind a failed one would use up a receive
# (groups still run side by side, in their own invocations).
resource "aws_lambda_event_source_mapping" "processor_ordered" {
  event_source_arn        = aws_sqs_queue.jobs_todo_fifo.arn
  function_name           = aws_lambda_function.processor.arn
  batch_size              = local.processor.ordered_batch_size
  function_response_types = ["ReportBatchItemFailures"]
  enabled                 = true

  scaling_config {
    maximum_concurrency = local.processor.maximum_concurrency
  }
}
