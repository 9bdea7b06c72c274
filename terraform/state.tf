# Job state: one item per stage and job id, so a re-delivered event or message is neither
# executed nor announced twice. Items expire through TTL once no re-delivery can come.

resource "aws_dynamodb_table" "jobs" {
  #checkov:skip=CKV_AWS_119:The table holds job ids, fingerprints and results, no secrets; DynamoDB encrypts at rest with an AWS-owned key.
  name         = local.pipeline.state_table
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }
}
