//! `/api/overview/history` and `/api/groups/{group}/lag-history`: the
//! points the broker kept for the UI's charts (`crate::history`), and the
//! snapshot the sampler records.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sluice_core::Broker;

use super::groups;
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::history::{CAPACITY, INTERVAL, OVERVIEW_SERIES, Snapshot};

/// What the sampler records every [`INTERVAL`]: the overview's rates (as
/// `/api/overview` shows them) and every group's total lag.
pub(crate) fn snapshot(shared: &AppState) -> Snapshot {
    let (kafka, amqp) = shared.rates.totals();
    Snapshot {
        overview: [
            kafka[0], kafka[1], kafka[2], kafka[3], amqp[0], amqp[1], amqp[2],
        ],
        group_lag: group_lags(&shared.broker),
    }
}

fn group_lags(broker: &Broker) -> Vec<(String, i64)> {
    groups::group_ids(broker)
        .into_iter()
        .take(crate::history::MAX_GROUPS)
        .map(|id| {
            let lag = groups::total_lag(broker, &id);
            (id, lag)
        })
        .collect()
}

/// `?since=MS`: only points after it (a chart that has some asks for the rest).
#[derive(Debug, Deserialize)]
pub(crate) struct Since {
    #[serde(default)]
    since: Option<i64>,
}

fn answer(points: Vec<Value>) -> Json<Value> {
    Json(json!({
        "interval_ms": INTERVAL.as_millis() as u64,
        "capacity": CAPACITY,
        "points": points,
    }))
}

pub(crate) async fn overview(
    State(shared): State<AppState>,
    Query(query): Query<Since>,
) -> ApiResult<Json<Value>> {
    let points = shared
        .history
        .overview(query.since.unwrap_or(i64::MIN))
        .into_iter()
        .map(|point| {
            let rates: Map<String, Value> = OVERVIEW_SERIES
                .iter()
                .zip(point.values)
                .map(|(name, value)| ((*name).to_owned(), json!(value)))
                .collect();
            json!({"t": point.at_ms, "rates": rates})
        })
        .collect();
    Ok(answer(points))
}

pub(crate) async fn group_lag(
    State(shared): State<AppState>,
    Path(group): Path<String>,
    Query(query): Query<Since>,
) -> ApiResult<Json<Value>> {
    if groups::group_ids(&shared.broker)
        .binary_search(&group)
        .is_err()
    {
        return Err(ApiError::not_found(format!(
            "group {group:?} does not exist"
        )));
    }
    let points = shared
        .history
        .group_lag(&group, query.since.unwrap_or(i64::MIN))
        .into_iter()
        .map(|point| json!({"t": point.at_ms, "lag": point.values}))
        .collect();
    Ok(answer(points))
}
