//! The signed links in messages: `/ack/{id}?sig=…` and `/silence/{id}?sig=…`. They work
//! without a token (the HMAC signature is the credential) and are not part of the JSON API.
//!
//! A GET shows a page (styled like the web UI) with a button; only the button's POST acts,
//! so mail scanners that follow links acknowledge and silence nothing.

use std::collections::BTreeMap;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::alerts::acknowledge;
use super::{escape_html, text_field, ApiError, ApiResult, AppState};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ack/{id}", get(ack_page).post(ack_by_link))
        .route("/silence/{id}", get(silence_page).post(silence_by_link))
}

#[derive(Debug, Deserialize)]
struct SigQuery {
    sig: String,
}

/// A page in the web UI's look: its header, stylesheet and a card.
fn page(title: &str, body: &str, kpi: Option<&str>) -> Html<String> {
    let title = escape_html(title);
    let back = match kpi {
        Some(id) => format!(
            "<p><a href=\"/#/kpi/{id}\">Open {id} in kpiwatch</a></p>",
            id = escape_html(id)
        ),
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · kpiwatch</title><link rel=\"stylesheet\" href=\"/app.css\"></head>\
         <body><header class=\"top\"><a class=\"brand\" href=\"/#/\">kpiwatch</a>\
         <nav><a href=\"/#/\">KPIs</a><a href=\"/#/alerts\">Alerts</a></nav></header>\
         <main><div class=\"card link-page\"><h1>{title}</h1>{body}{back}</div></main></body></html>"
    ))
}

fn check_link(state: &AppState, action: &str, id: &str, sig: &str) -> ApiResult<i64> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("alert id {id:?} is not a number")))?;
    if state.signer.verify(action, id, sig) {
        Ok(id)
    } else {
        Err(ApiError::Forbidden("this link is not valid".to_owned()))
    }
}

/// The alert a signed link in a message is about, after checking its signature.
async fn linked_alert(
    state: &AppState,
    action: &str,
    id: &str,
    sig: &str,
) -> ApiResult<crate::store::AlertRow> {
    let id = check_link(state, action, id, sig)?;
    state
        .store
        .alert(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no alert {id}")))
}

fn alert_line(alert: &crate::store::AlertRow) -> String {
    format!(
        "<p><span class=\"badge al-{state}\">{state}</span> <span class=\"badge sev-{sev}\">{sev}</span></p>\
         <p class=\"lead\">{summary}</p>",
        state = escape_html(&alert.state),
        sev = escape_html(&alert.severity),
        summary = escape_html(&alert.summary)
    )
}

async fn ack_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SigQuery>, QueryRejection>,
) -> ApiResult<Html<String>> {
    let Query(q) = query?;
    let alert = linked_alert(&state, "ack", &id, &q.sig).await?;
    Ok(page(
        &format!("Acknowledge alert {}", alert.id),
        &format!(
            "{}<form method=\"post\"><button type=\"submit\">Acknowledge</button></form>",
            alert_line(&alert)
        ),
        Some(&alert.kpi_id),
    ))
}

async fn ack_by_link(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SigQuery>, QueryRejection>,
) -> ApiResult<Html<String>> {
    let Query(q) = query?;
    let id = check_link(&state, "ack", &id, &q.sig)?;
    let alert = acknowledge(&state, id, "e-mail link").await?;
    state
        .store
        .audit(
            "e-mail link",
            "alert.ack",
            &id.to_string(),
            &serde_json::json!({}),
        )
        .await?;
    let kpi = state.store.alert(id).await?.map(|a| a.kpi_id);
    Ok(page(
        "Acknowledged",
        &format!(
            "<p>Alert {id} is acknowledged; no more reminders will be sent.</p><p class=\"lead\">{}</p>",
            escape_html(alert.summary())
        ),
        kpi.as_deref(),
    ))
}

async fn silence_page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SigQuery>, QueryRejection>,
) -> ApiResult<Html<String>> {
    let Query(q) = query?;
    let alert = linked_alert(&state, "silence", &id, &q.sig).await?;
    Ok(page(
        "Silence this series",
        &format!(
            "{}<form method=\"post\" class=\"form\">\
             <label>For <select name=\"duration\"><option>1h</option><option selected>2h</option>\
             <option>8h</option><option>24h</option></select></label>\
             <label>Your name <input name=\"author\" required maxlength=\"128\"></label>\
             <label>Why <input name=\"comment\" required maxlength=\"2000\" size=\"50\"></label>\
             <p><button type=\"submit\">Silence</button></p></form>",
            alert_line(&alert)
        ),
        Some(&alert.kpi_id),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceForm {
    duration: String,
    author: String,
    comment: String,
}

async fn silence_by_link(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<SigQuery>, QueryRejection>,
    form: Result<Form<SilenceForm>, FormRejection>,
) -> ApiResult<Html<String>> {
    let Query(q) = query?;
    let alert = linked_alert(&state, "silence", &id, &q.sig).await?;
    let id = alert.id;
    let Form(form) = form.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text_field("author", &form.author, 128)?;
    text_field("comment", &form.comment, 2000)?;
    let secs = match form.duration.as_str() {
        "1h" => 3600,
        "2h" => 7200,
        "8h" => 8 * 3600,
        "24h" => 86_400,
        other => {
            return Err(ApiError::BadRequest(format!(
                "duration {other:?}: choose 1h, 2h, 8h or 24h"
            )))
        }
    };
    // Silence exactly this series: its KPI and its dimension values.
    let mut matchers = BTreeMap::from([("kpi".to_owned(), alert.kpi_id.clone())]);
    if let Some(series) = alert.series_id {
        if let Some(dims) = state.store.series_dims(series).await? {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&dims) {
                for (k, v) in map {
                    matchers.insert(k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
                }
            }
        }
    }
    let now = state.clock.now().timestamp();
    let json = serde_json::to_string(&matchers).map_err(anyhow::Error::from)?;
    let silence = state
        .store
        .create_silence(&json, now, now + secs, &form.author, &form.comment)
        .await?;
    tracing::info!(message = "Silence created.", id = silence, alert = id, author = %form.author, matchers = %json);
    state
        .store
        .audit(
            "e-mail link",
            "silence.create",
            &silence.to_string(),
            &serde_json::json!({"alert": id, "matchers": matchers, "author": form.author, "comment": form.comment}),
        )
        .await?;
    let what = matchers
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(page(
        "Silenced",
        &format!(
            "<p>Silence {silence} holds back alerts for <code>{}</code> for {}.</p>",
            escape_html(&what),
            escape_html(&form.duration)
        ),
        Some(&alert.kpi_id),
    ))
}
