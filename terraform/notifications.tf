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
