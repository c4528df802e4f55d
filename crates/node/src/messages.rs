//! Error messages worded as Amazon Kinesis words them (issue 17). Code written against Kinesis
//! matches on some of these texts (and people search for them), so the native gRPC API and the
//! Kinesis HTTP API both answer with them; one home, so that a wording changes in one place.
//!
//! Kinesis names the account in its messages. A node's account id is part of its configuration
//! (`--kinesis-account-id`, the one its ARNs name) and a process serves one node, so it is set
//! once at start-up ([`set_account_id`]); until then (unit tests) it is Kinesis's example
//! account.

use std::sync::OnceLock;

static ACCOUNT_ID: OnceLock<String> = OnceLock::new();

/// The account id the messages name, when none was set.
pub const DEFAULT_ACCOUNT_ID: &str = "123456789012";

/// Sets the account id the messages name (the first call wins).
pub fn set_account_id(id: &str) {
    let _ = ACCOUNT_ID.set(id.to_string());
}

fn account() -> &'static str {
    ACCOUNT_ID.get().map_or(DEFAULT_ACCOUNT_ID, String::as_str)
}

/// A stream that does not exist (any action naming one).
pub fn stream_not_found(stream: &str) -> String {
    format!("Stream {stream} under account {} not found.", account())
}

/// A shard that does not exist, to GetShardIterator, GetRecords and SubscribeToShard.
pub fn shard_does_not_exist(stream: &str, shard: &str) -> String {
    format!(
        "Shard {shard} in stream {stream} under account {} does not exist",
        account()
    )
}

/// A shard that does not exist, to SplitShard and MergeShards.
pub fn could_not_find_shard(stream: &str, shard: &str) -> String {
    format!(
        "Could not find shard {shard} in stream {stream} under account {}.",
        account()
    )
}

/// CreateStream of a name in use.
pub fn stream_exists(stream: &str) -> String {
    format!(
        "Stream {stream} under account {} already exists.",
        account()
    )
}

/// DeleteStream of a stream with registered consumers, without EnforceConsumerDeletion.
pub fn stream_has_consumers(stream: &str) -> String {
    format!("DeleteStream can't delete {stream} because there are consumers associated with this data stream. To delete {stream} anyway, set the EnforceConsumerDeletion parameter to true to force the deletion of all the consumers that are associated with it.")
}

/// AddTagsToStream past the tags a stream may have. (Kinesis's text names 10, its limit of
/// old; the limit is 50, and this names it.)
pub fn too_many_tags(stream: &str, max: usize) -> String {
    format!(
        "Failed to add tags to stream {stream} under account {} because a given stream cannot have more than {max} tags associated with it.",
        account()
    )
}

/// GetRecords with an iterator past its lifetime (`ttl_ms`; Kinesis: 5 minutes).
pub fn iterator_expired(created_ms: i64, now_ms: i64, ttl_ms: i64) -> String {
    format!(
        "Iterator expired. The iterator was created at time {} while right now it is {} which is further in the future than the tolerated delay of {ttl_ms} milliseconds.",
        java_date(created_ms),
        java_date(now_ms)
    )
}

/// A time as Java's `Date.toString()` writes it in UTC, which Kinesis's messages use:
/// `Thu Jul 02 12:57:57 UTC 2015`.
fn java_date(ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ms.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (proleptic Gregorian; Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{} {} {day:02} {:02}:{:02}:{:02} UTC {year}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// GetShardIterator with a StartingSequenceNumber that is not one.
pub fn sequence_number_invalid(sequence: &str, stream: &str, shard: &str) -> String {
    format!(
        "StartingSequenceNumber {sequence} used in GetShardIterator on shard {shard} in stream {stream} under account {} is invalid.",
        account()
    )
}

/// A stream that is not ACTIVE, to actions that need it to be (resharding).
pub fn stream_not_active(stream: &str, state: &str) -> String {
    format!(
        "Stream {stream} under account {} not ACTIVE, instead in state {state}",
        account()
    )
}

/// SplitShard or MergeShards of a shard already closed by an earlier reshard.
pub fn shard_not_open(stream: &str, shard: &str) -> String {
    format!(
        "Shard {shard} in stream {stream} under account {} has already been merged or split, and thus is not eligible for merging or splitting.",
        account()
    )
}

/// MergeShards of two shards whose hash key ranges do not touch.
pub fn shards_not_adjacent(stream: &str, shard: &str, adjacent: &str) -> String {
    format!(
        "Shards {shard} and {adjacent} in stream {stream} under account {} are not an adjacent pair of shards eligible for merging",
        account()
    )
}

/// SplitShard with a NewStartingHashKey outside the shard's hash key range.
pub fn split_key_outside(
    stream: &str,
    shard: &str,
    key: u128,
    (start, end): (u128, u128),
) -> String {
    format!(
        "NewStartingHashKey {key} used in SplitShard() on shard {shard} in stream {stream} under account {} is not both greater than one plus the shard's StartingHashKey {start} and less than the shard's EndingHashKey {end}.",
        account()
    )
}

/// A retention period under the minimum.
pub fn retention_too_short(hours: u32, min: u32) -> String {
    format!("Minimum allowed retention period is {min} hours. Requested retention period ({hours} hours) is too short.")
}

/// A retention period over the maximum.
pub fn retention_too_long(hours: u32, max: u32) -> String {
    format!("Maximum allowed retention period is {max} hours. Requested retention period ({hours} hours) is too long.")
}

/// IncreaseStreamRetentionPeriod to less than the stream has.
pub fn retention_not_shorter(stream: &str, hours: u32, current: u32) -> String {
    format!("Requested retention period ({hours} hours) for stream {stream} can not be shorter than existing retention period ({current} hours). Use DecreaseRetentionPeriod API.")
}

/// DecreaseStreamRetentionPeriod to more than the stream has.
pub fn retention_not_longer(stream: &str, hours: u32, current: u32) -> String {
    format!("Requested retention period ({hours} hours) for stream {stream} can not be longer than existing retention period ({current} hours). Use IncreaseRetentionPeriod API.")
}

/// Two request parameters that exclude each other (ListShards' NextToken and the others).
pub fn not_together(first: &str, second: &str) -> String {
    format!("{first} and {second} cannot be provided together.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_kinesis_writes_them() {
        assert_eq!(
            stream_not_found("orders"),
            "Stream orders under account 123456789012 not found."
        );
        assert_eq!(
            shard_does_not_exist("orders", "shardId-000000000007"),
            "Shard shardId-000000000007 in stream orders under account 123456789012 does not exist"
        );
        assert_eq!(
            could_not_find_shard("orders", "shardId-000000000007"),
            "Could not find shard shardId-000000000007 in stream orders under account 123456789012."
        );
        assert_eq!(
            retention_too_short(20, 24),
            "Minimum allowed retention period is 24 hours. Requested retention period (20 hours) is too short."
        );
        assert_eq!(
            retention_not_shorter("orders", 25, 30),
            "Requested retention period (25 hours) for stream orders can not be shorter than existing retention period (30 hours). Use DecreaseRetentionPeriod API."
        );
        assert_eq!(
            retention_not_longer("orders", 40, 24),
            "Requested retention period (40 hours) for stream orders can not be longer than existing retention period (24 hours). Use IncreaseRetentionPeriod API."
        );
        // 2015-07-02T12:57:57Z, as a Kinesis message quotes it.
        assert_eq!(java_date(1_435_841_877_000), "Thu Jul 02 12:57:57 UTC 2015");
        assert_eq!(java_date(0), "Thu Jan 01 00:00:00 UTC 1970");
        assert_eq!(java_date(951_782_400_000), "Tue Feb 29 00:00:00 UTC 2000");
        assert_eq!(
            iterator_expired(0, 300_001, 300_000),
            "Iterator expired. The iterator was created at time Thu Jan 01 00:00:00 UTC 1970 while right now it is Thu Jan 01 00:05:00 UTC 1970 which is further in the future than the tolerated delay of 300000 milliseconds."
        );
        assert_eq!(
            stream_exists("orders"),
            "Stream orders under account 123456789012 already exists."
        );
        assert_eq!(
            not_together("NextToken", "StreamName"),
            "NextToken and StreamName cannot be provided together."
        );
    }
}
