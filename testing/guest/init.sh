#!/bin/busybox sh
# /init of the pmem guest harness (see testing/guest/README.md).
# Brings up the data disk, runs the case script the host wrote on it, and
# powers off. Anything unexpected ends in a poweroff too: the host notices the
# missing "@@pmem-guest done" line and shows this serial log.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "@@pmem-guest booted $(cut -d' ' -f1 /proc/uptime)"
for m in /modules/*.ko; do
    insmod "$m" || echo "@@pmem-guest error insmod $m failed"
done
# virtio_blk probes asynchronously: wait for the disk node.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t ext4 -o noatime /dev/vda /data; then
    sh /data/case.sh
    echo "@@pmem-guest case-exit $?"
    sync
    umount /data || echo "@@pmem-guest error umount /data failed"
else
    echo "@@pmem-guest error cannot mount the data disk /dev/vda"
fi
echo "@@pmem-guest poweroff"
poweroff -f
