# Mailhaven container image: one process, non-root, mail and config on volumes.
#
#   docker build -t mailhaven .
#   docker volume create mailhaven-config; docker volume create mailhaven-data
#   docker run --rm -v mailhaven-config:/etc/mailhaven -v mailhaven-data:/var/lib/mailhaven \
#       mailhaven init --domain example.org --hostname mail.example.org
#   docker run --rm -i -v mailhaven-config:/etc/mailhaven mailhaven user add postmaster@example.org
#   docker run -d --name mailhaven --stop-timeout 40 \
#       -v mailhaven-config:/etc/mailhaven -v mailhaven-data:/var/lib/mailhaven \
#       -p 25:25 -p 465:465 -p 587:587 -p 993:993 -p 995:995 -p 143:143 -p 110:110 mailhaven
#   docker kill -s HUP mailhaven      # reload config, users, certificates, DKIM keys
#
# The server binds ports below 1024 as a non-root user because Docker (>= 20.10) sets
# net.ipv4.ip_unprivileged_port_start=0 in the container's network namespace.
# Details: docs/production.md. tests/integration/test_docker_replay.py replays these steps.

# --- build: wheels for mailhaven and its dependencies --------------------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# --use-pep517: pyspf and dkimpy ship only sdists; build them in isolation whatever pip the image has.
RUN pip wheel --no-cache-dir --use-pep517 --wheel-dir /wheels .

# --- run -----------------------------------------------------------------------------------------
FROM python:3.11-slim
ARG MAILHAVEN_UID=2525
RUN groupadd --system --gid ${MAILHAVEN_UID} mailhaven \
 && useradd --system --uid ${MAILHAVEN_UID} --gid mailhaven --home-dir /var/lib/mailhaven \
        --no-create-home --shell /usr/sbin/nologin mailhaven \
 && install -d -o mailhaven -g mailhaven -m 0700 /etc/mailhaven /var/lib/mailhaven
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels mailhaven && rm -rf /wheels

ENV MAILHAVEN_CONFIG=/etc/mailhaven/mailhaven.toml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER mailhaven
WORKDIR /var/lib/mailhaven
# Config, users file, certificate, DKIM keys / mail, queue, indexes: back up both.
VOLUME ["/etc/mailhaven", "/var/lib/mailhaven"]

# SMTP from other mail servers (MX); STARTTLS offered
EXPOSE 25
# SMTP submission with implicit TLS, for mail clients (RFC 8314)
EXPOSE 465
# SMTP submission with STARTTLS, for mail clients
EXPOSE 587
# IMAP with STARTTLS
EXPOSE 143
# IMAP with implicit TLS
EXPOSE 993
# POP3 with STARTTLS
EXPOSE 110
# POP3 with implicit TLS
EXPOSE 995

# Connects to every enabled listener and reads its greeting; exit 0 healthy, 1 not.
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 CMD ["mailhaven", "health"]
# SIGTERM: stop accepting, let sessions finish (shutdown_deadline, 30 s), exit 0. Give docker stop
# more than that: --stop-timeout 40.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mailhaven"]
CMD ["serve"]
