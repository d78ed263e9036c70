//! The `--help` text: every supported option, and how accel differs from QEMU. The
//! `-device` synopses come from the device table.

use vu_spec::devices::{DEVICES, PropKind};

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
  -machine, -M [type=]pc|q35|microvm|none[,accel=kvm][,memory-backend=ID]
                                   the platform is the same for all three types (PC-style:
                                   PIC/IOAPIC/PIT, legacy PCI config ports, ACPI with a power
                                   button and S5); pc-i440fx-*/pc-q35-* names are accepted.
                                   acpi=off (or -no-acpi): MP table instead of ACPI. none:
                                   no guest, only the QMP monitors (capability probing;
                                   -kernel not needed). accel=kvm:tcg uses kvm. Also
                                   accepted: acpi=on|auto, kernel-irqchip=on (also spelled
                                   kernel_irqchip; split/off are refused), usb=off,
                                   dump-guest-core=on|off and mem-merge=on|off (host-side
                                   hints, ignored)
  -cpu host|max[,+FEAT][,-FEAT][,FEAT=on|off]
                                   the host CPU as KVM reports it (default: host; QEMU's
                                   default is qemu64). FEAT is a CPUID flag by QEMU name
                                   (x2apic, avx2, popcnt, sse4.2, ...). pmu=off (accel has
                                   no virtual PMU; pmu=on is refused), migratable=on|off and
                                   check=/enforce= are accepted. Named models and other
                                   CPU properties are refused
  -smp [cpus=]N[,sockets=S][,cores=C][,threads=T][,maxcpus=M][,dies=1][,clusters=1]
                                   vCPUs and topology with QEMU's rules (missing values are
                                   computed, the product must equal maxcpus); at most 255
                                   vCPUs; maxcpus above cpus is accepted, but only cpus vCPUs
                                   exist (no CPU hotplug)
  -m [size=]SIZE                   guest RAM (default 128M); without a suffix SIZE is MiB;
                                   suffixes B K M G T. slots=N,maxmem=SIZE are accepted
                                   (checked; accel has no memory hotplug)
  -object memory-backend-memfd,id=ID,size=SIZE[,share=on|off][,hugetlb=on|off]
          [,hugetlbsize=SIZE][,prealloc=on|off]
                                   a RAM backend (size in bytes unless suffixed, a multiple
                                   of 4 KiB; share defaults to on as in QEMU); seal=, merge=,
                                   dump= and prealloc-threads= are accepted and ignored
  -object memory-backend-file,id=ID,size=SIZE,mem-path=DIR|FILE[,share=on|off]
          [,readonly=on|off][,prealloc=on|off]
                                   a file-backed RAM backend: a directory gets a fresh
                                   unlinked file, a missing FILE is created (and kept), an
                                   existing FILE must hold SIZE bytes. share defaults to off
                                   as in QEMU (vhost-user devices need share=on). On
                                   hugetlbfs SIZE must be a multiple of the huge page size.
                                   align= and discard-data= are accepted and ignored
  -object secret,id=ID,...         accepted and unused. Other -object types are refused.
                                   -object, -device and -netdev also take QEMU's JSON form
                                   ('{\"qom-type\":...}', as libvirt writes them)
  -mem-path DIR|FILE               plain -m RAM from a file (as memory-backend-file, share=off)
  -mem-prealloc                    prealloc=on for every memory backend not setting prealloc
  -numa node,memdev=ID[,nodeid=N]  guest RAM is made of these backends, laid out from address
                                   0 in nodeid order; their sizes must add up to -m. The
                                   guest sees no NUMA topology (accel has no ACPI SRAT)
  -name [guest=]NAME[,debug-threads=on|off]
                                   the VM's name (query-name); debug-threads=on names the
                                   vCPU threads 'CPU N/KVM' as QEMU does

Boot (accel has no firmware; it always boots Linux directly):
  -kernel PATH                     ELF vmlinux with a PVH note, or bzImage (required)
  -initrd PATH                     initramfs
  -append CMDLINE                  kernel command line
  -no-reboot                       a guest reset ends accel with exit status 0

Console and host-side options:
  -serial DEV                      COM1 (0x3f8, IRQ 4): stdio, null, none, file:PATH,
                                   pipe:PATH, chardev:ID, unix:PATH,server=on[,wait=off]
                                   (listening socket only; wait defaults to on as in QEMU),
                                   or mon:stdio (accel has no human monitor: same as stdio).
                                   Given once at most. Without -serial, the serial port uses
                                   stdio (accel has no graphical console), or is discarded
                                   with -nodefaults
  -chardev stdio|null,id=ID[,mux=on][,signal=on|off]
  -chardev file|pipe,id=ID,path=PATH
                                   for -serial chardev:ID and isa-debugcon (a socket with
                                   server=on,path= too). pipe: PATH.in/PATH.out, else PATH.
                                   A -mon in readline mode on a mux=on chardev is ignored
                                   with a warning (accel has no human monitor)
  -echr N|^X                       the escape key of -serial stdio on a terminal (Ctrl-A)
  -device isa-debugcon[,iobase=0xe9][,readback=0xe9],chardev=ID
                                   bytes written to the port go to the chardev
  -device isa-debug-exit[,iobase=0x501][,iosize=2]
                                   a guest write of V ends accel with status (V << 1) | 1
  -rtc [base=utc|localtime|DATE][,clock=host|rt][,driftfix=slew|none]
                                   the CMOS clock's base (DATE: 2006-06-17T16:01:21);
                                   driftfix has nothing to do (no RTC interrupts are raised)
  -global kvm-pit.lost_tick_policy=discard|delay
                                   discard: KVM stops reinjecting missed PIT ticks.
                                   PIIX4_PM/ICH9-LPC.disable_s3/disable_s4 are accepted
                                   (no ACPI sleep states); other -global properties refused
  -msg timestamp=on|off            stderr messages start with a UTC timestamp
  -overcommit mem-lock=off,cpu-pm=off
                                   accepted (what accel does); on is refused
  -boot [order=..][,once=..][,menu=..][,strict=..][,reboot-timeout=..][,splash-time=..]
                                   accepted and ignored (no firmware: -kernel boots)
  -net none                        accepted (accel adds no default NIC)
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

QMP monitor and VM lifecycle (QEMU 7.2's protocol; see the README for the commands):
  -qmp unix:PATH,server=on[,wait=off]    also the old spelling unix:PATH,server,nowait
  -qmp tcp:HOST:PORT,server=on[,wait=off]
  -chardev socket,id=ID,path=PATH|host=H,port=P|fd=N,server=on[,wait=off]
  -mon [chardev=]ID,mode=control[,pretty=on]
                                   a QMP monitor on a listening socket (fd=N: an inherited,
                                   already listening socket, as libvirt passes). Several
                                   monitors may be given; each serves one client at a time
                                   and a client may reconnect. wait=on (QEMU's default)
                                   waits for the first client before the VM starts.
                                   server=on chardevs are for -mon and -serial chardev:ID
  -S                               create the vCPUs stopped; QMP 'cont' starts them
  -no-shutdown                     a guest poweroff stops the VM (status 'shutdown') and
                                   accel waits for 'system_reset' or 'quit'
  -pidfile PATH                    write accel's pid to PATH (removed at exit)
  -daemonize                       run in the background: the command returns (exit 0) once
                                   the VM is built and its monitors listen, or exits 1 if
                                   start-up failed; the serial port cannot be stdio
  -uuid UUID                       the VM's UUID (query-uuid)
  -device pvpanic[,ioport=0x505]   the guest reports its panics (GUEST_PANICKED); the
                                   guest finds it through ACPI (id QEMU0001)
  -sandbox on|off[,obsolete=..,elevateprivileges=..,spawn=..,resourcecontrol=..]
                                   confine accel once the VM is built (on by default:
                                   no_new_privs, landlock, seccomp allow-lists per thread;
                                   see the README); off for debugging. The QEMU sub-options
                                   are accepted: accel denies all four in any case
  -run-with user=NAME|UID:GID      switch to this user once the VM is built (also QEMU
  -runas NAME                      7.2's -runas); kernel, initrd and the vhost-user sockets
                                   must stay readable/connectable for that user

vhost-user devices (the backend is a separate process listening on a unix socket):
  -chardev socket,id=ID,path=PATH[,reconnect=SECONDS]
                                   the backend's socket; accel connects as a client
                                   (server=on and TCP sockets are refused)
{devices}
  -device pcie-root-port,id=ID,chassis=N[,port=N][,slot=N][,bus=pcie.0][,addr=S.F]
                                   PCIe root port (q35); its bus holds one device
  -device pci-bridge,id=ID,chassis_nr=N[,bus=ID][,addr=S.F]
                                   PCI-to-PCI bridge; devices go in slots 1..1f behind it
  -device pcie-pci-bridge,id=ID,bus=ROOTPORT[,addr=0]
                                   PCIe-to-PCI bridge (q35); slots 1..1f behind it
                                   all -device drivers also take id=, addr=SLOT[.FN] (hex,
                                   slot 1..1f on the root bus, function 0..7; function 0
                                   must exist), bus=pci.0|pcie.0|BRIDGE-ID,
                                   disable-legacy=on|auto (devices are modern-only, so off
                                   is refused), disable-modern=off and romfile= (empty);
                                   the -non-transitional driver names are accepted too.
                                   bootindex is accepted and ignored. vectors=N sets the
                                   MSI-X table size (0 is refused: no INTx); packed=on
                                   offers packed rings when the backend does;
                                   page-per-vq=on|off is accepted (the guest finds its
                                   notify addresses either way). vhost-user devices
                                   need shared guest RAM: -object memory-backend-memfd,
                                   share=on with -numa node,memdev= or -machine
                                   memory-backend=

QEMU's built-in devices (accel starts one of its own backends per device, found next to the
accel executable or on PATH, passes it a socket and restarts it if it dies; each is logged
as '-device X: served by PROGRAM (pid N)' at RUST_LOG=info):
  -drive file=IMG,if=virtio|none[,format=raw][,readonly=on][,cache=none|writeback|..][,id=ID]
  -blockdev driver=file|host_device,filename=IMG,node-name=N[,read-only=on][,cache.direct=on]
  -blockdev driver=raw,node-name=N,file=NODE | file.driver=file,file.filename=IMG
  -device virtio-blk-pci,drive=ID[,num-queues=N][,queue-size=N][,serial=S]
                                   vhost-user-blk; raw images only (format=qcow2 and other
                                   formats are refused); cache=none|directsync is O_DIRECT
  -netdev tap,id=ID,ifname=NAME|fd=N|fds=N:M[,queues=N][,script=no,downscript=no][,vhost=..]
  -device virtio-net-pci,netdev=ID[,mac=..][,mq=on]
                                   vhost-user-net on the tap (fd=/fds=: tap fds accel
                                   inherited, as libvirt passes them); no ifup scripts run
  -object rng-random,id=ID[,filename=PATH] | rng-builtin,id=ID
  -device virtio-rng-pci[,rng=ID][,max-bytes=N,period=MS]
                                   vhost-user-rng reading PATH (default /dev/urandom)
  -device vhost-vsock-pci,guest-cid=N[,uds-path=PATH]
                                   vhost-user-vsock; the host side is unix sockets (hybrid
                                   vsock, as Firecracker): PATH (default
                                   $TMPDIR/accel-vsock-N.sock) takes 'CONNECT <port>' and
                                   guest connections to host port P go to PATH_P.
                                   uds-path= is an accel extension
  -device virtio-serial-pci[,id=ID] + -device virtconsole,chardev=ID[,bus=ID.0]
  -chardev stdio|file,id=ID[,path=PATH] (or socket,path=P,server=on,wait=off)
                                   (the same -chardev as -serial chardev:ID takes)
                                   vhost-user-console (the guest's hvc0): one virtconsole per
                                   virtio-serial-pci; stdio only when -serial is not stdio
                                   Plain -m RAM is shared with these backends automatically.

Not supported (an error says so): -hda, non-raw image formats, -nic and -net other than
none (use -netdev vhost-user or tap), -bios, -s/-gdb, -monitor other than none (HMP),
migration and snapshots, display options, USB, and any other QEMU option.

Example (the test guest):
  accel -accel kvm -cpu host -machine pc -m 128 -smp 2 -nodefaults -serial stdio \\
    -no-reboot -kernel vmlinux -initrd lean.cpio -append \"console=ttyS0 reboot=k panic=-1\"
";

/// Where a note after a synopsis starts.
const NOTE_COLUMN: usize = 35;

/// One synopsis per device kind, from the device table (each -netdev-connected kind after
/// the -netdev synopsis).
fn device_lines() -> String {
    let mut out = String::new();
    for spec in DEVICES {
        if spec.prop(PropKind::Netdev).is_some() {
            out.push_str("  -netdev vhost-user,id=ID,chardev=ID[,queues=N][,vhostforce=on]\n");
        }
        let mut line = format!("  -device {}", spec.driver());
        for p in spec.props {
            let item = format!(",{}={}", p.name, p.kind.placeholder());
            if p.kind.required() {
                line.push_str(&item);
            } else {
                line.push_str(&format!("[{item}]"));
            }
        }
        out.push_str(&line);
        out.push('\n');
        if !spec.help.is_empty() {
            out.push_str(&format!("{:NOTE_COLUMN$}{}\n", "", spec.help));
        }
    }
    out
}

/// The full `--help` text.
pub fn help_text() -> String {
    HELP.replace("{devices}\n", &device_lines())
}
