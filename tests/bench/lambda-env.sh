# shellcheck shell=bash
# The environment a Lambda function binary gets when its init is timed (process start to its first
# Runtime API poll) away from AWS: tests/bench/run's Lambda init rows, tests/bench/memory's chat
# init and infra/build's init budget all source this file, so they time the same init.
#
#   . tests/bench/lambda-env.sh
#   lambda_env_config "$dir/lambda-config.toml"   # writes the mock config GATEWAY_CONFIG names
#   ( lambda_env_export "$dir/lambda-config.toml"; AWS_LAMBDA_FUNCTION_NAME=chat ... )
#
# What the functions read at init is this environment (grep `env::var` in functions/ and
# shared/). AWS_ENDPOINT_URL points at a closed loopback port, so nothing leaves the machine.
# No GATEWAY_ADMIN_KEY: `chat` would write it to DynamoDB before its first poll.
# AWS_LAMBDA_FUNCTION_NAME and AWS_LAMBDA_RUNTIME_API are the caller's (per function, per start),
# as is GATEWAY_DATA_DIR (a fresh one per start).

# Writes a config with the built-in mock provider and one model on it to FILE.
lambda_env_config() { # FILE
    cat >"$1" <<'EOF'
[providers.mock]
kind = "mock"

[models.mock]
deployments = [{ provider = "mock", model = "mock" }]
EOF
}

# Exports the init environment into the current shell (call it in a subshell). CONFIG is the file
# lambda_env_config wrote.
lambda_env_export() { # CONFIG
    export AWS_LAMBDA_FUNCTION_MEMORY_SIZE=1024 AWS_LAMBDA_FUNCTION_VERSION=1 \
        AWS_LAMBDA_LOG_STREAM_NAME=bench AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/bench \
        AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=test \
        AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true \
        AWS_ENDPOINT_URL=http://127.0.0.1:9 \
        GATEWAY_KEYS_TABLE=bench-keys GATEWAY_LIMITS_TABLE=bench-limits \
        GATEWAY_CACHE_TABLE=bench-cache GATEWAY_CONFIG="$1" \
        RUST_LOG=info
    # The batch and collections backends: `ingest` and `batch` exit before their first poll
    # without them, and the template gives them to `chat` too (admin and authorizer read none).
    export GATEWAY_BATCH_TABLE=bench-batch GATEWAY_BATCH_QUEUE_URL=http://127.0.0.1:9/000000000000/bench-batch \
        GATEWAY_BUCKET=bench-bucket GATEWAY_COLLECTIONS_TABLE=bench-collections
}
