#!/usr/bin/env bash
# System packages some tests use, from Debian's archive: dicom3tools (dciodvfy validates the DICOM SEG/RTSTRUCT we
# write) and chromium (the audit page's browser test). Idempotent; installs only what is missing. Without root or
# apt-get it says so and returns 0: the tests that need a package then skip, naming it.
set -uo pipefail
missing=()
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_packages: cannot install ${missing[*]} (needs root and apt-get); the tests that use them will skip"
  exit 0
fi
echo "install_system_packages: installing ${missing[*]} (Debian packages)"
if ! { apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}"; } >/tmp/clips_apt.log 2>&1; then
  echo "install_system_packages: apt-get failed (see /tmp/clips_apt.log); the tests that use ${missing[*]} will skip"
fi
exit 0
