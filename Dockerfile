# Placeholder: the multi-stage CPU/GPU images land with issue 8 (deployment).
# Until then this serves the bundled model with the serving install only (no torch).
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY serve serve
COPY client client
COPY proto proto
COPY train train
COPY export export
RUN pip install --no-cache-dir .
COPY models/digits/2/model.onnx models/digits/2/metadata.json /models/digits/2/
USER 65532:65532
EXPOSE 50051 8000
ENTRYPOINT ["ganserve", "serve", "--model-repository", "/models"]
