# Stand-in for postgres:16.10-bookworm, built offline by deploy/standins/build.sh.
# Debian bookworm's PostgreSQL 15 (not 16) behind an entrypoint that honours what the stack
# uses of the official one: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA, a first-start
# initdb with scram-sha-256 for TCP, `postgres` as the command, pg_isready on PATH, running as
# root (drops to postgres) or as the postgres user (compose's `user: postgres`).
FROM boring-ml-stack-standin/bookworm:minbase
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/standin.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
RUN mkdir -p "$PGDATA" /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 1777 "$PGDATA" \
    && chmod 3777 /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
