//! The device table: for every kind of vhost-user device a frontend can put on a virtio-pci
//! bus, the facts a guest sees (virtio id, queues, config size, PCI class), what the frontend
//! changes about the backend's offer (feature bits it masks or adds, config bytes it serves
//! itself) and how QEMU's `-device` line names and configures it.
//!
//! accel's command line, its virtio-pci functions and its device setup read this table and
//! nothing else: adding a device kind is one row here plus its layout module.

use virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;
use virtio_bindings::virtio_ids::{
    VIRTIO_ID_9P, VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_RNG,
    VIRTIO_ID_VSOCK,
};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_RX_EXTRA,
    VIRTIO_NET_F_CTRL_VLAN, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MTU, VIRTIO_NET_F_SPEED_DUPLEX,
};

use crate::transport::bit;
use crate::{blk, console, fs, net, rng, vsock};

/// A PCI class code (base class, subclass; programming interface 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciClass {
    pub class: u8,
    pub subclass: u8,
}

/// PCI classes QEMU gives virtio functions.
pub const PCI_CLASS_NETWORK_ETHERNET: PciClass = PciClass {
    class: 0x02,
    subclass: 0x00,
};
pub const PCI_CLASS_STORAGE_OTHER: PciClass = PciClass {
    class: 0x01,
    subclass: 0x80,
};
pub const PCI_CLASS_COMMUNICATION_OTHER: PciClass = PciClass {
    class: 0x07,
    subclass: 0x80,
};
pub const PCI_CLASS_OTHERS: PciClass = PciClass {
    class: 0xff,
    subclass: 0x00,
};

/// Classes of virtio ids that have no row of their own (a `vhost-user-device-pci` may carry
/// them).
const CLASSES_WITHOUT_ROW: &[(u32, PciClass)] = &[(VIRTIO_ID_9P, PCI_CLASS_STORAGE_OTHER)];

/// What a `-device` property holds, and so how the command line parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropKind {
    /// The `-chardev` id of the backend's socket (required).
    Chardev,
    /// A `-netdev vhost-user` id (required): the device uses its chardev, and its `queues=`
    /// (queue pairs) with [`PropKind::Mq`].
    Netdev,
    /// `on|off`: use all the netdev's queue pairs (off: one pair).
    Mq,
    /// Number of virtqueues, 1..=1024 ([`Queues::Configurable`]).
    NumQueues,
    /// Number of request queues after the device's fixed leading queues (virtio-fs's
    /// `num-request-queues`: the high-priority queue comes first), 1..=1023.
    RequestQueues,
    /// virtio-fs's mount tag (required): 1..=36 bytes ([`fs::FS_TAG_LEN`]).
    Tag,
    /// Size of every virtqueue: a power of two in 2..=1024 (default [`DEFAULT_QUEUE_SIZE`]).
    QueueSize,
    /// The virtio device id (required, [`VirtioId::Property`]).
    VirtioId,
    /// Device config space size in bytes, 0..=4096 ([`ConfigSize::Property`], default 0).
    ConfigSize,
    /// A MAC address `xx:xx:xx:xx:xx:xx` (given to [`ConfigSource::Frontend`]).
    Mac,
    /// QEMU's boot order: accepted and ignored (the frontend boots a kernel directly).
    BootIndex,
    /// Size of the device's even-numbered (receive) queues; overrides [`PropKind::QueueSize`]
    /// for them (virtio-net's `rx_queue_size`).
    RxQueueSize,
    /// Size of the odd-numbered (transmit) queues (virtio-net's `tx_queue_size`).
    TxQueueSize,
    /// `on|off` (default on): `off` hides this feature bit from the guest even when the
    /// backend offers it (virtio-net's `mrg_rxbuf`, `csum`, ...).
    FeatureSwitch(u32),
}

impl PropKind {
    /// Whether the `-device` line must give it.
    pub const fn required(self) -> bool {
        matches!(
            self,
            PropKind::Chardev | PropKind::Netdev | PropKind::VirtioId | PropKind::Tag
        )
    }

    /// How `--help` shows its value.
    pub const fn placeholder(self) -> &'static str {
        match self {
            PropKind::Chardev | PropKind::Netdev => "ID",
            PropKind::Mq | PropKind::FeatureSwitch(_) => "on|off",
            PropKind::Mac => "xx:xx:xx:xx:xx:xx",
            PropKind::Tag => "TAG",
            PropKind::NumQueues
            | PropKind::RequestQueues
            | PropKind::QueueSize
            | PropKind::VirtioId
            | PropKind::ConfigSize
            | PropKind::BootIndex
            | PropKind::RxQueueSize
            | PropKind::TxQueueSize => "N",
        }
    }
}

/// One device-specific `-device` property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prop {
    pub name: &'static str,
    pub kind: PropKind,
}

const fn prop(name: &'static str, kind: PropKind) -> Prop {
    Prop { name, kind }
}

/// Queue size when the `-device` line gives none (QEMU's vhost-user-blk default).
pub const DEFAULT_QUEUE_SIZE: u16 = 128;

/// The device's virtio id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioId {
    Fixed(u32),
    /// From the [`PropKind::VirtioId`] property.
    Property,
}

/// How many virtqueues the device has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queues {
    Fixed(u16),
    /// Set by [`PropKind::NumQueues`] (or a netdev's `queues=`, two per pair); `default`
    /// otherwise. With `multiqueue_feature`, a backend that does not offer that feature bit
    /// gets one queue whatever was asked.
    Configurable {
        default: QueueDefault,
        multiqueue_feature: Option<u32>,
    },
}

/// The queue count of a [`Queues::Configurable`] device nobody configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueDefault {
    Fixed(u16),
    /// One per vCPU (QEMU's vhost-user-blk).
    PerVcpu,
}

/// Size of the device config space the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSize {
    Fixed(u32),
    /// From the [`PropKind::ConfigSize`] property (0 without it).
    Property,
}

/// Feature bits the frontend changes in what the backend offers the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeaturePolicy {
    /// Never offered: the frontend lacks what they need (queues, config fields).
    pub masked: u64,
    /// Always offered: the frontend implements them itself.
    pub added: u64,
}

/// virtio-net bits the frontend never takes from the backend's offer: the control queue's
/// (the frontend serves that queue itself and offers them through [`ControlQueue`]; MQ only
/// when there is more than one queue pair and the backend offers it), GUEST_ANNOUNCE (needs
/// the announce command and a config-space status bit the frontend does not implement), MTU
/// and SPEED_DUPLEX (their config fields lie beyond what [`net::frontend_config`] serves),
/// and the backend's MAC (the frontend offers MAC itself when `mac=` gives one).
const NET_MASKED: u64 = bit(VIRTIO_NET_F_CTRL_VQ)
    | bit(VIRTIO_NET_F_CTRL_RX)
    | bit(VIRTIO_NET_F_CTRL_VLAN)
    | bit(VIRTIO_NET_F_CTRL_RX_EXTRA)
    | bit(VIRTIO_NET_F_GUEST_ANNOUNCE)
    | bit(VIRTIO_NET_F_MQ)
    | bit(VIRTIO_NET_F_CTRL_MAC_ADDR)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_SPEED_DUPLEX)
    | bit(VIRTIO_NET_F_MAC);

/// A queue the frontend serves itself instead of the backend, placed after the backend's
/// queues: virtio-net's control queue (QEMU's virtio-net does the same with vhost-user-net:
/// the backend gets the data queues only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlQueue {
    /// Feature bits the frontend offers because it serves the queue; never sent to the
    /// backend.
    pub features: u64,
    /// The multi-queue bit: offered (and sent to the backend) only with more than one queue
    /// pair and when the backend offers it.
    pub multiqueue: u32,
}

const KEEP_ALL: FeaturePolicy = FeaturePolicy {
    masked: 0,
    added: 0,
};

/// What the frontend needs to build config space it serves itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendInput<'a> {
    pub num_queues: u16,
    pub mac: Option<[u8; 6]>,
    /// virtio-fs's `tag=`.
    pub tag: Option<&'a str>,
}

/// Config space the frontend serves, and the feature bits that space makes true.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    pub bytes: Vec<u8>,
    pub features: u64,
}

/// Where the guest's device config space comes from.
#[derive(Clone, Copy, Debug)]
pub enum ConfigSource {
    /// The backend's config space (GET_CONFIG), as it is.
    Backend,
    /// The backend's, with the device's queue count (u16 LE) written at `offset`.
    BackendWithQueueCount { offset: u32 },
    /// Served by the frontend (guest writes are ignored); built by the layout module.
    Frontend(fn(&FrontendInput) -> FrontendConfig),
}

/// One kind of vhost-user virtio-pci device.
#[derive(Debug)]
pub struct DeviceSpec {
    /// QEMU's type name of the virtio device; devices without `id=` are named after it.
    pub name: &'static str,
    /// `-device` drivers that create it (each also with `-non-transitional`). The first is
    /// the canonical one (help, error messages); the others are aliases.
    pub drivers: &'static [&'static str],
    /// Device-specific `-device` properties, in the order `--help` lists them.
    pub props: &'static [Prop],
    pub virtio_id: VirtioId,
    pub queues: Queues,
    pub config_size: ConfigSize,
    /// `None`: the class of the virtio id it carries ([`class_of_virtio_id`]).
    pub pci_class: Option<PciClass>,
    pub features: FeaturePolicy,
    pub config: ConfigSource,
    /// A queue after the backend's ones that the frontend serves itself (`None`: every queue
    /// is the backend's).
    pub control_queue: Option<ControlQueue>,
    /// A note `--help` prints after the synopsis (empty: none).
    pub help: &'static str,
}

impl PartialEq for DeviceSpec {
    /// Rows are told apart by name (unique, see the tests).
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for DeviceSpec {}

impl DeviceSpec {
    /// The property of `kind`, if the device has one.
    pub fn prop(&self, kind: PropKind) -> Option<&'static Prop> {
        self.props.iter().find(|p| p.kind == kind)
    }

    /// The canonical `-device` driver name.
    pub fn driver(&self) -> &'static str {
        self.drivers[0]
    }

    /// The virtio id, given the [`PropKind::VirtioId`] property's value (if any).
    pub fn virtio_id(&self, property: Option<u32>) -> u32 {
        match self.virtio_id {
            VirtioId::Fixed(id) => id,
            VirtioId::Property => property.unwrap_or(0),
        }
    }

    /// The config space size, given the [`PropKind::ConfigSize`] property's value (if any).
    pub fn config_size(&self, property: Option<u32>) -> u32 {
        match self.config_size {
            ConfigSize::Fixed(size) => size,
            ConfigSize::Property => property.unwrap_or(0),
        }
    }

    /// The queue count asked for (before the backend's features are known).
    pub fn num_queues(&self, configured: Option<u16>, vcpus: u16) -> u16 {
        match self.queues {
            Queues::Fixed(n) => n,
            Queues::Configurable { default, .. } => configured.unwrap_or(match default {
                QueueDefault::Fixed(n) => n,
                QueueDefault::PerVcpu => vcpus.max(1),
            }),
        }
    }

    /// The queue count once the backend offered `backend_features`: one queue when a
    /// multi-queue feature is needed and missing.
    pub fn num_queues_for(&self, asked: u16, backend_features: u64) -> u16 {
        match self.queues {
            Queues::Configurable {
                multiqueue_feature: Some(f),
                ..
            } if backend_features & bit(f) == 0 => asked.min(1),
            _ => asked,
        }
    }

    /// The PCI class of the function carrying `virtio_id`.
    pub fn pci_class(&self, virtio_id: u32) -> PciClass {
        self.pci_class
            .unwrap_or_else(|| class_of_virtio_id(virtio_id))
    }
}

/// The PCI class QEMU gives a virtio function of `virtio_id`.
pub fn class_of_virtio_id(virtio_id: u32) -> PciClass {
    DEVICES
        .iter()
        .find(|d| d.virtio_id == VirtioId::Fixed(virtio_id))
        .and_then(|d| d.pci_class)
        .or_else(|| {
            CLASSES_WITHOUT_ROW
                .iter()
                .find(|(id, _)| *id == virtio_id)
                .map(|(_, c)| *c)
        })
        .unwrap_or(PCI_CLASS_OTHERS)
}

/// The row whose driver list holds `driver` (with or without `-non-transitional`).
pub fn find_driver(driver: &str) -> Option<&'static DeviceSpec> {
    let base = driver.strip_suffix("-non-transitional").unwrap_or(driver);
    DEVICES.iter().find(|d| d.drivers.contains(&base))
}

/// Every device kind.
pub static DEVICES: &[DeviceSpec] = &[
    DeviceSpec {
        name: "vhost-user-blk",
        drivers: &["vhost-user-blk-pci"],
        props: &[
            prop("chardev", PropKind::Chardev),
            prop("num-queues", PropKind::NumQueues),
            prop("queue-size", PropKind::QueueSize),
            prop("bootindex", PropKind::BootIndex),
        ],
        virtio_id: VirtioId::Fixed(VIRTIO_ID_BLOCK),
        queues: Queues::Configurable {
            default: QueueDefault::PerVcpu,
            multiqueue_feature: Some(VIRTIO_BLK_F_MQ),
        },
        config_size: ConfigSize::Fixed(blk::BLK_CONFIG_SIZE as u32),
        pci_class: Some(PCI_CLASS_STORAGE_OTHER),
        features: KEEP_ALL,
        config: ConfigSource::BackendWithQueueCount {
            offset: blk::BLK_NUM_QUEUES_OFFSET,
        },
        control_queue: None,
        help: "",
    },
    DeviceSpec {
        name: "vhost-user-vsock",
        drivers: &["vhost-user-vsock-pci"],
        props: &[prop("chardev", PropKind::Chardev)],
        virtio_id: VirtioId::Fixed(VIRTIO_ID_VSOCK),
        queues: Queues::Fixed(vsock::NUM_QUEUES as u16),
        config_size: ConfigSize::Fixed(vsock::VSOCK_CONFIG_SIZE as u32),
        pci_class: Some(PCI_CLASS_COMMUNICATION_OTHER),
        features: KEEP_ALL,
        config: ConfigSource::Backend,
        control_queue: None,
        help: "",
    },
    DeviceSpec {
        name: "vhost-user-rng",
        drivers: &["vhost-user-rng-pci"],
        props: &[prop("chardev", PropKind::Chardev)],
        virtio_id: VirtioId::Fixed(VIRTIO_ID_RNG),
        queues: Queues::Fixed(rng::RNG_NUM_QUEUES as u16),
        config_size: ConfigSize::Fixed(0),
        pci_class: Some(PCI_CLASS_OTHERS),
        features: KEEP_ALL,
        config: ConfigSource::Backend,
        control_queue: None,
        help: "",
    },
    DeviceSpec {
        name: "vhost-user-console",
        drivers: &["vhost-user-console-pci"],
        props: &[prop("chardev", PropKind::Chardev)],
        virtio_id: VirtioId::Fixed(VIRTIO_ID_CONSOLE),
        queues: Queues::Fixed(console::CONSOLE_NUM_QUEUES as u16),
        config_size: ConfigSize::Fixed(console::CONSOLE_CONFIG_SIZE as u32),
        pci_class: Some(PCI_CLASS_COMMUNICATION_OTHER),
        // MULTIPORT needs more queues than the device has.
        features: FeaturePolicy {
            masked: bit(console::VIRTIO_CONSOLE_F_MULTIPORT),
            added: 0,
        },
        config: ConfigSource::Backend,
        control_queue: None,
        help: "(accel extension)",
    },
    DeviceSpec {
        name: "vhost-user-fs",
        drivers: &["vhost-user-fs-pci"],
        props: &[
            prop("chardev", PropKind::Chardev),
            prop("tag", PropKind::Tag),
            prop("num-request-queues", PropKind::RequestQueues),
            prop("queue-size", PropKind::QueueSize),
            prop("bootindex", PropKind::BootIndex),
        ],
        virtio_id: VirtioId::Fixed(VIRTIO_ID_FS),
        // The high-priority queue and one request queue unless `num-request-queues=` says.
        queues: Queues::Configurable {
            default: QueueDefault::Fixed(fs::FS_HIPRIO_QUEUES + 1),
            multiqueue_feature: None,
        },
        config_size: ConfigSize::Fixed(fs::FS_CONFIG_SIZE as u32),
        pci_class: Some(PCI_CLASS_STORAGE_OTHER),
        features: KEEP_ALL,
        config: ConfigSource::Frontend(fs::frontend_config),
        control_queue: None,
        help: "with virtiofsd: the guest mounts TAG (mount -t virtiofs TAG DIR)",
    },
    DeviceSpec {
        name: "vhost-user-device",
        drivers: &["vhost-user-device-pci", "vhost-user-test-device-pci"],
        props: &[
            prop("chardev", PropKind::Chardev),
            prop("virtio-id", PropKind::VirtioId),
            prop("num_vqs", PropKind::NumQueues),
            prop("vq_size", PropKind::QueueSize),
            prop("config_size", PropKind::ConfigSize),
        ],
        virtio_id: VirtioId::Property,
        queues: Queues::Configurable {
            default: QueueDefault::Fixed(1),
            multiqueue_feature: None,
        },
        config_size: ConfigSize::Property,
        pci_class: None,
        features: KEEP_ALL,
        config: ConfigSource::Backend,
        control_queue: None,
        help: "any virtio device type served by a vhost-user backend",
    },
    DeviceSpec {
        name: "vhost-user-net",
        drivers: &["virtio-net-pci"],
        props: &[
            prop("netdev", PropKind::Netdev),
            prop("mac", PropKind::Mac),
            prop("mq", PropKind::Mq),
            prop("bootindex", PropKind::BootIndex),
            prop("rx_queue_size", PropKind::RxQueueSize),
            prop("tx_queue_size", PropKind::TxQueueSize),
            prop(
                "mrg_rxbuf",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_MRG_RXBUF),
            ),
            prop("csum", PropKind::FeatureSwitch(net::VIRTIO_NET_F_CSUM)),
            prop(
                "guest_csum",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_GUEST_CSUM),
            ),
            prop(
                "guest_tso4",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_GUEST_TSO4),
            ),
            prop(
                "guest_tso6",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_GUEST_TSO6),
            ),
            prop(
                "guest_ecn",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_GUEST_ECN),
            ),
            prop(
                "guest_ufo",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_GUEST_UFO),
            ),
            prop(
                "host_tso4",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_HOST_TSO4),
            ),
            prop(
                "host_tso6",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_HOST_TSO6),
            ),
            prop(
                "host_ecn",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_HOST_ECN),
            ),
            prop(
                "host_ufo",
                PropKind::FeatureSwitch(net::VIRTIO_NET_F_HOST_UFO),
            ),
        ],
        virtio_id: VirtioId::Fixed(VIRTIO_ID_NET),
        queues: Queues::Configurable {
            default: QueueDefault::Fixed(2),
            multiqueue_feature: None,
        },
        config_size: ConfigSize::Fixed(net::NET_CONFIG_SIZE_WITHOUT_MTU as u32),
        pci_class: Some(PCI_CLASS_NETWORK_ETHERNET),
        features: FeaturePolicy {
            masked: NET_MASKED,
            added: 0,
        },
        config: ConfigSource::Frontend(net::frontend_config),
        control_queue: Some(ControlQueue {
            features: net::CONTROL_QUEUE_FEATURES,
            multiqueue: VIRTIO_NET_F_MQ,
        }),
        help: "",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_driver_names_exactly_one_row() {
        let mut names: Vec<&str> = DEVICES
            .iter()
            .flat_map(|d| d.drivers.iter().copied())
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all, "a driver name is in two rows");
        for d in DEVICES {
            for &driver in d.drivers {
                assert_eq!(find_driver(driver), Some(d));
                let nt = format!("{driver}-non-transitional");
                assert_eq!(find_driver(&nt), Some(d));
            }
        }
        let mut rows: Vec<&str> = DEVICES.iter().map(|d| d.name).collect();
        rows.sort_unstable();
        rows.dedup();
        assert_eq!(rows.len(), DEVICES.len(), "two rows share a name");
    }

    #[test]
    fn unknown_drivers_find_nothing() {
        for bad in [
            "",
            "help",
            "virtio-blk-pci",
            "vhost-user-blk",
            "vhost-user-blk-pci-",
            "-non-transitional",
            "vhost-user-gpu-pci",
        ] {
            assert!(find_driver(bad).is_none(), "{bad}");
        }
    }

    /// Each property-driven fact has its property, and no row has a property nothing reads.
    #[test]
    fn rows_are_consistent() {
        for d in DEVICES {
            let has = |k| d.prop(k).is_some();
            assert!(
                has(PropKind::Chardev) ^ has(PropKind::Netdev),
                "{}: needs exactly one backend connection",
                d.name
            );
            assert_eq!(
                has(PropKind::VirtioId),
                d.virtio_id == VirtioId::Property,
                "{}",
                d.name
            );
            assert_eq!(
                has(PropKind::ConfigSize),
                d.config_size == ConfigSize::Property,
                "{}",
                d.name
            );
            let configurable = matches!(d.queues, Queues::Configurable { .. });
            assert_eq!(
                has(PropKind::NumQueues) || has(PropKind::RequestQueues) || has(PropKind::Netdev),
                configurable,
                "{}",
                d.name
            );
            assert_eq!(has(PropKind::Mq), has(PropKind::Netdev), "{}", d.name);
            assert!(
                !has(PropKind::Mac) || matches!(d.config, ConfigSource::Frontend(_)),
                "{}: a MAC only reaches config the frontend serves",
                d.name
            );
            for (i, p) in d.props.iter().enumerate() {
                assert!(
                    !d.props[..i]
                        .iter()
                        .any(|q| q.name == p.name || q.kind == p.kind),
                    "{}: {} twice",
                    d.name,
                    p.name
                );
            }
            assert!(d.config_size(Some(4096)) <= 4096);
            assert!(d.num_queues(None, 1) >= 1);
        }
    }

    /// What accel served before the table existed (its literals, kept here as the reference).
    #[test]
    fn facts_match_what_accel_hard_coded() {
        let row = |driver| find_driver(driver).unwrap();
        let shape = |d: &DeviceSpec, vcpus| {
            (
                d.virtio_id(Some(26)),
                d.num_queues(None, vcpus),
                d.config_size(Some(8)),
                d.pci_class(d.virtio_id(Some(26))),
            )
        };
        let c = |class, subclass| PciClass { class, subclass };
        assert_eq!(shape(row("vhost-user-blk-pci"), 3), (2, 3, 60, c(1, 0x80)));
        assert_eq!(shape(row("vhost-user-blk-pci"), 0), (2, 1, 60, c(1, 0x80)));
        assert_eq!(shape(row("virtio-net-pci"), 3), (1, 2, 10, c(2, 0)));
        assert_eq!(
            shape(row("vhost-user-vsock-pci"), 3),
            (19, 3, 8, c(7, 0x80))
        );
        assert_eq!(shape(row("vhost-user-rng-pci"), 3), (4, 1, 0, c(0xff, 0)));
        assert_eq!(
            shape(row("vhost-user-console-pci"), 3),
            (3, 2, 12, c(7, 0x80))
        );
        // Virtio id 26 is virtio-fs: the generic device carries that row's class.
        assert_eq!(
            shape(row("vhost-user-device-pci"), 3),
            (26, 1, 8, c(1, 0x80))
        );
        assert_eq!(shape(row("vhost-user-fs-pci"), 3), (26, 2, 40, c(1, 0x80)));
        // The old `class_for`.
        for (id, class) in [
            (1, c(2, 0)),
            (2, c(1, 0x80)),
            (3, c(7, 0x80)),
            (19, c(7, 0x80)),
            (9, c(1, 0x80)),
            (4, c(0xff, 0)),
            (26, c(1, 0x80)), // virtio-fs: QEMU's vhost-user-fs-pci is storage-other
        ] {
            assert_eq!(class_of_virtio_id(id), class, "virtio id {id}");
            assert_eq!(row("vhost-user-device-pci").pci_class(id), class);
        }
        // Feature policy: (mask, add) as accel passed them.
        assert_eq!(
            row("virtio-net-pci").features.masked,
            0x00fe_0000 | (1 << 3) | (1 << 63) | (1 << 5)
        );
        assert_eq!(row("vhost-user-console-pci").features.masked, 1 << 1);
        for d in [
            "vhost-user-blk-pci",
            "vhost-user-vsock-pci",
            "vhost-user-rng-pci",
            "vhost-user-device-pci",
        ] {
            assert_eq!(row(d).features, KEEP_ALL, "{d}");
        }
        assert!(DEVICES.iter().all(|d| d.features.added == 0));
        // blk: num_queues patched at offset 34, one queue without VIRTIO_BLK_F_MQ.
        let blk = row("vhost-user-blk-pci");
        assert!(matches!(
            blk.config,
            ConfigSource::BackendWithQueueCount { offset: 34 }
        ));
        assert_eq!(blk.num_queues_for(4, 0), 1);
        assert_eq!(blk.num_queues_for(4, 1 << 12), 4);
        assert_eq!(row("vhost-user-device-pci").num_queues_for(4, 0), 4);
    }
}
