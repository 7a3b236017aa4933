//! The bulk path of `query --api-vms K`: K VMs are created through the API; then, with the
//! management node stopped, their rows are copied straight into its database until N VMs exist.
//!
//! A copy is what the API would have written for one more VM with the same parameters:
//! - every row that belongs to a template VM: `vm_instance`, `vm_nic`, the NIC's `used_ip`, its
//!   volumes, CD-ROMs and TPM, and the `account_resource_ref`, `system_tag`, `user_tag` and
//!   `ssh_key_pair_ref` rows of those resources; columns are read from the schema, so a column
//!   added by a later migration is copied too;
//! - every uuid of those resources gets a fresh random uuid (also inside text values such as a
//!   volume's install path), consistently across tables;
//! - `internal_id` is shifted past the largest one (and `vm_internal_id` moved past it), the NIC's
//!   internal name follows it; names get a `-<copy>` suffix;
//! - every IP is a free address of the template IP's own range (not used, not the gateway), the
//!   NIC's `ip` is its used IP's; every MAC is a fresh unique `fa:` MAC;
//! - dates move back by the templates' time span per copy, so copies are older than templates;
//! - host CPU/memory and primary-storage capacity are taken for the copies exactly as the
//!   templates took them (what each template VM took, once per copy).
//!
//! Afterwards the benchmark restarts the node and checks through the API that N VMs exist, used
//! IPs = NICs and allocated CPU = running VMs.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::collections::{HashMap, HashSet};

type Res<T> = Result<T, String>;

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    S,
    I,
    F,
}

#[derive(Clone, Debug)]
enum V {
    S(Option<String>),
    I(Option<i64>),
    F(Option<f64>),
}

struct Table {
    name: &'static str,
    cols: Vec<(String, Ty)>,
    rows: Vec<Vec<V>>,
}

impl Table {
    fn col(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|(c, _)| c == name)
    }
}

/// What the templates took before the copies: per host (cpu, memory) and per primary storage
/// capacity, read through the API before and after the K creates.
pub struct Taken {
    pub hosts: Vec<(String, i64, i64)>,
    pub ps: Vec<(String, i64)>,
}

pub struct Report {
    pub copies: usize,
    pub rows: usize,
}

async fn columns(pool: &AnyPool, pg: bool, table: &str) -> Res<Vec<(String, Ty)>> {
    let rows = if pg {
        sqlx::query(
            "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns \
             WHERE table_name = $1 AND table_schema = current_schema() ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(pool)
        .await
        .map_err(e)?
    } else {
        sqlx::query("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
            .bind(table)
            .fetch_all(pool)
            .await
            .map_err(e)?
    };
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.try_get(0).map_err(e)?;
        let ty: String = r.try_get(1).map_err(e)?;
        let ty = ty.to_ascii_uppercase();
        let ty = if ty.contains("INT") {
            Ty::I
        } else if ty.contains("DOUBLE") || ty.contains("REAL") || ty.contains("FLOAT") {
            Ty::F
        } else {
            Ty::S
        };
        out.push((name, ty));
    }
    if out.is_empty() {
        return Err(format!("table {table} not found"));
    }
    Ok(out)
}

async fn load(pool: &AnyPool, pg: bool, name: &'static str, filter: &str) -> Res<Table> {
    let cols = columns(pool, pg, name).await?;
    let list: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
    let sql = format!("SELECT {} FROM {name} {filter}", list.join(", "));
    let mut rows = Vec::new();
    for r in sqlx::query(&sql).fetch_all(pool).await.map_err(e)? {
        let mut row = Vec::with_capacity(cols.len());
        for (i, (_, ty)) in cols.iter().enumerate() {
            row.push(match ty {
                Ty::S => V::S(r.try_get(i).map_err(e)?),
                Ty::I => V::I(r.try_get(i).map_err(e)?),
                Ty::F => V::F(r.try_get(i).map_err(e)?),
            });
        }
        rows.push(row);
    }
    Ok(Table { name, cols, rows })
}

fn new_uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Replace every 32-hex-digit run of `s` found in `map`.
fn remap_text(s: &str, map: &HashMap<String, String>) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::new();
    let (mut i, mut last, mut changed) = (0, 0, false);
    while i < b.len() {
        if b[i].is_ascii_hexdigit() {
            let j = (i..b.len()).find(|&j| !b[j].is_ascii_hexdigit()).unwrap_or(b.len());
            if j - i == 32 {
                if let Some(n) = map.get(&s[i..j]) {
                    out.push_str(&s[last..i]);
                    out.push_str(n);
                    last = j;
                    changed = true;
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    changed.then(|| {
        out.push_str(&s[last..]);
        out
    })
}

/// Copy the VMs in the database at `url` (the node stopped) until `target` VMs exist.
pub async fn copy_vms(url: &str, target: usize, taken: &Taken) -> Res<Report> {
    sqlx::any::install_default_drivers();
    let pg = url.starts_with("postgres");
    let pool = AnyPoolOptions::new().max_connections(1).connect(url).await.map_err(e)?;
    let owned = "resource_uuid IN (SELECT uuid FROM vm_instance UNION SELECT uuid FROM vm_nic \
                 UNION SELECT uuid FROM volume WHERE vm_instance_uuid IS NOT NULL UNION SELECT uuid FROM vm_cdrom \
                 UNION SELECT uuid FROM tpm)";
    let mut tables = Vec::new();
    for (name, filter) in [
        ("vm_instance", String::new()),
        ("vm_nic", String::new()),
        ("used_ip", "WHERE vm_nic_uuid IS NOT NULL".to_string()),
        ("volume", "WHERE vm_instance_uuid IS NOT NULL".to_string()),
        ("vm_cdrom", String::new()),
        ("tpm", String::new()),
        ("account_resource_ref", format!("WHERE {owned}")),
        ("system_tag", format!("WHERE {owned}")),
        ("user_tag", format!("WHERE {owned}")),
        ("ssh_key_pair_ref", format!("WHERE {owned}")),
    ] {
        tables.push(load(&pool, pg, name, &filter).await?);
    }
    let k = tables[0].rows.len();
    if k == 0 || !target.is_multiple_of(k) || target < k {
        return Err(format!("{target} VMs cannot be made by copying {k} VMs: N must be a multiple of --api-vms"));
    }
    let copies = target / k - 1;

    // The uuids to renew in each copy: the `uuid` column of every copied table.
    let mut olds: Vec<String> = Vec::new();
    for t in &tables {
        if let Some(c) = t.col("uuid") {
            for r in &t.rows {
                if let V::S(Some(u)) = &r[c] {
                    olds.push(u.clone());
                }
            }
        }
    }
    // Internal ids, dates.
    let vm = &tables[0];
    let ci = vm.col("internal_id").ok_or("vm_instance.internal_id")?;
    let cd = vm.col("create_date").ok_or("vm_instance.create_date")?;
    let ids: Vec<i64> = vm.rows.iter().filter_map(|r| if let V::I(Some(i)) = r[ci] { Some(i) } else { None }).collect();
    let id_step = ids.iter().copied().max().unwrap_or(0) + 1;
    let dates: Vec<i64> =
        vm.rows.iter().filter_map(|r| if let V::I(Some(i)) = r[cd] { Some(i) } else { None }).collect();
    let span = dates.iter().max().unwrap_or(&0) - dates.iter().min().unwrap_or(&0) + 1;

    // Free IPs per range: ascending, not used, not the gateway, not reserved.
    let mut used: HashSet<(String, i64)> = HashSet::new();
    for r in sqlx::query("SELECT l3_network_uuid, ip_in_long FROM used_ip").fetch_all(&pool).await.map_err(e)? {
        used.insert((r.try_get(0).map_err(e)?, r.try_get(1).map_err(e)?));
    }
    let mut reserved: Vec<(String, i64, i64)> = Vec::new();
    for r in sqlx::query("SELECT l3_network_uuid, start_ip, end_ip FROM reserved_ip_range")
        .fetch_all(&pool)
        .await
        .map_err(e)?
    {
        let l3: String = r.try_get(0).map_err(e)?;
        let (a, b): (String, String) = (r.try_get(1).map_err(e)?, r.try_get(2).map_err(e)?);
        reserved.push((l3, ip_long(&a)?, ip_long(&b)?));
    }
    struct Range {
        l3: String,
        next: i64,
        end: i64,
        gw: Option<i64>,
    }
    let mut ranges: HashMap<String, Range> = HashMap::new();
    for r in sqlx::query("SELECT uuid, l3_network_uuid, start_ip_long, end_ip_long, gateway FROM ip_range")
        .fetch_all(&pool)
        .await
        .map_err(e)?
    {
        let gw: Option<String> = r.try_get(4).map_err(e)?;
        ranges.insert(
            r.try_get(0).map_err(e)?,
            Range {
                l3: r.try_get(1).map_err(e)?,
                next: r.try_get(2).map_err(e)?,
                end: r.try_get(3).map_err(e)?,
                gw: gw.as_deref().map(ip_long).transpose()?,
            },
        );
    }
    let mut next_ip = |range: &str| -> Res<i64> {
        let r = ranges.get_mut(range).ok_or_else(|| format!("ip range {range} not found"))?;
        while r.next <= r.end {
            let n = r.next;
            r.next += 1;
            let l3 = r.l3.clone();
            if used.contains(&(l3.clone(), n))
                || Some(n) == r.gw
                || reserved.iter().any(|(x, a, b)| *x == l3 && *a <= n && n <= *b)
            {
                continue;
            }
            used.insert((l3, n));
            return Ok(n);
        }
        Err(format!("ip range {range} has no free address left for the copies"))
    };
    let mut macs: HashSet<String> = HashSet::new();
    for r in sqlx::query("SELECT mac FROM vm_nic").fetch_all(&pool).await.map_err(e)? {
        macs.insert(r.try_get(0).map_err(e)?);
    }
    let mut new_mac = |device: i64| -> String {
        loop {
            let b = uuid::Uuid::new_v4().into_bytes();
            let m = format!("fa:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], device & 0xff);
            if macs.insert(m.clone()) {
                return m;
            }
        }
    };

    let mut rows_written = 0;
    let ip_table = tables.iter().position(|t| t.name == "used_ip").ok_or("used_ip")?;
    for copy in 1..=copies as i64 {
        let map: HashMap<String, String> = olds.iter().map(|o| (o.clone(), new_uuid())).collect();
        // New IP per template used IP (old uuid -> (ip text, ip long)).
        let mut ips: HashMap<String, (String, i64)> = HashMap::new();
        {
            let t = &tables[ip_table];
            let (cu, cr) =
                (t.col("uuid").ok_or("used_ip.uuid")?, t.col("ip_range_uuid").ok_or("used_ip.ip_range_uuid")?);
            for r in &t.rows {
                if let (V::S(Some(u)), V::S(Some(range))) = (&r[cu], &r[cr]) {
                    let n = next_ip(range)?;
                    ips.insert(u.clone(), (ip_text(n), n));
                }
            }
        }
        let mut tx = pool.begin().await.map_err(e)?;
        for t in &tables {
            if t.rows.is_empty() {
                continue;
            }
            let ip_key = if t.name == "vm_nic" { t.col("used_ip_uuid") } else { t.col("uuid") };
            let dev = t.col("device_id");
            let mut out = Vec::with_capacity(t.rows.len());
            for r in &t.rows {
                let ip = match ip_key.map(|c| &r[c]) {
                    Some(V::S(Some(u))) => ips.get(u),
                    _ => None,
                };
                let mut row = Vec::with_capacity(r.len());
                for (i, (col, _)) in t.cols.iter().enumerate() {
                    let v = match (&r[i], t.name, col.as_str()) {
                        (V::I(Some(n)), "vm_instance", "internal_id") => V::I(Some(n + copy * id_step)),
                        (V::I(Some(n)), _, c) if c.ends_with("_date") => V::I(Some(n - copy * span)),
                        (V::S(Some(s)), "vm_instance", "name") => V::S(Some(format!("{s}-{copy}"))),
                        (V::S(Some(s)), "volume", "name") if s.starts_with("ROOT-for-") => {
                            V::S(Some(format!("{s}-{copy}")))
                        }
                        (V::S(Some(_)), "vm_nic", "mac") => {
                            let d = match dev.map(|c| &r[c]) {
                                Some(V::I(Some(d))) => *d,
                                _ => 0,
                            };
                            V::S(Some(new_mac(d)))
                        }
                        (V::S(Some(s)), "vm_nic", "internal_name") => V::S(Some(shift_vnic(s, copy * id_step))),
                        (V::S(Some(_)), "vm_nic" | "used_ip", "ip") if ip.is_some() => V::S(ip.map(|x| x.0.clone())),
                        (V::I(Some(_)), "used_ip", "ip_in_long") if ip.is_some() => V::I(ip.map(|x| x.1)),
                        (V::S(Some(s)), _, _) => match map.get(s) {
                            Some(n) => V::S(Some(n.clone())),
                            None => V::S(Some(remap_text(s, &map).unwrap_or_else(|| s.clone()))),
                        },
                        (v, _, _) => v.clone(),
                    };
                    row.push(v);
                }
                out.push(row);
            }
            rows_written += out.len();
            insert(&mut tx, t, &out).await?;
        }
        tx.commit().await.map_err(e)?;
    }

    // Capacity: each copy takes what its template took.
    let c = copies as i64;
    let mut tx = pool.begin().await.map_err(e)?;
    for (h, cpu, mem) in &taken.hosts {
        sqlx::query(
            "UPDATE host SET available_cpu = available_cpu - $1 * ($2 - available_cpu), \
             available_memory = available_memory - $1 * ($3 - available_memory) WHERE uuid = $4",
        )
        .bind(c)
        .bind(*cpu)
        .bind(*mem)
        .bind(h.as_str())
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    }
    for (p, avail) in &taken.ps {
        sqlx::query("UPDATE primary_storage SET available_capacity = available_capacity - $1 * ($2 - available_capacity) WHERE uuid = $3")
            .bind(c)
            .bind(*avail)
            .bind(p.as_str())
            .execute(&mut *tx)
            .await
            .map_err(e)?;
    }
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM host WHERE available_cpu < 0 OR available_memory < 0")
        .fetch_one(&mut *tx)
        .await
        .map_err(e)?
        .try_get(0)
        .map_err(e)?;
    if n > 0 {
        return Err(format!("{n} hosts have too little capacity for the copies: use fewer VMs per host"));
    }
    sqlx::query("UPDATE vm_internal_id SET next_value = (SELECT MAX(internal_id) FROM vm_instance) WHERE id = 1")
        .execute(&mut *tx)
        .await
        .map_err(e)?;
    tx.commit().await.map_err(e)?;
    if !pg {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&pool).await.map_err(e)?;
        sqlx::query("ANALYZE").execute(&pool).await.map_err(e)?;
    } else {
        sqlx::query("ANALYZE").execute(&pool).await.map_err(e)?;
    }
    pool.close().await;
    Ok(Report { copies, rows: rows_written })
}

async fn insert(tx: &mut sqlx::Transaction<'static, sqlx::Any>, t: &Table, rows: &[Vec<V>]) -> Res<()> {
    let ncol = t.cols.len();
    let per = (400 / ncol).max(1);
    let names: Vec<&str> = t.cols.iter().map(|(c, _)| c.as_str()).collect();
    for chunk in rows.chunks(per) {
        let mut sql = format!("INSERT INTO {} ({}) VALUES ", t.name, names.join(", "));
        let mut n = 0;
        for (j, _) in chunk.iter().enumerate() {
            if j > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for i in 0..ncol {
                n += 1;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${n}"));
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for v in row {
                q = match v {
                    V::S(s) => q.bind(s.clone()),
                    V::I(i) => q.bind(*i),
                    V::F(f) => q.bind(*f),
                };
            }
        }
        q.execute(&mut **tx).await.map_err(|x| format!("copying into {}: {x}", t.name))?;
    }
    Ok(())
}

fn shift_vnic(s: &str, by: i64) -> String {
    // "vnic<internal id>.<device>"
    if let Some(rest) = s.strip_prefix("vnic") {
        if let Some((id, dev)) = rest.split_once('.') {
            if let Ok(id) = id.parse::<i64>() {
                return format!("vnic{}.{dev}", id + by);
            }
        }
    }
    s.to_string()
}

fn ip_long(s: &str) -> Res<i64> {
    s.parse::<std::net::Ipv4Addr>().map(|a| u32::from(a) as i64).map_err(|x| format!("{s}: {x}"))
}

fn ip_text(n: i64) -> String {
    std::net::Ipv4Addr::from(n as u32).to_string()
}
