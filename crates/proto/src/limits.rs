//! Named bounds shared by both sides of a connection. Each carries its unit last.

/// Largest HTTP request body the coordinator reads.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest WebSocket frame or message on the worker control channel: room, twice over, for the
/// largest message, a GPU's proof-of-compute transcript (about 1.9 MB: 97 openings of two
/// 4096-byte rows each, in hex; `the_largest_proof_messages_fit_a_frame` checks it).
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most devices one worker may report.
pub const DEVICES_PER_WORKER_MAX: usize = 64;
/// Longest free-text name (device, worker, key, token, account).
pub const NAME_CHARS_MAX: usize = 64;
/// Longest model or hardware identifier string a worker may report.
pub const HARDWARE_STRING_CHARS_MAX: usize = 128;
/// Largest page a list endpoint returns.
pub const PAGE_LIMIT_MAX: u32 = 500;
/// Page size when the caller names none.
pub const PAGE_LIMIT_DEFAULT: u32 = 100;
/// Longest lifetime of an API key or enrollment token.
pub const SECRET_LIFETIME_S_MAX: u64 = 5 * 365 * 24 * 3600;
/// Telemetry points returned with one device.
pub const TELEMETRY_POINTS_MAX: u32 = 1440;
