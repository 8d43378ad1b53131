# One image for every Damselfly component: operator, scheduler, peer, seed peer.
# Build: docker build -t damselfly:dev .   (kind: kind load docker-image damselfly:dev)
# BASE is a build argument so an offline build (scripts/images) can substitute its own
# Debian-bookworm Python image for the Docker Hub one; the default is what users get.
ARG BASE=python:3.11.14-slim-bookworm

# --- build stage: turn the source into wheels (ours and every dependency's)
FROM ${BASE} AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2.post1
COPY pyproject.toml README.md ./
COPY damselfly ./damselfly
RUN python -m build --wheel --outdir /dist \
 && pip wheel --no-cache-dir --wheel-dir /wheels /dist/damselfly-*.whl

# --- final stage: no compilers, no build tools, a non-root user
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --gid 65532 damselfly \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin damselfly
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels damselfly \
 && rm -rf /wheels
USER 65532:65532
EXPOSE 65001 65002 65003 8002 8000
ENTRYPOINT ["damselfly"]
CMD ["--help"]
