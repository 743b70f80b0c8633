//! The API allowlist (the seeds' "security whitelist"): per merchant, the CIDR blocks its keys may
//! be used from. A merchant without blocks allows any address; a list never admits a caller whose
//! address paygate could not tell (`net::client_ip::UNKNOWN`). A sub-merchant's keys must pass its
//! parent's list as well as its own: a sub-merchant can narrow where its keys work, never widen it
//! past its parent's (neither by clearing its list nor by setting a wider one). The admin token is
//! never subject to a list.

use std::net::IpAddr;

use ipnet::IpNet;

use super::MerchantError;
use crate::{
    audit::{self, Action, Actor},
    net,
    store::{Db, UnixMs, now_ms},
    validation::{self, InvalidArgument, Violations},
};

/// Most blocks one list holds.
pub const MAX_BLOCKS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    pub merchant_id: String,
    /// The merchant's own blocks.
    pub own: Vec<IpNet>,
    /// The parent whose blocks apply, when the merchant has none of its own and its parent has some.
    pub inherited_from: Option<String>,
    /// What calls with the merchant's keys are checked against; empty: any address.
    pub effective: Vec<IpNet>,
    pub updated_at: Option<i64>,
}

/// Parses a list as given in `SetApiAllowlist.cidr_blocks`; every bad entry is named.
pub fn parse(blocks: &[String]) -> Result<Vec<IpNet>, InvalidArgument> {
    let mut v = Violations::default();
    if blocks.len() > MAX_BLOCKS {
        v.add("cidr_blocks", format!("at most {MAX_BLOCKS} blocks"));
        return Err(InvalidArgument(v));
    }
    let mut parsed = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let field = format!("cidr_blocks[{i}]");
        // Bounded before parsing: the parser's message quotes the entry.
        if !validation::text(&mut v, &field, block, validation::MAX_ENTRY) {
            continue;
        }
        match net::parse_cidr_block(block) {
            Ok(net) => match net::unfit_for_a_list(&net) {
                Some(problem) => v.add(field, problem),
                None if !parsed.contains(&net) => parsed.push(net),
                None => {}
            },
            Err(e) => v.add(field, e),
        }
    }
    v.check().map(|()| parsed)
}

/// The blocks shown as applying to a merchant's keys: its own, else its parent's (the parent's
/// apply too; see `admits`).
pub fn effective<'a>(own: &'a [IpNet], parent: &'a [IpNet]) -> &'a [IpNet] {
    if own.is_empty() { parent } else { own }
}

/// Whether a call from `address` passes `list`: an empty list passes everything, a list only
/// callers it names (never an unknown one).
pub fn allows(list: &[IpNet], address: IpAddr) -> bool {
    list.is_empty() || net::in_blocks(list, address)
}

/// Whether a key of a merchant with `own` blocks (and a parent with `parent` blocks) may be used
/// from `address`: both lists must admit it.
pub fn admits(own: &[IpNet], parent: &[IpNet], address: IpAddr) -> bool {
    allows(own, address) && allows(parent, address)
}

/// Decoded from the stored JSON; unreadable entries are dropped rather than opening the list,
/// which `set` never writes anyway.
pub(super) fn decode(json: Option<&str>) -> Vec<IpNet> {
    json.and_then(|j| serde_json::from_str::<Vec<String>>(j).ok())
        .map(|items| items.iter().filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_default()
}

pub(super) async fn get(db: &Db, merchant_id: &str) -> Result<Allowlist, MerchantError> {
    let row = sqlx::query_as::<_, AllowlistRow>(
        "SELECT m.api_allowlist AS own, m.api_allowlist_updated_at AS updated_at, m.parent_id AS parent_id, \
         p.api_allowlist AS parent_list FROM merchants m LEFT JOIN merchants p ON p.merchant_id = m.parent_id \
         WHERE m.merchant_id = $1",
    )
    .bind(merchant_id)
    .fetch_optional(db.pool())
    .await?
    .ok_or(MerchantError::NotFound)?;
    let own = decode(row.own.as_deref());
    let parent = decode(row.parent_list.as_deref());
    let effective = effective(&own, &parent).to_vec();
    let inherited_from = row.parent_id.filter(|_| own.is_empty() && !parent.is_empty());
    Ok(Allowlist {
        merchant_id: merchant_id.to_owned(),
        own,
        inherited_from,
        effective,
        updated_at: row.updated_at.map(i64::from),
    })
}

/// A merchant's allowlist and its parent's, as stored (JSON arrays of CIDR blocks).
#[derive(sqlx::FromRow)]
struct AllowlistRow {
    own: Option<String>,
    updated_at: Option<UnixMs>,
    parent_id: Option<String>,
    parent_list: Option<String>,
}

/// Sets the merchant's own blocks; false when they already were these (in any order): then nothing
/// is written or audited, and no cached key needs to change.
pub(super) async fn set(db: &Db, actor: &Actor, merchant_id: &str, blocks: &[IpNet]) -> Result<bool, MerchantError> {
    let json = serde_json::to_string(&blocks.iter().map(ToString::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".to_owned());
    let now = now_ms();
    let mut tx = db.pool().begin().await?;
    let stored = sqlx::query_scalar::<_, Option<String>>("SELECT api_allowlist FROM merchants WHERE merchant_id = $1")
        .bind(merchant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(MerchantError::NotFound)?;
    if same_blocks(&decode(stored.as_deref()), blocks) {
        return Ok(false);
    }
    let done =
        sqlx::query("UPDATE merchants SET api_allowlist = $1, api_allowlist_updated_at = $2 WHERE merchant_id = $3")
            .bind(json)
            .bind(now)
            .bind(merchant_id)
            .execute(&mut *tx)
            .await?;
    if done.rows_affected() == 0 {
        return Err(MerchantError::NotFound);
    }
    let entry = audit::Entry {
        actor,
        action: Action::ApiAllowlistSet,
        merchant_id: Some(merchant_id),
        target: merchant_id,
        changed_fields: &["cidr_blocks"],
    };
    audit::record(&mut tx, &entry, now).await?;
    tx.commit().await?;
    Ok(true)
}

fn same_blocks(stored: &[IpNet], new: &[IpNet]) -> bool {
    let (mut stored, mut new) = (stored.to_vec(), new.to_vec());
    stored.sort();
    new.sort();
    stored == new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn own_blocks_win_else_the_parents_apply() {
        let (own, parent) = (nets(&["10.0.0.0/8"]), nets(&["192.168.0.0/16"]));
        assert_eq!(effective(&own, &parent), own.as_slice());
        assert_eq!(effective(&[], &parent), parent.as_slice());
        assert!(effective(&[], &[]).is_empty());
    }

    #[test]
    fn a_sub_merchant_can_narrow_its_parents_list_but_never_widen_it() {
        let parent = nets(&["127.0.0.0/24"]);
        let inside: IpAddr = "127.0.0.2".parse().unwrap();
        let outside: IpAddr = "127.0.1.2".parse().unwrap();
        assert!(admits(&[], &parent, inside));
        assert!(!admits(&[], &parent, outside));
        assert!(!admits(&nets(&["0.0.0.0/0"]), &parent, outside), "a wider own list does not escape");
        assert!(!admits(&nets(&["127.0.0.3/32"]), &parent, inside), "a narrower own list narrows");
        assert!(admits(&nets(&["0.0.0.0/0"]), &[], outside));
    }

    #[test]
    fn addresses_are_checked_against_the_blocks() {
        let list = nets(&["127.0.0.2/32", "2001:db8::/32"]);
        assert!(allows(&list, "127.0.0.2".parse().unwrap()));
        assert!(!allows(&list, "127.0.0.3".parse().unwrap()));
        assert!(allows(&list, "2001:db8::7".parse().unwrap()));
        // An IPv4 caller seen through an IPv6 socket is still that IPv4 address.
        assert!(allows(&list, "::ffff:127.0.0.2".parse().unwrap()));
        assert!(allows(&[], "8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn an_unknown_caller_passes_no_list_but_an_empty_one() {
        let unknown = crate::net::client_ip::UNKNOWN;
        assert!(!allows(&nets(&["0.0.0.0/0"]), unknown));
        assert!(!admits(&nets(&["0.0.0.0/0", "::/0"]), &[], unknown));
        assert!(!admits(&[], &nets(&["0.0.0.0/0"]), unknown), "nor the parent's");
        assert!(allows(&[], unknown), "without a list, any caller");
    }

    #[test]
    fn lists_are_parsed_with_every_bad_entry_named() {
        let bad = parse(&["10.0.0.0/8".into(), "10.0.0.1".into(), "nope".into()]).unwrap_err();
        let fields: Vec<_> = bad.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["cidr_blocks[1]", "cidr_blocks[2]"]);
        assert!(bad.to_string().contains("10.0.0.1/32"), "{bad}");
        assert_eq!(parse(&["10.0.0.0/8".into(), "10.0.0.0/8".into()]).unwrap().len(), 1);
        for unfit in ["0.0.0.0/32", "0.0.0.0/8", "::/128"] {
            let bad = parse(&[unfit.into()]).unwrap_err();
            assert_eq!(bad.0.iter().next().unwrap().field, "cidr_blocks[0]", "{unfit}");
        }
        let huge = parse(&["1".repeat(100_000)]).unwrap_err().to_string();
        assert!(huge.contains("cidr_blocks[0]") && huge.len() < 200, "{huge}");
        let too_many: Vec<String> = (0..=MAX_BLOCKS).map(|i| format!("10.0.{i}.0/24")).collect();
        assert!(parse(&too_many).is_err());
    }
}
