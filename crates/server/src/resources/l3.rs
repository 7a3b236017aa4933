//! L3 networks (upstream `L3NetworkVO`) with their IP ranges, DNS servers and network
//! services; network service providers (the built-in flat provider); IP capacity.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{self, field, Child, FType, Refs, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::Row;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

// ---------------------------------------------------------------------------------------
// Resource definitions

pub static IP_RANGE: ResourceDef = ResourceDef {
    inventory: "IpRangeInventory",
    vo: "IpRangeVO",
    class: "org.zstack.header.network.l3.IpRangeInventory",
    table: "ip_range",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("l3NetworkUuid", "l3_network_uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("startIp", "start_ip", FType::Str),
        field("endIp", "end_ip", FType::Str),
        field("netmask", "netmask", FType::Str),
        field("gateway", "gateway", FType::Str),
        field("networkCidr", "network_cidr", FType::Str),
        field("ipVersion", "ip_version", FType::Int),
        field("addressMode", "address_mode", FType::Str),
        field("prefixLen", "prefix_len", FType::Int),
        field("ipRangeType", "ip_range_type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.start_ip_long, t.uuid",
    tag_type: Some("IpRangeVO"),
};

pub static NETWORK_SERVICE_REF: ResourceDef = ResourceDef {
    inventory: "NetworkServiceL3NetworkRefInventory",
    vo: "NetworkServiceL3NetworkRefVO",
    class: "org.zstack.header.network.service.NetworkServiceL3NetworkRefInventory",
    table: "network_service_l3_ref",
    fields: &[
        field("l3NetworkUuid", "l3_network_uuid", FType::Str),
        field("networkServiceProviderUuid", "network_service_provider_uuid", FType::Str),
        field("networkServiceType", "network_service_type", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.network_service_type",
    tag_type: None,
};

pub static HOST_ROUTE: ResourceDef = ResourceDef {
    inventory: "L3NetworkHostRouteInventory",
    vo: "L3NetworkHostRouteVO",
    class: "org.zstack.header.network.l3.L3NetworkHostRouteInventory",
    table: "l3_network_host_route",
    fields: &[
        field("id", "id", FType::Int),
        field("l3NetworkUuid", "l3_network_uuid", FType::Str),
        field("prefix", "prefix", FType::Str),
        field("nexthop", "nexthop", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.id",
    tag_type: None,
};

pub static RESERVED_IP_RANGE: ResourceDef = ResourceDef {
    inventory: "ReservedIpRangeInventory",
    vo: "ReservedIpRangeVO",
    class: "org.zstack.header.network.l3.ReservedIpRangeInventory",
    table: "reserved_ip_range",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("l3NetworkUuid", "l3_network_uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("startIp", "start_ip", FType::Str),
        field("endIp", "end_ip", FType::Str),
        field("ipVersion", "ip_version", FType::Int),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: None,
};

static DNS_REFS: Refs = Refs { table: "l3_network_dns", fk: "l3_network_uuid", value: "dns" };

pub static L3_NETWORK: ResourceDef = ResourceDef {
    inventory: "L3NetworkInventory",
    vo: "L3NetworkVO",
    class: "org.zstack.header.network.l3.L3NetworkInventory",
    table: "l3_network",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("type", "type", FType::Str),
        field("zoneUuid", "zone_uuid", FType::Str),
        field("l2NetworkUuid", "l2_network_uuid", FType::Str),
        field("state", "state", FType::Str),
        field("dnsDomain", "dns_domain", FType::Str),
        field("system", "system", FType::Bool),
        field("category", "category", FType::Str),
        field("ipVersion", "ip_version", FType::Int),
        field("enableIPAM", "enable_ipam", FType::Bool),
        field("isolated", "isolated", FType::Bool),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        // in the order they were added, as upstream (sorted by the DNS row's generated id)
        field("dns", "uuid", FType::RefsOrdered(&DNS_REFS, "seq")),
    ],
    children: &[
        Child { name: "ipRanges", def: &IP_RANGE, fk: "l3_network_uuid", pk: "uuid", many: true },
        Child { name: "networkServices", def: &NETWORK_SERVICE_REF, fk: "l3_network_uuid", pk: "uuid", many: true },
        Child { name: "hostRoute", def: &HOST_ROUTE, fk: "l3_network_uuid", pk: "uuid", many: true },
        Child { name: "reservedIpRanges", def: &RESERVED_IP_RANGE, fk: "l3_network_uuid", pk: "uuid", many: true },
    ],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("L3NetworkVO"),
};

static PROVIDER_TYPES: Refs =
    Refs { table: "network_service_type", fk: "network_service_provider_uuid", value: "type" };
static PROVIDER_L2S: Refs =
    Refs { table: "network_service_provider_l2_ref", fk: "network_service_provider_uuid", value: "l2_network_uuid" };

pub static NETWORK_SERVICE_PROVIDER: ResourceDef = ResourceDef {
    inventory: "NetworkServiceProviderInventory",
    vo: "NetworkServiceProviderVO",
    class: "org.zstack.header.network.service.NetworkServiceProviderInventory",
    table: "network_service_provider",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("type", "type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("networkServiceTypes", "uuid", FType::Refs(&PROVIDER_TYPES)),
        field("attachedL2NetworkUuids", "uuid", FType::Refs(&PROVIDER_L2S)),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("NetworkServiceProviderVO"),
};

// ---------------------------------------------------------------------------------------
// IPv4 helpers (upstream NetworkUtils / commons-net SubnetUtils semantics)

/// A dotted-quad IPv4 address as a number, or None.
pub fn ipv4(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut n: u32 = 0;
    for p in parts {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let v: u32 = p.parse().ok()?;
        if v > 255 {
            return None;
        }
        n = (n << 8) | v;
    }
    Some(n)
}

pub fn ipv4_str(n: u32) -> String {
    Ipv4Addr::from(n).to_string()
}

/// The prefix length of a contiguous netmask, or None.
fn netmask_prefix(mask: u32) -> Option<u32> {
    let p = mask.leading_ones();
    if p == 32 || mask << p == 0 {
        Some(p)
    } else {
        None
    }
}

fn mask_of(prefix: u32) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// A subnet as commons-net's `SubnetUtils` sees it with exclusive host counts.
#[derive(Clone, Copy)]
struct Subnet {
    network: u32,
    broadcast: u32,
    prefix: u32,
}

impl Subnet {
    fn new(addr: u32, prefix: u32) -> Subnet {
        let mask = mask_of(prefix);
        Subnet { network: addr & mask, broadcast: (addr & mask) | !mask, prefix }
    }
    /// The usable host addresses (network and broadcast excluded); none for /31 and /32.
    fn hosts(&self) -> Option<(u32, u32)> {
        if self.prefix >= 31 {
            None
        } else {
            Some((self.network + 1, self.broadcast - 1))
        }
    }
    fn in_range(&self, ip: u32) -> bool {
        self.hosts().is_some_and(|(lo, hi)| lo <= ip && ip <= hi)
    }
    fn cidr(&self) -> String {
        format!("{}/{}", ipv4_str(self.network), self.prefix)
    }
}

// ---------------------------------------------------------------------------------------
// L3 networks

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    super::inventory_reply(app, &L3_NETWORK, uuid).await
}

const CATEGORIES: &[&str] = &["Public", "Private", "System"];

/// rzstack allocates IPv4 addresses only: everything IPv6 that upstream would allocate from
/// is refused with this, never accepted and ignored.
fn ipv6_unsupported(what: &str) -> Error {
    Error::argerr(format!("IPv6 is not supported yet: {what} cannot be created; only IPv4 (ipVersion 4) is supported"))
}

fn is_ipv6(s: &str) -> bool {
    s.parse::<std::net::Ipv6Addr>().is_ok()
}

fn canonical_category(c: &str) -> String {
    CATEGORIES.iter().find(|x| x.eq_ignore_ascii_case(c)).map(|x| x.to_string()).unwrap_or_else(|| c.to_string())
}

fn check_system_category(system: bool, category: &str) -> Result<()> {
    let ok = if system { category == "System" } else { category == "Public" || category == "Private" };
    if ok {
        Ok(())
    } else {
        Err(Error::argerr(
            "not valid combination of system and category,only {false=[Public, Private], true=[System]} are valid",
        ))
    }
}

/// A domain name as Apache's `DomainValidator` accepts it (labels of letters, digits and
/// inner hyphens; an alphabetic top-level label).
fn is_valid_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 || d.len() > 253 {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let tld = labels[labels.len() - 1];
    labels.iter().all(|l| label_ok(l)) && tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateL3 {
    name: String,
    description: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    l2_network_uuid: String,
    category: Option<String>,
    ip_version: Option<i64>,
    #[serde(default)]
    system: bool,
    dns_domain: Option<String>,
    #[serde(rename = "enableIPAM")]
    enable_ipam: Option<bool>,
}

async fn create(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateL3 = msg.parse()?;
    let kind = req.kind.clone().unwrap_or_else(|| "L3BasicNetwork".into());
    if kind != "L3BasicNetwork" {
        return Err(Error::argerr(format!("unsupported l3network type[{kind}]")));
    }
    if let Some(d) = &req.dns_domain {
        if !is_valid_domain(d) {
            return Err(Error::argerr(format!("{d} is not a valid domain name")));
        }
    }
    if req.ip_version == Some(6) {
        return Err(ipv6_unsupported("an L3 network with ipVersion 6"));
    }
    let category = canonical_category(req.category.as_deref().unwrap_or("Private"));
    check_system_category(req.system, &category)?;
    let uuid = msg.resource_uuid();
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &L3_NETWORK, &uuid, &msg).await? {
        let l2 = tx
            .fetch_optional(
                "SELECT zone_uuid, isolated FROM l2_network WHERE uuid = $1",
                &[Val::from(req.l2_network_uuid.as_str())],
            )
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "invalid field[l2NetworkUuid], resource[uuid:{}, type:L2NetworkVO] not found",
                    req.l2_network_uuid
                ))
            })?;
        let zone: String = l2.try_get(0)?;
        let isolated: i64 = l2.try_get(1)?;
        tx.execute(
            "INSERT INTO l3_network (uuid, name, description, type, zone_uuid, l2_network_uuid, state, dns_domain, \
             system, category, ip_version, enable_ipam, isolated, create_date, last_op_date) \
             VALUES ($1, $2, $3, $4, $5, $6, 'Enabled', $7, $8, $9, $10, $11, $12, $13, $13)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(req.description),
                Val::from(kind),
                Val::from(zone),
                Val::from(req.l2_network_uuid),
                Val::from(req.dns_domain),
                Val::from(req.system),
                Val::from(category),
                Val::I(req.ip_version.unwrap_or(4)),
                Val::from(req.enable_ipam.unwrap_or(true)),
                Val::I(isolated),
                Val::I(now),
            ],
        )
        .await?;
        super::own(&mut tx, &uuid, L3_NETWORK.vo, msg.account_uuid()).await?;
        super::tag::attach_create_tags(&mut tx, &uuid, L3_NETWORK.vo, &msg.system_tags(), &msg.user_tags()).await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateL3 {
    uuid: String,
    name: Option<String>,
    description: Option<String>,
    dns_domain: Option<String>,
    category: Option<String>,
    system: Option<bool>,
}

async fn update(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdateL3 = msg.parse()?;
    let mut system = req.system;
    let mut category = req.category.as_deref().map(canonical_category);
    if category.is_some() || system.is_some() {
        let row = app
            .db
            .fetch_optional("SELECT system FROM l3_network WHERE uuid = $1", &[Val::from(req.uuid.as_str())])
            .await?
            .ok_or_else(|| Error::not_found(format!("unable to find L3Network[uuid:{}]", req.uuid)))?;
        let current = row.try_get::<i64, _>(0)? != 0;
        if system.is_some() && category.is_none() && system != Some(current) {
            return Err(Error::argerr("you must update system and category both"));
        }
        let s = *system.get_or_insert(current);
        if let Some(c) = &category {
            check_system_category(s, c)?;
        } else {
            // Upstream changes system and category only together.
            system = None;
            category = None;
        }
    }
    app.db
        .execute(
            "UPDATE l3_network SET name = COALESCE($1, name), description = COALESCE($2, description), \
             dns_domain = COALESCE($3, dns_domain), system = COALESCE($4, system), category = COALESCE($5, category), \
             last_op_date = $6 WHERE uuid = $7",
            &[
                Val::from(req.name),
                Val::from(req.description),
                Val::from(req.dns_domain),
                Val::from(system),
                Val::from(category),
                Val::I(now_ms()),
                Val::from(req.uuid.as_str()),
            ],
        )
        .await?;
    reply(&app, &req.uuid).await
}

/// Refuse to remove addresses that VM NICs still hold (`cond` is SQL over `used_ip`).
async fn refuse_if_nics(tx: &mut WriteTx, cond: &str, key: &str, what: &str) -> Result<()> {
    let sql = format!("SELECT vm_nic_uuid FROM used_ip WHERE {cond} AND vm_nic_uuid IS NOT NULL");
    if let Some(r) = tx.fetch_optional(&sql, &[Val::from(key)]).await? {
        let nic: String = r.try_get(0)?;
        return Err(Error::operr(format!(
            "{what} cannot be deleted because its IP addresses are still used by vm nic[uuid:{nic}]"
        )));
    }
    Ok(())
}

/// Delete one L3 network with its ranges, DNS, services and addresses, inside `tx`.
pub async fn delete_one(tx: &mut WriteTx, uuid: &str) -> Result<()> {
    refuse_if_nics(tx, "l3_network_uuid = $1", uuid, &format!("L3 network[uuid:{uuid}]")).await?;
    for table in [
        "used_ip",
        "ip_range",
        "l3_network_dns",
        "network_service_l3_ref",
        "l3_network_host_route",
        "reserved_ip_range",
    ] {
        tx.execute(&format!("DELETE FROM {table} WHERE l3_network_uuid = $1"), &[Val::from(uuid)]).await?;
    }
    tx.execute("DELETE FROM l3_network WHERE uuid = $1", &[Val::from(uuid)]).await?;
    super::tag::delete_for_resource(tx, uuid).await?;
    super::disown(tx, uuid).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// IP ranges

/// A range about to be added, as upstream's `IpRangeInventory.fromMessage` builds it.
#[derive(Clone)]
struct NewRange {
    name: String,
    description: Option<String>,
    start: String,
    end: String,
    netmask: String,
    gateway: String,
    kind: String,
}

struct L3Info {
    name: String,
    l2: String,
    category: String,
}

async fn l3_info(tx: &mut WriteTx, l3: &str) -> Result<L3Info> {
    let r = tx
        .fetch_optional("SELECT name, l2_network_uuid, category FROM l3_network WHERE uuid = $1", &[Val::from(l3)])
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("invalid field[l3NetworkUuid], resource[uuid:{l3}, type:L3NetworkVO] not found"))
        })?;
    Ok(L3Info { name: r.try_get(0)?, l2: r.try_get(1)?, category: r.try_get(2)? })
}

/// Upstream's checks of one IPv4 range (L3NetworkApiInterceptor.validate(IpRangeInventory)),
/// with their texts; returns the range's subnet.
async fn validate_range(tx: &mut WriteTx, l3: &str, info: &L3Info, r: &NewRange) -> Result<Subnet> {
    if r.kind == "AddressPool" && info.category != "Public" {
        return Err(Error::argerr(format!(
            "l3 network [uuid {l3}: name {}] is not a public network, address pool range can not be added",
            info.name
        )));
    }
    let start = ipv4(&r.start).ok_or_else(|| Error::argerr(format!("start ip[{}] is not a IPv4 address", r.start)))?;
    let end = ipv4(&r.end).ok_or_else(|| Error::argerr(format!("end ip[{}] is not a IPv4 address", r.end)))?;
    let gw = ipv4(&r.gateway).ok_or_else(|| Error::argerr(format!("gateway[{}] is not a IPv4 address", r.gateway)))?;
    let prefix = ipv4(&r.netmask).and_then(netmask_prefix).filter(|p| *p > 0).ok_or_else(|| {
        Error::argerr(format!("netmask[{}] is not a netmask, and the IP range netmask cannot be 0.0.0.0", r.netmask))
    })?;
    let (lo, hi) = (start.min(end), start.max(end));
    let overlaps = |a: &str, b: &str| {
        let (a, b) = (ipv4(a).unwrap_or(0), ipv4(b).unwrap_or(0));
        lo <= b && a <= hi
    };
    if overlaps("224.0.0.0", "239.255.255.255") {
        return Err(Error::argerr(format!(
            "the IP range[{} ~ {}] contains D class addresses which are for multicast",
            r.start, r.end
        )));
    }
    if overlaps("240.0.0.0", "255.255.255.255") {
        return Err(Error::argerr(format!(
            "the IP range[{} ~ {}] contains E class addresses which are reserved",
            r.start, r.end
        )));
    }
    if overlaps("169.254.1.0", "169.254.254.255") {
        return Err(Error::argerr(format!(
            "the IP range[{} ~ {}] contains link local addresses which are reserved",
            r.start, r.end
        )));
    }
    let subnet = Subnet::new(start, prefix);
    if !subnet.in_range(gw) {
        return Err(Error::argerr(format!(
            "the gateway[{}] is not in the subnet {}/{}",
            r.gateway, r.start, r.netmask
        )));
    }
    if start == subnet.network || end == subnet.broadcast {
        return Err(Error::argerr("ip allocation can not contain network address or broadcast address"));
    }
    if start > end {
        return Err(Error::argerr(format!("start ip[{}] is behind end ip[{}]", r.start, r.end)));
    }
    let cidr = Subnet::new(gw, prefix).cidr();
    // Every IPv4 range of every L3 network on the same L2 network.
    let rows = tx
        .fetch_all(
            "SELECT uuid, start_ip, end_ip, l3_network_uuid, ip_range_type, network_cidr FROM ip_range \
             WHERE ip_version = 4 AND start_ip_long <= $1 AND end_ip_long >= $2 \
             AND l3_network_uuid IN (SELECT uuid FROM l3_network WHERE l2_network_uuid = $3) \
             ORDER BY create_date, uuid",
            &[Val::I(end as i64), Val::I(start as i64), Val::from(info.l2.as_str())],
        )
        .await?;
    if let Some(o) = rows.first() {
        let (u, s, e): (String, String, String) = (o.try_get(0)?, o.try_get(1)?, o.try_get(2)?);
        return Err(Error::argerr(format!("overlap with ip range[uuid:{u}, start ip:{s}, end ip: {e}]")));
    }
    if r.kind == "Normal" {
        let other = tx
            .fetch_optional(
                "SELECT uuid, network_cidr FROM ip_range WHERE l3_network_uuid = $1 AND ip_range_type = 'Normal' \
                 AND ip_version = 4 AND network_cidr != $2 ORDER BY create_date, uuid",
                &[Val::from(l3), Val::from(cidr.as_str())],
            )
            .await?;
        if let Some(o) = other {
            let (u, c): (String, String) = (o.try_get(0)?, o.try_get(1)?);
            return Err(Error::argerr(format!(
                "multiple CIDR on the same L3 network is not allowed. There has been a IP range[uuid:{u}, CIDR:{c}], the new IP range[CIDR:{cidr}] is not in the CIDR with the existing one"
            )));
        }
        if !subnet.in_range(end) {
            return Err(Error::argerr(format!("the endip[{}] is not in the subnet {}/{}", r.end, r.start, r.netmask)));
        }
        if start <= gw && gw <= end {
            return Err(Error::argerr(format!(
                "gateway[{}] can not be part of range[{}, {}]",
                r.gateway, r.start, r.end
            )));
        }
        let gws = tx
            .fetch_optional(
                "SELECT gateway FROM ip_range WHERE l3_network_uuid = $1 AND ip_range_type = 'Normal' \
                 AND ip_version = 4 AND gateway != $2 ORDER BY create_date, uuid",
                &[Val::from(l3), Val::from(r.gateway.as_str())],
            )
            .await?;
        if let Some(g) = gws {
            let old: String = g.try_get(0)?;
            return Err(Error::argerr(format!(
                "new add ip range gateway {} is different from old gateway {old}",
                r.gateway
            )));
        }
    }
    Ok(subnet)
}

async fn insert_range(tx: &mut WriteTx, uuid: &str, l3: &str, r: &NewRange, subnet: &Subnet, now: i64) -> Result<()> {
    let start = ipv4(&r.start).unwrap_or(0);
    let end = ipv4(&r.end).unwrap_or(0);
    tx.execute(
        "INSERT INTO ip_range (uuid, l3_network_uuid, name, description, start_ip, end_ip, netmask, gateway, \
         network_cidr, ip_version, prefix_len, ip_range_type, start_ip_long, end_ip_long, create_date, last_op_date) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 4, $10, $11, $12, $13, $14, $14)",
        &[
            Val::from(uuid),
            Val::from(l3),
            Val::from(r.name.as_str()),
            Val::from(r.description.clone()),
            Val::from(r.start.as_str()),
            Val::from(r.end.as_str()),
            Val::from(ipv4_str(mask_of(subnet.prefix))),
            Val::from(r.gateway.as_str()),
            Val::from(subnet.cidr()),
            Val::I(subnet.prefix as i64),
            Val::from(r.kind.as_str()),
            Val::I(start as i64),
            Val::I(end as i64),
            Val::I(now),
        ],
    )
    .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddIpRange {
    l3_network_uuid: String,
    name: String,
    description: Option<String>,
    start_ip: String,
    end_ip: String,
    netmask: String,
    gateway: Option<String>,
    ip_range_type: Option<String>,
}

async fn add_ip_range(app: App, msg: Msg) -> Result<Reply> {
    let req: AddIpRange = msg.parse()?;
    for v in [Some(&req.start_ip), Some(&req.end_ip), req.gateway.as_ref()].into_iter().flatten() {
        if is_ipv6(v) {
            return Err(ipv6_unsupported(&format!("an IP range with the IPv6 address[{v}]")));
        }
    }
    let kind = req.ip_range_type.clone().unwrap_or_else(|| "Normal".into());
    let gateway = if kind == "AddressPool" {
        // upstream gives an address pool its start address as a fake gateway
        req.start_ip.clone()
    } else {
        match &req.gateway {
            Some(g) => g.clone(),
            None => return Err(Error::argerr("adding normal ip range must specify gateway ip address")),
        }
    };
    let range = NewRange {
        name: req.name,
        description: req.description,
        start: req.start_ip,
        end: req.end_ip,
        netmask: req.netmask,
        gateway,
        kind,
    };
    let uuid = msg.resource_uuid();
    let l3 = req.l3_network_uuid.as_str();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &IP_RANGE, &uuid, &msg).await? {
        let info = l3_info(&mut tx, l3).await?;
        let subnet = validate_range(&mut tx, l3, &info, &range).await?;
        insert_range(&mut tx, &uuid, l3, &range, &subnet, now_ms()).await?;
        super::own(&mut tx, &uuid, IP_RANGE.vo, msg.account_uuid()).await?;
        // upstream puts the message's tags on the L3 network
        super::tag::attach_create_tags(&mut tx, l3, L3_NETWORK.vo, &msg.system_tags(), &msg.user_tags()).await?;
    }
    tx.commit().await?;
    range_reply(&app, &uuid).await
}

async fn range_reply(app: &App, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, &IP_RANGE, uuid).await? {
        Some(inv) => Ok(Reply::inventory(&IP_RANGE, inv)),
        None => Err(Error::not_found(format!("cannot find ip range[uuid:{uuid}]"))),
    }
}

/// A second uuid derived from the first, so a replayed job makes the same rows.
fn derived_uuid(first: &str) -> String {
    use md5::Digest;
    let d = md5::Md5::digest(format!("{first}/ip-range-2").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddByCidr {
    l3_network_uuid: String,
    name: String,
    description: Option<String>,
    network_cidr: String,
    gateway: Option<String>,
    ip_range_type: Option<String>,
}

/// Parse `a.b.c.d/n` as commons-net does; None when malformed.
fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (a, p) = s.split_once('/')?;
    if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let p: u32 = p.parse().ok()?;
    if p > 32 {
        return None;
    }
    Some((ipv4(a)?, p))
}

async fn add_ip_range_by_cidr(app: App, msg: Msg) -> Result<Reply> {
    let req: AddByCidr = msg.parse()?;
    let cidr_addr = req.network_cidr.split('/').next().unwrap_or_default();
    if is_ipv6(cidr_addr) || req.gateway.as_deref().is_some_and(is_ipv6) {
        return Err(ipv6_unsupported(&format!("an IP range of the IPv6 network cidr[{}]", req.network_cidr)));
    }
    let invalid = || Error::argerr(format!("{} is not a valid network cidr", req.network_cidr));
    let (addr, prefix) = parse_cidr(&req.network_cidr).ok_or_else(invalid)?;
    let subnet = Subnet::new(addr, prefix);
    let Some((low, high)) = subnet.hosts() else {
        return Err(Error::argerr(format!(
            "{} is not an allowed network cidr, because it doesn't have usable ip range",
            req.network_cidr
        )));
    };
    let gw = match &req.gateway {
        Some(g) => {
            // an unparsable gateway makes upstream's subnet check throw: reported as a bad cidr
            let n = ipv4(g).ok_or_else(invalid)?;
            if !subnet.in_range(n) {
                return Err(Error::argerr(format!(
                    "the gateway[{g}] is not in the subnet {}/{}",
                    ipv4_str(addr),
                    prefix
                )));
            }
            Some(n)
        }
        None => None,
    };
    let kind = req.ip_range_type.clone().unwrap_or_else(|| "Normal".into());
    let netmask = ipv4_str(mask_of(prefix));
    let mk = |s: u32, e: u32, g: u32| NewRange {
        name: req.name.clone(),
        description: req.description.clone(),
        start: ipv4_str(s),
        end: ipv4_str(e),
        netmask: netmask.clone(),
        gateway: ipv4_str(g),
        kind: kind.clone(),
    };
    let ranges = if kind == "Normal" {
        match gw {
            None => vec![mk(low + 1, high, low)],
            Some(g) if g == low => vec![mk(low + 1, high, low)],
            Some(g) if g == high => vec![mk(low, high - 1, high)],
            Some(g) => vec![mk(low, g - 1, g), mk(g + 1, high, g)],
        }
    } else {
        vec![mk(low, high, low)]
    };
    let first = msg.resource_uuid();
    let uuids = [first.clone(), derived_uuid(&first)];
    let l3 = req.l3_network_uuid.as_str();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &IP_RANGE, &first, &msg).await? {
        let info = l3_info(&mut tx, l3).await?;
        let now = now_ms();
        for (r, u) in ranges.iter().zip(&uuids) {
            // each range is checked against the ones inserted before it
            let s = validate_range(&mut tx, l3, &info, r).await?;
            insert_range(&mut tx, u, l3, r, &s, now).await?;
            super::own(&mut tx, u, IP_RANGE.vo, msg.account_uuid()).await?;
        }
        super::tag::attach_create_tags(&mut tx, l3, L3_NETWORK.vo, &msg.system_tags(), &msg.user_tags()).await?;
    }
    tx.commit().await?;
    let mut invs = Vec::new();
    for u in uuids.iter().take(ranges.len()) {
        if let Some(inv) = query::get(&app.db, &IP_RANGE, u).await? {
            invs.push(inv);
        }
    }
    let Some(first_inv) = invs.first().cloned() else {
        return Err(Error::not_found(format!("cannot find ip range[uuid:{first}]")));
    };
    let mut r = Reply::inventory(&IP_RANGE, first_inv);
    for (i, inv) in invs.iter().enumerate() {
        query::schema_for(&IP_RANGE, &format!("inventories[{i}]"), inv, &mut r.schema);
    }
    r.body.insert("inventories".into(), Value::Array(invs.into_iter().map(Value::Object).collect()));
    Ok(r)
}

async fn delete_ip_range(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    let row = tx
        .fetch_optional(
            "SELECT l3_network_uuid, ip_range_type, ip_version FROM ip_range WHERE uuid = $1",
            &[Val::from(uuid.as_str())],
        )
        .await?;
    if let Some(r) = row {
        let l3: String = r.try_get(0)?;
        let kind: String = r.try_get(1)?;
        let version: i64 = r.try_get(2)?;
        if kind == "Normal" && version == 4 {
            let counts = tx
                .fetch_optional(
                    "SELECT (SELECT COUNT(*) FROM ip_range WHERE l3_network_uuid = $1 AND ip_range_type = 'Normal' AND ip_version = 4), \
                     (SELECT COUNT(*) FROM ip_range WHERE l3_network_uuid = $1 AND ip_range_type = 'AddressPool')",
                    &[Val::from(l3.as_str())],
                )
                .await?;
            if let Some(c) = counts {
                let (normal, pools): (i64, i64) = (c.try_get(0)?, c.try_get(1)?);
                if pools > 0 && normal == 1 {
                    return Err(Error::argerr(
                        "can not delete the last normal ip range because there is still has address pool",
                    ));
                }
            }
        }
        refuse_if_nics(&mut tx, "ip_range_uuid = $1", &uuid, &format!("ip range[uuid:{uuid}]")).await?;
        tx.execute("DELETE FROM used_ip WHERE ip_range_uuid = $1", &[Val::from(uuid.as_str())]).await?;
        tx.execute("DELETE FROM ip_range WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
        super::tag::delete_for_resource(&mut tx, &uuid).await?;
        super::disown(&mut tx, &uuid).await?;
    }
    tx.commit().await?;
    Ok(Reply::empty())
}

/// AddIpv6Range and AddIpv6RangeByNetworkCidr: upstream APIs we do not implement yet.
async fn add_ipv6_range(_app: App, msg: Msg) -> Result<Reply> {
    let what = match msg.str("networkCidr") {
        Some(c) => format!("an IPv6 IP range of the network cidr[{c}]"),
        None => "an IPv6 IP range".to_string(),
    };
    Err(ipv6_unsupported(&what))
}

// ---------------------------------------------------------------------------------------
// DNS

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dns {
    l3_network_uuid: String,
    dns: String,
}

async fn add_dns(app: App, msg: Msg) -> Result<Reply> {
    let req: Dns = msg.parse()?;
    let Ok(ip) = req.dns.parse::<IpAddr>() else {
        return Err(Error::argerr(format!("dns[{}] is not a IP address", req.dns)));
    };
    let l3 = req.l3_network_uuid.as_str();
    let mut tx = app.db.begin_write().await?;
    let existing = tx.fetch_all("SELECT dns FROM l3_network_dns WHERE l3_network_uuid = $1", &[Val::from(l3)]).await?;
    for r in existing {
        let d: String = r.try_get(0)?;
        let same = match (ip, d.parse::<IpAddr>()) {
            (IpAddr::V4(_), _) => d == req.dns,
            (IpAddr::V6(a), Ok(IpAddr::V6(b))) => a == b,
            _ => false,
        };
        if same {
            return Err(Error::operr(format!("there has been a DNS[{}] on L3 network[uuid:{l3}]", req.dns)));
        }
    }
    let now = now_ms();
    // seq: the insertion order within this L3 network (the write transaction serializes it)
    tx.execute(
        "INSERT INTO l3_network_dns (l3_network_uuid, dns, create_date, last_op_date, seq) \
         SELECT $1, $2, $3, $3, COALESCE(MAX(seq), 0) + 1 FROM l3_network_dns WHERE l3_network_uuid = $1",
        &[Val::from(l3), Val::from(req.dns.as_str()), Val::I(now)],
    )
    .await
    .map_err(|e| {
        if crate::db::is_unique_violation(&e) {
            Error::operr(format!("there has been a DNS[{}] on L3 network[uuid:{l3}]", req.dns))
        } else {
            e
        }
    })?;
    tx.commit().await?;
    reply(&app, l3).await
}

async fn remove_dns(app: App, msg: Msg) -> Result<Reply> {
    let req: Dns = msg.parse()?;
    let n = app
        .db
        .execute(
            "DELETE FROM l3_network_dns WHERE l3_network_uuid = $1 AND dns = $2",
            &[Val::from(req.l3_network_uuid.as_str()), Val::from(req.dns.as_str())],
        )
        .await?;
    if n == 0 {
        // upstream answers a DNS the network does not have with an empty success
        return Ok(Reply::empty());
    }
    reply(&app, &req.l3_network_uuid).await
}

// ---------------------------------------------------------------------------------------
// Network services

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachServices {
    l3_network_uuid: String,
    network_services: BTreeMap<String, Option<Vec<String>>>,
}

async fn attach_services(app: App, msg: Msg) -> Result<Reply> {
    let mut req: AttachServices = msg.parse()?;
    let l3 = req.l3_network_uuid.as_str();
    if req.network_services.is_empty() {
        return Err(Error::argerr("networkServices cannot be empty"));
    }
    let mut tx = app.db.begin_write().await?;
    req.network_services = provider_types_to_uuids(&mut tx, std::mem::take(&mut req.network_services)).await?;
    for (provider, types) in &req.network_services {
        let types = match types {
            Some(t) if !t.is_empty() => t,
            _ => return Err(Error::argerr(format!("network service for provider[uuid:{provider}] must be specified"))),
        };
        let rows = tx
            .fetch_all(
                "SELECT type FROM network_service_type WHERE network_service_provider_uuid = $1",
                &[Val::from(provider.as_str())],
            )
            .await?;
        if rows.is_empty() {
            return Err(Error::argerr(format!(
                "cannot find network service provider[uuid:{provider}] or it provides no services"
            )));
        }
        let mut actual = Vec::new();
        for r in rows {
            actual.push(r.try_get::<String, _>(0)?);
        }
        let missing: Vec<&str> = types.iter().filter(|t| !actual.contains(t)).map(String::as_str).collect();
        if !missing.is_empty() {
            return Err(Error::argerr(format!(
                "network service provider[uuid:{provider}] doesn't provide services[{}]",
                missing.join(", ")
            )));
        }
    }
    let existing: Vec<String> = tx
        .fetch_all(
            "SELECT network_service_type FROM network_service_l3_ref WHERE l3_network_uuid = $1",
            &[Val::from(l3)],
        )
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<std::result::Result<_, _>>()?;
    let now = now_ms();
    for (provider, types) in &req.network_services {
        for t in types.iter().flatten() {
            if existing.contains(t) {
                return Err(Error::operr(format!(
                    "there has been a network service[{t}] attached to L3 network[uuid:{l3}]"
                )));
            }
            tx.execute(
                "INSERT INTO network_service_l3_ref (l3_network_uuid, network_service_provider_uuid, network_service_type, create_date) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[Val::from(l3), Val::from(provider.as_str()), Val::from(t.as_str()), Val::I(now)],
            )
            .await?;
        }
    }
    tx.commit().await?;
    reply(&app, l3).await
}

/// Upstream lets a provider be named by its type (e.g. `Flat`) instead of its uuid.
async fn provider_types_to_uuids<V>(tx: &mut WriteTx, map: BTreeMap<String, V>) -> Result<BTreeMap<String, V>> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let row = tx
            .fetch_optional(
                "SELECT uuid FROM network_service_provider WHERE type = $1 AND uuid != $1",
                &[Val::from(k.as_str())],
            )
            .await?;
        let key = match row {
            Some(r) => r.try_get::<String, _>(0)?,
            None => k,
        };
        out.insert(key, v);
    }
    Ok(out)
}

/// A list of service types given either as a JSON list or (from a query string) as a
/// comma-separated string.
fn service_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        Value::String(s) => s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect(),
        _ => Vec::new(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DetachServices {
    l3_network_uuid: String,
    network_services: Option<BTreeMap<String, Value>>,
    service: Option<String>,
}

async fn detach_services(app: App, msg: Msg) -> Result<Reply> {
    let req: DetachServices = msg.parse()?;
    let l3 = req.l3_network_uuid.as_str();
    let mut tx = app.db.begin_write().await?;
    // (provider uuid, service types)
    let wanted: Vec<(String, Vec<String>)> = if let Some(service) = &req.service {
        // one service type: whichever provider gives it to this network
        let row = tx
            .fetch_optional(
                "SELECT network_service_provider_uuid FROM network_service_l3_ref \
                 WHERE l3_network_uuid = $1 AND network_service_type = $2",
                &[Val::from(l3), Val::from(service.as_str())],
            )
            .await?;
        match row {
            Some(r) => vec![(r.try_get::<String, _>(0)?, vec![service.clone()])],
            None => Vec::new(),
        }
    } else {
        let map = req.network_services.clone().unwrap_or_default();
        if map.is_empty() {
            return Err(Error::argerr("networkServices cannot be empty"));
        }
        provider_types_to_uuids(&mut tx, map).await?.into_iter().map(|(k, v)| (k, service_list(&v))).collect()
    };
    for (provider, types) in &wanted {
        for t in types {
            tx.execute(
                "DELETE FROM network_service_l3_ref WHERE l3_network_uuid = $1 \
                 AND network_service_provider_uuid = $2 AND network_service_type = $3",
                &[Val::from(l3), Val::from(provider.as_str()), Val::from(t.as_str())],
            )
            .await?;
        }
    }
    tx.commit().await?;
    // upstream answers with the L3 network whether or not anything was attached
    reply(&app, l3).await
}

// ---------------------------------------------------------------------------------------
// Host routes

/// An IPv4 network cidr as upstream's `NetworkUtils.isCidr` accepts it (`a.b.c.d/n`,
/// n in 0..=32, no leading zeros in the octets).
fn is_ipv4_cidr(s: &str) -> bool {
    let Some((a, p)) = s.split_once('/') else { return false };
    let octets_ok = a.split('.').all(|o| !(o.len() > 1 && o.starts_with('0')));
    let prefix_ok = !p.is_empty()
        && p.len() <= 2
        && p.bytes().all(|b| b.is_ascii_digit())
        && !(p.len() > 1 && p.starts_with('0'))
        && p.parse::<u32>().is_ok_and(|n| n <= 32);
    octets_ok && ipv4(a).is_some() && prefix_ok
}

fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.split_once('/').is_some_and(|(a, _)| is_ipv6(a)) {
        return Err(ipv6_unsupported(&format!("a host route for the IPv6 prefix[{prefix}]")));
    }
    if !is_ipv4_cidr(prefix) {
        return Err(Error::argerr(format!("prefix [{prefix}] is not a IPv4 network cidr")));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddHostRoute {
    l3_network_uuid: String,
    prefix: String,
    nexthop: String,
}

fn route_exists(prefix: &str, l3: &str) -> Error {
    Error::operr(format!("there has been a hostroute for prefix[{prefix}] on L3 network[uuid:{l3}]"))
}

async fn add_host_route(app: App, msg: Msg) -> Result<Reply> {
    let req: AddHostRoute = msg.parse()?;
    check_prefix(&req.prefix)?;
    if is_ipv6(&req.nexthop) {
        return Err(ipv6_unsupported(&format!("a host route with the IPv6 nexthop[{}]", req.nexthop)));
    }
    if ipv4(&req.nexthop).is_none() {
        return Err(Error::argerr(format!("nexthop[{}] is not a IPv4 address", req.nexthop)));
    }
    let l3 = req.l3_network_uuid.as_str();
    // The row id is upstream's generated id (MAX + 1); two writers racing for the same id on
    // PostgreSQL make one of them fail on the primary key, and it tries again. A second
    // route for the same prefix is refused by the UNIQUE (l3_network_uuid, prefix) index.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = app.db.begin_write().await?;
        let r = tx
            .execute(
                "INSERT INTO l3_network_host_route (id, l3_network_uuid, prefix, nexthop, create_date, last_op_date) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $4 FROM l3_network_host_route",
                &[Val::from(l3), Val::from(req.prefix.as_str()), Val::from(req.nexthop.as_str()), Val::I(now_ms())],
            )
            .await;
        match r {
            Ok(_) => {
                tx.commit().await?;
                break;
            }
            Err(e) if crate::db::is_unique_violation(&e) => {
                drop(tx);
                let dup = app
                    .db
                    .fetch_optional(
                        "SELECT 1 FROM l3_network_host_route WHERE l3_network_uuid = $1 AND prefix = $2",
                        &[Val::from(l3), Val::from(req.prefix.as_str())],
                    )
                    .await?;
                if dup.is_some() {
                    return Err(route_exists(&req.prefix, l3));
                }
                if attempt >= 10 {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    reply(&app, l3).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RemoveHostRoute {
    l3_network_uuid: String,
    prefix: String,
}

async fn remove_host_route(app: App, msg: Msg) -> Result<Reply> {
    let req: RemoveHostRoute = msg.parse()?;
    check_prefix(&req.prefix)?;
    let l3 = req.l3_network_uuid.as_str();
    let n = app
        .db
        .execute(
            "DELETE FROM l3_network_host_route WHERE l3_network_uuid = $1 AND prefix = $2",
            &[Val::from(l3), Val::from(req.prefix.as_str())],
        )
        .await?;
    if n == 0 {
        return Err(Error::operr(format!("there is no hostroute for prefix[{}] on L3 network[uuid:{l3}]", req.prefix)));
    }
    reply(&app, l3).await
}

// ---------------------------------------------------------------------------------------
// IP capacity

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GetCapacity {
    zone_uuids: Option<Vec<String>>,
    l3_network_uuids: Option<Vec<String>>,
    ip_range_uuids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

#[derive(Default, Clone)]
struct Cap {
    total: i64,
    used: i64,
}

fn placeholders(n: usize, from: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

async fn get_capacity(app: App, msg: Msg) -> Result<Reply> {
    let req: GetCapacity = msg.parse()?;
    let nonempty = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|l| !l.is_empty());
    if !nonempty(&req.ip_range_uuids) && !nonempty(&req.l3_network_uuids) && !nonempty(&req.zone_uuids) && !req.all {
        return Err(Error::argerr(
            "ipRangeUuids, L3NetworkUuids, zoneUuids must have at least one be none-empty list, or all is set to true",
        ));
    }
    // (resource type, keys, SQL giving (key, start, end, netmask) of ranges, SQL giving (key, used count))
    let (rtype, keys, range_sql, used_sql): (&str, Vec<String>, &str, &str) = if nonempty(&req.ip_range_uuids) {
        (
            "IpRangeVO",
            req.ip_range_uuids.clone().unwrap_or_default(),
            "SELECT r.uuid, r.start_ip_long, r.end_ip_long, r.prefix_len FROM ip_range r WHERE r.ip_version = 4 AND r.uuid IN",
            "SELECT u.ip_range_uuid, COUNT(DISTINCT u.ip) FROM used_ip u WHERE u.ip_version = 4 AND u.ip_range_uuid IN",
        )
    } else if nonempty(&req.l3_network_uuids) {
        (
            "L3NetworkVO",
            req.l3_network_uuids.clone().unwrap_or_default(),
            "SELECT r.l3_network_uuid, r.start_ip_long, r.end_ip_long, r.prefix_len FROM ip_range r WHERE r.ip_version = 4 AND r.l3_network_uuid IN",
            "SELECT u.l3_network_uuid, COUNT(DISTINCT u.ip) FROM used_ip u WHERE u.ip_version = 4 AND u.l3_network_uuid IN",
        )
    } else {
        let zones = if nonempty(&req.zone_uuids) {
            req.zone_uuids.clone().unwrap_or_default()
        } else {
            let mut z = Vec::new();
            for r in app.db.fetch_all("SELECT uuid FROM zone ORDER BY uuid", &[]).await? {
                z.push(r.try_get::<String, _>(0)?);
            }
            z
        };
        if zones.is_empty() {
            return Ok(capacity_reply(None, &Cap::default(), &[]));
        }
        (
            "ZoneVO",
            zones,
            "SELECT l.zone_uuid, r.start_ip_long, r.end_ip_long, r.prefix_len FROM ip_range r JOIN l3_network l ON l.uuid = r.l3_network_uuid WHERE r.ip_version = 4 AND l.zone_uuid IN",
            "SELECT l.zone_uuid, COUNT(DISTINCT u.ip) FROM used_ip u JOIN l3_network l ON l.uuid = u.l3_network_uuid WHERE u.ip_version = 4 AND l.zone_uuid IN",
        )
    };
    let vals: Vec<Val> = keys.iter().map(|k| Val::from(k.as_str())).collect();
    let ph = placeholders(keys.len(), 1);
    let mut per: BTreeMap<String, Cap> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in app.db.fetch_all(&format!("{range_sql} ({ph})"), &vals).await? {
        let key: String = r.try_get(0)?;
        let (mut s, mut e): (i64, i64) = (r.try_get(1)?, r.try_get(2)?);
        let prefix: i64 = r.try_get(3)?;
        // network and broadcast addresses never count (upstream stripNetworkAndBroadcastAddress)
        let sub = Subnet::new(s as u32, prefix as u32);
        if s as u32 == sub.network {
            s += 1;
        }
        if e as u32 == sub.broadcast {
            e -= 1;
        }
        if !per.contains_key(&key) {
            order.push(key.clone());
        }
        let c = per.entry(key).or_default();
        if e >= s {
            c.total = (c.total + (e - s + 1)).min(i32::MAX as i64);
        }
    }
    for r in app.db.fetch_all(&format!("{used_sql} ({ph}) GROUP BY 1"), &vals).await? {
        let key: String = r.try_get(0)?;
        let n: i64 = r.try_get(1)?;
        if !per.contains_key(&key) {
            order.push(key.clone());
        }
        per.entry(key).or_default().used += n;
    }
    let mut sum = Cap::default();
    let mut data = Vec::new();
    for k in &order {
        let c = per.get(k).cloned().unwrap_or_default();
        sum.total = (sum.total + c.total).min(i32::MAX as i64);
        sum.used = (sum.used + c.used).min(i32::MAX as i64);
        data.push((k.clone(), c));
    }
    Ok(capacity_reply(Some(rtype), &sum, &data))
}

fn cap_fields(c: &Cap) -> Vec<(&'static str, Value)> {
    vec![
        ("totalCapacity", Value::from(c.total)),
        ("availableCapacity", Value::from(c.total - c.used)),
        ("usedIpAddressNumber", Value::from(c.used)),
        ("ipv4TotalCapacity", Value::from(c.total)),
        ("ipv4AvailableCapacity", Value::from(c.total - c.used)),
        ("ipv4UsedIpAddressNumber", Value::from(c.used)),
        ("ipv6TotalCapacity", Value::from(0)),
        ("ipv6AvailableCapacity", Value::from(0)),
        ("ipv6UsedIpAddressNumber", Value::from(0)),
    ]
}

fn capacity_reply(rtype: Option<&str>, sum: &Cap, data: &[(String, Cap)]) -> Reply {
    let mut fields = cap_fields(sum);
    if rtype.is_some() {
        let items: Vec<Value> = data
            .iter()
            .map(|(k, c)| {
                let mut m = Map::new();
                m.insert("resourceUuid".into(), Value::from(k.as_str()));
                for (n, v) in cap_fields(c) {
                    m.insert(n.into(), v);
                }
                Value::Object(m)
            })
            .collect();
        fields.push(("capacityData", Value::Array(items)));
    }
    if let Some(t) = rtype {
        fields.push(("resourceType", Value::from(t)));
    }
    Reply::fields(fields)
}

/// Count of used addresses per L3 network (for other modules' checks).
pub async fn used_ip_count(app: &App, l3: &str) -> Result<i64> {
    let r = app.db.fetch_optional("SELECT COUNT(*) FROM used_ip WHERE l3_network_uuid = $1", &[Val::from(l3)]).await?;
    Ok(match r {
        Some(r) => r.try_get(0)?,
        None => 0,
    })
}

// ---------------------------------------------------------------------------------------
// API table

const IPV6_ADDRESS_MODES: &[&str] = &["SLAAC", "Stateful-DHCP", "Stateless-DHCP"];
const DELETE_MODE: Param = Param::str("deleteMode").values(&["Permissive", "Enforcing"]);

pub static APIS: &[ApiDef] = &[
    ApiDef::create("CreateL3Network", "/l3-networks")
        .params(&[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("type"),
            Param::str("l2NetworkUuid").required().resource(&super::l2::L2_NETWORK),
            Param::str("category").values(CATEGORIES),
            Param::int("ipVersion").values(&["4", "6"]),
            Param::bool("system"),
            Param::str("dnsDomain"),
            Param::bool("enableIPAM"),
        ])
        .tags(&["networkservices::{services}", "enableDHCP::{flag}"])
        .handler(|a, m| boxed(create(a, m))),
    ApiDef::query("QueryL3Network", "/l3-networks", &L3_NETWORK).optional_paths(&["/l3-networks/{uuid}"]),
    ApiDef::action("UpdateL3Network", "/l3-networks/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&L3_NETWORK),
            Param::str("name").max(255),
            Param::str("description").max(2048),
            Param::str("dnsDomain").max(255),
            Param::str("category").values(CATEGORIES),
            Param::bool("system"),
        ])
        .handler(|a, m| boxed(update(a, m))),
    ApiDef::action("ChangeL3NetworkState", "/l3-networks/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&L3_NETWORK),
            Param::str("stateEvent").required().values(&["enable", "disable"]),
        ])
        .handler(|a, m| boxed(super::change_state(a, m, &L3_NETWORK, super::enable_disable))),
    ApiDef::delete("DeleteL3Network", "/l3-networks/{uuid}")
        .params(&[Param::str("uuid").required().resource(&L3_NETWORK).success_if_missing(), DELETE_MODE])
        .handler(|a, m| boxed(super::delete_in_tx(a, m, |tx, uuid| Box::pin(delete_one(tx, uuid))))),
    ApiDef::create("AddIpRange", "/l3-networks/{l3NetworkUuid}/ip-ranges")
        .params(&[
            Param::str("l3NetworkUuid").required().resource(&L3_NETWORK),
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("startIp").required(),
            Param::str("endIp").required(),
            Param::str("netmask").required(),
            Param::str("gateway"),
            Param::str("ipRangeType").values(&["Normal", "AddressPool"]),
        ])
        .handler(|a, m| boxed(add_ip_range(a, m))),
    ApiDef::create("AddIpRangeByNetworkCidr", "/l3-networks/{l3NetworkUuid}/ip-ranges/by-cidr")
        .params(&[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("l3NetworkUuid").required().resource(&L3_NETWORK),
            Param::str("networkCidr").required(),
            Param::str("gateway").max(64),
            Param::str("ipRangeType").values(&["Normal", "AddressPool"]),
        ])
        .handler(|a, m| boxed(add_ip_range_by_cidr(a, m))),
    ApiDef::delete("DeleteIpRange", "/l3-networks/ip-ranges/{uuid}")
        .params(&[Param::str("uuid").required().resource(&IP_RANGE).success_if_missing(), DELETE_MODE])
        .handler(|a, m| boxed(delete_ip_range(a, m))),
    ApiDef::query("QueryIpRange", "/l3-networks/ip-ranges", &IP_RANGE)
        .optional_paths(&["/l3-networks/ip-ranges/{uuid}"]),
    ApiDef::post("AddDnsToL3Network", "/l3-networks/{l3NetworkUuid}/dns")
        .params(&[Param::str("l3NetworkUuid").required().resource(&L3_NETWORK), Param::str("dns").required()])
        .handler(|a, m| boxed(add_dns(a, m))),
    ApiDef::delete("RemoveDnsFromL3Network", "/l3-networks/{l3NetworkUuid}/dns/{dns}")
        .params(&[Param::str("l3NetworkUuid").required().resource(&L3_NETWORK), Param::str("dns").required()])
        .handler(|a, m| boxed(remove_dns(a, m))),
    ApiDef::query("QueryNetworkServiceProvider", "/network-services/providers", &NETWORK_SERVICE_PROVIDER),
    ApiDef::post("AttachNetworkServiceToL3Network", "/l3-networks/{l3NetworkUuid}/network-services")
        .params(&[
            Param::str("l3NetworkUuid").required().resource(&L3_NETWORK),
            Param::map("networkServices").required(),
        ])
        .handler(|a, m| boxed(attach_services(a, m))),
    ApiDef::delete("DetachNetworkServiceFromL3Network", "/l3-networks/{l3NetworkUuid}/network-services")
        .optional_paths(&["/l3-networks/{l3NetworkUuid}/network-services/{service}"])
        .params(&[
            Param::str("l3NetworkUuid").required().resource(&L3_NETWORK),
            Param::map("networkServices"),
            Param::str("service"),
        ])
        .handler(|a, m| boxed(detach_services(a, m))),
    ApiDef::post("AddHostRouteToL3Network", "/l3-networks/{l3NetworkUuid}/hostroute")
        .params(&[
            Param::str("l3NetworkUuid").required().resource(&L3_NETWORK),
            Param::str("prefix").required(),
            Param::str("nexthop").required(),
        ])
        .handler(|a, m| boxed(add_host_route(a, m))),
    ApiDef::delete("RemoveHostRouteFromL3Network", "/l3-networks/{l3NetworkUuid}/hostroute")
        .params(&[Param::str("l3NetworkUuid").required().resource(&L3_NETWORK), Param::str("prefix").required()])
        .handler(|a, m| boxed(remove_host_route(a, m))),
    ApiDef::create("AddIpv6Range", "/l3-networks/{l3NetworkUuid}/ipv6-ranges")
        .params(&[
            Param::str("l3NetworkUuid").required().resource(&L3_NETWORK),
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("startIp").required(),
            Param::str("endIp").required(),
            Param::str("gateway").required(),
            Param::int("prefixLen").required().range(8, 126),
            Param::str("addressMode").required().values(IPV6_ADDRESS_MODES),
            Param::str("ipRangeType").values(&["Normal", "AddressPool"]),
        ])
        .handler(|a, m| boxed(add_ipv6_range(a, m))),
    ApiDef::create("AddIpv6RangeByNetworkCidr", "/l3-networks/{l3NetworkUuid}/ipv6-ranges/by-cidr")
        .params(&[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("l3NetworkUuid").required().resource(&L3_NETWORK),
            Param::str("networkCidr").required(),
            Param::str("addressMode").required().values(IPV6_ADDRESS_MODES),
            Param::str("ipRangeType").values(&["Normal", "AddressPool"]),
        ])
        .handler(|a, m| boxed(add_ipv6_range(a, m))),
    ApiDef::get("GetIpAddressCapacity", "/ip-capacity")
        .params(&[
            Param::list("zoneUuids").resource(&super::zone::ZONE),
            Param::list("l3NetworkUuids").resource(&L3_NETWORK),
            Param::list("ipRangeUuids").resource(&IP_RANGE),
            Param::bool("all"),
        ])
        .handler(|a, m| boxed(get_capacity(a, m))),
];

#[cfg(test)]
#[path = "l3_test.rs"]
mod tests;
