//! QUIC transport settings that both sides of a `certnode-sign/1` connection use (the server
//! applies the same ones), defined once here.

use std::time::Duration;

use quinn::VarInt;

/// Asks the peer to acknowledge every 8th ack-eliciting packet (or after 2 ms) instead of every
/// second one: at thousands of small requests per second, ACK-only packets are a large share of
/// the UDP traffic and of the syscalls on both sides (draft-ietf-quic-ack-frequency, which quinn
/// implements; peers without it ignore the request).
pub fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut a = quinn::AckFrequencyConfig::default();
    a.ack_eliciting_threshold(VarInt::from_u32(8));
    a.max_ack_delay(Some(Duration::from_millis(2)));
    a
}
