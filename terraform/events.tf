# EventBridge delivers every `jobs` event to the ingester's queue, as the whole envelope,
# keeps a copy of each in an archive for replay, and runs the outbox relay on its schedule.

resource "aws_cloudwatch_event_rule" "ingester" {
  name           = local.pipeline.rule.name
  description    = "Routes job events to the ingester queue"
  event_bus_name = local.pipeline.event_bus
  event_pattern  = jsonencode(local.pipeline.rule.event_pattern)
}

# Every event the jobs rule accepts is also kept here, so a time window can be replayed
# onto the bus: after a bug fix, or after an outage longer than the queues' retention.
# An archive holds only the events from its creation on, and a change of bus replaces it,
# losing what it held. Events are encrypted with an AWS-owned key, as the bus's are.
resource "aws_cloudwatch_event_archive" "jobs" {
  name             = local.pipeline.archive.name
  description      = "Job events the ingester rule accepts, for replay"
  event_source_arn = data.aws_cloudwatch_event_bus.jobs.arn
  event_pattern    = jsonencode(local.pipeline.rule.event_pattern)
  # 0 keeps the events indefinitely.
  retention_days = local.pipeline.archive.retention_days
}

data "aws_cloudwatch_event_bus" "jobs" {
  name = local.pipeline.event_bus
}

# An event EventBridge accepted but cannot deliver (a policy or key problem, a body the
# queue refuses, retries exhausted) is not dropped: it lands in the dead-letter queue as
# the event itself, where `job-generator dlq list` shows it and `dlq redrive` sends it on.
resource "aws_cloudwatch_event_target" "ingester" {
  rule           = aws_cloudwatch_event_rule.ingester.name
  event_bus_name = local.pipeline.event_bus
  target_id      = local.ingester.source_queue
  arn            = aws_sqs_queue.ingester.arn

  retry_policy {
    maximum_event_age_in_seconds = local.pipeline.rule.retry.maximum_event_age_seconds
    maximum_retry_attempts       = local.pipeline.rule.retry.maximum_retry_attempts
  }

  dead_letter_config {
    arn = aws_sqs_queue.dead_letter.arn
  }
}

# Without this EventBridge's deliveries are refused silently on real AWS.
resource "aws_sqs_queue_policy" "ingester" {
  queue_url = aws_sqs_queue.ingester.id
  policy    = data.aws_iam_policy_document.ingester_queue.json
}

data "aws_iam_policy_document" "ingester_queue" {
  statement {
    sid       = "EventBridgeSendsJobs"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.ingester.arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.ingester.arn]
    }
  }
}

# EventBridge needs leave to dead-letter undeliverable events, from this rule only.
resource "aws_sqs_queue_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id
  policy    = data.aws_iam_policy_document.dead_letter_queue.json
}

data "aws_iam_policy_document" "dead_letter_queue" {
  statement {
    sid       = "EventBridgeDeadLettersUndeliverableJobs"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dead_letter.arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.ingester.arn]
    }
  }
}

# The outbox relay runs on a schedule: each run announces the ends that their own
# delivery recorded but left unannounced. Schedules run only on the default bus.
resource "aws_cloudwatch_event_rule" "relay" {
  name                = "relay-schedule"
  description         = "Runs the outbox relay"
  event_bus_name      = "default"
  schedule_expression = local.relay.schedule_expression
}

# No retry policy or dead-letter queue: a run that could not start is replaced by the
# next one, and a scheduled event is no job for the jobs' dead-letter queue.
resource "aws_cloudwatch_event_target" "relay" {
  rule           = aws_cloudwatch_event_rule.relay.name
  event_bus_name = aws_cloudwatch_event_rule.relay.event_bus_name
  target_id      = "relay"
  arn            = aws_lambda_function.relay.arn
}

# Without this EventBridge's invocations are refused on real AWS; only this rule may invoke.
resource "aws_lambda_permission" "relay_schedule" {
  statement_id  = "EventBridgeRunsTheRelay"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.relay.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.relay.arn
}
