//! ACC-1: a tenant's own roles. A role is a name, a description and a list
//! of named permissions (per-collection ones included); every change goes
//! through the write path and is journaled, so a restore brings roles back
//! with the users holding them. Built-in roles ([`Role`]) are listed beside
//! them and cannot be edited or deleted. Nobody makes a role that allows
//! more than they may do themselves, and a role in use is deleted only
//! with a role its holders move to.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Abilities, Grant, Role, held_roles, is_name};
use crate::context::{Permit, RequestMeta};
use crate::store::db::{self, Conn};
use crate::store::{Change, JournalOp, Store, StoreError, WriteTx};

/// The schema version that has `roles` and `api_keys`.
pub const SCHEMA: i64 = 16;

/// Custom roles a tenant may have at most.
pub const MAX_ROLES: i64 = 200;
/// Roles a user or key may hold at most.
pub const MAX_HELD: usize = 20;
/// Permissions a role may list at most.
const MAX_PERMISSIONS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("{0}")]
    InvalidPermission(String),
    #[error("role name {0:?} must match [a-z][a-z0-9_]{{0,62}}")]
    InvalidName(String),
    #[error("{0:?} is a built-in role's name")]
    BuiltInName(String),
    #[error("a role named {0:?} exists already")]
    NameTaken(String),
    #[error("built-in roles cannot be changed or deleted")]
    BuiltIn,
    #[error("no such role")]
    NotFound,
    #[error("unknown role {0:?}: use admin, member, viewer, auditor or one of the tenant's roles")]
    UnknownRole(String),
    #[error(
        "the role is held by {users} users and {keys} API keys: delete it with \
         ?reassign_to=<role> to move them to another role"
    )]
    InUse { users: i64, keys: i64 },
    #[error("a role cannot be reassigned to itself")]
    ReassignToSelf,
    #[error("reassign_to {0:?} is not a role's name")]
    InvalidReassign(String),
    #[error("you cannot give a role more than you may do yourself: {0}")]
    Escalation(String),
    #[error("a tenant has at most {MAX_ROLES} roles")]
    TooMany,
    #[error("a user or key holds at most {MAX_HELD} roles")]
    TooManyHeld,
    #[error("description is at most 500 characters")]
    LongDescription,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<db::Error> for RoleError {
    fn from(e: db::Error) -> Self {
        RoleError::Store(e.into())
    }
}

/// A role as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RoleView {
    /// A custom role's UUID; a built-in role's name.
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub built_in: bool,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl RoleView {
    fn built_in(role: Role) -> RoleView {
        RoleView {
            id: role.as_str().to_owned(),
            name: role.as_str().to_owned(),
            description: role.describe().to_owned(),
            permissions: Abilities::of_role(role).names(),
            built_in: true,
            created_at: None,
            updated_at: None,
        }
    }

    fn from_row(row: &db::Row) -> Result<RoleView, RoleError> {
        let permissions: String = row.try_get("permissions")?;
        Ok(RoleView {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            permissions: serde_json::from_str(&permissions)
                .map_err(|e| StoreError::Corrupt(format!("role permissions: {e}")))?,
            built_in: false,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    fn image(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "description": self.description,
            "permissions": self.permissions,
            "created_at": self.created_at, "updated_at": self.updated_at,
        })
    }

    fn abilities(&self) -> Abilities {
        let mut abilities = Abilities::default();
        for grant in self.permissions.iter().filter_map(|p| Grant::parse(p).ok()) {
            abilities.grant(&grant);
        }
        abilities
    }
}

const COLUMNS: &str = "id, name, description, permissions, created_at, updated_at";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    pub name: String,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub description: Option<String>,
    pub permissions: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolePatch {
    #[serde(default, deserialize_with = "crate::json::present")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "crate::json::present")]
    pub permissions: Option<Vec<String>>,
}

/// Parses and orders a permission list, refusing what `maker` lacks.
fn permissions(list: &[String], maker: &Abilities) -> Result<Vec<String>, RoleError> {
    if list.len() > MAX_PERMISSIONS {
        return Err(RoleError::InvalidPermission(format!(
            "a role lists at most {MAX_PERMISSIONS} permissions"
        )));
    }
    let mut grants = list
        .iter()
        .map(|p| Grant::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RoleError::InvalidPermission)?;
    grants.sort();
    grants.dedup();
    let mut asked = Abilities::default();
    grants.iter().for_each(|g| asked.grant(g));
    if !maker.covers(&asked) {
        let beyond: Vec<String> = grants
            .iter()
            .filter(|g| {
                let mut one = Abilities::default();
                one.grant(g);
                !maker.covers(&one)
            })
            .map(Grant::name)
            .collect();
        return Err(RoleError::Escalation(beyond.join(", ")));
    }
    Ok(grants.iter().map(Grant::name).collect())
}

fn description(text: String) -> Result<String, RoleError> {
    if text.chars().count() > 500 {
        return Err(RoleError::LongDescription);
    }
    Ok(text)
}

pub async fn list(store: &Store, permit: &Permit) -> Result<Vec<RoleView>, RoleError> {
    let mut items: Vec<RoleView> = Role::ALL.into_iter().map(RoleView::built_in).collect();
    if !store.schema_has(SCHEMA) {
        return Ok(items);
    }
    let mut tx = store.read(permit.scope()).await?;
    let rows = db::query(format!(
        "SELECT {COLUMNS} FROM roles WHERE tenant_id = $1 ORDER BY name"
    ))
    .bind(permit.scope().id_str())
    .fetch_all(tx.conn())
    .await?;
    for row in &rows {
        items.push(RoleView::from_row(row)?);
    }
    Ok(items)
}

/// A role by id (or a built-in role by name).
pub async fn get(store: &Store, permit: &Permit, id: &str) -> Result<RoleView, RoleError> {
    if let Some(role) = Role::parse(id) {
        return Ok(RoleView::built_in(role));
    }
    let mut tx = store.read(permit.scope()).await?;
    find(tx.conn(), permit.scope().id_str(), id)
        .await?
        .ok_or(RoleError::NotFound)
}

async fn find(conn: &mut Conn, tenant: &str, id: &str) -> Result<Option<RoleView>, RoleError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(None);
    }
    let row = db::query(format!(
        "SELECT {COLUMNS} FROM roles WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(RoleView::from_row).transpose()
}

pub async fn create(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    maker: &Abilities,
    new: NewRole,
) -> Result<RoleView, RoleError> {
    if !is_name(&new.name) {
        return Err(RoleError::InvalidName(new.name));
    }
    if Role::parse(&new.name).is_some() {
        return Err(RoleError::BuiltInName(new.name));
    }
    let permissions = permissions(&new.permissions, maker)?;
    let description = description(new.description.unwrap_or_default())?;
    let now = crate::clock::now();
    let role = RoleView {
        id: uuid::Uuid::now_v7().to_string(),
        name: new.name,
        description,
        permissions,
        built_in: false,
        created_at: Some(now.clone()),
        updated_at: Some(now),
    };
    store
        .write(permit, meta, "role.create", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let count: i64 =
                    db::query_scalar("SELECT COUNT(*) FROM roles WHERE tenant_id = $1")
                        .bind(&tenant)
                        .fetch_one(tx.conn())
                        .await?;
                if count >= MAX_ROLES {
                    return Err(RoleError::TooMany);
                }
                db::query(
                    "INSERT INTO roles (id, tenant_id, name, description, permissions, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
                )
                .bind(&role.id)
                .bind(&tenant)
                .bind(&role.name)
                .bind(&role.description)
                .bind(json!(role.permissions).to_string())
                .bind(role.created_at.clone().unwrap_or_default())
                .execute(tx.conn())
                .await
                .map_err(|e| match StoreError::from(e) {
                    e if e.is_unique_violation_on("roles") => {
                        RoleError::NameTaken(role.name.clone())
                    }
                    e => RoleError::Store(e),
                })?;
                tx.record(Change::of(
                    "role",
                    role.id.clone(),
                    JournalOp::Insert,
                    None,
                    Some(role.image()),
                ));
                tx.set_target("role", role.id.clone());
                Ok(role)
            })
        })
        .await
}

/// Changes a role's description or permissions; its holders have the new
/// permissions from their next request on.
pub async fn update(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    maker: &Abilities,
    id: &str,
    patch: RolePatch,
) -> Result<RoleView, RoleError> {
    if Role::parse(id).is_some() {
        return Err(RoleError::BuiltIn);
    }
    let permissions = patch
        .permissions
        .as_deref()
        .map(|p| permissions(p, maker))
        .transpose()?;
    let description = patch.description.map(description).transpose()?;
    let id = id.to_owned();
    store
        .write(permit, meta, "role.update", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let before = find(tx.conn(), &tenant, &id)
                    .await?
                    .ok_or(RoleError::NotFound)?;
                let mut after = before.clone();
                if let Some(permissions) = permissions {
                    after.permissions = permissions;
                }
                if let Some(description) = description {
                    after.description = description;
                }
                after.updated_at = Some(crate::clock::now());
                db::query(
                    "UPDATE roles SET description = $1, permissions = $2, updated_at = $3 \
                     WHERE tenant_id = $4 AND id = $5",
                )
                .bind(&after.description)
                .bind(json!(after.permissions).to_string())
                .bind(after.updated_at.clone().unwrap_or_default())
                .bind(&tenant)
                .bind(&id)
                .execute(tx.conn())
                .await?;
                tx.record(Change::of(
                    "role",
                    id.clone(),
                    JournalOp::Update,
                    Some(before.image()),
                    Some(after.image()),
                ));
                tx.set_target("role", id.clone());
                Ok(after)
            })
        })
        .await
}

/// Deletes a role. Held by users or keys, it needs `reassign_to`: each
/// holder then holds that role instead, in the same transaction.
pub async fn delete(
    store: &Store,
    permit: &Permit,
    meta: &RequestMeta,
    maker: &Abilities,
    id: &str,
    reassign_to: Option<String>,
) -> Result<(), RoleError> {
    if Role::parse(id).is_some() {
        return Err(RoleError::BuiltIn);
    }
    if let Some(target) = reassign_to.as_deref()
        && !is_name(target)
    {
        return Err(RoleError::InvalidReassign(target.to_owned()));
    }
    let id = id.to_owned();
    let maker = maker.clone();
    store
        .write(permit, meta, "role.delete", move |tx| {
            Box::pin(async move {
                let tenant = tx.scope().id_str().to_owned();
                let role = find(tx.conn(), &tenant, &id)
                    .await?
                    .ok_or(RoleError::NotFound)?;
                let users = holders(tx, "users", &role.name).await?;
                let keys = holders(tx, "api_keys", &role.name).await?;
                if !users.is_empty() || !keys.is_empty() {
                    let Some(target) = reassign_to.as_deref() else {
                        return Err(RoleError::InUse {
                            users: users.len() as i64,
                            keys: keys.len() as i64,
                        });
                    };
                    if target == role.name {
                        return Err(RoleError::ReassignToSelf);
                    }
                    let target_abilities = abilities_of(tx.conn(), &tenant, &[target.to_owned()])
                        .await?
                        .ok_or_else(|| RoleError::UnknownRole(target.to_owned()))?;
                    if !maker.covers(&target_abilities) {
                        return Err(RoleError::Escalation(target.to_owned()));
                    }
                    reassign(tx, "users", "user", &users, &role.name, target).await?;
                    reassign(tx, "api_keys", "api_key", &keys, &role.name, target).await?;
                }
                db::query("DELETE FROM roles WHERE tenant_id = $1 AND id = $2")
                    .bind(&tenant)
                    .bind(&id)
                    .execute(tx.conn())
                    .await?;
                tx.record(Change::of(
                    "role",
                    id.clone(),
                    JournalOp::Delete,
                    Some(role.image()),
                    None,
                ));
                tx.set_target("role", id.clone());
                Ok(())
            })
        })
        .await
}

/// Ids and stored role lists of the rows of `table` (`users` or
/// `api_keys`) holding `name`.
async fn holders(
    tx: &mut WriteTx,
    table: &str,
    name: &str,
) -> Result<Vec<(String, String)>, RoleError> {
    let column = if table == "users" { "role" } else { "roles" };
    let rows = db::query(format!(
        "SELECT id, {column} FROM {table} WHERE tenant_id = $1 \
         AND (',' || {column} || ',') LIKE $2"
    ))
    .bind(tx.scope().id_str().to_owned())
    .bind(format!("%,{name},%"))
    .fetch_all(tx.conn())
    .await?;
    let mut out = Vec::new();
    for row in &rows {
        let stored: String = row.try_get(1)?;
        // LIKE treats `_` as a wildcard: keep exact holders only.
        if held_roles(&stored).iter().any(|r| r == name) {
            out.push((row.try_get(0)?, stored));
        }
    }
    Ok(out)
}

/// Replaces `from` by `to` in each holder's role list. The rows' journal
/// images follow the table's own entity, read back by the write path.
async fn reassign(
    tx: &mut WriteTx,
    table: &str,
    entity: &'static str,
    holders: &[(String, String)],
    from: &str,
    to: &str,
) -> Result<(), RoleError> {
    let column = if table == "users" { "role" } else { "roles" };
    for (id, stored) in holders {
        let renamed: Vec<String> = held_roles(stored)
            .into_iter()
            .map(|r| if r == from { to.to_owned() } else { r })
            .collect();
        let joined = unique(&renamed).join(",");
        db::query(format!(
            "UPDATE {table} SET {column} = $1 WHERE tenant_id = $2 AND id = $3"
        ))
        .bind(&joined)
        .bind(tx.scope().id_str().to_owned())
        .bind(id)
        .execute(tx.conn())
        .await?;
        tx.record(Change::of(
            entity,
            id.clone(),
            JournalOp::Update,
            Some(json!({ column: stored })),
            Some(json!({ column: joined })),
        ));
        tx.also_audit("role.reassigned", entity, id.clone());
    }
    Ok(())
}

/// What the roles `held` allow together, built-in and the tenant's own;
/// `None` when one of them does not exist.
pub async fn abilities_of(
    conn: &mut Conn,
    tenant: &str,
    held: &[String],
) -> Result<Option<Abilities>, RoleError> {
    let mut abilities = Abilities::default();
    let mut custom = Vec::new();
    for name in held {
        match Role::parse(name) {
            Some(role) => abilities.add(&Abilities::of_role(role)),
            None => custom.push(name.as_str()),
        }
    }
    for name in custom {
        let row = db::query(format!(
            "SELECT {COLUMNS} FROM roles WHERE tenant_id = $1 AND name = $2"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(row) => abilities.add(&RoleView::from_row(&row)?.abilities()),
            None => return Ok(None),
        }
    }
    Ok(Some(abilities))
}

/// What the roles `held` allow, ignoring any that no longer exist (a
/// principal holding a deleted role gets nothing from it).
pub async fn resolve(
    conn: &mut Conn,
    tenant: &str,
    held: &[String],
) -> Result<Abilities, RoleError> {
    let mut abilities = Abilities::default();
    for name in held {
        let one = std::slice::from_ref(name);
        if let Some(more) = abilities_of(conn, tenant, one).await? {
            abilities.add(&more);
        }
    }
    Ok(abilities)
}

/// Checks a role list for an assignment inside a write: each role exists,
/// and together they allow no more than `maker` has. Returns the list as
/// `users.role` stores it.
pub async fn assignable(
    tx: &mut WriteTx,
    names: &[String],
    maker: &Abilities,
) -> Result<(String, Abilities), RoleError> {
    if names.is_empty() {
        return Err(RoleError::UnknownRole(String::new()));
    }
    if names.len() > MAX_HELD {
        return Err(RoleError::TooManyHeld);
    }
    let ordered = unique(names);
    let tenant = tx.scope().id_str().to_owned();
    let mut abilities = Abilities::default();
    for name in &ordered {
        let one = abilities_of(tx.conn(), &tenant, std::slice::from_ref(name))
            .await?
            .ok_or_else(|| RoleError::UnknownRole(name.clone()))?;
        abilities.add(&one);
    }
    if !maker.covers(&abilities) {
        return Err(RoleError::Escalation(ordered.join(", ")));
    }
    Ok((ordered.join(","), abilities))
}

/// `names` without repeats, in their first order.
fn unique(names: &[String]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}
