# The MLflow tracking server of the compose stack: PostgreSQL backend store, artifacts on the
# S3-compatible store (MinIO), served through the server (--serve-artifacts). Non-root.
#   docker build -f docker/mlflow.Dockerfile -t mfdiffuser-mlflow .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MLFLOW_DISABLE_TELEMETRY=true
# mlflow at the version pyproject.toml pins; the PostgreSQL driver and boto3 for S3 artifacts
RUN pip install "mlflow==3.17.2" "psycopg2-binary>=2.9,<3" "boto3>=1.35,<2"
RUN useradd --create-home --uid 1000 mlflow
USER mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow"]
