#!/bin/sh
# What tests/test_remote.py needs to build its second host: Debian's OpenSSH server (run by the test itself,
# inside a network namespace) and iproute2. Installed when missing, as root, without starting the system's sshd.
set -eu
[ -x /usr/sbin/sshd ] && command -v ip >/dev/null && command -v unshare >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_sshd.sh: not root or no apt-get: tests/test_remote.py will be skipped" >&2
    exit 0
fi
# a policy-rc.d that says 101 keeps the package from starting the system's sshd
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$guard"
    chmod 755 "$guard"
fi
trap '[ -z "$guard" ] || rm -f "$guard"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends openssh-server openssh-client iproute2 util-linux >/dev/null
