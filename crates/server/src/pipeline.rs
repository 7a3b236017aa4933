//! What happens to every API message after the REST layer, in upstream's interceptor order:
//! parameter rules (SYSTEM) → session (FRONT) → `resourceUuid` format → system tags →
//! `validationOnly` → the API's handler.

use crate::api::{ApiDef, Msg, Reply};
use crate::error::{Error, Result};
use crate::params::{self, Validated};
use crate::{identity, tags, App};
use serde_json::Value;

pub async fn process(app: &App, api: &'static ApiDef, mut msg: Msg) -> Result<Reply> {
    if let Validated::SucceedEmpty = params::validate(app, api.params, &mut msg.fields).await? {
        return Ok(Reply::empty());
    }
    if api.create {
        crate::resources::tag::check_tag_uuids(app, &msg).await?;
    }
    if api.auth {
        msg.session = Some(identity::check(app, msg.session_uuid.as_deref()).await?);
    }
    if api.create {
        if let Some(Value::String(u)) = msg.fields.get("resourceUuid") {
            if !crate::util::is_upstream_uuid(u) {
                return Err(Error::argerr(format!(
                    "resourceUuid[{u}] is not a valid uuid. A valid uuid is a UUID(v4 recommended) with '-' stripped. \
                     see http://en.wikipedia.org/wiki/Universally_unique_identifier for format of UUID, the regular \
                     expression ZStack uses to validate a UUID is [0-9a-f]{{8}}[0-9a-f]{{4}}[1-5][0-9a-f]{{3}}[89ab][0-9a-f]{{3}}[0-9a-f]{{12}}"
                )));
            }
        }
    }
    let system_tags = msg.system_tags();
    tags::validate(api.tags, &system_tags)?;
    if system_tags.iter().any(|t| t == "validationOnly") {
        return Ok(Reply::empty());
    }
    let Some(handler) = api.handler else {
        return Err(Error::code(rzstack_api::codes::SYS_1008, format!("No service deals with message: {}", api.name)));
    };
    let tag_uuids = if api.create { crate::resources::tag::tag_uuids_of(&msg) } else { Vec::new() };
    let reply = handler(app.clone(), msg).await?;
    crate::resources::tag::attach_to_created(app, &reply, &tag_uuids).await?;
    Ok(reply)
}
