//! Fake sysfs trees in a temporary directory, laid out as the kernel lays
//! out the real ones (devices under `devices/`, `subsystem` and `device`
//! symlinks, `class/block/NAME` links), and the probe's tests on them.
//! The tracker's tests build their trees with the same [`FakeSys`].

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;

/// USB stick's device path under `devices/`, per USB port number.
fn usb_path(port: u32) -> String {
    format!("devices/pci0000:00/0000:00:14.0/usb1/1-{port}")
}

/// A block device's attributes.
pub(crate) struct Disk<'a> {
    pub name: &'a str,
    pub diskseq: Option<u64>,
    pub sectors: u64,
    pub read_only: bool,
}

impl<'a> Disk<'a> {
    pub fn new(name: &'a str, diskseq: u64) -> Disk<'a> {
        Disk {
            name,
            diskseq: Some(diskseq),
            sectors: 2048,
            read_only: false,
        }
    }
}

pub(crate) struct FakeSys {
    dir: tempfile::TempDir,
}

impl FakeSys {
    pub fn new() -> FakeSys {
        let fake = FakeSys {
            dir: tempfile::tempdir().unwrap(),
        };
        for dir in [
            "sys/class/block",
            "sys/class/mmc_host",
            "sys/class/nvme",
            "sys/bus/usb",
            "sys/bus/scsi",
            "sys/bus/pci",
            "sys/bus/mmc",
            "sys/bus/virtio",
            "sys/bus/platform",
            "dev",
        ] {
            fs::create_dir_all(fake.dir.path().join(dir)).unwrap();
        }
        fake.device("devices/pci0000:00/0000:00:14.0", "bus/pci", &[]);
        fake
    }

    pub fn sysfs(&self) -> Sysfs {
        Sysfs::with_roots(&self.sys(), &self.dir.path().join("dev"))
    }

    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    pub fn write(&self, rel: &str, contents: &[u8]) {
        let path = self.sys().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    pub fn remove(&self, rel: &str) {
        let path = self.sys().join(rel);
        if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(path).unwrap();
        } else {
            fs::remove_file(path).unwrap();
        }
    }

    /// A device directory `rel` whose `subsystem` links to `subsystem`
    /// (`bus/usb`, `class/mmc_host`...), with attribute files.
    pub fn device(&self, rel: &str, subsystem: &str, attrs: &[(&str, &[u8])]) {
        let dir = self.sys().join(rel);
        fs::create_dir_all(&dir).unwrap();
        symlink(self.sys().join(subsystem), dir.join("subsystem")).unwrap();
        for (name, value) in attrs {
            fs::write(dir.join(name), value).unwrap();
        }
    }

    /// A whole disk below device `parent` (or a virtual one when `None`),
    /// linked from `class/block`; returns its directory, relative.
    pub fn disk(&self, parent: Option<&str>, disk: &Disk) -> String {
        let rel = match parent {
            Some(parent) => format!("{parent}/block/{}", disk.name),
            None => format!("devices/virtual/block/{}", disk.name),
        };
        let uevent = format!("MAJOR=8\nMINOR=16\nDEVNAME={}\nDEVTYPE=disk\n", disk.name);
        let mut attrs = vec![
            ("uevent", uevent.into_bytes()),
            ("size", format!("{}\n", disk.sectors).into_bytes()),
            ("ro", format!("{}\n", u8::from(disk.read_only)).into_bytes()),
            ("removable", b"1\n".to_vec()),
        ];
        if let Some(diskseq) = disk.diskseq {
            attrs.push(("diskseq", format!("{diskseq}\n").into_bytes()));
        }
        let attrs: Vec<(&str, &[u8])> = attrs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        self.device(&rel, "class/block", &attrs);
        if let Some(parent) = parent {
            symlink(
                self.sys().join(parent),
                self.sys().join(&rel).join("device"),
            )
            .unwrap();
        }
        symlink(
            self.sys().join(&rel),
            self.sys().join("class/block").join(disk.name),
        )
        .unwrap();
        rel
    }

    /// Partition `name` of the disk at `disk_rel`.
    pub fn partition(&self, disk_rel: &str, name: &str) {
        let rel = format!("{disk_rel}/{name}");
        let uevent = format!("MAJOR=8\nMINOR=17\nDEVNAME={name}\nDEVTYPE=partition\nPARTN=1\n");
        self.device(
            &rel,
            "class/block",
            &[
                ("uevent", uevent.as_bytes()),
                ("partition", b"1\n"),
                ("size", b"1024\n"),
                ("ro", b"0\n"),
            ],
        );
        symlink(
            self.sys().join(&rel),
            self.sys().join("class/block").join(name),
        )
        .unwrap();
    }

    /// A USB mass-storage stick on root port `port`: usb_device (with
    /// `serial` unless `None`) -> interface -> SCSI host -> target ->
    /// SCSI device -> block device. Returns the disk's directory.
    pub fn usb_stick(&self, port: u32, serial: Option<&[u8]>, disk: &Disk) -> String {
        let usb = usb_path(port);
        if !self
            .sys()
            .join("devices/pci0000:00/0000:00:14.0/usb1")
            .exists()
        {
            self.device(
                "devices/pci0000:00/0000:00:14.0/usb1",
                "bus/usb",
                &[
                    ("idVendor", b"1d6b\n"),
                    ("product", b"xHCI Host Controller\n"),
                ],
            );
        }
        let mut attrs: Vec<(&str, &[u8])> = vec![
            ("idVendor", b"0781\n"),
            ("idProduct", b"5567\n"),
            ("manufacturer", b"SanDisk\n"),
            ("product", b"Cruzer Blade\n"),
        ];
        if let Some(serial) = serial {
            attrs.push(("serial", serial));
        }
        self.device(&usb, "bus/usb", &attrs);
        let interface = format!("{usb}/1-{port}:1.0");
        self.device(&interface, "bus/usb", &[("bInterfaceClass", b"08\n")]);
        let host = format!("{interface}/host{port}");
        self.device(&host, "bus/scsi", &[]);
        let target = format!("{host}/target{port}:0:0");
        self.device(&target, "bus/scsi", &[]);
        let scsi = format!("{target}/{port}:0:0:0");
        self.device(
            &scsi,
            "bus/scsi",
            &[("vendor", b" SanDisk\n"), ("model", b"Cruzer Blade    \n")],
        );
        self.disk(Some(&scsi), disk)
    }

    /// An SD card in the SoC's MMC controller: platform device ->
    /// mmc_host/mmc0 -> card mmc0:aaaa -> mmcblk0.
    pub fn mmc_card(&self, disk: &Disk) -> String {
        self.mmc_card_of_type(b"SD\n", disk)
    }

    /// [`FakeSys::mmc_card`] whose card reports `card_type` (`MMC` for an
    /// eMMC soldered to the board).
    pub fn mmc_card_of_type(&self, card_type: &[u8], disk: &Disk) -> String {
        self.device("devices/platform/fe320000.mmc", "bus/platform", &[]);
        let host = "devices/platform/fe320000.mmc/mmc_host/mmc0";
        self.device(host, "class/mmc_host", &[]);
        let card = format!("{host}/mmc0:aaaa");
        self.device(
            &card,
            "bus/mmc",
            &[
                ("serial", b"0x1234abcd\n"),
                ("name", b"SD32G\n"),
                ("manfid", b"0x000003\n"),
                ("type", card_type),
            ],
        );
        self.disk(Some(&card), disk)
    }

    /// A SATA disk: PCI AHCI controller -> ata1 -> SCSI host -> sda.
    pub fn sata_disk(&self, disk: &Disk) -> String {
        self.device("devices/pci0000:00/0000:00:17.0", "bus/pci", &[]);
        let scsi = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0";
        self.device(
            scsi,
            "bus/scsi",
            &[("vendor", b"ATA     \n"), ("model", b"Samsung SSD\n")],
        );
        self.disk(Some(scsi), disk)
    }

    /// An NVMe namespace: PCI function -> nvme/nvme0 -> nvme0n1.
    pub fn nvme_disk(&self, disk: &Disk) -> String {
        self.device("devices/pci0000:00/0000:00:1d.0", "bus/pci", &[]);
        let ctrl = "devices/pci0000:00/0000:00:1d.0/nvme/nvme0";
        self.device(ctrl, "class/nvme", &[("serial", b"S4EWNX0R123\n")]);
        self.disk(Some(ctrl), disk)
    }

    /// A virtio-blk disk: PCI function -> virtio1 -> vda.
    pub fn virtio_disk(&self, disk: &Disk) -> String {
        self.device("devices/pci0000:00/0000:00:04.0", "bus/pci", &[]);
        let virtio = "devices/pci0000:00/0000:00:04.0/virtio1";
        self.device(virtio, "bus/virtio", &[]);
        self.disk(Some(virtio), disk)
    }
}

#[test]
fn usb_stick_is_removable_with_its_identity() {
    let fake = FakeSys::new();
    fake.usb_stick(2, Some(b"4C530001230101112233\n"), &Disk::new("sdb", 23));
    let stick = fake.sysfs().probe("sdb").unwrap().unwrap();
    assert_eq!(stick.name, "sdb");
    assert_eq!(stick.devnode, fake.dir.path().join("dev/sdb"));
    assert_eq!(stick.diskseq, 23);
    assert_eq!(stick.size_bytes, 2048 * 512);
    assert_eq!(stick.bus, Bus::Usb);
    assert_eq!(stick.serial.as_deref(), Some("4C530001230101112233"));
    assert_eq!(stick.vendor.as_deref(), Some("SanDisk"));
    assert_eq!(stick.model.as_deref(), Some("Cruzer Blade"));
    assert!(!stick.read_only);
}

#[test]
fn usb_stick_without_serial_or_strings_falls_back_to_scsi_inquiry() {
    let fake = FakeSys::new();
    fake.usb_stick(3, None, &Disk::new("sdc", 5));
    fake.remove(&format!("{}/manufacturer", usb_path(3)));
    fake.remove(&format!("{}/product", usb_path(3)));
    let stick = fake.sysfs().probe("sdc").unwrap().unwrap();
    assert_eq!(stick.bus, Bus::Usb);
    assert_eq!(stick.serial, None);
    assert_eq!(stick.vendor.as_deref(), Some("SanDisk"));
    assert_eq!(stick.model.as_deref(), Some("Cruzer Blade"));
}

#[test]
fn hostile_strings_are_dropped() {
    let long = vec![b'A'; 300];
    let cases: [&[u8]; 8] = [
        b"\x1b[2J\n",
        b"ABC\nDEF\n",
        &long,
        b"\xff\xfe\xfd\n",
        b"\n",
        b"   \n",
        b"tab\there\n",
        "caf\u{e9}\n".as_bytes(),
    ];
    for serial in cases {
        let fake = FakeSys::new();
        fake.usb_stick(2, Some(serial), &Disk::new("sdb", 1));
        fake.write(&format!("{}/product", usb_path(2)), serial);
        let stick = fake.sysfs().probe("sdb").unwrap().unwrap();
        assert_eq!(stick.serial, None, "{serial:?}");
        // The product falls back to the SCSI model.
        assert_eq!(stick.model.as_deref(), Some("Cruzer Blade"), "{serial:?}");
    }
}

#[test]
fn strings_at_the_length_limit_are_kept_and_over_it_dropped() {
    let fake = FakeSys::new();
    fake.usb_stick(2, Some(&[b'7'; 126]), &Disk::new("sdb", 1));
    let stick = fake.sysfs().probe("sdb").unwrap().unwrap();
    assert_eq!(stick.serial.map(|s| s.len()), Some(126));
    fake.write(&format!("{}/serial", usb_path(2)), &[b'7'; 127]);
    assert_eq!(fake.sysfs().probe("sdb").unwrap().unwrap().serial, None);
    // Larger than an attribute may be: not even read whole.
    fake.write(&format!("{}/serial", usb_path(2)), &[b'7'; 5000]);
    assert_eq!(fake.sysfs().probe("sdb").unwrap().unwrap().serial, None);
}

#[test]
fn sanitize_trims_spaces_and_one_newline() {
    assert_eq!(sanitize(b"  Kingston  \n").as_deref(), Some("Kingston"));
    assert_eq!(sanitize(b"x\n\n"), None);
    assert_eq!(sanitize(b"~ !").as_deref(), Some("~ !"));
    assert_eq!(sanitize(b"\x7f"), None);
    assert_eq!(sanitize(b"a\0b"), None);
}

#[test]
fn partition_is_not_a_disk() {
    let fake = FakeSys::new();
    let sdb = fake.usb_stick(2, Some(b"123\n"), &Disk::new("sdb", 7));
    fake.partition(&sdb, "sdb1");
    assert!(fake.sysfs().probe("sdb1").unwrap().is_none());
    // A partition that lies about its type is still refused by `partition`.
    fake.write(&format!("{sdb}/sdb1/uevent"), b"DEVTYPE=disk\n");
    assert!(fake.sysfs().probe("sdb1").unwrap().is_none());
}

#[test]
fn fixed_and_virtual_disks_are_not_removable() {
    let fake = FakeSys::new();
    fake.sata_disk(&Disk::new("sda", 1));
    fake.nvme_disk(&Disk::new("nvme0n1", 2));
    fake.virtio_disk(&Disk::new("vda", 3));
    fake.disk(None, &Disk::new("loop0", 4));
    fake.disk(None, &Disk::new("dm-0", 5));
    for name in ["sda", "nvme0n1", "vda", "loop0", "dm-0"] {
        assert!(fake.sysfs().probe(name).unwrap().is_none(), "{name}");
    }
}

#[test]
fn fixed_disks_need_no_diskseq() {
    // An old kernel must not fail the scan because of the host's own disks.
    let fake = FakeSys::new();
    let mut disk = Disk::new("sda", 0);
    disk.diskseq = None;
    fake.sata_disk(&disk);
    assert!(fake.sysfs().probe("sda").unwrap().is_none());
    assert!(fake.sysfs().removable_disks().unwrap().is_empty());
}

#[test]
fn mmc_card_is_removable() {
    let fake = FakeSys::new();
    let mut disk = Disk::new("mmcblk0", 9);
    disk.read_only = true;
    let card = fake.mmc_card(&disk);
    fake.partition(&card, "mmcblk0p1");
    let card = fake.sysfs().probe("mmcblk0").unwrap().unwrap();
    assert_eq!(card.bus, Bus::Mmc);
    assert_eq!(card.serial.as_deref(), Some("0x1234abcd"));
    assert_eq!(card.model.as_deref(), Some("SD32G"));
    assert_eq!(card.vendor.as_deref(), Some("0x000003"));
    assert!(card.read_only);
    assert!(fake.sysfs().probe("mmcblk0p1").unwrap().is_none());
}

#[test]
fn an_emmc_and_its_boot_areas_are_the_hosts_own_disks() {
    let fake = FakeSys::new();
    let disk = fake.mmc_card_of_type(b"MMC\n", &Disk::new("mmcblk0", 4));
    fake.partition(&disk, "mmcblk0p1");
    // The boot areas are whole disks of their own under the same card.
    let card = disk.rsplit_once("/block/").unwrap().0.to_owned();
    fake.disk(Some(&card), &Disk::new("mmcblk0boot0", 5));
    let sysfs = fake.sysfs();
    for name in ["mmcblk0", "mmcblk0boot0", "mmcblk0p1"] {
        assert!(sysfs.probe(name).unwrap().is_none(), "{name}");
    }
    assert!(sysfs.removable_disks().unwrap().is_empty());
}

#[test]
fn mmc_host_alone_is_not_a_card() {
    // A disk hanging directly off an mmc_host (no card): not MMC media.
    let fake = FakeSys::new();
    fake.device("devices/platform/x.mmc", "bus/platform", &[]);
    fake.device(
        "devices/platform/x.mmc/mmc_host/mmc1",
        "class/mmc_host",
        &[],
    );
    fake.disk(
        Some("devices/platform/x.mmc/mmc_host/mmc1"),
        &Disk::new("mmcblk1", 3),
    );
    assert!(fake.sysfs().probe("mmcblk1").unwrap().is_none());
}

#[test]
fn usb_interface_alone_is_not_a_usb_device() {
    // An ancestor in subsystem usb without idVendor is an interface; if
    // no usb_device is above it, the disk is not counted as USB.
    let fake = FakeSys::new();
    fake.device("devices/pci0000:00/0000:00:14.0/iface", "bus/usb", &[]);
    fake.disk(
        Some("devices/pci0000:00/0000:00:14.0/iface"),
        &Disk::new("sdz", 3),
    );
    assert!(fake.sysfs().probe("sdz").unwrap().is_none());
}

#[test]
fn empty_card_reader_has_no_medium() {
    let fake = FakeSys::new();
    let mut disk = Disk::new("sdd", 4);
    disk.sectors = 0;
    fake.usb_stick(4, Some(b"READER01\n"), &disk);
    assert!(fake.sysfs().probe("sdd").unwrap().is_none());
}

#[test]
fn missing_diskseq_means_kernel_too_old() {
    let fake = FakeSys::new();
    let mut disk = Disk::new("sdb", 0);
    disk.diskseq = None;
    fake.usb_stick(2, Some(b"1\n"), &disk);
    let err = fake.sysfs().probe("sdb").unwrap_err();
    assert!(matches!(err, ProbeError::KernelTooOld(_)), "{err}");
    assert!(err.to_string().contains("5.15"), "{err}");
    assert!(matches!(
        fake.sysfs().removable_disks(),
        Err(ProbeError::KernelTooOld(_))
    ));
}

#[test]
fn device_gone_mid_probe() {
    let fake = FakeSys::new();
    let sdb = fake.usb_stick(2, Some(b"1\n"), &Disk::new("sdb", 1));
    // Never existed.
    assert!(fake.sysfs().probe("sdx").unwrap().is_none());
    // Its attributes vanish one by one as the kernel tears it down.
    for attr in ["ro", "diskseq", "size", "device", "uevent"] {
        fake.remove(&format!("{sdb}/{attr}"));
        if attr == "diskseq" {
            // The class link still stands: this is the old-kernel case...
            assert!(fake.sysfs().probe("sdb").is_err());
            // ...unless the device is gone altogether.
            continue;
        }
        assert!(fake.sysfs().probe("sdb").unwrap().is_none(), "{attr}");
    }
    fake.remove("class/block/sdb");
    assert!(fake.sysfs().probe("sdb").unwrap().is_none());
}

#[test]
fn dangling_class_link_is_gone() {
    let fake = FakeSys::new();
    let sdb = fake.usb_stick(2, Some(b"1\n"), &Disk::new("sdb", 1));
    fake.remove(&sdb);
    assert!(fake.sysfs().probe("sdb").unwrap().is_none());
    assert!(fake.sysfs().removable_disks().unwrap().is_empty());
}

#[test]
fn bad_numbers_are_errors() {
    for (attr, value) in [
        ("size", &b"-1\n"[..]),
        ("size", b"36028797018963968\n"),
        ("size", b"99999999999999999999\n"),
        ("diskseq", b"0x10\n"),
        ("ro", b"\n"),
        ("size", &[b'1'; 5000]),
    ] {
        let fake = FakeSys::new();
        let sdb = fake.usb_stick(2, Some(b"1\n"), &Disk::new("sdb", 1));
        fake.write(&format!("{sdb}/{attr}"), value);
        let err = fake.sysfs().probe("sdb").unwrap_err();
        assert!(
            matches!(err, ProbeError::BadAttribute { .. }),
            "{attr}: {err}"
        );
    }
}

#[test]
fn largest_size_that_fits() {
    let fake = FakeSys::new();
    let mut disk = Disk::new("sdb", 1);
    disk.sectors = u64::MAX / 512;
    fake.usb_stick(2, None, &disk);
    let stick = fake.sysfs().probe("sdb").unwrap().unwrap();
    assert_eq!(stick.size_bytes, u64::MAX / 512 * 512);
}

#[test]
fn names_are_checked_before_any_path_is_built() {
    let fake = FakeSys::new();
    for name in [
        "",
        "../sdb",
        "sdb/..",
        ".",
        "..",
        "sd b",
        "sdb\n",
        "sdé",
        &"a".repeat(33),
    ] {
        assert!(
            matches!(fake.sysfs().probe(name), Err(ProbeError::InvalidName)),
            "{name:?}"
        );
    }
    assert!(fake.sysfs().probe("dm-0_x").unwrap().is_none());
}

#[test]
fn ancestor_walk_is_bounded() {
    // A disk 40 levels below the USB device: too deep to be real.
    let fake = FakeSys::new();
    let sdb = fake.usb_stick(2, Some(b"1\n"), &Disk::new("sdb", 1));
    let mut deep = usb_path(2);
    for level in 0..40 {
        deep = format!("{deep}/d{level}");
        fake.device(&deep, "bus/scsi", &[]);
    }
    fake.remove(&format!("{sdb}/device"));
    symlink(fake.sys().join(&deep), fake.sys().join(&sdb).join("device")).unwrap();
    assert!(fake.sysfs().probe("sdb").unwrap().is_none());
}

#[test]
fn ancestors_outside_the_sysfs_root_are_not_examined() {
    // A `device` link leading out of the tree, to something that looks
    // like a USB device: never trusted.
    let fake = FakeSys::new();
    let sdb = fake.usb_stick(2, Some(b"1\n"), &Disk::new("sdb", 1));
    let outside = fake.dir.path().join("outside/1-9");
    fs::create_dir_all(&outside).unwrap();
    symlink(fake.sys().join("bus/usb"), outside.join("subsystem")).unwrap();
    fs::write(outside.join("idVendor"), b"0781\n").unwrap();
    fake.remove(&format!("{sdb}/device"));
    symlink(&outside, fake.sys().join(&sdb).join("device")).unwrap();
    assert!(fake.sysfs().probe("sdb").unwrap().is_none());
}

#[test]
fn devtype_other_than_disk_is_not_a_disk() {
    let fake = FakeSys::new();
    let sdb = fake.usb_stick(2, Some(b"1\n"), &Disk::new("sdb", 1));
    fake.write(
        &format!("{sdb}/uevent"),
        b"MAJOR=8\nDEVNAME=sdb\nDEVTYPE=partition\n",
    );
    assert!(fake.sysfs().probe("sdb").unwrap().is_none());
    fake.write(
        &format!("{sdb}/uevent"),
        b"MAJOR=8\nDEVNAME=sdb\nDEVTYPE=disks\n",
    );
    assert!(fake.sysfs().probe("sdb").unwrap().is_none());
}

#[test]
fn scan_lists_only_removable_disks() {
    let fake = FakeSys::new();
    let sdb = fake.usb_stick(2, Some(b"AAA\n"), &Disk::new("sdb", 11));
    fake.partition(&sdb, "sdb1");
    fake.usb_stick(3, None, &Disk::new("sdc", 12));
    fake.mmc_card(&Disk::new("mmcblk0", 13));
    fake.sata_disk(&Disk::new("sda", 1));
    fake.nvme_disk(&Disk::new("nvme0n1", 2));
    fake.disk(None, &Disk::new("loop0", 3));
    let names: Vec<_> = fake
        .sysfs()
        .removable_disks()
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.diskseq))
        .collect();
    assert_eq!(
        names,
        [
            ("mmcblk0".to_owned(), 13),
            ("sdb".to_owned(), 11),
            ("sdc".to_owned(), 12)
        ]
    );
}

#[test]
fn scan_skips_a_broken_device() {
    let fake = FakeSys::new();
    let sdb = fake.usb_stick(2, Some(b"AAA\n"), &Disk::new("sdb", 11));
    fake.usb_stick(3, None, &Disk::new("sdc", 12));
    fake.write(&format!("{sdb}/size"), b"garbage\n");
    let disks = fake.sysfs().removable_disks().unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].name, "sdc");
}

#[test]
fn system_scan_finds_no_usb_disk_among_virtual_ones() {
    // This host's real sysfs: loop and virtio disks are never removable.
    let sysfs = Sysfs::system();
    for disk in sysfs.removable_disks().unwrap() {
        assert!(matches!(disk.bus, Bus::Usb | Bus::Mmc));
        assert!(!disk.name.starts_with("loop") && !disk.name.starts_with("vd"));
    }
    if Path::new("/sys/class/block/loop0").exists() {
        assert!(sysfs.probe("loop0").unwrap().is_none());
    }
}

/// `disk_seq` on a freshly attached loop device agrees with sysfs.
#[test]
fn disk_seq_of_a_loop_device() {
    if !is_root() {
        eprintln!("skipped: attaching a loop device needs root");
        return;
    }
    let image = tempfile::NamedTempFile::new().unwrap();
    image.as_file().set_len(1 << 20).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(image.path())
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        other => {
            eprintln!("skipped: losetup -f failed: {other:?}");
            return;
        }
    };
    let node = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let name = node.strip_prefix("/dev/").unwrap().to_owned();
    let result = std::panic::catch_unwind(|| {
        let file = File::open(&node).unwrap();
        let seq = disk_seq(&file).unwrap();
        let sysfs_seq = fs::read_to_string(format!("/sys/class/block/{name}/diskseq")).unwrap();
        assert_eq!(seq, sysfs_seq.trim().parse::<u64>().unwrap());
        assert!(seq > 0);
    });
    let detached = std::process::Command::new("losetup")
        .args(["-d", &node])
        .status();
    assert!(matches!(detached, Ok(status) if status.success()));
    result.unwrap();
}

#[test]
fn disk_seq_of_a_regular_file_is_an_error() {
    let file = tempfile::tempfile().unwrap();
    assert!(disk_seq(&file).is_err());
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
