//! SSH key pairs (upstream `SshKeyPairVO`, plugin sshKeyPair): create (upload a public key),
//! update, delete, query.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::Val;
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{self, field, FType, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;

pub static SSH_KEY_PAIR: ResourceDef = ResourceDef {
    inventory: "SshKeyPairInventory",
    vo: "SshKeyPairVO",
    class: "org.zstack.header.sshkeypair.SshKeyPairInventory",
    table: "ssh_key_pair",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("publicKey", "public_key", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("SshKeyPairVO"),
};

/// Upstream `SshKeyPairConstant.SSH_KEY_PAIR_NAME_REGEX`, in Rust's spelling and as shown.
const NAME_REGEX: &str = r"^[\u{4e00}-\u{9fa5}a-zA-Z0-9\s()（）【】@._+-]+$";
const NAME_REGEX_SHOWN: &str = r"^[\u4e00-\u9fa5a-zA-Z0-9\s()（）【】@._+-]+$";

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    let mut pad = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pad += 1;
                continue;
            }
            _ => return None,
        };
        if pad > 0 {
            return None;
        }
        buf = (buf << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    if pad > 2 || !s.len().is_multiple_of(4) {
        return None;
    }
    Some(out)
}

/// The key types a public key may have, and whether `key` is one: `<type> <base64 blob>
/// [comment]` (OpenSSH), the blob starting with the same type name, as JSch's loader
/// requires.
const KEY_TYPES: &[&str] = &[
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-ed25519",
    "ssh-ed448",
];

pub fn is_valid_public_key(key: &str) -> bool {
    let mut parts = key.split_whitespace();
    let (Some(ty), Some(blob)) = (parts.next(), parts.next()) else { return false };
    if !KEY_TYPES.contains(&ty) {
        return false;
    }
    let Some(bytes) = b64_decode(blob) else { return false };
    if bytes.len() < 4 {
        return false;
    }
    let n = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    bytes.len() > 4 + n && &bytes[4..4 + n] == ty.as_bytes()
}

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, &SSH_KEY_PAIR, uuid).await? {
        Some(inv) => Ok(Reply::inventory(&SSH_KEY_PAIR, inv)),
        None => {
            Err(Error::not_found(format!("invalid field[uuid], resource[uuid:{uuid}, type:SshKeyPairVO] not found")))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateSshKeyPair {
    name: String,
    description: Option<String>,
    public_key: String,
}

async fn create(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateSshKeyPair = msg.parse()?;
    let uuid = msg.resource_uuid();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &SSH_KEY_PAIR, &uuid, &msg).await? {
        // the same key uploaded twice by one account
        let dup = tx
            .fetch_optional(
                "SELECT 1 FROM ssh_key_pair k JOIN account_resource_ref r ON r.resource_uuid = k.uuid \
                 WHERE k.public_key = $1 AND r.account_uuid = $2 AND r.resource_type = 'SshKeyPairVO'",
                &[Val::from(req.public_key.as_str()), Val::from(msg.account_uuid())],
            )
            .await?;
        if dup.is_some() {
            return Err(Error::argerr("The sshKeyPair already upload"));
        }
        if !is_valid_public_key(&req.public_key) {
            return Err(Error::operr(format!(
                "failed to load the public key: {}, err: com.jcraft.jsch.JSchException: invalid public key",
                req.public_key
            )));
        }
        tx.execute(
            "INSERT INTO ssh_key_pair (uuid, name, description, public_key, create_date, last_op_date) \
             VALUES ($1, $2, $3, $4, $5, $5)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(req.description),
                Val::from(req.public_key),
                Val::I(now_ms()),
            ],
        )
        .await?;
        super::own(&mut tx, &uuid, SSH_KEY_PAIR.vo, msg.account_uuid()).await?;
        // upstream files the create message's tags under the resource type VolumeVO
        super::tag::attach_create_tags(&mut tx, &uuid, "VolumeVO", &msg.system_tags(), &msg.user_tags()).await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

async fn update(app: App, msg: Msg) -> Result<Reply> {
    let uuid = super::update_name_description(&app, &msg, &SSH_KEY_PAIR, false).await?;
    reply(&app, &uuid).await
}

async fn delete(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    let used = tx
        .fetch_optional("SELECT 1 FROM ssh_key_pair_ref WHERE ssh_key_pair_uuid = $1", &[Val::from(uuid.as_str())])
        .await?;
    if used.is_some() {
        return Err(Error::argerr(format!("The sshKeyPair[uuid:{uuid}] was in using.")));
    }
    tx.execute("DELETE FROM ssh_key_pair WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
    super::tag::delete_for_resource(&mut tx, &uuid).await?;
    super::disown(&mut tx, &uuid).await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

pub static APIS: &[ApiDef] = &[
    ApiDef::create("CreateSshKeyPair", "/ssh-key-pair")
        .params(&[
            Param::str("name").required().max(255).regex_as(NAME_REGEX, NAME_REGEX_SHOWN),
            Param::str("description").max(2048),
            Param::str("publicKey").required().max(4096),
        ])
        .handler(|a, m| boxed(create(a, m))),
    ApiDef::query("QuerySshKeyPair", "/ssh-key-pair", &SSH_KEY_PAIR).optional_paths(&["/ssh-key-pair/{uuid}"]),
    ApiDef::action("UpdateSshKeyPair", "/ssh-key-pair/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().max(32).resource(&SSH_KEY_PAIR),
            Param::str("name").max(255).regex_as(NAME_REGEX, NAME_REGEX_SHOWN),
            Param::str("description").max(2048),
        ])
        .handler(|a, m| boxed(update(a, m))),
    ApiDef::delete("DeleteSshKeyPair", "/ssh-key-pair/{uuid}")
        .params(&[Param::str("uuid").required().resource(&SSH_KEY_PAIR)])
        .handler(|a, m| boxed(delete(a, m))),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOxFeyLzCdEdY1Fym2CiRd7M/lSH9rq4Bf3CCv8FtZty u@h";
        assert!(is_valid_public_key(k));
        assert!(!is_valid_public_key("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOxFeyLzCdEdY1Fym2CiRd7M/lSH9rq4Bf3CCv8FtZty"));
        assert!(!is_valid_public_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOxFeyLzCdEdY1Fym2CiRd7M/lSH9rq4Bf3CCv8FtZt"
        ));
        assert!(!is_valid_public_key("ssh-ed25519 !!!"));
        assert!(!is_valid_public_key("hello"));
    }
}
