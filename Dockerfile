# One image for every job and launcher: s2s-preprocess, s2s-train, s2s-evaluate and
# s2s-cloud (`python -m launch.cloud.*`) (Vertex AI, Kubernetes, TPU VM, Dataflow, retraining steps).
# There is no ENTRYPOINT: each launcher passes the whole command.
#
# Build and push from the repository root (Artifact Registry shown):
#   docker build -t us-docker.pkg.dev/PROJECT/s2s/s2s-pipeline:TAG .
#   docker push us-docker.pkg.dev/PROJECT/s2s/s2s-pipeline:TAG
# Variants:
#   --build-arg TENSORFLOW_EXTRA=          CPU only (the default "and-cuda" adds NVIDIA libraries)
#   --build-arg TPU_PACKAGES="tensorflow-tpu==VERSION -f URL"   Cloud TPU VMs: the TPU build
#       of the pinned TensorFlow, URL https://storage.googleapis.com/libtpu-tf-releases/index.html
#   --target=dataflow-worker               Dataflow workers (--sdk_container_image)
ARG BEAM_VERSION=2.77.0

# Only the dataflow-worker target copies from this stage (Beam's worker boot program).
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam-sdk

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, from setup.py and the pins alone, so code edits reuse this layer.
COPY setup.py constraints.txt ./
RUN for package in pipeline models launch launch/cloud configs; do \
        mkdir -p "$package" && touch "$package/__init__.py"; done \
    && python -m pip install -c constraints.txt ".[preprocess,evaluate,dataflow,cloud]"
ARG TENSORFLOW_EXTRA=and-cuda
RUN if [ -n "$TENSORFLOW_EXTRA" ]; then \
        python -m pip install -c constraints.txt "tensorflow[$TENSORFLOW_EXTRA]"; fi
ARG TPU_PACKAGES=
RUN if [ -n "$TPU_PACKAGES" ]; then python -m pip install $TPU_PACKAGES; fi

# The code. /app keeps setup.py: `--setup_file=./setup.py` works from here.
COPY . .
RUN python -m pip install --no-deps --force-reinstall . \
    && command -v s2s-preprocess s2s-train s2s-evaluate >/dev/null \
    && python -c "import pipeline.preprocess, launch.train, launch.evaluate, launch.cloud.publish"

FROM base AS dataflow-worker
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]

# The default target (last stage): what every launcher's --image names.
FROM base AS s2s-pipeline
CMD ["s2s-train", "--helpshort"]
