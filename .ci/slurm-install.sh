#!/usr/bin/env bash
# Install the Debian packages that tests/runner/test_executor_slurm.py needs for a real single-node Slurm
# (see tests/slurm/cluster.py). Idempotent and quick: does nothing when every binary is there,
# runs `apt-get update` only when the package lists do not know the packages yet.
# Daemons are NOT started here: the test fixture starts and stops them itself.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
BINARIES=(slurmctld slurmd sbatch sacct sacctmgr munged slurmdbd mariadbd mariadb-install-db)

missing=0
for b in "${BINARIES[@]}"; do
    if ! command -v "$b" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$b" ] && [ ! -x "/usr/bin/$b" ]; then
        missing=1
    fi
done
if [ "$missing" = 0 ]; then
    echo "slurm-install: all Slurm, munge and MariaDB binaries present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# The lists know the packages when apt-cache has a candidate for each; update only otherwise.
need_update=0
for p in "${PACKAGES[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        need_update=1
    fi
done
if [ "$need_update" = 1 ]; then
    $SUDO apt-get update -qq
fi

# policy-rc.d 101: the packages' maintainer scripts must not start daemons (the fixture owns them).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

install() { $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
if ! install; then
    # stale package lists (a version no longer on the mirror): refresh once and try again
    [ "$need_update" = 1 ] && exit 1
    $SUDO apt-get update -qq
    install
fi
echo "slurm-install: installed ${PACKAGES[*]}"
