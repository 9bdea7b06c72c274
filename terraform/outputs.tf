output "ingester_queue_url" {
  description = "Where EventBridge delivers job events"
  value       = aws_sqs_queue.ingester.url
}

output "jobs_todo_queue_url" {
  description = "Validated jobs waiting for the processor"
  value       = aws_sqs_queue.jobs_todo.url
}

output "jobs_todo_fifo_queue_url" {
  description = "Validated jobs with an ordering_key, one FIFO group per key"
  value       = aws_sqs_queue.jobs_todo_fifo.url
}

output "dead_letter_fifo_queue_url" {
  description = "Records of jobs-todo.fifo that no processor invocation could report (SQS's own redrive)"
  value       = aws_sqs_queue.dead_letter_fifo.url
}

output "dead_letter_queue_url" {
  description = "Rejected and failed jobs, each with its error history"
  value       = aws_sqs_queue.dead_letter.url
}

output "job_end_state_topic_arn" {
  description = "Topic announcing each job's end state"
  value       = aws_sns_topic.job_end_state.arn
}

output "event_rule_arn" {
  description = "The rule routing `jobs` events to the ingester queue"
  value       = aws_cloudwatch_event_rule.ingester.arn
}

output "function_names" {
  description = "The deployed Lambda functions"
  value = [
    aws_lambda_function.ingester.function_name,
    aws_lambda_function.processor.function_name,
    aws_lambda_function.relay.function_name,
  ]
}

output "relay_schedule_rule_arn" {
  description = "The rule running the outbox relay on its schedule"
  value       = aws_cloudwatch_event_rule.relay.arn
}

output "end_state_queue_url" {
  description = "The queue subscribed to every end state (only with end_state_queue = true), else null"
  value       = var.end_state_queue ? aws_sqs_queue.end_states[0].url : null
}
