//! Output for people: aligned tables, sizes, rates and ages in short human
//! units; and for scripts: the API's JSON as it came.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::error::CliResult;

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Rows under headers, columns padded to their widest cell.
#[derive(Debug)]
pub(crate) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra ones are dropped.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the table, or `empty` alone when it has no rows.
    pub(crate) fn write(&self, out: &mut dyn Write, empty: &str) -> CliResult<()> {
        if self.rows.is_empty() {
            writeln!(out, "{empty}")?;
            return Ok(());
        }
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .map(|(title, _)| title.chars().count())
            .collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let titles: Vec<String> = self
            .columns
            .iter()
            .map(|(title, _)| (*title).to_owned())
            .collect();
        for row in std::iter::once(&titles).chain(&self.rows) {
            let mut line = String::new();
            for (index, ((_, align), width)) in self.columns.iter().zip(&widths).enumerate() {
                let cell = row.get(index).map_or("", String::as_str);
                let pad = width.saturating_sub(cell.chars().count());
                if index > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// `name  value` lines with the names aligned.
pub(crate) fn write_fields(out: &mut dyn Write, fields: &[(&str, String)]) -> CliResult<()> {
    let width = fields
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    for (name, value) in fields {
        writeln!(out, "{name:<width$}  {value}")?;
    }
    Ok(())
}

/// The JSON, indented, on its own line.
pub(crate) fn write_json(out: &mut dyn Write, value: &Value) -> CliResult<()> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    writeln!(out, "{text}")?;
    Ok(())
}

/// A JSON scalar as a table cell: strings bare, `null` as `-`.
pub(crate) fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        other => other.to_string(),
    }
}

/// A byte count in binary units: `512 B`, `4.0 KiB`, `1.5 GiB`.
pub(crate) fn bytes(value: &Value) -> String {
    let Some(count) = value.as_f64() else {
        return cell(value);
    };
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut size = count;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    let name = UNITS.get(unit).copied().unwrap_or("B");
    if unit == 0 {
        format!("{count} {name}")
    } else {
        format!("{size:.1} {name}")
    }
}

/// A per-second rate with one decimal.
pub(crate) fn rate(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| cell(value), |rate| format!("{rate:.1}"))
}

/// A duration in its two largest units: `45s`, `3m 12s`, `2h 5m`, `4d 1h`.
pub(crate) fn duration(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else if seconds >= 10 {
        format!("{secs}s")
    } else {
        format!("{:.1}s", elapsed.as_secs_f64())
    }
}

/// A count with a noun made plural when it is not one: `1 topic`, `3 topics`.
pub(crate) fn count(value: &Value, noun: &str) -> String {
    let number = value.as_u64().unwrap_or(0);
    if number == 1 {
        format!("1 {noun}")
    } else {
        format!("{number} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(table: &Table) -> String {
        let mut out = Vec::new();
        let _ = table.write(&mut out, "(none)");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let mut table = Table::new(&[("NAME", Align::Left), ("RECORDS", Align::Right)]);
        table.row(vec!["orders".into(), "42".into()]);
        table.row(vec!["a".into(), "1234567".into()]);
        assert_eq!(
            render(&table),
            "NAME    RECORDS\norders       42\na       1234567\n"
        );
        let mut last_left = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        last_left.row(vec!["x".into(), "y".into()]);
        last_left.row(vec!["xyz".into()]);
        assert_eq!(render(&last_left), "A    B\nx    y\nxyz\n");
    }

    #[test]
    fn empty_tables_print_their_message() {
        let table = Table::new(&[("NAME", Align::Left)]);
        assert_eq!(render(&table), "(none)\n");
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(&json!(512)), "512 B");
        assert_eq!(bytes(&json!(4096)), "4.0 KiB");
        assert_eq!(bytes(&json!(1_610_612_736u64)), "1.5 GiB");
        assert_eq!(bytes(&Value::Null), "-");
        assert_eq!(rate(&json!(2.26)), "2.3");
        assert_eq!(duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(duration(Duration::from_secs(192)), "3m 12s");
        assert_eq!(duration(Duration::from_secs(90_000)), "1d 1h");
        assert_eq!(count(&json!(1), "topic"), "1 topic");
        assert_eq!(count(&json!(3), "topic"), "3 topics");
        assert_eq!(cell(&json!(true)), "yes");
        assert_eq!(cell(&json!("x")), "x");
    }
}
