//! (to be written)

use crate::api::ApiDef;

pub static APIS: &[ApiDef] = &[];
