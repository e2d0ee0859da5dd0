//! Headers-exchange matching: whether a message's headers satisfy a binding's
//! arguments, with RabbitMQ's semantics (`rabbit_exchange_type_headers`).
//!
//! The `x-match` argument picks the mode and is never matched itself. Other
//! arguments whose key starts with `x-` are ignored unless the mode is
//! `all-with-x` or `any-with-x`. An argument whose value is void matches when
//! the header is present, whatever its value. `all` needs every remaining
//! argument to match, so a binding with none matches every message; `any`
//! needs one, so a binding with none matches nothing.
//!
//! Values are compared as RabbitMQ 3.13 and later compare them: the headers
//! are reduced to plain Erlang terms and checked with `=:=`, so the AMQP type
//! tag is lost at the top level. Hence:
//! - integers of any width, signedness and timestamps are equal when their
//!   numbers are (a long-int 1 equals a short-short-uint 1);
//! - float and double are equal when their values are (the float widened);
//! - an integer never equals a float or double (`1 =:= 1.0` is false, though
//!   RabbitMQ before 3.13 compared with `==`, where it is true);
//! - long strings, short strings and byte arrays are equal when their bytes are;
//! - booleans, decimals, arrays and tables compare exactly, type tags of
//!   nested values included, as Erlang keeps them inside containers.
//!
//! One deliberate difference: RabbitMQ 3.13+ scales a timestamp header to
//! milliseconds before comparing it with the binding's unscaled seconds, so a
//! timestamp argument never matches the same timestamp header. Sluice
//! compares the seconds, as RabbitMQ did before.

use amq_protocol::types::{AMQPValue, FieldTable};

/// How a headers binding's arguments match (the `x-match` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

const X_MATCH: &str = "x-match";

/// Reads `x-match` from binding arguments; absent means [`XMatch::All`].
///
/// An error is RabbitMQ's reply text for the refused `queue.bind` or
/// `exchange.bind` (it follows `PRECONDITION_FAILED - `), the value printed
/// as Erlang prints it, e.g. `Invalid x-match field value <<"foo">>; expected
/// all, any, all-with-x, or any-with-x`; clients that compare reply texts see
/// the same words.
///
/// # Errors
///
/// When `x-match` is not a string, or is a string other than the four modes.
pub(crate) fn x_match(arguments: &FieldTable) -> Result<XMatch, String> {
    let text = match arguments.inner().get(X_MATCH) {
        None => return Ok(XMatch::All),
        Some(AMQPValue::LongString(text)) => text.as_bytes(),
        // A shortstr cannot arrive in a field table from the wire; accepting
        // one only spares Sluice's own callers a conversion.
        Some(AMQPValue::ShortString(text)) => text.as_str().as_bytes(),
        Some(other) => {
            return Err(format!(
                "Invalid x-match field type {} (value {}); expected longstr",
                erlang_type_name(other),
                erlang_term(other)
            ));
        }
    };
    match text {
        b"all" => Ok(XMatch::All),
        b"any" => Ok(XMatch::Any),
        b"all-with-x" => Ok(XMatch::AllWithX),
        b"any-with-x" => Ok(XMatch::AnyWithX),
        _ => Err(format!(
            "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
            erlang_binary(text)
        )),
    }
}

/// Whether a message with `headers` matches a binding with `arguments`.
///
/// An invalid `x-match` counts as `all`, as in RabbitMQ; bindings are meant
/// to be checked with [`x_match`] when made.
pub(crate) fn headers_match(arguments: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = x_match(arguments).unwrap_or(XMatch::All);
    let include_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
    let mut considered = arguments.inner().iter().filter(|(key, _)| {
        let key = key.as_str();
        key != X_MATCH && (include_x || !key.starts_with("x-"))
    });
    let argument_matches = |(key, expected): (_, &AMQPValue)| {
        let actual = headers.and_then(|headers| headers.inner().get(key));
        match (expected, actual) {
            (_, None) => false,
            (AMQPValue::Void, Some(_)) => true,
            (expected, Some(actual)) => values_equal(expected, actual),
        }
    };
    match mode {
        XMatch::All | XMatch::AllWithX => considered.all(argument_matches),
        XMatch::Any | XMatch::AnyWithX => considered.any(argument_matches),
    }
}

/// Equality of a binding argument and a header value; see the module docs.
fn values_equal(expected: &AMQPValue, actual: &AMQPValue) -> bool {
    if let (Some(expected), Some(actual)) = (as_integer(expected), as_integer(actual)) {
        return expected == actual;
    }
    if let (Some(expected), Some(actual)) = (as_float(expected), as_float(actual)) {
        return expected == actual;
    }
    if let (Some(expected), Some(actual)) = (as_bytes(expected), as_bytes(actual)) {
        return expected == actual;
    }
    expected == actual
}

fn as_integer(value: &AMQPValue) -> Option<i128> {
    match *value {
        AMQPValue::ShortShortInt(number) => Some(number.into()),
        AMQPValue::ShortShortUInt(number) => Some(number.into()),
        AMQPValue::ShortInt(number) => Some(number.into()),
        AMQPValue::ShortUInt(number) => Some(number.into()),
        AMQPValue::LongInt(number) => Some(number.into()),
        AMQPValue::LongUInt(number) => Some(number.into()),
        AMQPValue::LongLongInt(number) => Some(number.into()),
        AMQPValue::Timestamp(number) => Some(number.into()),
        _ => None,
    }
}

fn as_float(value: &AMQPValue) -> Option<f64> {
    match *value {
        AMQPValue::Float(number) => Some(number.into()),
        AMQPValue::Double(number) => Some(number),
        _ => None,
    }
}

fn as_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::ShortString(text) => Some(text.as_str().as_bytes()),
        AMQPValue::LongString(text) => Some(text.as_bytes()),
        AMQPValue::ByteArray(bytes) => Some(bytes.as_slice()),
        _ => None,
    }
}

/// The type names of RabbitMQ's field-table decoder (`rabbit_binary_parser`).
fn erlang_type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// A scalar as Erlang's `~tp` prints it; containers are abbreviated.
fn erlang_term(value: &AMQPValue) -> String {
    match value {
        AMQPValue::Boolean(flag) => flag.to_string(),
        AMQPValue::ShortShortInt(number) => number.to_string(),
        AMQPValue::ShortShortUInt(number) => number.to_string(),
        AMQPValue::ShortInt(number) => number.to_string(),
        AMQPValue::ShortUInt(number) => number.to_string(),
        AMQPValue::LongInt(number) => number.to_string(),
        AMQPValue::LongUInt(number) => number.to_string(),
        AMQPValue::LongLongInt(number) => number.to_string(),
        AMQPValue::Timestamp(number) => number.to_string(),
        // `{:?}` keeps the fraction of whole numbers (`1.0`), as Erlang does.
        AMQPValue::Float(number) => format!("{:?}", f64::from(*number)),
        AMQPValue::Double(number) => format!("{number:?}"),
        AMQPValue::DecimalValue(decimal) => format!("{{{},{}}}", decimal.scale, decimal.value),
        AMQPValue::ShortString(text) => erlang_binary(text.as_str().as_bytes()),
        AMQPValue::LongString(text) => erlang_binary(text.as_bytes()),
        AMQPValue::ByteArray(bytes) => erlang_binary(bytes.as_slice()),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => "[...]".to_owned(),
        AMQPValue::Void => "undefined".to_owned(),
    }
}

/// A binary as Erlang's `~tp` prints it: `<<"text">>` when printable UTF-8,
/// else `<<1,2,3>>`.
fn erlang_binary(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => {
            let mut printed = String::with_capacity(text.len() + 6);
            printed.push_str("<<\"");
            for character in text.chars() {
                if matches!(character, '"' | '\\') {
                    printed.push('\\');
                }
                printed.push(character);
            }
            printed.push_str("\">>");
            printed
        }
        _ => {
            let numbers: Vec<String> = bytes.iter().map(u8::to_string).collect();
            format!("<<{}>>", numbers.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::{DecimalValue, FieldArray, LongString};

    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in entries {
            table.insert((*key).into(), value.clone());
        }
        table
    }

    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

    fn mode(value: &str) -> (&'static str, AMQPValue) {
        (X_MATCH, text(value))
    }

    #[test]
    fn x_match_defaults_to_all_and_reads_the_four_modes() {
        assert_eq!(x_match(&table(&[])), Ok(XMatch::All));
        assert_eq!(x_match(&table(&[mode("all")])), Ok(XMatch::All));
        assert_eq!(x_match(&table(&[mode("any")])), Ok(XMatch::Any));
        assert_eq!(x_match(&table(&[mode("all-with-x")])), Ok(XMatch::AllWithX));
        assert_eq!(x_match(&table(&[mode("any-with-x")])), Ok(XMatch::AnyWithX));
        let short = table(&[(X_MATCH, AMQPValue::ShortString("any".into()))]);
        assert_eq!(x_match(&short), Ok(XMatch::Any));
    }

    #[test]
    fn x_match_refuses_other_values_in_rabbitmq_words() {
        assert_eq!(
            x_match(&table(&[mode("foo")])),
            Err("Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x".to_owned())
        );
        assert_eq!(
            x_match(&table(&[mode("ALL")])),
            Err("Invalid x-match field value <<\"ALL\">>; expected all, any, all-with-x, or any-with-x".to_owned())
        );
        let bytes = table(&[(
            X_MATCH,
            AMQPValue::LongString(LongString::from(vec![0u8, 200])),
        )]);
        assert_eq!(
            x_match(&bytes),
            Err("Invalid x-match field value <<0,200>>; expected all, any, all-with-x, or any-with-x".to_owned())
        );
        assert_eq!(
            x_match(&table(&[(X_MATCH, AMQPValue::ShortShortInt(1))])),
            Err("Invalid x-match field type byte (value 1); expected longstr".to_owned())
        );
        assert_eq!(
            x_match(&table(&[(X_MATCH, AMQPValue::Boolean(true))])),
            Err("Invalid x-match field type bool (value true); expected longstr".to_owned())
        );
        assert_eq!(
            x_match(&table(&[(X_MATCH, AMQPValue::Void)])),
            Err("Invalid x-match field type void (value undefined); expected longstr".to_owned())
        );
    }

    #[test]
    fn headers_match_like_rabbitmq() {
        use AMQPValue::{
            Boolean, ByteArray, Double, FieldTable as Table, Float, LongInt, LongLongInt, LongUInt,
            ShortInt, ShortShortInt, ShortShortUInt, Timestamp, Void,
        };
        let array = |values: Vec<AMQPValue>| AMQPValue::FieldArray(FieldArray::from(values));
        let decimal = |scale, value| AMQPValue::DecimalValue(DecimalValue { scale, value });
        // (what it shows, binding arguments, message headers or None, expected)
        #[rustfmt::skip]
        let cases: Vec<(&str, FieldTable, Option<FieldTable>, bool)> = vec![
            ("all with no arguments matches anything", table(&[]), None, true),
            ("explicit all with no arguments", table(&[mode("all")]), Some(table(&[("a", LongInt(1))])), true),
            ("any with no arguments matches nothing", table(&[mode("any")]), Some(table(&[("a", LongInt(1))])), false),
            ("any-with-x with no arguments", table(&[mode("any-with-x")]), Some(table(&[])), false),
            ("all-with-x with no arguments", table(&[mode("all-with-x")]), None, true),
            ("all: one equal header", table(&[("a", text("x"))]), Some(table(&[("a", text("x"))])), true),
            ("all: unequal value", table(&[("a", text("x"))]), Some(table(&[("a", text("y"))])), false),
            ("all: missing header", table(&[("a", text("x"))]), Some(table(&[("b", text("x"))])), false),
            ("all: no headers at all", table(&[("a", text("x"))]), None, false),
            ("all: extra headers are fine", table(&[("a", LongInt(1))]), Some(table(&[("a", LongInt(1)), ("b", LongInt(2))])), true),
            ("all: one of two missing", table(&[("a", LongInt(1)), ("b", LongInt(2))]), Some(table(&[("a", LongInt(1))])), false),
            ("all: both present", table(&[mode("all"), ("a", LongInt(1)), ("b", LongInt(2))]), Some(table(&[("b", LongInt(2)), ("a", LongInt(1))])), true),
            ("any: one of two present", table(&[mode("any"), ("a", LongInt(1)), ("b", LongInt(2))]), Some(table(&[("a", LongInt(1))])), true),
            ("any: one of two equal", table(&[mode("any"), ("a", LongInt(1)), ("b", LongInt(2))]), Some(table(&[("a", LongInt(9)), ("b", LongInt(2))])), true),
            ("any: none equal", table(&[mode("any"), ("a", LongInt(1)), ("b", LongInt(2))]), Some(table(&[("a", LongInt(2)), ("b", LongInt(1))])), false),
            ("any: no headers at all", table(&[mode("any"), ("a", LongInt(1))]), None, false),
            ("void argument: header present", table(&[("a", Void)]), Some(table(&[("a", text("anything"))])), true),
            ("void argument: void header present", table(&[("a", Void)]), Some(table(&[("a", Void)])), true),
            ("void argument: header absent", table(&[("a", Void)]), Some(table(&[("b", LongInt(1))])), false),
            ("void argument under any", table(&[mode("any"), ("a", Void), ("b", LongInt(1))]), Some(table(&[("a", LongInt(7))])), true),
            ("void header never equals a value", table(&[("a", LongInt(1))]), Some(table(&[("a", Void)])), false),
            ("all ignores x- arguments", table(&[mode("all"), ("x-foo", LongInt(1)), ("a", LongInt(1))]), Some(table(&[("a", LongInt(1))])), true),
            ("all with only x- arguments matches anything", table(&[("x-foo", LongInt(1))]), None, true),
            ("any ignores x- arguments even when the header is there", table(&[mode("any"), ("x-foo", LongInt(1))]), Some(table(&[("x-foo", LongInt(1))])), false),
            ("all-with-x needs the x- header", table(&[mode("all-with-x"), ("x-foo", LongInt(1))]), Some(table(&[])), false),
            ("all-with-x with the x- header", table(&[mode("all-with-x"), ("x-foo", LongInt(1)), ("a", LongInt(2))]), Some(table(&[("x-foo", LongInt(1)), ("a", LongInt(2))])), true),
            ("all-with-x never matches x-match itself", table(&[mode("all-with-x"), ("a", LongInt(2))]), Some(table(&[("a", LongInt(2))])), true),
            ("any-with-x on an x- header", table(&[mode("any-with-x"), ("x-foo", LongInt(1)), ("a", LongInt(2))]), Some(table(&[("x-foo", LongInt(1))])), true),
            ("any-with-x never matches x-match itself", table(&[mode("any-with-x")]), Some(table(&[mode("any-with-x")])), false),
            ("invalid x-match counts as all", table(&[mode("foo"), ("a", LongInt(1))]), Some(table(&[("a", LongInt(1))])), true),
            ("invalid x-match counts as all, not any", table(&[mode("foo"), ("a", LongInt(1)), ("b", LongInt(1))]), Some(table(&[("a", LongInt(1))])), false),
            ("integers of different widths", table(&[("a", LongInt(1))]), Some(table(&[("a", LongLongInt(1))])), true),
            ("signed and unsigned bytes", table(&[("a", ShortShortUInt(200))]), Some(table(&[("a", ShortInt(200))])), true),
            ("negative is not the unsigned bit pattern", table(&[("a", ShortShortInt(-1))]), Some(table(&[("a", ShortShortUInt(255))])), false),
            ("largest unsigned int", table(&[("a", LongUInt(u32::MAX))]), Some(table(&[("a", LongLongInt(4_294_967_295))])), true),
            ("timestamp equals the same number", table(&[("a", Timestamp(5))]), Some(table(&[("a", LongLongInt(5))])), true),
            ("timestamp equals itself", table(&[("a", Timestamp(1_700_000_000))]), Some(table(&[("a", Timestamp(1_700_000_000))])), true),
            ("different numbers", table(&[("a", LongInt(1))]), Some(table(&[("a", LongInt(2))])), false),
            ("integer never equals a double", table(&[("a", LongInt(1))]), Some(table(&[("a", Double(1.0))])), false),
            ("float equals the same double", table(&[("a", Float(1.5))]), Some(table(&[("a", Double(1.5))])), true),
            ("float widened is not the nearest double", table(&[("a", Float(0.1))]), Some(table(&[("a", Double(0.1))])), false),
            ("long string equals byte array", table(&[("a", text("data"))]), Some(table(&[("a", ByteArray(b"data".to_vec().into()))])), true),
            ("strings compare case-sensitively", table(&[("a", text("data"))]), Some(table(&[("a", text("Data"))])), false),
            ("integer never equals a string", table(&[("a", LongInt(1))]), Some(table(&[("a", text("1"))])), false),
            ("booleans", table(&[("a", Boolean(true))]), Some(table(&[("a", Boolean(true))])), true),
            ("boolean never equals an integer", table(&[("a", Boolean(true))]), Some(table(&[("a", ShortShortUInt(1))])), false),
            ("decimals", table(&[("a", decimal(2, 314))]), Some(table(&[("a", decimal(2, 314))])), true),
            ("decimals with another scale", table(&[("a", decimal(2, 314))]), Some(table(&[("a", decimal(1, 314))])), false),
            ("equal arrays", table(&[("a", array(vec![LongInt(1), text("x")]))]), Some(table(&[("a", array(vec![LongInt(1), text("x")]))])), true),
            ("nested values keep their types", table(&[("a", array(vec![LongInt(1)]))]), Some(table(&[("a", array(vec![LongLongInt(1)]))])), false),
            ("equal tables", table(&[("a", Table(table(&[("b", LongInt(1))])))]), Some(table(&[("a", Table(table(&[("b", LongInt(1))])))])), true),
            ("header keys are case-sensitive", table(&[("a", LongInt(1))]), Some(table(&[("A", LongInt(1))])), false),
        ];
        for (what, arguments, headers, expected) in cases {
            assert_eq!(
                headers_match(&arguments, headers.as_ref()),
                expected,
                "{what}"
            );
        }
    }
}
