//! `orchard db repair`: offline, on the database file (the daemon must be stopped).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::db::repair::{self, Outcome};

/// Runs the repair and prints what it did; the error is the one line to print.
pub fn repair(path: &Path) -> Result<(), String> {
    let out = match repair::repair(path)? {
        Outcome::Healthy => format!(
            "database {} passed the check (every page and every row read back): nothing to repair\n",
            path.display()
        ),
        Outcome::Recovered => format!(
            "database {} had not been shut down cleanly; it was recovered and every row reads back\n",
            path.display()
        ),
        Outcome::Repaired(s) => {
            let mut out = String::new();
            let _ = writeln!(out, "database {} was damaged: {}", path.display(), s.damage);
            let _ = writeln!(out, "copy of the damaged file: {}", s.copy.display());
            let _ = writeln!(
                out,
                "{:<16} {:>9} {:>9} {:>9}",
                "table", "recorded", "kept", "lost"
            );
            for t in &s.tables {
                let (recorded, lost) = match t.recorded {
                    Some(n) => (n.to_string(), n.saturating_sub(t.kept).to_string()),
                    None => ("?".to_owned(), "?".to_owned()),
                };
                let _ = writeln!(
                    out,
                    "{:<16} {recorded:>9} {:>9} {lost:>9}{}",
                    t.name,
                    t.kept,
                    if t.complete {
                        ""
                    } else {
                        "  (damaged pages: not read to the end)"
                    }
                );
            }
            // The username index is rebuilt from the users, not checked row by row.
            let invalid: u64 = s
                .tables
                .iter()
                .filter(|t| t.name != "usernames")
                .map(|t| t.read.saturating_sub(t.kept))
                .sum();
            if invalid > 0 {
                let _ = writeln!(
                    out,
                    "{invalid} rows read back but failed their checks (undecodable, or naming a lost user) and were left out"
                );
            }
            let _ = writeln!(
                out,
                "users kept ({}): {}",
                s.users_kept.len(),
                s.users_kept.join(", ")
            );
            let _ = write!(
                out,
                "users lost ({}): {}",
                s.users_lost.len() as u64 + s.users_lost_unnamed,
                s.users_lost.join(", ")
            );
            if s.users_lost_unnamed > 0 {
                let _ = write!(
                    out,
                    "{}{} more whose names were lost too",
                    if s.users_lost.is_empty() {
                        ""
                    } else {
                        ", and "
                    },
                    s.users_lost_unnamed
                );
            }
            out.push('\n');
            if !s.permissions_lost.is_empty() {
                let _ = writeln!(
                    out,
                    "permissions lost (these users now have none): {}",
                    s.permissions_lost.join(", ")
                );
            }
            for note in &s.notes {
                let _ = writeln!(out, "note: {note}");
            }
            let _ = writeln!(
                out,
                "repaired: {} now holds the rows kept and passes the start-up check",
                path.display()
            );
            out
        }
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("cannot write to standard output: {e}"))
}
