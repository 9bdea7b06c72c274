# EventBridge delivers every `jobs` event to the ingester's queue, as the whole envelope.

resource "aws_cloudwatch_event_rule" "ingester" {
  name           = local.pipeline.rule.name
  description    = "Routes job events to the ingester queue"
  event_bus_name = local.pipeline.event_bus
  event_pattern  = jsonencode(local.pipeline.rule.event_pattern)
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
