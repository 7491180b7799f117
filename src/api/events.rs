//! `GET/POST /api/events`, `POST /api/events/import` (an iCalendar file), `DELETE
//! /api/events/{id}`: events and holidays whose buckets are neither learned nor alerted
//! (the rules are in `calendar`).

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{iso, parse_instant, positive_id, text_field, ApiError, ApiResult, AppState, Caller, ErrorBody};
use crate::calendar::{self, Event};
use crate::store::EventRow;

/// A new event or holiday.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewEvent {
    /// What it is ("Black Friday campaign", "planned migration").
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    /// Start: a local date `YYYY-MM-DD`, a local date-time `YYYY-MM-DDTHH:MM[:SS]` (both in
    /// `timezone`), or RFC 3339 with an offset.
    #[schema(min_length = 10, max_length = 40)]
    start: String,
    /// End (exclusive), written like `start`.
    #[schema(min_length = 10, max_length = 40)]
    end: String,
    /// IANA timezone of local dates (default UTC).
    #[schema(max_length = 64)]
    timezone: Option<String>,
    /// Also cover this long before, e.g. `2h` (at most 7 days).
    #[schema(max_length = 32)]
    margin_before: Option<String>,
    /// Also cover this long after.
    #[schema(max_length = 32)]
    margin_after: Option<String>,
    /// KPI ids it applies to; with neither `kpis` nor `labels` it applies to every KPI.
    #[schema(max_items = 100)]
    kpis: Option<Vec<String>>,
    /// Labels a KPI must all carry for it to apply (`team = payments`).
    #[schema(schema_with = labels_schema)]
    labels: Option<BTreeMap<String, String>>,
    /// Recurs every year on the same local date (holidays).
    #[serde(default)]
    yearly: bool,
}

/// Where and to what events apply: the fields [`NewEvent`] and [`ImportEvents`] share.
#[derive(Debug)]
struct Scope<'a> {
    timezone: Option<&'a str>,
    margin_before: Option<&'a str>,
    margin_after: Option<&'a str>,
    kpis: Option<&'a [String]>,
    labels: Option<&'a BTreeMap<String, String>>,
}

/// An iCalendar file to import: each `VEVENT` becomes one event (re-importing a UID
/// replaces it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportEvents {
    /// The `.ics` text (`BEGIN:VCALENDAR` … `END:VCALENDAR`).
    #[schema(min_length = 1, max_length = 200000)]
    calendar: String,
    /// IANA timezone of local dates (default UTC).
    #[schema(max_length = 64)]
    timezone: Option<String>,
    /// Also cover this long before, e.g. `2h` (at most 7 days).
    #[schema(max_length = 32)]
    margin_before: Option<String>,
    /// Also cover this long after.
    #[schema(max_length = 32)]
    margin_after: Option<String>,
    /// KPI ids it applies to; with neither `kpis` nor `labels` it applies to every KPI.
    #[schema(max_items = 100)]
    kpis: Option<Vec<String>>,
    /// Labels a KPI must all carry for it to apply (`team = payments`).
    #[schema(schema_with = labels_schema)]
    labels: Option<BTreeMap<String, String>>,
}

/// At most 20 labels, each value at most 256 characters.
fn labels_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(20))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(256))
                .into(),
        )))
        .description(Some("label → value, all of which a KPI must carry"))
        .into()
}

/// An event or holiday.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct EventDto {
    id: i64,
    name: String,
    /// `config` (a `[[calendar]]` entry: change it there), `api` or `ical`.
    origin: String,
    /// Local start, in `timezone`.
    start: String,
    /// Local end (exclusive).
    end: String,
    timezone: String,
    yearly: bool,
    margin_before_secs: i64,
    margin_after_secs: i64,
    kpis: Vec<String>,
    labels: BTreeMap<String, String>,
    /// The iCalendar UID it was imported with.
    uid: Option<String>,
    created_by: String,
    /// When it covers buckets within the range asked (margins included), in UTC.
    occurrences: Vec<OccurrenceDto>,
}

/// One occurrence of an event.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OccurrenceDto {
    start: String,
    end: String,
}

/// Which events to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only the events that apply to this KPI.
    #[param(pattern = "^[a-z][a-z0-9_-]{0,63}$")]
    kpi: Option<String>,
    /// Occurrences from (default: 35 days before `to`).
    #[param(schema_with = super::instant_schema)]
    from: Option<String>,
    /// Occurrences until (default: 365 days after now).
    #[param(schema_with = super::instant_schema)]
    to: Option<String>,
}

fn invalid(e: calendar::Error) -> ApiError {
    ApiError::Unprocessable(e.0)
}

/// A `start`/`end` field: RFC 3339 (converted to local time in `tz`) or a local date/date-time.
fn local_time(name: &str, s: &str, tz: chrono_tz::Tz) -> ApiResult<chrono::NaiveDateTime> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&tz).naive_local());
    }
    calendar::parse_local(s).map_err(|e| ApiError::Unprocessable(format!("`{name}`: {e}")))
}

/// The event fields every new event shares, checked.
fn template(scope: &Scope<'_>, name: &str) -> ApiResult<Event> {
    let timezone = calendar::parse_timezone(scope.timezone.unwrap_or("UTC")).map_err(invalid)?;
    let margin = |what: &str, v: Option<&str>| {
        v.map_or(Ok(0), |s| calendar::parse_margin(what, s))
            .map_err(invalid)
    };
    let kpis = scope.kpis.map(<[String]>::to_vec).unwrap_or_default();
    if kpis.len() > 100 {
        return Err(ApiError::BadRequest(
            "`kpis` may name at most 100 KPIs".to_owned(),
        ));
    }
    for k in &kpis {
        crate::kpi::KpiId::parse(k).map_err(|e| ApiError::Unprocessable(format!("`kpis`: {e}")))?;
    }
    let labels = scope.labels.cloned().unwrap_or_default();
    if labels.len() > 20 {
        return Err(ApiError::BadRequest(
            "`labels` may have at most 20 entries".to_owned(),
        ));
    }
    for (k, v) in &labels {
        text_field("labels key", k, 64).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
        if v.chars().count() > 256 {
            return Err(ApiError::BadRequest(format!(
                "label {k:?}: the value is longer than 256 characters"
            )));
        }
    }
    Ok(Event {
        name: name.to_owned(),
        start: chrono::NaiveDateTime::default(),
        end: chrono::NaiveDateTime::default(),
        timezone,
        yearly: false,
        margin_before: margin("margin_before", scope.margin_before)?,
        margin_after: margin("margin_after", scope.margin_after)?,
        kpis,
        labels,
    })
}

fn dto(row: &EventRow, event: &Event, range: (i64, i64)) -> EventDto {
    EventDto {
        id: row.id,
        name: row.name.clone(),
        origin: row.origin.clone(),
        start: row.starts_local.clone(),
        end: row.ends_local.clone(),
        timezone: row.timezone.clone(),
        yearly: row.yearly,
        margin_before_secs: row.margin_before_secs,
        margin_after_secs: row.margin_after_secs,
        kpis: event.kpis.clone(),
        labels: event.labels.clone(),
        uid: row.uid.clone(),
        created_by: row.created_by.clone(),
        occurrences: event
            .occurrences(range.0, range.1)
            .into_iter()
            .map(|(s, e)| OccurrenceDto {
                start: iso(s).unwrap_or_default(),
                end: iso(e).unwrap_or_default(),
            })
            .collect(),
    }
}

/// The default range for occurrences in answers: the last 35 days and the next year.
fn default_range(now: i64) -> (i64, i64) {
    (now - 35 * 86_400, now + 365 * 86_400)
}

/// Store `events` made by `caller`, audit, and answer with them.
async fn store_events(
    state: &AppState,
    caller: &Caller,
    origin: &str,
    events: Vec<(Event, Option<String>)>,
) -> ApiResult<Vec<EventDto>> {
    let rows: Vec<EventRow> = events
        .iter()
        .map(|(e, uid)| calendar::to_row(e, origin, uid.clone(), &caller.name))
        .collect();
    let ids = state.store.create_events(&rows).await?;
    let range = default_range(state.clock.now().timestamp());
    let mut out = Vec::with_capacity(ids.len());
    for ((row, (event, _)), id) in rows.into_iter().zip(&events).zip(ids) {
        let row = EventRow { id, ..row };
        state
            .store
            .audit(
                &caller.name,
                "event.create",
                &id.to_string(),
                &serde_json::json!({"name": row.name, "origin": row.origin, "start": row.starts_local,
                    "end": row.ends_local, "timezone": row.timezone, "yearly": row.yearly,
                    "kpis": event.kpis, "labels": event.labels}),
            )
            .await?;
        tracing::info!(message = "Event created.", id, name = %row.name, origin);
        out.push(dto(&row, event, range));
    }
    Ok(out)
}

/// Create an event: its buckets (and the margins') are neither learned nor alerted.
#[utoipa::path(
    post,
    path = "/api/events",
    tag = "events",
    request_body = NewEvent,
    responses(
        (status = 201, description = "The new event", body = EventDto),
        (status = 400, description = "The body does not match the schema", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 422, description = "A bad date, timezone, margin, KPI id, or an end not after the start", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn create_event(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewEvent>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<EventDto>)> {
    let Json(new) = body?;
    text_field("name", &new.name, 200)?;
    let scope = Scope {
        timezone: new.timezone.as_deref(),
        margin_before: new.margin_before.as_deref(),
        margin_after: new.margin_after.as_deref(),
        kpis: new.kpis.as_deref(),
        labels: new.labels.as_ref(),
    };
    let mut event = template(&scope, new.name.trim())?;
    event.start = local_time("start", &new.start, event.timezone)?;
    event.end = local_time("end", &new.end, event.timezone)?;
    event.yearly = new.yearly;
    event.validate().map_err(invalid)?;
    let mut out = store_events(&state, &caller, calendar::ORIGIN_API, vec![(event, None)]).await?;
    let created = out
        .pop()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the event was not stored")))?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Import an iCalendar file: each `VEVENT` becomes an event (all-day events cover whole local
/// days; `RRULE:FREQ=YEARLY` recurs yearly; other recurrence is refused).
#[utoipa::path(
    post,
    path = "/api/events/import",
    tag = "events",
    request_body = ImportEvents,
    responses(
        (status = 201, description = "The imported events", body = Vec<EventDto>),
        (status = 400, description = "The body does not match the schema", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 422, description = "The file is not iCalendar, has no event, or an event is invalid or unsupported (named)", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn import_events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<ImportEvents>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Vec<EventDto>>)> {
    let Json(import) = body?;
    let scope = Scope {
        timezone: import.timezone.as_deref(),
        margin_before: import.margin_before.as_deref(),
        margin_after: import.margin_after.as_deref(),
        kpis: import.kpis.as_deref(),
        labels: import.labels.as_ref(),
    };
    let defaults = template(&scope, "event")?;
    let events = calendar::parse_ical(&import.calendar, &defaults).map_err(invalid)?;
    if events.len() > 1000 {
        return Err(ApiError::Unprocessable(
            "the file has more than 1000 events; split it".to_owned(),
        ));
    }
    let events = events.into_iter().map(|e| (e.event, e.uid)).collect();
    let out = store_events(&state, &caller, calendar::ORIGIN_ICAL, events).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

/// Events and holidays, with their occurrences in a range; `kpi` keeps those that apply to it.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "Events", body = Vec<EventDto>),
        (status = 400, description = "`from` or `to` is neither RFC 3339 nor unix seconds", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 404, description = "No such KPI", body = ErrorBody),
        (status = 422, description = "`from` is not before `to`, or a date that does not exist", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn list_events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<EventDto>>> {
    let Query(q) = query?;
    let now = state.clock.now().timestamp();
    let to =
        q.to.as_deref()
            .map(|s| parse_instant("to", s))
            .transpose()?
            .unwrap_or(default_range(now).1);
    let from = q
        .from
        .as_deref()
        .map(|s| parse_instant("from", s))
        .transpose()?
        .unwrap_or(to.min(now) - 35 * 86_400);
    if from >= to {
        return Err(ApiError::Unprocessable("`from` must be before `to`".to_owned()));
    }
    let spec = match &q.kpi {
        Some(id) => Some(
            state
                .specs
                .get(id)
                .ok_or_else(|| ApiError::NotFound(format!("no KPI {id:?}")))?,
        ),
        None => None,
    };
    let events = calendar::stored(&state.store).await?;
    Ok(Json(
        events
            .iter()
            .filter(|(_, e)| spec.as_ref().is_none_or(|s| e.applies_to(s)))
            .map(|(row, e)| dto(row, e, (from, to)))
            .collect(),
    ))
}

/// Delete an event made through the API or imported (config events are changed in the config).
#[utoipa::path(
    delete,
    path = "/api/events/{id}",
    tag = "events",
    params(("id" = i64, Path, description = "Event id", minimum = 1)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "The token's role is too low (editor needed)", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 409, description = "The event comes from the config's [[calendar]]", body = ErrorBody),
        (status = 500, description = "The state store failed", body = ErrorBody),
    )
)]
pub(super) async fn delete_event(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = path?;
    let id = positive_id("event", id)?;
    let Some(row) = state.store.event(id).await? else {
        return Err(ApiError::NotFound(format!("no event {id}")));
    };
    if row.origin == calendar::ORIGIN_CONFIG {
        return Err(ApiError::Conflict(format!(
            "event {id} ({:?}) comes from the config's [[calendar]]; remove it there",
            row.name
        )));
    }
    if !state.store.delete_event(id).await? {
        return Err(ApiError::NotFound(format!("no event {id}")));
    }
    tracing::info!(message = "Event deleted.", id, name = %row.name);
    state
        .store
        .audit(
            &caller.name,
            "event.delete",
            &id.to_string(),
            &serde_json::json!({"name": row.name, "origin": row.origin}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
