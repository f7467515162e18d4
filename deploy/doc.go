// Package deploy holds no library code: it is the home of what installs
// moongate on a gateway (the systemd unit moongate.service, install.sh, the
// Debian packaging in nfpm.yaml and debian/, the installed configuration
// made by config.sh from config.example.yaml) and of the tests that check
// them for real: systemd-analyze verify, install.sh into a scratch root,
// dpkg -i / -r / --purge of the amd64 package, lintian, and the smoke
// scenario of the armv7 and arm64 binaries under qemu-user.
//
// test-systemd.sh (make test-systemd, not part of make test) goes further:
// it boots Debian with systemd in a container, installs the package and
// checks the running service (docs/deploy.md).
//
// The tests that change the machine (dpkg, useradd) need root and skip
// with a message otherwise; CI runs as root. The footprint tool is in
// deploy/footprint.
package deploy
