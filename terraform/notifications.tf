# Every job's end state (COMPLETED, FAILED or REJECTED) is published here exactly once,
# with `status` and `job_type` message attributes for subscribers' filter policies.

resource "aws_sns_topic" "job_end_state" {
  name              = local.pipeline.topic
  kms_master_key_id = var.topic_kms_key_id
}

resource "aws_sns_topic_subscription" "subscriber" {
  for_each = { for i, s in var.subscribers : tostring(i) => s }

  topic_arn            = aws_sns_topic.job_end_state.arn
  protocol             = each.value.protocol
  endpoint             = each.value.endpoint
  raw_message_delivery = each.value.raw_message_delivery
  filter_policy        = each.value.filter_policy
}

# Optional (var.end_state_queue): a queue that keeps every end state for reading back,
# the same one `make up` subscribes. Compose turns it on so that a user, and
# `make compose-smoke`, can check each job's end state without an email or web hook.
resource "aws_sqs_queue" "end_states" {
  count = var.end_state_queue ? 1 : 0

  name                      = local.pipeline.demo_subscriber_queue
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue_policy" "end_states" {
  count = var.end_state_queue ? 1 : 0

  queue_url = aws_sqs_queue.end_states[0].id
  policy    = data.aws_iam_policy_document.end_states[0].json
}

data "aws_iam_policy_document" "end_states" {
  count = var.end_state_queue ? 1 : 0

  statement {
    sid       = "TopicDeliversEndStates"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.end_states[0].arn]

    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_sns_topic.job_end_state.arn]
    }
  }
}

resource "aws_sns_topic_subscription" "end_states" {
  count = var.end_state_queue ? 1 : 0

  topic_arn            = aws_sns_topic.job_end_state.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.end_states[0].arn
  raw_message_delivery = true
}
