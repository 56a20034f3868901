//! Raft's own RPCs, as a member receives them from the others (the sending
//! side is [`crate::network`]): each body goes to the raft instance and its
//! answer goes back as JSON.

use bytes::Bytes;

use super::{failed, json, parse, NodeRaft};
use crate::network::SnapshotRequest;
use crate::rpc::Reply;

pub(super) fn append(raft: NodeRaft, body: Bytes) -> Reply {
    Box::pin(async move { json(&raft.append_entries(parse(&body)?).await.map_err(failed)?) })
}

pub(super) fn vote(raft: NodeRaft, body: Bytes) -> Reply {
    Box::pin(async move { json(&raft.vote(parse(&body)?).await.map_err(failed)?) })
}

pub(super) fn pre_vote(raft: NodeRaft, body: Bytes) -> Reply {
    Box::pin(async move { json(&raft.pre_vote(parse(&body)?).await.map_err(failed)?) })
}

pub(super) fn snapshot(raft: NodeRaft, body: Bytes) -> Reply {
    Box::pin(async move {
        let req: SnapshotRequest = parse(&body)?;
        let snapshot = openraft::Snapshot { meta: req.meta, snapshot: req.data };
        json(&raft.install_full_snapshot(req.vote, snapshot).await.map_err(failed)?)
    })
}
