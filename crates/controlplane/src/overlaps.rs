//! Filtered steals of different sessions on one port that share requests. The first
//! subscriber gets a request both match, so a broad filter opened earlier silently takes
//! what a later, narrower one asks for (mirrord's most asked-for fix). When a session
//! opens, each of its filtered steals is compared with the port's earlier ones (what a
//! filter can match: `mirrord_dataplane::filter::probe`); both users are told, and the
//! overlap is kept with the port's holds so `status` shows it while both last.
//!
//! The comparison runs regexes, so it runs on a blocking thread (with the filter compile
//! slots) and against at most [`MAX_COMPARED`] earlier filters per port.

use crate::locks::Holder;
use crate::operator::Operator;
use mirrord_dataplane::HttpFilter;
use mirrord_protocol::FilterOverlap;
use std::sync::Arc;

/// Earlier filtered steals one new filter is compared with, per port.
pub const MAX_COMPARED: usize = 256;

/// For each of `ports` (a port and the filter `me` steals it with): the earlier filters of
/// other sessions that share requests with it. Records them for status on both sides and
/// tells the earlier holders.
pub async fn detect(
    op: &Operator,
    target_key: &str,
    me: &Holder,
    ports: Vec<(u16, Arc<HttpFilter>)>,
) -> Vec<(u16, Vec<FilterOverlap>)> {
    let mut out = Vec::new();
    for (port, mine) in ports {
        let earlier = op
            .locks
            .filtered_steals_before(target_key, port, me.session, MAX_COMPARED);
        if earlier.is_empty() {
            continue;
        }
        let Ok(_slot) = op.compile_slots.acquire(&me.user).await else {
            break;
        };
        let found = {
            let mine = Arc::clone(&mine);
            tokio::task::spawn_blocking(move || compare(&mine, earlier))
                .await
                .unwrap_or_default()
        };
        let mine_catch_all = mine.matches_every_request();
        let mut overlaps = Vec::with_capacity(found.len());
        for (holder, theirs, example, their_catch_all) in found {
            op.locks.record_overlap(
                target_key,
                port,
                holder.session,
                FilterOverlap {
                    session_id: me.session,
                    client_user: me.user.clone(),
                    filter: mine.display.clone(),
                    first: false,
                    catch_all: mine_catch_all,
                    example: example.clone(),
                },
            );
            op.sessions.notify(
                holder.session,
                format!(
                    "port {port}: {me}'s filter `{}` also matches requests yours does (e.g. {example}); they keep coming to you while you hold the port, since yours was first",
                    mine.display
                ),
            );
            tracing::info!(
                target: "mirrord::overlaps",
                port,
                earlier = %holder,
                later = %me,
                example = %example,
                "filtered steals overlap"
            );
            let o = FilterOverlap {
                session_id: holder.session,
                client_user: holder.user.clone(),
                filter: theirs,
                first: true,
                catch_all: their_catch_all,
                example,
            };
            op.locks
                .record_overlap(target_key, port, me.session, o.clone());
            overlaps.push(o);
        }
        if !overlaps.is_empty() {
            out.push((port, overlaps));
        }
    }
    out
}

/// The earlier filters `mine` shares a request with: holder, filter text, the request,
/// and whether that filter matches every request.
fn compare(
    mine: &HttpFilter,
    earlier: Vec<(Holder, Arc<HttpFilter>)>,
) -> Vec<(Holder, String, String, bool)> {
    earlier
        .into_iter()
        .filter_map(|(holder, theirs)| {
            let example = theirs.overlap(mine)?;
            Some((
                holder,
                theirs.display.clone(),
                example,
                theirs.matches_every_request(),
            ))
        })
        .collect()
}
