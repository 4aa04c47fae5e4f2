//! The results table (Markdown, so it pastes into docs/reliability.md).

use std::fmt::Write;

use crate::harness::{RECOVERY_LIMIT, RSS_LIMIT_MIB, Stats};

pub fn table(results: &[Stats]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| Exp | Fault | Accepted | Delivered | Dead-lettered | Other terminal | Lost | Duplicates (allowed) | Worst recovery | Exits | Peak RSS (MiB, role) | Bar |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|");
    for s in results {
        let worst = s
            .faults
            .iter()
            .map(|f| f.recovery.map_or(f64::INFINITY, |d| d.as_secs_f64()))
            .fold(0.0, f64::max);
        let worst = if worst.is_infinite() {
            "none".to_owned()
        } else {
            format!("{worst:.1} s")
        };
        let (role, rss) = s
            .peak_rss_mib
            .iter()
            .max_by_key(|(_, m)| **m)
            .map_or(("-", 0), |(r, m)| (r.as_str(), *m));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {rss} ({role}) | {} |",
            s.name,
            s.what,
            s.accepted,
            s.delivered,
            s.dead_lettered,
            s.other_terminal,
            s.lost.len(),
            s.duplicates,
            s.allowed_duplicates,
            worst,
            s.exits.len(),
            if s.failures.is_empty() {
                "pass"
            } else {
                "**FAIL**"
            },
        );
    }
    let _ = writeln!(
        out,
        "\nBar: 0 lost; duplicates at most {} per sender crash (0 without); no accepted notification dead-lettered; no process exits; every fault recovered within {} s; drained; peak RSS under {RSS_LIMIT_MIB} MiB per process (G: the gateway under {} MiB); every poison record dead-lettered.",
        crate::provider::MAX_IN_FLIGHT,
        RECOVERY_LIMIT.as_secs(),
        crate::hostile::GATEWAY_RSS_LIMIT_MIB,
    );
    for s in results {
        let _ = writeln!(out, "\n{} ({}):", s.name, s.what);
        for f in &s.faults {
            let _ = writeln!(
                out,
                "- {}: {}",
                f.what,
                f.recovery.map_or("not recovered".to_owned(), |d| format!(
                    "recovered in {:.1} s",
                    d.as_secs_f64()
                ))
            );
        }
        let _ = writeln!(
            out,
            "- drained {}",
            s.drained.map_or("no".to_owned(), |d| format!(
                "in {:.1} s after the load stopped",
                d.as_secs_f64()
            ))
        );
        if !s.refused.is_empty() {
            let _ = writeln!(out, "- calls not acknowledged: {:?}", s.refused);
        }
        if s.unacked_delivered > 0 {
            let _ = writeln!(
                out,
                "- delivered without an acknowledgement: {}",
                s.unacked_delivered
            );
        }
        if let Some((n, handled)) = s.poison {
            let _ = writeln!(
                out,
                "- poison records: {n}, dead-lettered or ended: {handled}"
            );
        }
        let rss: Vec<String> = s
            .peak_rss_mib
            .iter()
            .map(|(r, m)| format!("{r} {m}"))
            .collect();
        let _ = writeln!(out, "- peak RSS MiB: {}", rss.join(", "));
        for (role, limit) in &s.rss_limits {
            let _ = writeln!(
                out,
                "- peak RSS bound in this experiment: {role} under {limit} MiB (every other process under {RSS_LIMIT_MIB} MiB)"
            );
        }
        for n in &s.notes {
            let _ = writeln!(out, "- {n}");
        }
        for f in &s.failures {
            let _ = writeln!(out, "- FAIL: {f}");
        }
    }
    out
}
