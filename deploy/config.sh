#!/bin/sh
# Prints the configuration installed as /etc/moongate/config.yaml by the
# Debian package and by install.sh. It is deploy/config.example.yaml (the
# one source of truth, checked against the built-in defaults by a test)
# with the paths of an installed gateway: data_dir /var/lib/moongate (the
# unit's StateDirectory) and functions_dir /etc/moongate/functions.
# deploy/deploy_test.go checks that nothing else differs.
set -eu
example="${1:-$(dirname "$0")/config.example.yaml}"
for line in 'data_dir: ./moongate-data' 'functions_dir: ""' '# (This file is loaded by a test that checks it equals the built-in defaults' '# and mentions every key.)'; do
  if [ "$(grep -cxF "$line" "$example")" -ne 1 ]; then
    echo "config.sh: $example no longer has exactly one line '$line': update deploy/config.sh" >&2
    exit 1
  fi
done
sed \
  -e 's|^data_dir: ./moongate-data$|data_dir: /var/lib/moongate|' \
  -e 's|^functions_dir: ""$|functions_dir: /etc/moongate/functions|' \
  -e 's|^# (This file is loaded by a test that checks it equals the built-in defaults$|# Installed by the moongate package or install.sh: the built-in defaults|' \
  -e 's|^# and mentions every key.)$|# except data_dir and functions_dir, which point at the installed paths.|' \
  "$example"
