# A local stand-in for python:3.11-slim-bookworm, for building paraserve's images where no
# registry can be pulled from (e2e/kind/images.sh): Debian's Python 3.11 on the debootstrap base,
# as the official image behaves for the Dockerfiles — `python` on the PATH, pip, setuptools and
# wheel installed where pip itself can uninstall them, venv, no externally-managed marker.
#
# pip trusts the host's CA bundle (host-ca.crt, copied in by images.sh): where the host reaches
# package registries through a TLS-intercepting proxy, so do the builds. Only the images built
# on this local base carry it; the published images build on python:3.11.11-slim-bookworm.
ARG BASE_IMAGE=paraserve.local/debian:bookworm
FROM ${BASE_IMAGE}
ENV LANG=C.UTF-8 PIP_CERT=/usr/local/share/ca-certificates/host-ca.crt
COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python-is-python3 ca-certificates \
    && rm -f /usr/lib/python3.*/EXTERNALLY-MANAGED \
    && pip_wheel="$(ls /usr/share/python-wheels/pip-*.whl)" \
    && python "${pip_wheel}/pip" install --no-cache-dir --disable-pip-version-check \
        --no-index --find-links /usr/share/python-wheels pip setuptools \
    && python -m pip install --no-cache-dir --disable-pip-version-check wheel \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*
CMD ["python3"]
