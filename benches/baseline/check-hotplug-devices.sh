#!/usr/bin/env bash
# The baseline of benches/watchdog.rs: a node-problem-detector custom plugin of the kind
# people write today to catch a hotplugged disk that vanished under a VM. NPD runs it every
# N seconds; exit 0 means OK, 1 means a problem, and stdout is the message.
#
# It walks the kubelet's pods directory for the nodes virt-handler made in launcher pods
# (pods/<uid>/volumes/kubernetes.io~empty-dir/hotplug-disks/<volume>) and checks that each
# names a block device the kernel still has (/sys/dev/block/MAJ:MIN). One find and one
# stat for the whole tree, so it stays cheap at thousands of volumes.
#
#   check-hotplug-devices.sh [KUBELET_PODS_DIR]
set -uo pipefail
root="${1:-/var/lib/kubelet/pods}"
missing=0
while read -r path major minor; do
  dev="$((16#$major)):$((16#$minor))"
  if [[ ! -e "/sys/dev/block/$dev" ]]; then
    echo "missing $path $dev"
    missing=1
  fi
done < <(find "$root" -mindepth 5 -maxdepth 5 -type b \
           -path '*/volumes/kubernetes.io~empty-dir/hotplug-disks/*' -print0 \
         | xargs -0 -r stat -c '%n %t %T')
exit "$missing"
