# The contrib collector image has no shell or HTTP client, so a compose healthcheck cannot
# run in it. Same binary, on a base that has wget.
ARG OTEL_COLLECTOR_IMAGE=otel/opentelemetry-collector-contrib:0.115.1
FROM ${OTEL_COLLECTOR_IMAGE} AS collector

FROM alpine:3.20
COPY --from=collector /otelcol-contrib /otelcol-contrib
USER 10001
ENTRYPOINT ["/otelcol-contrib"]
