# Job state: one item per stage and job id, so a re-delivered event or message is neither
# executed nor announced twice. Items expire through TTL once no re-delivery can come.
#
# The outbox index is sparse: only a record whose end is recorded but not yet announced
# carries `outbox` (a shard, "0".."15", so the relay's reads spread over partitions), and
# the announced mark removes it. Keyed by shard and `lease_until`, it lets the outbox
# relay find the stranded ends without scanning the table.

resource "aws_dynamodb_table" "jobs" {
  #checkov:skip=CKV_AWS_119:The table holds job ids, fingerprints and results, no secrets; DynamoDB encrypts at rest with an AWS-owned key.
  name         = local.pipeline.state_table
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "outbox"
    type = "S"
  }

  attribute {
    name = "lease_until"
    type = "N"
  }

  # Keys only: an index write then stays one write unit whatever the record's size (its
  # detail can be large); the relay reads a record it finds by its key.
  global_secondary_index {
    name            = local.pipeline.outbox_index
    hash_key        = "outbox"
    range_key       = "lease_until"
    projection_type = "KEYS_ONLY"
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
