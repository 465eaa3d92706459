# One image for the webhook (`serve`), the proxy-init container (`init-iptables`) and the CNI
# agent (`cni agent`), which copies the static relay onto each node.

# Build stage: the app and its dependencies into a virtualenv, from a wheel; the CNI relay,
# static, with Debian's musl.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip musl-tools binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
COPY certs ./certs
COPY scripts/build-relay ./scripts/build-relay
RUN mkdir -p /opt/proxy-injector/lib && sh scripts/build-relay /opt/proxy-injector/lib/cni-relay
RUN python3 -m venv /opt/proxy-injector \
 && /opt/proxy-injector/bin/pip install --no-cache-dir --upgrade pip "setuptools>=77" wheel \
 && /opt/proxy-injector/bin/pip wheel --no-cache-dir --no-deps -w /wheels . \
 && /opt/proxy-injector/bin/pip install --no-cache-dir /wheels/*.whl

# Final stage: Python, iptables (nft and legacy) for proxy-init, the virtualenv; no compilers.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 iptables \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin proxy-injector
COPY --from=build /opt/proxy-injector /opt/proxy-injector
ENV PATH=/opt/proxy-injector/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8443
ENTRYPOINT ["proxy-injector"]
CMD ["serve", "--self-signed", "--host", "0.0.0.0"]
