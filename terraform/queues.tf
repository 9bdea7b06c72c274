# The work queues redrive to the shared dead-letter queue after max_receive_count receives,
# which only happens when a function could not even report a record (a crash or timeout):
# the functions themselves dead-letter every job they reject or fail, with its history.

resource "aws_sqs_queue" "dead_letter" {
  name                       = local.pipeline.dead_letter_queue
  visibility_timeout_seconds = local.dead_letter_queue.visibility_timeout_seconds
  message_retention_seconds  = local.dead_letter_queue.message_retention_seconds
  sqs_managed_sse_enabled    = true
}

resource "aws_sqs_queue" "ingester" {
  name                       = local.ingester.source_queue
  visibility_timeout_seconds = local.ingester_queue.visibility_timeout_seconds
  message_retention_seconds  = local.ingester_queue.message_retention_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = local.ingester_queue.max_receive_count
  })
}

resource "aws_sqs_queue" "jobs_todo" {
  name                       = local.processor.source_queue
  visibility_timeout_seconds = local.jobs_todo_queue.visibility_timeout_seconds
  message_retention_seconds  = local.jobs_todo_queue.message_retention_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = local.jobs_todo_queue.max_receive_count
  })
}

# Jobs with an ordering key, one group per key: SQS hands out a group's messages one at a
# time and in order. No content-based deduplication: the ingester names each forward
# (MessageDeduplicationId), so a resend after a lost answer is dropped and a replay is not.
resource "aws_sqs_queue" "jobs_todo_fifo" {
  name                        = local.processor.ordered_source_queue
  fifo_queue                  = true
  content_based_deduplication = false
  visibility_timeout_seconds  = local.jobs_todo_fifo_queue.visibility_timeout_seconds
  message_retention_seconds   = local.jobs_todo_fifo_queue.message_retention_seconds
  sqs_managed_sse_enabled     = true

  # Retries wait in place, one receive per attempt, so the count is higher than the
  # standard queue's; this only catches a record no invocation could report.
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter_fifo.arn
    maxReceiveCount     = local.jobs_todo_fifo_queue.max_receive_count
  })
}

resource "aws_sqs_queue" "dead_letter_fifo" {
  name                       = local.dead_letter_fifo_name
  fifo_queue                 = true
  visibility_timeout_seconds = local.dead_letter_fifo_queue.visibility_timeout_seconds
  message_retention_seconds  = local.dead_letter_fifo_queue.message_retention_seconds
  sqs_managed_sse_enabled    = true
}

resource "aws_sqs_queue_redrive_allow_policy" "dead_letter_fifo" {
  queue_url = aws_sqs_queue.dead_letter_fifo.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.jobs_todo_fifo.arn]
  })
}

# Only the two work queues may redrive into the dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.ingester.arn, aws_sqs_queue.jobs_todo.arn]
  })
}
