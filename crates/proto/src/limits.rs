//! The limits of the public API, in one place: each is Kinesis's, named once with its source
//! (the Amazon Kinesis Data Streams API reference and its "Quotas and limits" page), and used by
//! the gRPC handlers, the Kinesis HTTP API's validation, the client and the CLI. Bounds that are
//! Millrace's own (queues, buffers, pipelines) live beside the code they bound, with their
//! reason.

/// PutRecords: records per call ("Records: Array Members: Minimum number of 1 item. Maximum
/// number of 500 items").
pub const PUT_RECORDS_RECORDS_MAX: usize = 500;
/// PutRecords: data and partition keys of one call together ("up to 5 MiB for the entire
/// request, including partition keys").
pub const PUT_RECORDS_BYTES_MAX: usize = 5 * 1024 * 1024;
/// A record's data plus partition key, unless the stream was given a larger limit ("The maximum
/// size of a data blob ... is 1 MiB", the default of `MaxRecordSizeInKiB`).
pub const RECORD_BYTES_DEFAULT: usize = 1024 * 1024;
/// UpdateMaxRecordSize / CreateStream `MaxRecordSizeInKiB`: "Valid Range: Minimum value of
/// 1024. Maximum value of 10240" (KiB).
pub const MAX_RECORD_SIZE_KIB_MIN: u32 = 1024;
pub const MAX_RECORD_SIZE_KIB_MAX: u32 = 10 * 1024;
/// The largest record any stream can be configured for (10 MiB).
pub const RECORD_BYTES_MAX: usize = MAX_RECORD_SIZE_KIB_MAX as usize * 1024;
/// Partition key: "Length Constraints: Minimum length of 1. Maximum length of 256" (Unicode
/// characters).
pub const PARTITION_KEY_CHARS_MAX: usize = 256;
/// GetRecords `Limit`: "Valid Range: Minimum value of 1. Maximum value of 10000".
pub const GET_RECORDS_RECORDS_MAX: u32 = 10_000;
/// GetRecords: "can return up to 10 MiB of data" per call.
pub const GET_RECORDS_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Stream and consumer names: "Length Constraints: Minimum length of 1. Maximum length of 128".
pub const NAME_CHARS_MAX: usize = 128;
/// `Limit` and `MaxResults` of the List actions (ListStreams, ListShards, ListStreamConsumers,
/// ListTagsForStream): "Valid Range: Minimum value of 1. Maximum value of 10000".
pub const LIST_RESULTS_MAX: i64 = 10_000;
/// `NextToken` of the List actions: "Length Constraints: Minimum length of 1. Maximum length of
/// 1048576".
pub const NEXT_TOKEN_CHARS_MAX: usize = 1_048_576;
/// Tags per stream: "You can have up to 50 tags per stream".
pub const TAGS_PER_STREAM_MAX: usize = 50;
/// Retention: "The default retention period is 24 hours ... up to 8760 hours (365 days)".
pub const RETENTION_HOURS_DEFAULT: u32 = 24;
pub const RETENTION_HOURS_MIN: u32 = 24;
pub const RETENTION_HOURS_MAX: u32 = 8760;
/// One shard's write capacity: "up to 1,000 records per second for writes, up to a maximum
/// total data write rate of 1 MiB per second".
pub const SHARD_WRITE_RECORDS_PER_SEC: f64 = 1000.0;
pub const SHARD_WRITE_BYTES_PER_SEC: f64 = 1024.0 * 1024.0;
/// One shard's read capacity: "up to 5 transactions per second for reads, up to a maximum total
/// data read rate of 2 MiB per second".
pub const SHARD_READ_CALLS_PER_SEC: f64 = 5.0;
pub const SHARD_READ_BYTES_PER_SEC: f64 = 2.0 * 1024.0 * 1024.0;
