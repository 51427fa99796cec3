//! dom0's management API, the part both ends share: the request bodies
//! ([`CreateBody`], [`SchedBody`], [`ShutdownBody`]) read from JSON, and
//! [`json_str`] for the strings of the replies. dom0 serves the API
//! (`sample-guests/src/bin/dom0/api.rs`: the paths and statuses are listed
//! there); `cargo xtask ctl` is its client.
//!
//! ```
//! use toolstack_api::CreateBody;
//! let b = CreateBody::parse(br#"{"template":"hog","name":"busy","mem_kib":1024}"#).unwrap();
//! assert_eq!((b.template.as_str(), b.mem_kib), ("hog", Some(1024)));
//! assert!(CreateBody::parse(br#"{"template":"hog","bogus":1}"#).unwrap_err().to_string().contains("bogus"));
//! ```
//!
//! # The JSON reader
//! A body is untrusted input from the network. [`parse_object`] reads one
//! flat object whose values are strings, non-negative integers, booleans
//! or `null`, and nothing else: no nesting, no fractions or exponents, no
//! duplicate keys, at most [`MAX_MEMBERS`] members, strings of at most
//! [`MAX_STRING`] bytes, the whole at most [`MAX_BODY`] bytes. Escapes
//! (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\uXXXX` with
//! surrogate pairs) are decoded; a lone surrogate or a control character
//! inside a string is refused. It never panics and does work linear in the
//! input (a property test feeds it arbitrary bytes).
//!
//! It is written here rather than taken from serde-json-core: serde in a
//! freestanding guest gets the `std` feature that the workspace's host
//! tools ask for (features are unified in a workspace build), which cannot
//! link; and these bodies need only this much.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The largest body read.
pub const MAX_BODY: usize = 4096;
/// The most members an object may have.
pub const MAX_MEMBERS: usize = 16;
/// The longest string (bytes, decoded).
pub const MAX_STRING: usize = 1024;

/// A value of a flat object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Num(u64),
    Bool(bool),
    Null,
}

/// Why a body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Longer than [`MAX_BODY`].
    TooLong,
    /// Not JSON of the accepted shape, at byte `at`.
    Syntax { at: usize, what: &'static str },
    /// A member whose key this request does not have.
    UnknownField(String),
    /// A key given twice.
    Duplicate(String),
    /// A member of the wrong type.
    Type { field: &'static str, want: &'static str },
    /// A member the request needs is absent.
    Missing(&'static str),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::TooLong => write!(f, "the body is longer than {MAX_BODY} bytes"),
            JsonError::Syntax { at, what } => write!(f, "at byte {at}: {what}"),
            JsonError::UnknownField(k) => write!(f, "unknown field '{k}'"),
            JsonError::Duplicate(k) => write!(f, "field '{k}' given twice"),
            JsonError::Type { field, want } => write!(f, "field '{field}' must be {want}"),
            JsonError::Missing(k) => write!(f, "field '{k}' is missing"),
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn err<T>(&self, what: &'static str) -> Result<T, JsonError> {
        Err(JsonError::Syntax { at: self.at, what })
    }

    fn space(&mut self) {
        while self.b.get(self.at).is_some_and(|c| b" \t\r\n".contains(c)) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8, what: &'static str) -> Result<(), JsonError> {
        self.space();
        if self.b.get(self.at) == Some(&c) {
            self.at += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = self.b.get(self.at).and_then(|c| (*c as char).to_digit(16));
            let Some(d) = d else { return self.err("a \\u escape needs 4 hex digits") };
            v = v * 16 + d;
            self.at += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.eat(b'"', "expected a string")?;
        let mut out = String::new();
        loop {
            let Some(&c) = self.b.get(self.at) else { return self.err("a string is not closed") };
            self.at += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(&e) = self.b.get(self.at) else { return self.err("a string is not closed") };
                    self.at += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                if self.b.get(self.at..self.at + 2) != Some(b"\\u") {
                                    return self.err("a lone surrogate");
                                }
                                self.at += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return self.err("a lone surrogate");
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            match char::from_u32(code) {
                                Some(ch) => ch,
                                None => return self.err("a lone surrogate"),
                            }
                        }
                        _ => return self.err("an unknown escape"),
                    };
                    out.push(ch);
                }
                c if c < 0x20 => return self.err("a control character in a string"),
                c if c < 0x80 => out.push(c as char),
                _ => {
                    // A UTF-8 sequence: as many bytes as its first says.
                    let len = match c {
                        0xc2..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf4 => 4,
                        _ => return self.err("not UTF-8"),
                    };
                    let start = self.at - 1;
                    let Some(seq) = self.b.get(start..start + len) else { return self.err("not UTF-8") };
                    let Ok(s) = core::str::from_utf8(seq) else { return self.err("not UTF-8") };
                    out.push_str(s);
                    self.at = start + len;
                }
            }
            if out.len() > MAX_STRING {
                return self.err("a string is too long");
            }
        }
    }

    fn value(&mut self) -> Result<Value, JsonError> {
        self.space();
        let word = |r: &mut Self, w: &[u8], v: Value| {
            if r.b.get(r.at..r.at + w.len()) == Some(w) {
                r.at += w.len();
                Ok(v)
            } else {
                r.err("expected a value")
            }
        };
        match self.b.get(self.at) {
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') => word(self, b"true", Value::Bool(true)),
            Some(b'f') => word(self, b"false", Value::Bool(false)),
            Some(b'n') => word(self, b"null", Value::Null),
            Some(b'0'..=b'9') => {
                let start = self.at;
                let mut v: u64 = 0;
                while let Some(d) = self.b.get(self.at).filter(|c| c.is_ascii_digit()) {
                    v = match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))) {
                        Some(v) => v,
                        None => return self.err("a number too large"),
                    };
                    self.at += 1;
                }
                if self.at - start > 1 && self.b[start] == b'0' {
                    return Err(JsonError::Syntax { at: start, what: "a number with a leading zero" });
                }
                if self.b.get(self.at).is_some_and(|c| b".eE".contains(c)) {
                    return self.err("only whole numbers are taken");
                }
                Ok(Value::Num(v))
            }
            Some(b'-') => self.err("only non-negative numbers are taken"),
            Some(b'{' | b'[') => self.err("no nested objects or arrays are taken"),
            _ => self.err("expected a value"),
        }
    }
}

/// Reads `body`, one flat JSON object (see the module docs): its members
/// in order.
pub fn parse_object(body: &[u8]) -> Result<Vec<(String, Value)>, JsonError> {
    if body.len() > MAX_BODY {
        return Err(JsonError::TooLong);
    }
    let mut r = Reader { b: body, at: 0 };
    r.eat(b'{', "expected an object")?;
    let mut members: Vec<(String, Value)> = Vec::new();
    r.space();
    if r.b.get(r.at) == Some(&b'}') {
        r.at += 1;
    } else {
        loop {
            let key = r.string()?;
            r.eat(b':', "expected ':'")?;
            let v = r.value()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(JsonError::Duplicate(key));
            }
            if members.len() == MAX_MEMBERS {
                return r.err("too many members");
            }
            members.push((key, v));
            r.space();
            match r.b.get(r.at) {
                Some(b',') => r.at += 1,
                Some(b'}') => {
                    r.at += 1;
                    break;
                }
                _ => return r.err("expected ',' or '}'"),
            }
        }
    }
    r.space();
    if r.at != body.len() {
        return r.err("something follows the object");
    }
    Ok(members)
}

/// The members of an object, taken out by name with their types checked;
/// [`Fields::finish`] refuses any left over.
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn take(&mut self, k: &str) -> Option<Value> {
        let i = self.0.iter().position(|(key, _)| key == k)?;
        Some(self.0.swap_remove(i).1)
    }
    fn str(&mut self, k: &'static str) -> Result<Option<String>, JsonError> {
        match self.take(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(_) => Err(JsonError::Type { field: k, want: "a string" }),
        }
    }
    fn num(&mut self, k: &'static str) -> Result<Option<u32>, JsonError> {
        match self.take(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Num(n)) => {
                u32::try_from(n).map(Some).map_err(|_| JsonError::Type { field: k, want: "a number below 2^32" })
            }
            Some(_) => Err(JsonError::Type { field: k, want: "a number" }),
        }
    }
    fn bool(&mut self, k: &'static str) -> Result<Option<bool>, JsonError> {
        match self.take(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(JsonError::Type { field: k, want: "true or false" }),
        }
    }
    fn finish(self) -> Result<(), JsonError> {
        match self.0.into_iter().next() {
            Some((k, _)) => Err(JsonError::UnknownField(k)),
            None => Ok(()),
        }
    }
}

/// `POST /v1/domains`: a domain from a template; what is absent is the
/// template's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateBody {
    pub template: String,
    pub name: Option<String>,
    pub mem_kib: Option<u32>,
    pub weight: Option<u32>,
    pub warp_us: Option<u32>,
    pub cmdline: Option<String>,
    pub paused: bool,
    /// A template disk the domain's disk is a copy-on-write overlay of.
    pub from: Option<String>,
}

impl CreateBody {
    /// Reads a body (unknown fields are refused).
    pub fn parse(body: &[u8]) -> Result<CreateBody, JsonError> {
        let mut f = Fields(parse_object(body)?);
        let b = CreateBody {
            template: f.str("template")?.ok_or(JsonError::Missing("template"))?,
            name: f.str("name")?,
            mem_kib: f.num("mem_kib")?,
            weight: f.num("weight")?,
            warp_us: f.num("warp_us")?,
            cmdline: f.str("cmdline")?,
            paused: f.bool("paused")?.unwrap_or(false),
            from: f.str("from")?,
        };
        f.finish()?;
        Ok(b)
    }
}

/// `PUT /v1/domains/DOM/sched`: a weight, and a warp (absent: kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedBody {
    pub weight: u32,
    pub warp_us: Option<u32>,
}

impl SchedBody {
    /// Reads a body (unknown fields are refused).
    pub fn parse(body: &[u8]) -> Result<SchedBody, JsonError> {
        let mut f = Fields(parse_object(body)?);
        let b = SchedBody { weight: f.num("weight")?.ok_or(JsonError::Missing("weight"))?, warp_us: f.num("warp_us")? };
        f.finish()?;
        Ok(b)
    }
}

/// `POST /v1/shutdown`: whether to destroy the other domains first. An
/// empty body is `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownBody {
    pub force: bool,
}

impl ShutdownBody {
    /// Reads a body (empty, or an object; unknown fields are refused).
    pub fn parse(body: &[u8]) -> Result<ShutdownBody, JsonError> {
        if body.iter().all(|c| c.is_ascii_whitespace()) {
            return Ok(ShutdownBody::default());
        }
        let mut f = Fields(parse_object(body)?);
        let b = ShutdownBody { force: f.bool("force")?.unwrap_or(false) };
        f.finish()?;
        Ok(b)
    }
}

/// `POST /v1/domains/DOM/console`: bytes for the domain's console input
/// (what a line typed while attached would send, its line end included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleBody {
    pub input: String,
}

impl ConsoleBody {
    /// Reads a body (unknown fields are refused).
    pub fn parse(body: &[u8]) -> Result<ConsoleBody, JsonError> {
        let mut f = Fields(parse_object(body)?);
        let b = ConsoleBody { input: f.str("input")?.ok_or(JsonError::Missing("input"))? };
        f.finish()?;
        Ok(b)
    }
}

/// `s` as a JSON string: quotes, backslashes and control characters
/// escaped.
pub fn json_str(s: &str) -> String {
    use fmt::Write as _;
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    #[test]
    fn flat_objects_are_read_with_their_escapes() {
        let got = parse_object(br#" { "a" : "x\"y\\z\u00e9\ud83d\ude00\n" , "n":0, "t":true, "f":false, "z":null } "#)
            .unwrap();
        assert_eq!(
            got,
            vec![
                ("a".into(), s("x\"y\\z\u{e9}\u{1f600}\n")),
                ("n".into(), Value::Num(0)),
                ("t".into(), Value::Bool(true)),
                ("f".into(), Value::Bool(false)),
                ("z".into(), Value::Null),
            ]
        );
        assert_eq!(parse_object(b"{}").unwrap(), vec![]);
        assert_eq!(parse_object("{\"é\":\"ü\"}".as_bytes()).unwrap(), vec![("é".into(), s("ü"))]);
    }

    #[test]
    fn what_is_not_a_flat_object_is_refused_saying_where() {
        for (body, what) in [
            (&b""[..], "expected an object"),
            (b"[]", "expected an object"),
            (b"{\"a\":{}}", "no nested objects or arrays are taken"),
            (b"{\"a\":[1]}", "no nested objects or arrays are taken"),
            (b"{\"a\":-1}", "only non-negative numbers are taken"),
            (b"{\"a\":1.5}", "only whole numbers are taken"),
            (b"{\"a\":1e3}", "only whole numbers are taken"),
            (b"{\"a\":01}", "a number with a leading zero"),
            (b"{\"a\":99999999999999999999}", "a number too large"),
            (b"{\"a\":\"x", "a string is not closed"),
            (b"{\"a\":\"\\q\"}", "an unknown escape"),
            (b"{\"a\":\"\\ud800\"}", "a lone surrogate"),
            (b"{\"a\":\"\\udc00\"}", "a lone surrogate"),
            (b"{\"a\":\"\\u12\"}", "a \\u escape needs 4 hex digits"),
            (b"{\"a\":\"\x01\"}", "a control character in a string"),
            (b"{\"a\":\"\xff\"}", "not UTF-8"),
            (b"{\"a\":1,}", "expected a string"),
            (b"{\"a\":1} x", "something follows the object"),
            (b"{\"a\" 1}", "expected ':'"),
            (b"{\"a\":tru}", "expected a value"),
        ] {
            match parse_object(body) {
                Err(JsonError::Syntax { what: w, .. }) => assert_eq!(w, what, "{:?}", core::str::from_utf8(body)),
                other => panic!("{:?}: {other:?}", core::str::from_utf8(body)),
            }
        }
        assert_eq!(parse_object(b"{\"a\":1,\"a\":2}"), Err(JsonError::Duplicate("a".into())));
        assert_eq!(parse_object(&[b' '; MAX_BODY + 1]), Err(JsonError::TooLong));
        let many: String = (0..=MAX_MEMBERS).map(|i| alloc::format!("\"k{i}\":1")).collect::<Vec<_>>().join(",");
        assert!(matches!(parse_object(alloc::format!("{{{many}}}").as_bytes()), Err(JsonError::Syntax { .. })));
        let long = alloc::format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_STRING + 1));
        assert!(matches!(parse_object(long.as_bytes()), Err(JsonError::Syntax { what: "a string is too long", .. })));
    }

    #[test]
    fn requests_take_their_fields_and_refuse_others() {
        let b =
            CreateBody::parse(br#"{"template":"hog","name":"busy","mem_kib":1024,"paused":true,"cmdline":"a=1 b"}"#)
                .unwrap();
        assert_eq!(b.name.as_deref(), Some("busy"));
        assert!(b.paused && b.cmdline.as_deref() == Some("a=1 b") && b.weight.is_none());
        assert_eq!(CreateBody::parse(b"{}"), Err(JsonError::Missing("template")));
        assert_eq!(
            CreateBody::parse(br#"{"template":"hog","mem_kib":"abc"}"#),
            Err(JsonError::Type { field: "mem_kib", want: "a number" })
        );
        assert_eq!(
            CreateBody::parse(br#"{"template":"hog","mem_kib":4294967296}"#),
            Err(JsonError::Type { field: "mem_kib", want: "a number below 2^32" })
        );
        assert_eq!(CreateBody::parse(br#"{"template":"hog","bogus":1}"#), Err(JsonError::UnknownField("bogus".into())));
        assert_eq!(SchedBody::parse(br#"{"weight":200}"#), Ok(SchedBody { weight: 200, warp_us: None }));
        assert_eq!(SchedBody::parse(br#"{"warp_us":5}"#), Err(JsonError::Missing("weight")));
        assert_eq!(ShutdownBody::parse(b" "), Ok(ShutdownBody { force: false }));
        assert_eq!(ShutdownBody::parse(br#"{"force":true}"#), Ok(ShutdownBody { force: true }));
        assert_eq!(
            ShutdownBody::parse(br#"{"force":1}"#),
            Err(JsonError::Type { field: "force", want: "true or false" })
        );
        assert_eq!(JsonError::UnknownField("x".into()).to_string(), "unknown field 'x'");
        assert_eq!(ConsoleBody::parse(br#"{"input":"ls\n"}"#), Ok(ConsoleBody { input: "ls\n".into() }));
        assert_eq!(ConsoleBody::parse(b"{}"), Err(JsonError::Missing("input")));
        assert_eq!(ConsoleBody::parse(br#"{"input":7}"#), Err(JsonError::Type { field: "input", want: "a string" }));
    }

    #[test]
    fn strings_are_escaped_for_replies() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\u000ad\\u0001é\"");
    }

    proptest! {
        /// Arbitrary bytes never panic the reader, and what it accepts
        /// it reads back the same once written out again.
        #[test]
        fn arbitrary_bodies_are_read_or_refused(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(members) = parse_object(&body) {
                let again: Vec<String> = members.iter().map(|(k, v)| {
                    let v = match v {
                        Value::Str(s) => json_str(s),
                        Value::Num(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".into(),
                    };
                    alloc::format!("{}:{v}", json_str(k))
                }).collect();
                let text = alloc::format!("{{{}}}", again.join(","));
                prop_assert_eq!(parse_object(text.as_bytes()).unwrap(), members);
            }
        }

        /// Objects built from arbitrary strings and numbers are read back.
        #[test]
        fn written_objects_are_read_back(k in "[a-z]{1,8}", v in any::<String>(), n in any::<u32>()) {
            let text = alloc::format!("{{{}:{},\"n\":{n}}}", json_str(&k), json_str(&v));
            let got = parse_object(text.as_bytes());
            if k == "n" {
                prop_assert_eq!(got, Err(JsonError::Duplicate("n".into())));
            } else if v.len() <= MAX_STRING {
                prop_assert_eq!(got.unwrap(), vec![(k, Value::Str(v)), ("n".into(), Value::Num(u64::from(n)))]);
            }
        }
    }
}
