//! A line-based unified diff, enough for `apply` to show what it will change in a settings
//! file of a few dozen lines (a longest-common-subsequence table, quadratic in lines; the
//! files `apply` writes are small and bounded by `LINES_MAX`).

/// Above this many lines on either side the diff replaces the whole file rather than
/// building an `n × m` table.
const LINES_MAX: usize = 2_000;
/// Unchanged lines shown around each change.
const CONTEXT_LINES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op<'a> {
    Same(&'a str),
    Del(&'a str),
    Add(&'a str),
}

fn ops<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Op<'a>> {
    if old.len() > LINES_MAX || new.len() > LINES_MAX {
        let dels = old.iter().map(|l| Op::Del(l));
        return dels.chain(new.iter().map(|l| Op::Add(l))).collect();
    }
    // lcs[i][j]: the longest common subsequence of old[i..] and new[j..].
    let mut lcs = vec![vec![0u32; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            out.push(Op::Same(old[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < old.len() && (j == new.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Deletions first: `-old` then `+new`, as diff(1) prints a changed line.
            out.push(Op::Del(old[i]));
            i += 1;
        } else {
            out.push(Op::Add(new[j]));
            j += 1;
        }
    }
    out
}

/// The unified diff of `old` (None: the file does not exist) to `new`, labelled `path`;
/// `None` when they are the same.
pub fn unified(old: Option<&str>, new: &str, path: &str) -> Option<String> {
    if old == Some(new) {
        return None;
    }
    let old_lines: Vec<&str> = old.map_or_else(Vec::new, |o| o.lines().collect());
    let new_lines: Vec<&str> = new.lines().collect();
    let ops = ops(&old_lines, &new_lines);
    let from = if old.is_some() { path } else { "/dev/null" };
    let mut out = format!("--- {from}\n+++ {path}\n");
    // Hunks: runs of changes with up to CONTEXT_LINES of unchanged lines around them.
    let changed: Vec<usize> = (0..ops.len())
        .filter(|&k| !matches!(ops[k], Op::Same(_)))
        .collect();
    if changed.is_empty() {
        // Only line endings differ (a missing final newline, say): show the whole file.
        out.push_str("@@ the files differ only in line endings @@\n");
        return Some(out);
    }
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT_LINES);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT_LINES + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT_LINES + 1).min(ops.len());
        out.push_str(&hunk(&ops, start, end));
    }
    Some(out)
}

/// One hunk of `ops[start..end]`, with its `@@ -a,b +c,d @@` header.
fn hunk(ops: &[Op<'_>], start: usize, end: usize) -> String {
    let count = |range: &[Op<'_>], old: bool| {
        range
            .iter()
            .filter(|o| match o {
                Op::Same(_) => true,
                Op::Del(_) => old,
                Op::Add(_) => !old,
            })
            .count()
    };
    let (old_start, new_start) = (count(&ops[..start], true), count(&ops[..start], false));
    let (old_n, new_n) = (
        count(&ops[start..end], true),
        count(&ops[start..end], false),
    );
    // A side with no lines is numbered by the line before it (0 for an empty file).
    let first = |s: usize, n: usize| if n == 0 { s } else { s + 1 };
    let mut out = format!(
        "@@ -{},{old_n} +{},{new_n} @@\n",
        first(old_start, old_n),
        first(new_start, new_n)
    );
    for op in &ops[start..end] {
        let (sign, line) = match op {
            Op::Same(l) => (' ', l),
            Op::Del(l) => ('-', l),
            Op::Add(l) => ('+', l),
        };
        out.push(sign);
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_has_no_diff() {
        assert_eq!(unified(Some("a\nb\n"), "a\nb\n", "f"), None);
    }

    #[test]
    fn a_new_file_is_all_additions() {
        let d = unified(None, "a\nb\n", "/etc/x").unwrap();
        assert_eq!(d, "--- /dev/null\n+++ /etc/x\n@@ -0,0 +1,2 @@\n+a\n+b\n");
    }

    #[test]
    fn a_changed_line_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        let d = unified(Some(old), new, "f").unwrap();
        assert_eq!(
            d,
            "--- f\n+++ f\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn distant_changes_make_two_hunks() {
        let old: String = (1..=20).map(|i| format!("line{i}\n")).collect();
        let new = old
            .replace("line2\n", "two\n")
            .replace("line19\n", "nineteen\n");
        let d = unified(Some(&old), &new, "f").unwrap();
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(
            d.contains("-line2\n+two\n") && d.contains("-line19\n+nineteen\n"),
            "{d}"
        );
    }

    #[test]
    fn a_deleted_file_content() {
        let d = unified(Some("a\n"), "", "f").unwrap();
        assert_eq!(d, "--- f\n+++ f\n@@ -1,1 +0,0 @@\n-a\n");
    }
}
