# Sourced by the install scripts: apt_install PKG... installs the Debian
# packages named (nothing when none are), with one `apt-get update` per run.
apt_install() {
  [ $# -gt 0 ] || return 0
  echo "== apt-get install $*"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${_heatmap_apt_updated:-}" ]; then
    $sudo apt-get update -q
    _heatmap_apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"
}
