# The Sluice gateway. Build from the repository's root:
#   docker build -t sluice:0.1.0 .
# Run with a configuration file mounted at /etc/sluice/sluice.yaml (see docs/deployment.md):
#   docker run -p 8000:8000 -v "$PWD/sluice.yaml:/etc/sluice/sluice.yaml:ro" sluice:0.1.0
# Secrets stay out of the image and the file: reference them as ${NAME} in sluice.yaml, pass them with -e NAME.

# Stage 1: the wheel, built from the context alone (.dockerignore lets in pyproject.toml, README.md and src/).
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: the wheel and its dependencies (binary wheels from the package index: no compiler), nothing else.
FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sluice
USER 10001:10001
WORKDIR /tmp

# The configuration is the file mounted here; `-e SLUICE_CONFIG=` (empty) runs the embedded demo instead.
ENV SLUICE_CONFIG=/etc/sluice/sluice.yaml
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["sluice"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
