# Shared by the scripts (sourced): logging with the script's prefix ($LOG_PREFIX), and
# installing Debian packages on demand.
log() { printf '[%s] %s\n' "${LOG_PREFIX:-wa8s}" "$*" >&2; }
die() { log "$*"; exit 1; }

apt_install() {
  command -v apt-get >/dev/null || die "need $*, and apt-get is not available: install them and re-run"
  log "installing $* with apt-get"
  if [ ! -f /var/lib/apt/lists/.wa8s-updated ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq && touch /var/lib/apt/lists/.wa8s-updated
  fi
  # Another script (the background node-image build, say) may be installing too: wait for it.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}
