# Stand-in for python:3.11.13-slim-bookworm, built offline by deploy/standins/build.sh.
# Debian bookworm's own Python 3.11 (3.11.2, not 3.11.13) at the paths the official image has:
# /usr/local/bin/python3 and /usr/local/bin/python, PATH with /usr/local/bin first, LANG C.UTF-8.
# It trusts the CA bundle of the machine that builds it (build.sh copies it in): a network that
# intercepts TLS to PyPI must work for the builder stage's uv too, which UV_NATIVE_TLS makes read
# that bundle instead of its own roots. Both reach the app image's builder and runtime stages.
FROM boring-ml-stack-standin/bookworm:minbase
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python3.11 \
    && ln -s python3.11 /usr/local/bin/python3 \
    && ln -s python3 /usr/local/bin/python
COPY host-ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHON_VERSION=3.11.2 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    UV_NATIVE_TLS=true
CMD ["python3"]
