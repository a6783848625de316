#!/bin/sh
# Runs inside the Debian guest booted from its own disk through UEFI firmware
# (boot-uefi, boot-uefi-encrypted): report the running kernel, whether the
# kernel was started by UEFI firmware, and where the root and the EFI system
# partition are mounted (both found through /etc/fstab by UUID). With the
# root-marker.sh script beside it (boot-uefi-encrypted), run it too.
here=$(dirname "$0")
echo "E2E-UNAME-R=$(uname -r)"
if [ -d /sys/firmware/efi ]; then echo "E2E-EFI=present"; else echo "E2E-EFI=absent"; fi
echo "E2E-ROOT-FSTYPE=$(findmnt -n -o FSTYPE /)"
echo "E2E-ESP-FSTYPE=$(findmnt -n -o FSTYPE /boot/efi)"
if [ -f /boot/efi/EFI/BOOT/BOOTX64.EFI ]; then echo "E2E-BOOTX64=present"; else echo "E2E-BOOTX64=absent"; fi
[ ! -f "$here/root-marker.sh" ] || sh "$here/root-marker.sh"
