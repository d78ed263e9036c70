//! The QMP wire format: splitting a byte stream into JSON values the way QEMU's JSON streamer
//! does (by bracket balance, not by lines), checking a request's members, and writing
//! replies and events with QEMU's spacing and member order.
//!
//! Limits (a client cannot make accel buffer more): one message is at most
//! [`MAX_MESSAGE`] bytes and [`MAX_DEPTH`] levels deep; past either, the message is answered
//! with an error and skipped up to its end.

use serde_json::{Map, Value};

/// Largest request accel buffers.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Deepest nesting accepted (QEMU: 64).
pub const MAX_DEPTH: usize = 64;

/// QEMU's `QapiErrorClass` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotFound,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
        }
    }
}

/// An error reply: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    /// QEMU's `DeviceNotFound` (e.g. `device_del` of an unknown id).
    pub fn device_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: desc.into(),
        }
    }

    pub fn not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }
}

/// What the splitter found next in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// The bytes of one complete JSON value (object, array or scalar).
    Value(Vec<u8>),
    /// A framing error (too big, too deep, stray bracket): answer it and go on.
    Error(String),
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum Mode {
    /// Between values.
    #[default]
    Idle,
    /// Inside an object or array (`depth` > 0).
    Nested,
    /// A top-level keyword or number, ended by whitespace or a structural byte.
    Scalar,
    /// A top-level string.
    TopString,
    /// Skipping the rest of an oversized or too deep value.
    Discard,
}

/// Incremental JSON value splitter with bounded buffering.
#[derive(Debug, Default)]
pub struct Splitter {
    /// Received bytes not scanned yet.
    input: Vec<u8>,
    /// Bytes of the value being assembled.
    cur: Vec<u8>,
    mode: Mode,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// The scalar just finished ended at a `{`, `[`, `"`... that belongs to the next value.
    scalar_ended_by_structural: bool,
}

impl Splitter {
    /// Adds received bytes (the caller bounds how much it feeds before calling `next`).
    pub fn feed(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// Bytes received but not consumed yet.
    pub fn pending(&self) -> usize {
        self.input.len()
    }

    /// The next complete piece, or `None` if more input is needed.
    pub fn next_piece(&mut self) -> Option<Piece> {
        let mut consumed = 0;
        let mut out = None;
        let input = std::mem::take(&mut self.input);
        for &b in &input {
            consumed += 1;
            if let Some(piece) = self.scan(b) {
                out = Some(piece);
                break;
            }
        }
        // A scalar ends at the byte after it; that byte may start the next value.
        if let Some(Piece::Value(_)) = &out
            && self.mode == Mode::Idle
            && self.scalar_ended_by_structural
        {
            consumed -= 1;
            self.scalar_ended_by_structural = false;
        }
        self.input = input;
        self.input.drain(..consumed);
        out
    }

    fn push(&mut self, b: u8) -> Option<Piece> {
        if self.cur.len() >= MAX_MESSAGE {
            self.cur = Vec::new();
            self.mode = Mode::Discard;
            return Some(Piece::Error("JSON token size limit exceeded".into()));
        }
        self.cur.push(b);
        None
    }

    fn scan(&mut self, b: u8) -> Option<Piece> {
        match self.mode {
            Mode::Idle => match b {
                b' ' | b'\t' | b'\r' | b'\n' => None,
                b'{' | b'[' => {
                    self.mode = Mode::Nested;
                    self.depth = 1;
                    self.cur.clear();
                    self.cur.push(b);
                    None
                }
                b'}' | b']' => Some(Piece::Error(format!(
                    "JSON parse error, expecting value, got '{}'",
                    b as char
                ))),
                b'"' => {
                    self.mode = Mode::TopString;
                    self.cur.clear();
                    self.cur.push(b);
                    None
                }
                _ => {
                    self.mode = Mode::Scalar;
                    self.cur.clear();
                    self.cur.push(b);
                    None
                }
            },
            Mode::Scalar => match b {
                b' ' | b'\t' | b'\r' | b'\n' => self.finish(),
                b'{' | b'[' | b'}' | b']' | b'"' => {
                    self.scalar_ended_by_structural = true;
                    self.finish()
                }
                _ => self.push(b),
            },
            Mode::TopString => {
                if let Some(e) = self.push(b) {
                    return Some(e);
                }
                if self.string_byte(b) {
                    return None;
                }
                self.finish()
            }
            Mode::Nested | Mode::Discard => {
                // Track structure first, so a byte that hits a limit still counts.
                let mut closed = false;
                let mut too_deep = false;
                if self.in_string {
                    self.string_byte(b);
                } else {
                    match b {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => {
                            self.depth += 1;
                            too_deep = self.depth > MAX_DEPTH;
                        }
                        b'}' | b']' => {
                            self.depth -= 1;
                            closed = self.depth == 0;
                        }
                        _ => {}
                    }
                }
                if self.mode == Mode::Nested {
                    if too_deep {
                        self.cur = Vec::new();
                        self.mode = Mode::Discard;
                        return Some(Piece::Error("JSON nesting depth limit exceeded".into()));
                    }
                    if let Some(e) = self.push(b) {
                        if closed {
                            self.mode = Mode::Idle;
                        }
                        return Some(e);
                    }
                }
                if closed {
                    if self.mode == Mode::Discard {
                        self.mode = Mode::Idle;
                        return None;
                    }
                    return self.finish();
                }
                None
            }
        }
    }

    /// Tracks a byte inside a string; false once the closing quote was seen.
    fn string_byte(&mut self, b: u8) -> bool {
        let top = self.mode == Mode::TopString;
        if self.escape {
            self.escape = false;
        } else if b == b'\\' {
            self.escape = true;
        } else if b == b'"' && (self.in_string || (top && self.cur.len() > 1)) {
            self.in_string = false;
            return false;
        }
        true
    }

    fn finish(&mut self) -> Option<Piece> {
        self.mode = Mode::Idle;
        self.depth = 0;
        self.in_string = false;
        self.escape = false;
        Some(Piece::Value(std::mem::take(&mut self.cur)))
    }
}

/// A checked request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Map<String, Value>,
    pub id: Option<Value>,
}

/// Parses and checks one value as a QMP request, with QEMU's error texts. On error, the
/// request's `id` (when it had one) comes back too, to be echoed.
pub fn parse_request(bytes: &[u8]) -> Result<Request, (Option<Value>, QmpError)> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| (None, parse_error(bytes, &e)))?;
    let Value::Object(obj) = value else {
        return Err((None, QmpError::generic("QMP input must be a JSON object")));
    };
    let id = obj.get("id").cloned();
    let fail = |desc: String| Err((id.clone(), QmpError::generic(desc)));
    let mut execute = None;
    let mut arguments = Map::new();
    for (key, value) in &obj {
        match key.as_str() {
            "execute" => match value {
                Value::String(s) => execute = Some(s.clone()),
                _ => return fail("QMP input member 'execute' must be a string".into()),
            },
            "arguments" => match value {
                Value::Object(m) => arguments = m.clone(),
                _ => return fail("QMP input member 'arguments' must be an object".into()),
            },
            "id" => {}
            "exec-oob" => {
                return fail(
                    "QMP input member 'exec-oob' is unexpected (out-of-band \
                             execution is not enabled)"
                        .into(),
                );
            }
            other => return fail(format!("QMP input member '{other}' is unexpected")),
        }
    }
    let Some(execute) = execute else {
        return fail("QMP input lacks member 'execute'".into());
    };
    Ok(Request {
        execute,
        arguments,
        id,
    })
}

fn parse_error(bytes: &[u8], e: &serde_json::Error) -> QmpError {
    let text = String::from_utf8_lossy(bytes);
    let word = text.trim();
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic()) {
        return QmpError::generic(format!("JSON parse error, invalid keyword '{word}'"));
    }
    QmpError::generic(format!("JSON parse error, {e}"))
}

/// serde_json formatter writing `{"a": 1, "b": [1, 2]}` as QEMU's compact JSON does.
struct QemuCompact;

impl serde_json::ser::Formatter for QemuCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// One value as QEMU writes it (compact with spaces, or pretty with 4-space indents).
pub fn to_json(value: &Value, pretty: bool) -> String {
    let mut out = Vec::new();
    let result = if pretty {
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        serde::Serialize::serialize(
            value,
            &mut serde_json::Serializer::with_formatter(&mut out, fmt),
        )
    } else {
        serde::Serialize::serialize(
            value,
            &mut serde_json::Serializer::with_formatter(&mut out, QemuCompact),
        )
    };
    // Serializing a `Value` into a Vec cannot fail (keys are strings, no I/O errors).
    debug_assert!(result.is_ok());
    String::from_utf8(out).unwrap_or_default()
}

/// Joins `(key, value)` members in this order (QEMU's member order for replies and events;
/// a `Map` would sort them).
fn envelope(members: &[(&str, &Value)], pretty: bool) -> String {
    if pretty {
        let map: Map<String, Value> = members
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).clone()))
            .collect();
        return to_json(&Value::Object(map), true);
    }
    let parts: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("\"{k}\": {}", to_json(v, false)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// `{"QMP": {"version": V, "capabilities": [...]}}`.
pub fn greeting(version: &Value, capabilities: &Value, pretty: bool) -> String {
    if pretty {
        return to_json(
            &serde_json::json!({"QMP": {"version": version, "capabilities": capabilities}}),
            true,
        );
    }
    let inner = envelope(
        &[("version", version), ("capabilities", capabilities)],
        false,
    );
    format!("{{\"QMP\": {inner}}}")
}

/// `{"return": R, "id": ID}`.
pub fn reply_ok(ret: &Value, id: Option<&Value>, pretty: bool) -> String {
    match id {
        Some(id) => envelope(&[("return", ret), ("id", id)], pretty),
        None => envelope(&[("return", ret)], pretty),
    }
}

/// `{"id": ID, "error": {"class": C, "desc": D}}`.
pub fn reply_err(err: &QmpError, id: Option<&Value>, pretty: bool) -> String {
    let body = serde_json::json!({"class": err.class.as_str(), "desc": err.desc});
    match id {
        Some(id) => envelope(&[("id", id), ("error", &body)], pretty),
        None => envelope(&[("error", &body)], pretty),
    }
}

/// `{"timestamp": {"seconds": S, "microseconds": U}, "event": NAME, "data": D}`.
pub fn event(name: &str, data: Option<&Value>, micros: u64, pretty: bool) -> String {
    let ts = serde_json::json!({"seconds": micros / 1_000_000, "microseconds": micros % 1_000_000});
    let name = Value::String(name.to_string());
    match data {
        Some(d) => envelope(&[("timestamp", &ts), ("event", &name), ("data", d)], pretty),
        None => envelope(&[("timestamp", &ts), ("event", &name)], pretty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(input: &[u8]) -> Vec<Piece> {
        let mut s = Splitter::default();
        s.feed(input);
        std::iter::from_fn(|| s.next_piece()).collect()
    }

    fn value(s: &str) -> Piece {
        Piece::Value(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_by_balance_not_lines() {
        let got = pieces(b"{\"a\": \"}{\"}{\"b\":\n[1,{}]}\n  [1]  hello 12{\"c\":1}\"x\\\"y\"");
        assert_eq!(
            got,
            vec![
                value("{\"a\": \"}{\"}"),
                value("{\"b\":\n[1,{}]}"),
                value("[1]"),
                value("hello"),
                value("12"),
                value("{\"c\":1}"),
                value("\"x\\\"y\""),
            ]
        );
    }

    #[test]
    fn incomplete_input_waits_and_resumes() {
        let mut s = Splitter::default();
        s.feed(b"{\"execute\": \"qu");
        assert_eq!(s.next_piece(), None);
        s.feed(b"it\"}");
        assert_eq!(s.next_piece(), Some(value("{\"execute\": \"quit\"}")));
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn too_deep_and_too_big_are_errors_then_skipped() {
        let deep = format!("{}{}{{\"x\":1}}", "[".repeat(100), "]".repeat(100));
        let got = pieces(deep.as_bytes());
        assert_eq!(
            got,
            vec![
                Piece::Error("JSON nesting depth limit exceeded".into()),
                value("{\"x\":1}")
            ]
        );
        let big = format!("{{\"a\":\"{}\"}}[2]", "x".repeat(MAX_MESSAGE));
        let got = pieces(big.as_bytes());
        assert_eq!(
            got,
            vec![
                Piece::Error("JSON token size limit exceeded".into()),
                value("[2]")
            ]
        );
    }

    #[test]
    fn random_bytes_never_panic_and_buffers_stay_bounded() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"{}[]\"\\ ax1,:\n";
        let mut s = Splitter::default();
        for _ in 0..2000 {
            let chunk: Vec<u8> = (0..512)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            s.feed(&chunk);
            while let Some(p) = s.next_piece() {
                if let Piece::Value(v) = p {
                    let _ = parse_request(&v);
                }
            }
            assert_eq!(s.pending(), 0);
            // Memory is the value being assembled; depth is only a counter.
            assert!(s.cur.len() <= MAX_MESSAGE);
        }
    }

    #[test]
    fn request_checks_use_qemu_texts() {
        let err = |s: &str| parse_request(s.as_bytes()).unwrap_err();
        assert_eq!(err("[1]").1.desc, "QMP input must be a JSON object");
        assert_eq!(
            err("hello").1.desc,
            "JSON parse error, invalid keyword 'hello'"
        );
        assert_eq!(
            err("{\"exec\":1}").1.desc,
            "QMP input member 'exec' is unexpected"
        );
        assert_eq!(
            err("{\"execute\":1,\"id\":7}"),
            (
                Some(serde_json::json!(7)),
                QmpError::generic("QMP input member 'execute' must be a string")
            )
        );
        assert_eq!(
            err("{\"execute\":\"x\",\"arguments\":[]}").1.desc,
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(err("{\"id\":1}").1.desc, "QMP input lacks member 'execute'");
        let ok = parse_request(b"{\"execute\":\"stop\",\"id\":{\"a\":[1]}}").unwrap();
        assert_eq!(ok.execute, "stop");
        assert_eq!(ok.id, Some(serde_json::json!({"a": [1]})));
    }

    #[test]
    fn replies_and_events_match_qemu_bytes() {
        let id = serde_json::json!("x");
        assert_eq!(
            reply_ok(&serde_json::json!({}), Some(&serde_json::json!(1)), false),
            "{\"return\": {}, \"id\": 1}"
        );
        assert_eq!(
            reply_err(
                &QmpError::not_found("The command foo has not been found"),
                Some(&id),
                false
            ),
            "{\"id\": \"x\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command foo has not been found\"}}"
        );
        assert_eq!(
            event(
                "RESET",
                Some(&serde_json::json!({"guest": false, "reason": "host-qmp-system-reset"})),
                1_796_012_503_059_677,
                false
            ),
            "{\"timestamp\": {\"microseconds\": 59677, \"seconds\": 1796012503}, \"event\": \"RESET\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-system-reset\"}}"
        );
    }
}
