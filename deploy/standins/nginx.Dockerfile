# Stand-in for nginx:1.28.0-alpine, built offline by deploy/standins/build.sh.
# Debian bookworm's nginx 1.22 (not 1.28, not Alpine) with what the official image has and the
# stack uses: an `nginx` user, logs to stdout/stderr, SIGQUIT to stop, wget (busybox's in Alpine).
FROM boring-ml-stack-standin/bookworm:minbase
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin nginx \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
STOPSIGNAL SIGQUIT
EXPOSE 80
CMD ["nginx", "-g", "daemon off;"]
