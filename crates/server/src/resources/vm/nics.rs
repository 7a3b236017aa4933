//! NICs and IPs: MACs, IP allocation (atomic, UNIQUE-guarded), the NIC saga step.

use super::*;

/// Eight random bytes (from a v4 uuid).
pub(super) fn random_bytes() -> [u8; 8] {
    let u = new_uuid();
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(u.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    out
}

/// A MAC in upstream's scheme: `fa:` + four random bytes + the device id.
pub(super) fn mac_for(device: i64) -> String {
    let r = random_bytes();
    format!("fa:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", r[0], r[1], r[2], r[3], device & 0xff)
}

pub const L3_1000: Code = Code { code: "L3.1000", description: "Unable to allocate an ip address from L3Network" };

pub const RANDOM_IP_STRATEGY: &str = "RandomIpAllocatorStrategy";
pub const FIRST_AVAILABLE_IP_STRATEGY: &str = "FirstAvailableIpAllocatorStrategy";

/// The IPv4 allocator strategy in force: global config `l3Network.ipAllocateStrategy`
/// (upstream's resource config; this node has no per-L3 override), read inside the
/// transaction so that every management node uses the stored value.
pub(super) async fn ip_strategy(tx: &mut WriteTx) -> Result<&'static str> {
    let v: Option<String> = tx
        .fetch_optional(
            "SELECT value FROM global_config WHERE category = $1 AND name = $2",
            &[
                Val::from(crate::globals::L3_IP_ALLOCATE_STRATEGY.category),
                Val::from(crate::globals::L3_IP_ALLOCATE_STRATEGY.name),
            ],
        )
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?;
    Ok(if v.as_deref() == Some(FIRST_AVAILABLE_IP_STRATEGY) { FIRST_AVAILABLE_IP_STRATEGY } else { RANDOM_IP_STRATEGY })
}

/// Record `n` (`ip`) of `range` as used by the NIC; false when someone holds it already (the
/// UNIQUE (l3, ipInLong) constraint decides).
#[allow(clippy::too_many_arguments)]
async fn insert_used_ip(
    tx: &mut WriteTx,
    ip_uuid: &str,
    range: &str,
    l3: &str,
    ip: &str,
    n: i64,
    netmask: &str,
    gateway: Option<&str>,
    nic_uuid: &str,
) -> Result<bool> {
    let inserted = tx
        .execute(
            "INSERT INTO used_ip (uuid, ip_range_uuid, l3_network_uuid, ip_version, ip, ip_in_long, netmask, gateway, \
             used_for, vm_nic_uuid, create_date, last_op_date) VALUES ($1, $2, $3, 4, $4, $5, $6, $7, NULL, $8, $9, $9) \
             ON CONFLICT (l3_network_uuid, ip_in_long) DO NOTHING",
            &[
                Val::from(ip_uuid),
                Val::from(range),
                Val::from(l3),
                Val::from(ip),
                Val::I(n),
                Val::from(netmask),
                Val::from(gateway),
                Val::from(nic_uuid),
                Val::I(now_ms()),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// The used addresses of `l3` between `start` and `end`: one row (a comma-separated list,
/// `string_agg` exists on both databases) instead of a row per address, each row being a
/// hand-off from the database thread.
async fn used_in_range(tx: &mut WriteTx, l3: &str, start: i64, end: i64) -> Result<std::collections::HashSet<i64>> {
    let list: Option<String> = tx
        .fetch_optional(
            "SELECT string_agg(CAST(ip_in_long AS TEXT), ',') FROM used_ip \
             WHERE l3_network_uuid = $1 AND ip_in_long >= $2 AND ip_in_long <= $3",
            &[Val::from(l3), Val::I(start), Val::I(end)],
        )
        .await?
        .map(|r| r.try_get::<Option<String>, _>(0))
        .transpose()?
        .flatten();
    let mut out = std::collections::HashSet::new();
    for n in list.as_deref().unwrap_or_default().split(',').filter(|n| !n.is_empty()) {
        out.insert(n.trim().parse::<i64>().map_err(|_| Error::Internal(format!("used_ip: not an address: {n}")))?);
    }
    Ok(out)
}

/// Take a free address of `l3` with the strategy in force ([`ip_strategy`]):
/// - random: a random free candidate near a random offset of a random range;
/// - first available: the lowest free address of the ranges in creation order.
///
/// The gateway and the L3's reserved ranges are never handed out. The pick is inserted into
/// `used_ip`, whose UNIQUE (l3, ipInLong) makes a double allocation impossible; a conflict
/// means someone else took it, so pick again.
pub(super) async fn allocate_ip(
    tx: &mut WriteTx,
    l3: &str,
    nic_uuid: &str,
    ip_uuid: &str,
    required: Option<&str>,
) -> Result<(String, String, Option<String>)> {
    if let Some(ip) = required {
        let strategy = ip_strategy(tx).await?;
        return allocate_required_ip_with(tx, strategy, l3, nic_uuid, ip_uuid, ip).await;
    }
    // the ranges in creation order, each row with the strategy in force (one statement)
    let mut ranges = tx
        .fetch_all(
            "SELECT uuid, start_ip_long, end_ip_long, netmask, gateway, \
             (SELECT value FROM global_config WHERE category = $2 AND name = $3), \
             (SELECT string_agg(start_ip || '-' || end_ip, ',') FROM reserved_ip_range \
             WHERE l3_network_uuid = $1 AND ip_version = 4) FROM ip_range \
             WHERE l3_network_uuid = $1 AND ip_version = 4 AND ip_range_type = 'Normal' ORDER BY create_date, uuid",
            &[
                Val::from(l3),
                Val::from(crate::globals::L3_IP_ALLOCATE_STRATEGY.category),
                Val::from(crate::globals::L3_IP_ALLOCATE_STRATEGY.name),
            ],
        )
        .await?;
    let strategy = match ranges.first() {
        Some(r) => match r.try_get::<Option<String>, _>(5)?.as_deref() {
            Some(FIRST_AVAILABLE_IP_STRATEGY) => FIRST_AVAILABLE_IP_STRATEGY,
            _ => RANDOM_IP_STRATEGY,
        },
        None => ip_strategy(tx).await?,
    };
    let first = strategy == FIRST_AVAILABLE_IP_STRATEGY;
    if !first {
        // the random strategy tries the ranges in random order
        for i in (1..ranges.len()).rev() {
            let j = (u64::from_le_bytes(random_bytes()) % (i as u64 + 1)) as usize;
            ranges.swap(i, j);
        }
    }
    // reserved IP ranges of the L3 are never handed out by the allocator (a static IP may name
    // one); they came with every range row as `start-end,start-end,...`
    let mut reserved: Vec<(i64, i64)> = Vec::new();
    let reserved_list: Option<String> = match ranges.first() {
        Some(r) => r.try_get(6)?,
        None => None,
    };
    for pair in reserved_list.as_deref().unwrap_or_default().split(',') {
        let Some((a, b)) = pair.split_once('-') else { continue };
        if let (Some(a), Some(b)) = (crate::resources::l3::ipv4(a), crate::resources::l3::ipv4(b)) {
            reserved.push((i64::from(a.min(b)), i64::from(a.max(b))));
        }
    }
    let is_reserved = |n: i64| reserved.iter().any(|(a, b)| *a <= n && n <= *b);
    for r in ranges {
        let range: String = r.try_get(0)?;
        let start: i64 = r.try_get(1)?;
        let end: i64 = r.try_get(2)?;
        let netmask: String = r.try_get(3)?;
        let gateway: Option<String> = r.try_get(4)?;
        let gw = gateway.as_deref().and_then(crate::resources::l3::ipv4).map(i64::from);
        if first {
            // ascending: a conflict (a concurrent allocation took it) moves on to the next one
            let used = used_in_range(tx, l3, start, end).await?;
            for n in (start..=end).filter(|n| !used.contains(n) && Some(*n) != gw && !is_reserved(*n)) {
                let ip = crate::resources::l3::ipv4_str(n as u32);
                if insert_used_ip(tx, ip_uuid, &range, l3, &ip, n, &netmask, gateway.as_deref(), nic_uuid).await? {
                    return Ok((ip, netmask, gateway));
                }
            }
            continue;
        }
        for _attempt in 0..16 {
            // upstream's random strategy: from a random offset, scan forward (wrapping to the
            // range start) for a window of free addresses, and take a random one of them. The
            // used addresses are read for the 1,024 addresses after the offset only (a range
            // scan of the UNIQUE (l3, ipInLong) index), and for the whole range only when that
            // window has nothing free: a create's cost does not grow with the VMs on the L3.
            let offset = start + (u64::from_le_bytes(random_bytes()) % (end - start + 1).max(1) as u64) as i64;
            let usable = |n: &i64, used: &std::collections::HashSet<i64>| {
                !used.contains(n) && Some(*n) != gw && !is_reserved(*n)
            };
            let window_end = (offset + 1023).min(end);
            // The candidates are the first 256 free addresses after the offset; unless the range
            // is over a third full they lie in its first 384 addresses, so those are read first
            // (fewer rows), the rest of the window only when they hold fewer than 256.
            let first_end = (offset + 383).min(window_end);
            let mut used = used_in_range(tx, l3, offset, first_end).await?;
            let mut free: Vec<i64> = (offset..=first_end).filter(|n| usable(n, &used)).take(256).collect();
            if free.len() < 256 && first_end < window_end {
                used.extend(used_in_range(tx, l3, first_end + 1, window_end).await?);
                free = (offset..=window_end).filter(|n| usable(n, &used)).take(256).collect();
            }
            if free.is_empty() {
                let used = used_in_range(tx, l3, start, end).await?;
                free = (offset..=end).chain(start..offset).filter(|n| usable(n, &used)).take(256).collect();
            }
            if free.is_empty() {
                break;
            }
            let pick = free[(u64::from_le_bytes(random_bytes()) % free.len() as u64) as usize];
            let ip = crate::resources::l3::ipv4_str(pick as u32);
            if insert_used_ip(tx, ip_uuid, &range, l3, &ip, pick, &netmask, gateway.as_deref(), nic_uuid).await? {
                return Ok((ip, netmask, gateway));
            }
        }
    }
    let name: String = tx
        .fetch_optional("SELECT name FROM l3_network WHERE uuid = $1", &[Val::from(l3)])
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .unwrap_or_default();
    Err(Error::Api(ErrorCode::new(
        L3_1000,
        format!("IP allocator strategy[{strategy}] failed, because no ip is available in this l3Network[name:{name}, uuid:{l3}]"),
    )))
}

/// Take one given address of `l3` (a static IP): inserted into `used_ip`, whose UNIQUE
/// (l3, ipInLong) refuses it when someone else holds it.
async fn allocate_required_ip_with(
    tx: &mut WriteTx,
    strategy: &str,
    l3: &str,
    nic_uuid: &str,
    ip_uuid: &str,
    ip: &str,
) -> Result<(String, String, Option<String>)> {
    let not_available = || {
        Error::Api(ErrorCode::new(
            L3_1000,
            format!("IP allocator strategy[{strategy}] failed, because IP[{ip}] is not available"),
        ))
    };
    let n = i64::from(crate::resources::l3::ipv4(ip).ok_or_else(not_available)?);
    let Some(r) = tx
        .fetch_optional(
            "SELECT uuid, netmask, gateway FROM ip_range WHERE l3_network_uuid = $1 AND ip_version = 4 \
             AND start_ip_long <= $2 AND end_ip_long >= $2 ORDER BY create_date LIMIT 1",
            &[Val::from(l3), Val::I(n)],
        )
        .await?
    else {
        return Err(not_available());
    };
    let range: String = r.try_get(0)?;
    let netmask: String = r.try_get(1)?;
    let gateway: Option<String> = r.try_get(2)?;
    if !insert_used_ip(tx, ip_uuid, &range, l3, ip, n, &netmask, gateway.as_deref(), nic_uuid).await? {
        return Err(not_available());
    }
    Ok((ip.to_string(), netmask, gateway))
}

/// NICs in device-id order, each with a unique `fa:` MAC (UNIQUE constraint, retried) and an
/// address of its L3 network.
pub(super) fn nics_do<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        // what record-vm and allocate-host learnt; read back only for plans stored without it
        let (internal_id, hv): (i64, Option<String>) = match (c.internal_id, &c.host_hypervisor) {
            (Some(id), Some(hv)) => (id, Some(hv.clone())),
            _ => match tx
                .fetch_optional(
                    "SELECT internal_id, hypervisor_type FROM vm_instance WHERE uuid = $1",
                    &[Val::from(c.vm_uuid.as_str())],
                )
                .await?
            {
                Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<Option<String>, _>(1)?),
                None => (0, None),
            },
        };
        let now = now_ms();
        for (device, nic) in c.nics.iter().enumerate() {
            let device = device as i64;
            let mut inserted = false;
            let tries = if nic.mac.is_some() { 1 } else { 32 };
            for _ in 0..tries {
                let n = tx
                    .execute(
                        "INSERT INTO vm_nic (uuid, vm_instance_uuid, l3_network_uuid, mac, hypervisor_type, ip_version, \
                         driver_type, internal_name, device_id, type, state, create_date, last_op_date, meta_data) \
                         VALUES ($1, $2, $3, $4, $5, 4, $9, $6, $7, 'VNIC', $10, $8, $8, $11) ON CONFLICT (mac) DO NOTHING",
                        &[
                            Val::from(nic.uuid.as_str()),
                            Val::from(c.vm_uuid.as_str()),
                            Val::from(nic.l3.as_str()),
                            Val::S(nic.mac.clone().unwrap_or_else(|| mac_for(device))),
                            Val::from(hv.clone()),
                            Val::S(format!("vnic{internal_id}.{device}")),
                            Val::I(device),
                            Val::I(now),
                            Val::from(nic.driver.as_deref().or(c.nic_driver.as_deref()).unwrap_or("virtio")),
                            Val::from(nic.state.as_deref().unwrap_or("enable")),
                            Val::from(nic.meta_data.clone()),
                        ],
                    )
                    .await?;
                if n == 1 {
                    inserted = true;
                    break;
                }
            }
            if let (false, Some(m)) = (inserted, &nic.mac) {
                return Err(Error::operr(format!("Duplicate mac address [{m}]")));
            }
            if !inserted {
                return Err(Error::code(
                    Code { code: "VM.1009", description: "Unable to allocate a mac address for vm's nic" },
                    format!("cannot find a free mac address for the nic[deviceId:{device}] of vm[uuid:{}]", c.vm_uuid),
                ));
            }
            let ip_uuid = new_uuid();
            let (ip, netmask, gateway) = allocate_ip(tx, &nic.l3, &nic.uuid, &ip_uuid, nic.ip.as_deref()).await?;
            tx.execute(
                "UPDATE vm_nic SET used_ip_uuid = $1, ip = $2, netmask = $3, gateway = $4 WHERE uuid = $5",
                &[
                    Val::from(ip_uuid.as_str()),
                    Val::from(ip),
                    Val::from(netmask),
                    Val::from(gateway),
                    Val::from(nic.uuid.as_str()),
                ],
            )
            .await?;
        }
        Ok(())
    })
}

pub(super) fn nics_undo<'a>(_app: &'a App, tx: &'a mut WriteTx, c: &'a mut Ctx) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        for nic in &c.nics {
            tx.execute("DELETE FROM used_ip WHERE vm_nic_uuid = $1", &[Val::from(nic.uuid.as_str())]).await?;
            tx.execute("DELETE FROM vm_nic WHERE uuid = $1", &[Val::from(nic.uuid.as_str())]).await?;
        }
        Ok(())
    })
}
