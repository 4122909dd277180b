# syntax=docker/dockerfile:1
# The MLflow tracking server: PostgreSQL backend store, artifacts served from the S3 bucket.
# The same mlflow version as the application image (docker/constraints.txt), plus boto3 for S3.
# Build context: the repository root.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true
COPY docker/constraints.txt /opt/pins.txt
# pip's downloads stay in the build's cache mount (docker/Dockerfile shares it), not in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --constraint /opt/pins.txt mlflow 'psycopg[binary]' boto3 \
    && useradd --uid 1000 --user-group --create-home --shell /bin/bash mlflow
COPY --chmod=0755 docker/probe.py /usr/local/bin/gradreg-probe
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
