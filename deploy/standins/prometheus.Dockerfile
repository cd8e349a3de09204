# Stand-in for prom/prometheus:v3.5.0, built offline by deploy/standins/build.sh.
# Debian bookworm's Prometheus 2.42 (not 3.5) laid out as the official image: entrypoint
# /bin/prometheus, working directory and data in /prometheus, running as nobody, wget on PATH.
FROM boring-ml-stack-standin/bookworm:minbase
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
