# PEC Gateway container image: the README's install step (`pip install .`) on a slim Python,
# run as an unprivileged user. See docs/deploy.md ("Docker") for the volumes and the first run.
#
#   docker build -t pecgw .
#   docker run -d --name pecgw --stop-timeout 45 \
#     -v /srv/pecgw/etc:/etc/pecgw -v /srv/pecgw/state:/var/lib/pecgw \
#     -p 993:993 -p 465:465 -p 587:587 pecgw
#
# `docker stop` waits 10 s before SIGKILL unless told otherwise: give it more than shutdown_grace
# (--stop-timeout 45, or stop_grace_period: 45s in compose) so running commands can finish.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid and gid, so the host folders behind the volumes can be given to it (chown 10993:10993).
RUN groupadd --system --gid 10993 pecgw \
 && useradd --system --uid 10993 --gid pecgw --home-dir /var/lib/pecgw --no-create-home \
            --shell /usr/sbin/nologin pecgw \
 && install -d -o pecgw -g pecgw -m 0700 /etc/pecgw /var/lib/pecgw

WORKDIR /usr/src/pecgw
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policy ./policy
RUN pip install --no-cache-dir . \
 && rm -rf /usr/src/pecgw
COPY config/gateway.example.toml config/policy.example.toml /usr/share/pecgw/

WORKDIR /var/lib/pecgw
USER 10993:10993
VOLUME ["/etc/pecgw", "/var/lib/pecgw"]
# IMAPS, IMAP with STARTTLS, SMTPS submission, submission with STARTTLS
EXPOSE 993 143 465 587
# /healthz on the loopback HTTP endpoint ([admin] http_listen, default 127.0.0.1:9925); slim has no curl
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9925/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["pecgw", "serve", "--config", "/etc/pecgw/gateway.toml"]
