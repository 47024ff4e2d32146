//! `detingestd check` and `detingestd repair`: find and mend files whose bitshuffle datasets
//! record a filter plugin's three extra values (docs/FILES.md, "Files written with wrong filter
//! values").

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use detingest_writer::{check_filters, repair_filters, FilterVerdict};

/// Prints each filtered dataset of each file with its verdict; exit 0 when every one is
/// right, 1 when some file needs `repair` (or cannot be decoded), 2 when a file cannot be read.
pub(crate) fn check(files: &[PathBuf]) -> Result<ExitCode> {
    let (mut affected, mut unreadable) = (0, 0);
    for file in files {
        let checks = match check_filters(file) {
            Ok(c) => c,
            Err(e) => {
                println!("{}: cannot read: {e}", file.display());
                unreadable += 1;
                continue;
            }
        };
        let mut bad = false;
        for c in &checks {
            let verdict = match &c.verdict {
                FilterVerdict::Right => "ok".to_owned(),
                FilterVerdict::Prepended { fixed } => {
                    format!("AFFECTED: readers misdecode it; `repair` records {fixed:?}")
                }
                _ => "WRONG: no reader can decode it, and repair cannot fix it".to_owned(),
            };
            bad |= c.verdict != FilterVerdict::Right;
            println!(
                "{}:{} filter {} {:?}: {verdict}",
                file.display(),
                c.dataset,
                c.filter,
                c.values
            );
        }
        if checks.is_empty() {
            println!("{}: no filtered datasets", file.display());
        }
        affected += usize::from(bad);
    }
    Ok(match (unreadable, affected) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(1),
        _ => ExitCode::from(2),
    })
}

/// Repairs each file in place (or leaves it alone when it needs nothing); stops at the
/// first file that cannot be repaired safely.
pub(crate) fn repair(files: &[PathBuf]) -> Result<ExitCode> {
    for file in files {
        let done = repair_filters(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        if done.datasets.is_empty() {
            println!("{}: nothing to repair", file.display());
        } else {
            println!(
                "{}: repaired {} ({} chunks copied unchanged)",
                file.display(),
                done.datasets.join(", "),
                done.chunks
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
