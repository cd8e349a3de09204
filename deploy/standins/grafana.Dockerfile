# Stand-in for grafana/grafana:12.2.0, built offline by deploy/standins/build.sh. NOT Grafana:
# no registry this CI reaches carries it. It runs as Grafana's uid 472, checks that the
# provisioning files compose mounts parse, and answers GET /api/health on :3000 so the stack's
# health check and `up --wait` have something real to wait for. The dashboards' queries are
# checked against Prometheus by deploy/compose_check.py instead.
FROM python:3.11.13-slim-bookworm
COPY grafana_standin.py /usr/share/grafana/standin.py
# As the official image: its data folder is world-writable (a tmpfs there copies that mode).
RUN mkdir -p /var/lib/grafana /etc/grafana/provisioning && chmod 777 /var/lib/grafana
USER 472:0
EXPOSE 3000
ENTRYPOINT ["python3", "/usr/share/grafana/standin.py"]
