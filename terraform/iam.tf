# Least privilege: each function may touch only its own queues, the dead-letter queue, the
# topic, the job state table (the relay: its outbox index) and its own log group. (The original demo's roles could not
# publish to SNS or send to the DLQ at all.)

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ingester" {
  name               = "ingester"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role" "processor" {
  name               = "processor"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role" "relay" {
  name               = "relay"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

data "aws_iam_policy_document" "ingester" {
  statement {
    sid       = "ConsumeIngesterQueue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.ingester.arn]
  }

  statement {
    sid       = "ForwardAndDeadLetter"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.jobs_todo.arn, aws_sqs_queue.jobs_todo_fifo.arn, aws_sqs_queue.dead_letter.arn]
  }

  statement {
    sid       = "AnnounceEndStates"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.job_end_state.arn]
  }

  # Reads both stages' records of a job (to resume an unannounced end); writes its
  # own, whose keys start with "ingester#" (functions/core/src/store/dynamo.rs `key`):
  # only rejections have one. It puts the processor's stop below, and marks it announced.
  statement {
    sid       = "ReadJobState"
    actions   = ["dynamodb:GetItem"]
    resources = [aws_dynamodb_table.jobs.arn]
  }

  statement {
    sid       = "ClaimAndRecordOwnJobState"
    actions   = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:PartiQLInsert", "dynamodb:PartiQLUpdate"]
    resources = [aws_dynamodb_table.jobs.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["ingester#*"]
    }
  }

  # A job whose forward failed on its last receive is ended on the processor's record
  # (a stop: attempt 0, ended), put only where the processor has no record yet, so a
  # forward whose answer was lost cannot also run (functions/core/src/store/mod.rs
  # `Unforwarded`). Put, never replace: the condition is in the call.
  statement {
    sid       = "StopTheProcessorForAnUnforwardedJob"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.jobs.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["processor#*"]
    }
  }

  # Once the ingester announced such an end it marks the stop announced, so the
  # processor does not announce it again, or marks its dead letter stored when only
  # the publish failed; the marks may touch no other attribute (the announced mark
  # removes `outbox`, taking the stop out of the relay's index) and name only the
  # attributes their condition checks (`progress`, `end_id`).
  statement {
    sid       = "MarkTheStopAnnounced"
    actions   = ["dynamodb:UpdateItem", "dynamodb:PartiQLUpdate"]
    resources = [aws_dynamodb_table.jobs.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["processor#*"]
    }

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "dynamodb:Attributes"
      values   = ["pk", "announced", "letter_stored", "updated_ms", "expires_at", "outbox", "progress", "end_id"]
    }
  }

  # A replay's rerun of an ended job (functions/core/src/store/replay.rs) is one
  # TransactWriteItems: it puts the replay's mark on the job (keys "replay#<name>#...",
  # written once per replay and job) and reopens the end. A processor end may be
  # reopened only through the attributes the reopening writes or checks (`REOPEN` and
  # `REOPEN_IF_SEEN` in functions/core/src/store/dynamo.rs; IAM counts the names in
  # the condition too); the ingester's own records are above.
  statement {
    sid       = "MarkAReplaysRerun"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.jobs.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["replay#*"]
    }
  }

  statement {
    sid       = "ReopenAProcessorEndForARerun"
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.jobs.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["processor#*"]
    }

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "dynamodb:Attributes"
      values   = ["pk", "progress", "attempt", "holder", "announced", "updated_ms", "expires_at", "outbox", "fingerprint"]
    }
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.ingester.arn}:*"]
  }
}

data "aws_iam_policy_document" "processor" {
  statement {
    sid       = "ConsumeJobsTodo"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.jobs_todo.arn, aws_sqs_queue.jobs_todo_fifo.arn]
  }

  # Failed attempts go back to jobs-todo, delayed, as the job's next attempt.
  statement {
    sid       = "RetryJobs"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.jobs_todo.arn]
  }

  statement {
    sid       = "DeadLetter"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dead_letter.arn]
  }

  statement {
    sid       = "AnnounceEndStates"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.job_end_state.arn]
  }

  # Reads both stages' records of a job (to resume an unannounced end); writes only
  # its own, whose keys start with "processor#" (functions/core/src/store/dynamo.rs `key`).
  statement {
    sid       = "ReadJobState"
    actions   = ["dynamodb:GetItem"]
    resources = [aws_dynamodb_table.jobs.arn]
  }

  statement {
    sid       = "ClaimAndRecordOwnJobState"
    actions   = ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:PartiQLInsert", "dynamodb:PartiQLUpdate"]
    resources = [aws_dynamodb_table.jobs.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["processor#*"]
    }
  }

  # A saga's log (functions/core/src/store/dynamo/saga.rs): one item per job, written
  # whole over the version read ("saga#<job_id>").
  statement {
    sid       = "RecordSagaLogs"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.jobs.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["saga#*"]
    }
  }

  # A saga step's effect under its idempotency key ("effect#<job_id>#<run>#<step>"),
  # the stand-in for the service the step acts on: requested and undone by updates.
  statement {
    sid       = "ApplySagaEffects"
    actions   = ["dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.jobs.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["effect#*"]
    }
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.processor.arn}:*"]
  }
}

# The relay touches no queue but the dead-letter queue: it finds stranded ends in the
# outbox index and finishes what their own delivery left undone (the letter, the
# notification, the announced mark; functions/core/src/relay.rs).
data "aws_iam_policy_document" "relay" {
  statement {
    sid       = "FindStrandedEnds"
    actions   = ["dynamodb:Query"]
    resources = ["${aws_dynamodb_table.jobs.arn}/index/${local.pipeline.outbox_index}"]
  }

  statement {
    sid       = "ReadJobState"
    actions   = ["dynamodb:GetItem"]
    resources = [aws_dynamodb_table.jobs.arn]
  }

  # Takes a stranded end (moves its lease to the relay) and marks it announced, on both
  # stages' records; it never puts or deletes one. No dynamodb:Attributes condition:
  # the take answers with the whole record (ReturnValues ALL_NEW), which a grant
  # restricted to some attributes refuses.
  statement {
    sid       = "TakeAndMarkStrandedEnds"
    actions   = ["dynamodb:UpdateItem", "dynamodb:PartiQLUpdate"]
    resources = [aws_dynamodb_table.jobs.arn]
  }

  statement {
    sid       = "DeadLetter"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dead_letter.arn]
  }

  statement {
    sid       = "AnnounceEndStates"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.job_end_state.arn]
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.relay.arn}:*"]
  }
}

# A customer-managed topic key must let the publishers use it; the AWS-managed
# alias/aws/sns key does so for every principal allowed to publish.
data "aws_kms_key" "topic" {
  count  = local.customer_managed_topic_key ? 1 : 0
  key_id = var.topic_kms_key_id
}

data "aws_iam_policy_document" "topic_key" {
  count = local.customer_managed_topic_key ? 1 : 0

  statement {
    sid       = "EncryptEndStates"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = [data.aws_kms_key.topic[0].arn]
  }
}

resource "aws_iam_role_policy" "ingester_topic_key" {
  count  = local.customer_managed_topic_key ? 1 : 0
  name   = "ingester-topic-key"
  role   = aws_iam_role.ingester.id
  policy = data.aws_iam_policy_document.topic_key[0].json
}

resource "aws_iam_role_policy" "processor_topic_key" {
  count  = local.customer_managed_topic_key ? 1 : 0
  name   = "processor-topic-key"
  role   = aws_iam_role.processor.id
  policy = data.aws_iam_policy_document.topic_key[0].json
}

resource "aws_iam_role_policy" "relay_topic_key" {
  count  = local.customer_managed_topic_key ? 1 : 0
  name   = "relay-topic-key"
  role   = aws_iam_role.relay.id
  policy = data.aws_iam_policy_document.topic_key[0].json
}

resource "aws_iam_role_policy" "ingester" {
  name   = "ingester"
  role   = aws_iam_role.ingester.id
  policy = data.aws_iam_policy_document.ingester.json
}

resource "aws_iam_role_policy" "processor" {
  name   = "processor"
  role   = aws_iam_role.processor.id
  policy = data.aws_iam_policy_document.processor.json
}

resource "aws_iam_role_policy" "relay" {
  name   = "relay"
  role   = aws_iam_role.relay.id
  policy = data.aws_iam_policy_document.relay.json
}
