//! The node's channels: in process for `toil dev` and a single node;
//! through NATS JetStream (`channels.nats`) for a cluster, where in-process
//! channels would silently split the cluster into islands.

use anyhow::Context;
use toil_channels::Channels;
use toil_config::Config;
use toil_metrics::Registry;

/// What a node serves channels with.
pub enum NodeChannels {
    On(Channels),
    /// A cluster node without `channels.nats`; guests get `Disabled`.
    Off(&'static str),
}

pub async fn open(config: &Config, cluster: bool, registry: &Registry) -> anyhow::Result<NodeChannels> {
    let settings = config.channel_settings();
    Ok(match (&config.channels.nats, cluster) {
        (Some(url), _) => {
            let channels = Channels::nats(url, settings, registry).await.with_context(|| format!("{}: channels.nats", config.file.display()))?;
            NodeChannels::On(channels)
        }
        (None, false) => NodeChannels::On(Channels::in_process(settings, registry)),
        (None, true) => {
            let why = "off: a cluster node shares channels only through NATS; set channels.nats in toilconfig.json (e.g. \"nats://127.0.0.1:4222\", a nats-server started with -js)";
            tracing::warn!("channels {why}");
            NodeChannels::Off(why)
        }
    })
}

impl NodeChannels {
    pub fn get(&self) -> Option<&Channels> {
        match self {
            NodeChannels::On(c) => Some(c),
            NodeChannels::Off(_) => None,
        }
    }

    /// One line for the banner.
    pub fn describe(&self, config: &Config) -> String {
        match (self, &config.channels.nats) {
            (NodeChannels::On(_), Some(url)) => format!("through NATS JetStream at {url}"),
            (NodeChannels::On(_), None) => "in process (this node only)".into(),
            (NodeChannels::Off(why), _) => why.to_string(),
        }
    }
}
