#!/usr/bin/env bash
# Podman as the container engine that `docker compose` drives, on a machine without Docker or
# systemd (these machines, CI). As root; Podman, runc, netavark and aardvark-dns from Debian's
# packages (.ci/run installs them; docs/deploy.md, "Build and run the images without a
# registry").
#
#   docker/podman/engine.sh configure   write Podman's settings for this machine (a drop-in)
#   docker/podman/engine.sh start       configure, then start Podman's Docker-compatible API on
#                                       $GRADREG_PODMAN_SOCKET and the healthcheck loop
#   docker/podman/engine.sh stop        stop both, by the process ids that start recorded
#   docker/podman/engine.sh env         print the DOCKER_HOST line for the shell (eval it)
#
# start is idempotent: what is already running is left running.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

state="${GRADREG_PODMAN_STATE:-/run/gradreg-podman}"
socket="${GRADREG_PODMAN_SOCKET:-$state/podman.sock}"
dropin=/etc/containers/containers.conf.d/gradreg.conf

configure() {
    for tool in podman runc netavark mmdebstrap; do
        if ! command -v "$tool" >/dev/null && [[ ! -x "/usr/lib/podman/$tool" ]]; then
            echo "error: $tool is missing: apt-get install -y --no-install-recommends podman" \
                "runc netavark aardvark-dns mmdebstrap uidmap slirp4netns fuse-overlayfs" >&2
            exit 2
        fi
    done
    if ! cmp -s "$here/containers.conf" "$dropin"; then
        # The network backend is chosen once: containers or networks made under CNI would be
        # lost from view. Refuse rather than hide them.
        if [[ "$(podman info --format '{{.Host.NetworkBackend}}')" != netavark ]] \
            && [[ -n "$(podman ps --all --quiet)$(podman network ls --quiet | grep -vx podman)" ]]; then
            echo "error: Podman has containers or networks under its CNI backend; remove them" \
                "(or run podman system reset) before switching it to netavark" >&2
            exit 2
        fi
        mkdir -p "$(dirname "$dropin")"
        cp "$here/containers.conf" "$dropin"
        echo "wrote $dropin"
    fi
}

alive() {  # alive NAME: the recorded process of that name is running
    [[ -s "$state/$1.pid" ]] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null
}

start() {
    configure
    mkdir -p "$state"
    if ! alive service; then
        rm -f "$socket"
        # --time=0: the API never exits for want of clients.
        setsid podman system service --time=0 "unix://$socket" \
            >>"$state/service.log" 2>&1 </dev/null &
        echo $! >"$state/service.pid"
    fi
    if ! alive healthchecks; then
        setsid python3 "$here/healthchecks.py" >>"$state/healthchecks.log" 2>&1 </dev/null &
        echo $! >"$state/healthchecks.pid"
    fi
    for _ in $(seq 100); do
        if curl --silent --fail --unix-socket "$socket" http://d/_ping >/dev/null; then
            echo "Podman's API on unix://$socket"
            return 0
        fi
        sleep 0.1
    done
    echo "error: Podman's API did not answer on $socket; see $state/service.log" >&2
    exit 1
}

stop() {
    for name in healthchecks service; do
        if alive "$name"; then
            pid="$(cat "$state/$name.pid")"
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$state/$name.pid"
    done
}

case "${1:-}" in
    configure) configure ;;
    start) start ;;
    stop) stop ;;
    env) echo "export DOCKER_HOST=unix://$socket DOCKER_BUILDKIT=0" ;;
    *) echo "usage: $0 configure|start|stop|env" >&2; exit 2 ;;
esac
