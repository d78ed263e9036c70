//! The `--help` text: every supported option, and how accel differs from QEMU.

const HELP: &str = "\
usage: accel [options]

accel runs a Linux guest on KVM with a qemu-system-x86_64 compatible command line. Its
virtio devices are vhost-user backends running in other processes. Options start with one
dash (--option also works); a suboption list is key=value,... where ',,' is a literal comma
and the first key may be left out (e.g. -m 128 is -m size=128). Booleans are on/off, yes/no
or true/false. Anything accel does not support is an error, never silently ignored.

Machine:
  -accel kvm[,kernel-irqchip=on]   KVM (the default); tcg and other accelerators are refused
  -enable-kvm                      same as -accel kvm
  -machine, -M [type=]pc|q35|microvm[,accel=kvm][,memory-backend=ID]
                                   the platform is the same for all three types (PC-style:
                                   PIC/IOAPIC/PIT, legacy PCI config ports, ACPI with a power
                                   button and S5); pc-i440fx-*/pc-q35-* names are accepted.
                                   acpi=off (or -no-acpi): MP table instead of ACPI. Also
                                   accepted: acpi=on|auto, kernel-irqchip=on, usb=off,
                                   dump-guest-core=on|off and mem-merge=on|off (host-side
                                   hints, ignored)
  -cpu host|max[,+FEAT][,-FEAT][,FEAT=on|off]
                                   the host CPU as KVM reports it (default: host; QEMU's
                                   default is qemu64). FEAT is a CPUID flag by QEMU name
                                   (x2apic, avx2, popcnt, sse4.2, ...). Named models and
                                   non-flag CPU properties are refused
  -smp [cpus=]N[,sockets=S][,cores=C][,threads=T][,maxcpus=M][,dies=1][,clusters=1]
                                   vCPUs and topology with QEMU's rules (missing values are
                                   computed, the product must equal maxcpus); at most 255
                                   vCPUs; maxcpus must equal cpus (no CPU hotplug)
  -m [size=]SIZE                   guest RAM (default 128M); without a suffix SIZE is MiB;
                                   suffixes B K M G T. maxmem=/slots= are refused (no
                                   memory hotplug)
  -object memory-backend-memfd,id=ID,size=SIZE[,share=on|off][,hugetlb=on|off]
                                   a RAM backend (size in bytes unless suffixed, a multiple
                                   of 4 KiB; share defaults to on as in QEMU); seal=, merge=
                                   and dump= are accepted and ignored. Other -object types
                                   are refused
  -numa node,memdev=ID[,nodeid=N]  guest RAM is made of these backends, laid out from address
                                   0 in nodeid order; their sizes must add up to -m. The
                                   guest sees no NUMA topology (accel has no ACPI SRAT)
  -name [guest=]NAME[,debug-threads=on|off]
                                   a name for log lines (debug-threads is ignored)

Boot (accel has no firmware; it always boots Linux directly):
  -kernel PATH                     ELF vmlinux with a PVH note, or bzImage (required)
  -initrd PATH                     initramfs
  -append CMDLINE                  kernel command line
  -no-reboot                       a guest reset ends accel with exit status 0

Console and host-side options:
  -serial DEV                      COM1 (0x3f8, IRQ 4): stdio, null, none, file:PATH,
                                   unix:PATH,server=on[,wait=off] (listening socket only;
                                   wait defaults to on as in QEMU), or mon:stdio (accel has
                                   no monitor: same as stdio). Given once at most. Without
                                   -serial, the serial port uses stdio (accel has no
                                   graphical console), or is discarded with -nodefaults
  -nographic                       accepted (accel has no display; serial defaults to stdio)
  -display none                    accepted; other displays are refused
  -vga none, -parallel none, -monitor none
                                   accepted (accel has none of these); other values refused
  -nodefaults                      accepted; without -serial the serial output is discarded
  -no-user-config, -no-acpi, -no-hpet
                                   accepted (accel reads no config files and has no HPET;
                                   -no-acpi is -machine acpi=off)
  --timing                         (accel extension) report start-up timing on stderr
  -h, -help, --help                this text
  -version, --version              print the version

vhost-user devices (the backend is a separate process listening on a unix socket):
  -chardev socket,id=ID,path=PATH[,reconnect=SECONDS]
                                   the backend's socket; accel connects as a client
                                   (server=on and TCP sockets are refused)
  -device vhost-user-blk-pci,chardev=ID[,num-queues=N][,queue-size=N][,bootindex=N]
  -device vhost-user-vsock-pci,chardev=ID
  -device vhost-user-rng-pci,chardev=ID
  -device vhost-user-console-pci,chardev=ID      (accel extension)
  -device vhost-user-device-pci,chardev=ID,virtio-id=N[,num_vqs=N][,vq_size=N][,config_size=N]
                                   any virtio device type served by a vhost-user backend
  -netdev vhost-user,id=ID,chardev=ID[,queues=N]
  -device virtio-net-pci,netdev=ID[,mac=xx:xx:xx:xx:xx:xx][,mq=on|off][,bootindex=N]
                                   all -device drivers also take id=, addr=SLOT[.0] (hex,
                                   slot 1..1f, function 0 only), bus=pci.0|pcie.0,
                                   disable-legacy=on|auto (devices are modern-only, so off
                                   is refused), disable-modern=off and romfile= (empty);
                                   the -non-transitional driver names are accepted too.
                                   bootindex is accepted and ignored. vhost-user devices
                                   need shared guest RAM: -object memory-backend-memfd,
                                   share=on with -numa node,memdev= or -machine
                                   memory-backend=

Not supported (an error says so): -daemonize, -drive/-blockdev/-hda (use vhost-user-blk),
-nic/-net (use -netdev vhost-user), -bios, -S, -s/-gdb, -qmp/-monitor other than none,
migration and snapshots, display options, USB, and any other QEMU option.

Example (the test guest):
  accel -accel kvm -cpu host -machine pc -m 128 -smp 2 -nodefaults -serial stdio \\
    -no-reboot -kernel vmlinux -initrd lean.cpio -append \"console=ttyS0 reboot=k panic=-1\"
";

/// The full `--help` text.
pub fn help_text() -> String {
    HELP.to_string()
}
