# The clip-search app on a CPU: `python app.py` listening on 0.0.0.0:7860, as an unprivileged user.
#   docker build -t clip-search .
#   docker run --rm -p 7860:7860 --env-file .env \
#     -v clip-search-data:/data -v clip-search-models:/models clip-search
# /data holds the collection (catalog, index, local images), /models the Hugging Face cache (HF_HOME): the model
# is downloaded on the first start (~800 MB for siglip-base) and kept there, with what is derived from it
# (XDG_CACHE_HOME: the ONNX text towers, the query path chosen on this machine). Secrets come from --env-file.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# uid 1000, as on Hugging Face Spaces; it owns the two volumes and nothing else. Numeric in USER below, so that
# runtimes that check for a non-root user (Kubernetes' runAsNonRoot) can see it is one.
RUN groupadd --gid 1000 app \
    && useradd --create-home --uid 1000 --gid 1000 app \
    && mkdir -p /data /models \
    && chown app:app /data /models

WORKDIR /app
# torch first, the CPU build from PyTorch's index (pre-requirements.txt), which requirements.txt's pin then keeps:
# PyPI's Linux torch is the CUDA build, several GB that a CPU container never uses.
COPY pre-requirements.txt requirements.txt ./
RUN pip install --no-cache-dir -r pre-requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

COPY . .

ENV HF_HOME=/models \
    XDG_CACHE_HOME=/models/.cache \
    CLIP_SEARCH_DATA_DIR=/data \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False
VOLUME ["/data", "/models"]
EXPOSE 7860
USER 1000:1000

# The first start downloads the model before the app listens: give it time before a failure counts.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 CMD ["python", "scripts/healthcheck.py"]
CMD ["python", "app.py"]
