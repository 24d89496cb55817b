//! Domain XML: what a machine's properties are read from, and the template new machines are
//! defined from. Pure functions, no libvirt calls.

use std::collections::BTreeMap;

use roxmltree::{Document, Node};

/// The namespace of Orchard's own element in `<metadata>`.
pub const NS: &str = "https://orchard.invalid/xmlns/libvirt/1";
/// The prefix libvirt writes it with.
pub const NS_KEY: &str = "orchard";

/// One `<disk device='disk'>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Disk {
    /// The guest's name for it (`vda`).
    pub target: String,
    /// `qcow2`, `raw`, … (the driver type; `raw` when not given).
    pub format: String,
    /// The file or block device behind it, if any.
    pub source: Option<String>,
    /// Lowest boot order, or first disk.
    pub boot_order: Option<u32>,
}

/// One `<interface>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Nic {
    pub kind: String,
    pub mac: Option<String>,
    /// The network or bridge it joins.
    pub source: Option<String>,
    pub model: Option<String>,
}

/// What a domain's XML says about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Domain {
    pub uuid: String,
    pub name: String,
    pub title: String,
    pub description: String,
    pub vcpu: u32,
    pub memory_kib: u64,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// `vnc` / `spice` → `host:port`, for graphics with a port.
    pub graphics: BTreeMap<String, String>,
    pub tags: Vec<String>,
    /// Paths of volumes this plugin created for the machine.
    pub created_volumes: Vec<String>,
    /// The first serial console's alias, for opening it.
    pub console_alias: Option<String>,
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.has_tag_name(name))
}

fn children<'a, 'i>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.has_tag_name(name))
}

fn text(n: Option<Node<'_, '_>>) -> String {
    n.and_then(|n| n.text())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Converts a libvirt memory amount to KiB (`unit` defaults to KiB).
fn to_kib(value: u64, unit: Option<&str>) -> u64 {
    let bytes: u128 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1024,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => 1024,
    };
    u64::try_from(u128::from(value) * bytes / 1024).unwrap_or(u64::MAX)
}

pub fn parse(xml: &str) -> Result<Domain, String> {
    let doc = Document::parse(xml).map_err(|e| format!("unreadable domain XML: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("domain") {
        return Err("domain XML without <domain>".into());
    }
    let memory = child(root, "memory");
    let memory_kib = to_kib(
        text(memory).parse().unwrap_or(0),
        memory.and_then(|m| m.attribute("unit")),
    );
    let vcpu = child(root, "vcpu");
    let vcpu = vcpu
        .and_then(|v| v.attribute("current"))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| text(vcpu).parse().unwrap_or(1));
    let mut disks = Vec::new();
    let mut nics = Vec::new();
    let mut graphics = BTreeMap::new();
    let mut console_alias = None;
    if let Some(devices) = child(root, "devices") {
        for d in children(devices, "disk") {
            if d.attribute("device").unwrap_or("disk") != "disk" {
                continue;
            }
            let source = child(d, "source").and_then(|s| {
                s.attribute("file")
                    .or_else(|| s.attribute("dev"))
                    .or_else(|| s.attribute("name"))
                    .or_else(|| s.attribute("volume"))
                    .map(str::to_owned)
            });
            disks.push(Disk {
                target: child(d, "target")
                    .and_then(|t| t.attribute("dev"))
                    .unwrap_or("disk")
                    .to_owned(),
                format: child(d, "driver")
                    .and_then(|t| t.attribute("type"))
                    .unwrap_or("raw")
                    .to_owned(),
                source,
                boot_order: child(d, "boot")
                    .and_then(|b| b.attribute("order"))
                    .and_then(|o| o.parse().ok()),
            });
        }
        for i in children(devices, "interface") {
            let src = child(i, "source");
            nics.push(Nic {
                kind: i.attribute("type").unwrap_or("network").to_owned(),
                mac: child(i, "mac")
                    .and_then(|m| m.attribute("address"))
                    .map(str::to_owned),
                source: src.and_then(|s| {
                    s.attribute("network")
                        .or_else(|| s.attribute("bridge"))
                        .or_else(|| s.attribute("dev"))
                        .map(str::to_owned)
                }),
                model: child(i, "model")
                    .and_then(|m| m.attribute("type"))
                    .map(str::to_owned),
            });
        }
        for g in children(devices, "graphics") {
            let kind = g.attribute("type").unwrap_or_default();
            let port = g.attribute("port").and_then(|p| p.parse::<i64>().ok());
            if let (true, Some(port)) = (matches!(kind, "vnc" | "spice"), port)
                && port > 0
            {
                let listen = g.attribute("listen").unwrap_or("127.0.0.1");
                graphics.insert(kind.to_owned(), format!("{listen}:{port}"));
            }
        }
        for tag in ["console", "serial"] {
            if console_alias.is_some() {
                break;
            }
            if let Some(c) = children(devices, tag).next() {
                console_alias = child(c, "alias")
                    .and_then(|a| a.attribute("name"))
                    .map(str::to_owned);
            }
        }
    }
    let mut tags = Vec::new();
    let mut created_volumes = Vec::new();
    if let Some(own) = child(root, "metadata").and_then(|m| {
        m.children()
            .find(|c| c.is_element() && c.tag_name().namespace() == Some(NS))
    }) {
        for c in own.children().filter(Node::is_element) {
            match c.tag_name().name() {
                "tag" => tags.push(text(Some(c))),
                "volume" => created_volumes.push(text(Some(c))),
                _ => {}
            }
        }
    }
    Ok(Domain {
        uuid: text(child(root, "uuid")),
        name: text(child(root, "name")),
        title: text(child(root, "title")),
        description: child(root, "description")
            .and_then(|n| n.text())
            .unwrap_or_default()
            .to_owned(),
        vcpu,
        memory_kib,
        disks,
        nics,
        graphics,
        tags,
        created_volumes,
        console_alias,
    })
}

/// Escapes text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Orchard's metadata element (without its namespace: libvirt adds it).
pub fn metadata_element(tags: &[String], volumes: &[String]) -> String {
    let mut s = String::from("<machine>");
    for t in tags {
        s.push_str(&format!("<tag>{}</tag>", escape(t)));
    }
    for v in volumes {
        s.push_str(&format!("<volume>{}</volume>", escape(v)));
    }
    s.push_str("</machine>");
    s
}

/// A domain name made from a title: letters, digits, `-`, `_` and `.`, at most 64 bytes.
pub fn name_from_title(title: &str) -> String {
    let mut name: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let trimmed = name.trim_matches(|c| c == '-' || c == '.').to_owned();
    name = if trimmed.is_empty() {
        "machine".into()
    } else {
        trimmed
    };
    name
}

/// What a new domain is made of.
pub struct Template<'a> {
    pub domain_type: &'a str,
    pub name: &'a str,
    pub title: &'a str,
    pub description: &'a str,
    pub tags: &'a [String],
    pub vcpu: u32,
    pub ram_mib: u64,
    /// The disk's path and format.
    pub disk: Option<(&'a str, &'a str)>,
    pub created_volumes: &'a [String],
    pub network: Option<&'a str>,
}

/// The small template every created machine gets: one virtio disk, an optional NIC on a
/// network, a serial console, ACPI (for graceful shutdown).
pub fn domain_xml(t: &Template<'_>) -> String {
    let mut devices = String::new();
    if let Some((path, format)) = t.disk {
        devices.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{}'/><source \
             file='{}'/><target dev='vda' bus='virtio'/></disk>",
            escape(format),
            escape(path)
        ));
    }
    if let Some(net) = t.network {
        devices.push_str(&format!(
            "<interface type='network'><source network='{}'/><model type='virtio'/></interface>",
            escape(net)
        ));
    }
    devices.push_str("<serial type='pty'><target port='0'/></serial><console type='pty'/>");
    format!(
        "<domain type='{dtype}'><name>{name}</name><title>{title}</title>\
         <description>{desc}</description><metadata><{key}:machine xmlns:{key}='{ns}'>{meta}\
         </{key}:machine></metadata><memory unit='MiB'>{ram}</memory><vcpu>{vcpu}</vcpu>\
         <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os><features><acpi/></features>\
         <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>\
         <on_crash>destroy</on_crash><devices>{devices}</devices></domain>",
        dtype = escape(t.domain_type),
        name = escape(t.name),
        title = escape(t.title),
        desc = escape(t.description),
        key = NS_KEY,
        ns = NS,
        meta = metadata_inner(t.tags, t.created_volumes),
        ram = t.ram_mib,
        vcpu = t.vcpu,
    )
}

fn metadata_inner(tags: &[String], volumes: &[String]) -> String {
    let mut s = String::new();
    for t in tags {
        s.push_str(&format!("<{NS_KEY}:tag>{}</{NS_KEY}:tag>", escape(t)));
    }
    for v in volumes {
        s.push_str(&format!("<{NS_KEY}:volume>{}</{NS_KEY}:volume>", escape(v)));
    }
    s
}

/// A volume of `gib` GiB, optionally an overlay on `backing` (path, format).
pub fn volume_xml(name: &str, gib: u64, backing: Option<(&str, &str)>) -> String {
    let backing = backing
        .map(|(path, format)| {
            format!(
                "<backingStore><path>{}</path><format type='{}'/></backingStore>",
                escape(path),
                escape(format)
            )
        })
        .unwrap_or_default();
    format!(
        "<volume><name>{}</name><capacity unit='GiB'>{gib}</capacity><target><format \
         type='qcow2'/></target>{backing}</volume>",
        escape(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm' id='3'>
  <name>web-1</name>
  <uuid>6f1c0b9e-3a53-4b8e-9a51-0d2f7f3c1a10</uuid>
  <title>Web one</title>
  <description>front &amp; back</description>
  <metadata>
    <orchard:machine xmlns:orchard="https://orchard.invalid/xmlns/libvirt/1">
      <orchard:tag>prod</orchard:tag><orchard:tag>eu</orchard:tag>
      <orchard:volume>/var/lib/libvirt/images/web-1.qcow2</orchard:volume>
    </orchard:machine>
    <other:x xmlns:other="urn:other"><other:tag>no</other:tag></other:x>
  </metadata>
  <memory unit='GiB'>2</memory>
  <vcpu placement='static' current='2'>4</vcpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web-1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='sda'/></disk>
    <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdb'/></disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/><source network='default'/><model type='virtio'/>
    </interface>
    <serial type='pty'><alias name='serial0'/></serial>
    <graphics type='vnc' port='5901' listen='127.0.0.1'/>
    <graphics type='spice' port='-1'/>
  </devices>
</domain>"#;

    #[test]
    fn parses_properties() {
        let d = parse(XML).unwrap();
        assert_eq!(d.uuid, "6f1c0b9e-3a53-4b8e-9a51-0d2f7f3c1a10");
        assert_eq!(d.name, "web-1");
        assert_eq!(d.title, "Web one");
        assert_eq!(d.description, "front & back");
        assert_eq!(d.vcpu, 2);
        assert_eq!(d.memory_kib, 2 * 1024 * 1024);
        assert_eq!(d.disks.len(), 2);
        assert_eq!(d.disks[0].target, "vda");
        assert_eq!(d.disks[0].format, "qcow2");
        assert_eq!(d.disks[1].format, "raw");
        assert_eq!(d.disks[1].source.as_deref(), Some("/dev/sdb"));
        assert_eq!(d.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(d.nics[0].source.as_deref(), Some("default"));
        assert_eq!(
            d.graphics.get("vnc").map(String::as_str),
            Some("127.0.0.1:5901")
        );
        assert!(!d.graphics.contains_key("spice"));
        assert_eq!(d.tags, ["prod", "eu"]);
        assert_eq!(d.created_volumes, ["/var/lib/libvirt/images/web-1.qcow2"]);
        assert_eq!(d.console_alias.as_deref(), Some("serial0"));
    }

    #[test]
    fn template_round_trips() {
        let tags = vec!["ci".to_owned(), "a<b".to_owned()];
        let vols = vec!["/p/v.qcow2".to_owned()];
        let xml = domain_xml(&Template {
            domain_type: "test",
            name: "n",
            title: "T & t",
            description: "d",
            tags: &tags,
            vcpu: 2,
            ram_mib: 256,
            disk: Some(("/p/v.qcow2", "qcow2")),
            created_volumes: &vols,
            network: Some("default"),
        });
        let d = parse(&xml).unwrap();
        assert_eq!(d.title, "T & t");
        assert_eq!(d.memory_kib, 256 * 1024);
        assert_eq!(d.vcpu, 2);
        assert_eq!(d.tags, tags);
        assert_eq!(d.created_volumes, vols);
        assert_eq!(d.disks[0].source.as_deref(), Some("/p/v.qcow2"));
        assert_eq!(d.nics.len(), 1);
    }

    #[test]
    fn names_from_titles() {
        assert_eq!(name_from_title("build runner #1"), "build-runner--1");
        assert_eq!(name_from_title("  "), "machine");
        assert_eq!(name_from_title("é"), "machine");
        assert_eq!(name_from_title(&"x".repeat(100)).len(), 64);
    }
}
